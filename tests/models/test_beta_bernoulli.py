"""Beta–Bernoulli and Beta–Binomial: q is the exact posterior, so the ELBO is the log evidence.

Exact tier: the CAVI ELBO equals the closed-form log evidence (scipy's ``betaln``/``gammaln``, written out here
independently of the model code) to 1e-10 relative in float64, for random priors and data
(hypothesis). The contract's checks (monotone ELBO, Trace_ELBO on the fitted guide, stochastic
VI, fit_svi) run in ``tests/models/test_contract.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import betaln, gammaln

from pyro_vi import BetaBernoulli, cavi

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
@given(a=prior, b=prior, n=st.integers(1, 200), p=st.floats(0.0, 1.0), seed=seeds)
def test_beta_bernoulli_elbo_is_the_log_evidence(a, b, n, p, seed):
    y = (rng(seed).random(n) < p).astype(float)
    k = y.sum()
    fit = cavi(BetaBernoulli(alpha=a, beta=b), torch.tensor(y))
    assert_evidence(fit, betaln(a + k, b + n - k) - betaln(a, b))
    np.testing.assert_allclose(fit.params.prob.concentration1, a + k, rtol=1e-14)


@HYP
@given(a=prior, b=prior, n=st.integers(1, 50), seed=seeds)
def test_beta_binomial_elbo_is_the_log_evidence(a, b, n, seed):
    g = rng(seed)
    trials = g.integers(0, 30, n)
    succ = g.binomial(trials, g.random())
    log_binom = (gammaln(trials + 1) - gammaln(succ + 1) - gammaln(trials - succ + 1)).sum()
    evidence = log_binom + betaln(a + succ.sum(), b + (trials - succ).sum()) - betaln(a, b)
    fit = cavi(BetaBernoulli(alpha=a, beta=b), (torch.tensor(succ), torch.tensor(trials)))
    assert_evidence(fit, evidence)


@pytest.mark.parametrize(("model", "data", "match"), [
    (BetaBernoulli(), torch.tensor([0.0, 1.0, 2.0]), "y must hold only 0s and 1s"),
    (BetaBernoulli(), (torch.tensor([1.0, 2.0]), torch.tensor([1.0])), "differ in length"),
    (BetaBernoulli(), (torch.tensor([3.0]), torch.tensor([2.0])), "successes must lie in"),
    (BetaBernoulli(), (torch.tensor([0.0]), torch.tensor([-1.0])), "trials must be >= 0"),
])
def test_bad_data_names_the_argument(model, data, match):
    with pytest.raises(ValueError, match=match):
        cavi(model, data)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: BetaBernoulli(alpha=0.0), "alpha"),
    (lambda: BetaBernoulli(beta=-1.0), "beta"),
])
def test_bad_priors_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()
