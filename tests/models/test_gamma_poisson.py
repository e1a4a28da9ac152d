"""Gamma–Poisson: q is the exact posterior, so the ELBO is the log evidence.

Exact tier: the CAVI ELBO equals the closed-form log evidence (scipy's ``gammaln``, written out here
independently of the model code) to 1e-10 relative in float64, for random priors and data
(hypothesis). The contract's checks (monotone ELBO, Trace_ELBO on the fitted guide, stochastic
VI, fit_svi) run in ``tests/models/test_contract.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import gammaln

from pyro_vi import GammaPoisson, cavi

HYP = settings(max_examples=20, deadline=None, derandomize=True)
prior = st.floats(0.05, 20.0)
seeds = st.integers(0, 2**16)
RTOL = 1e-10


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def assert_evidence(fit, log_evidence: float) -> None:
    # float64 sums of these sizes carry ~1e-14 relative round-off; a wrong term (a missing base
    # measure, a digamma for a log) is off by >= 1e-3.
    assert abs(fit.elbo - log_evidence) <= RTOL * max(1.0, abs(log_evidence))


@HYP
@given(a=prior, b=prior, n=st.integers(1, 200), rate=st.floats(0.0, 50.0), seed=seeds)
def test_gamma_poisson_elbo_is_the_log_evidence(a, b, n, rate, seed):
    x = rng(seed).poisson(rate, n)
    s = x.sum()
    evidence = (a * math.log(b) - gammaln(a) + gammaln(a + s) - (a + s) * math.log(b + n)
                - gammaln(x + 1).sum())
    fit = cavi(GammaPoisson(concentration=a, rate=b), torch.tensor(x))
    assert_evidence(fit, evidence)


@pytest.mark.parametrize(("model", "data", "match"), [
    (GammaPoisson(), torch.tensor([1.0, -2.0]), "x must hold counts >= 0"),
    (GammaPoisson(), torch.tensor([1.0, 2.5]), "x must hold whole numbers"),
    (GammaPoisson(), torch.tensor([1.0, float("nan")]), "x holds NaN"),
])
def test_bad_data_names_the_argument(model, data, match):
    with pytest.raises(ValueError, match=match):
        cavi(model, data)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: GammaPoisson(concentration=float("nan")), "concentration"),
    (lambda: GammaPoisson(rate=0.0), "rate"),
])
def test_bad_priors_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()
