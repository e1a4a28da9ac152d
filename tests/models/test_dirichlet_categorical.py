"""Dirichlet–Categorical and Dirichlet–Multinomial: q is the exact posterior, so the ELBO is the log evidence.

Exact tier: the CAVI ELBO equals the closed-form log evidence (scipy's ``gammaln``, written out here
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
from scipy.special import gammaln

from pyro_vi import DirichletCategorical, cavi

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


def log_dirichlet_ratio(alpha: np.ndarray, counts: np.ndarray) -> float:
    a_n = alpha + counts
    return (gammaln(alpha.sum()) - gammaln(alpha).sum() + gammaln(a_n).sum()
            - gammaln(a_n.sum()))


@HYP
@given(k=st.integers(2, 6), n=st.integers(1, 200), seed=seeds, conc=prior)
def test_dirichlet_categorical_elbo_is_the_log_evidence(k, n, seed, conc):
    g = rng(seed)
    alpha = conc * g.uniform(0.2, 2.0, k)
    y = g.choice(k, n, p=g.dirichlet(np.ones(k)))
    fit = cavi(DirichletCategorical(alpha.tolist()), torch.tensor(y))
    assert_evidence(fit, log_dirichlet_ratio(alpha, np.bincount(y, minlength=k)))


@HYP
@given(k=st.integers(2, 5), n=st.integers(1, 40), seed=seeds, conc=prior)
def test_dirichlet_multinomial_elbo_is_the_log_evidence(k, n, seed, conc):
    g = rng(seed)
    totals = g.integers(0, 20, n)  # rows with different totals
    counts = np.stack([g.multinomial(t, g.dirichlet(np.ones(k))) for t in totals])
    log_coef = (gammaln(totals + 1) - gammaln(counts + 1).sum(1)).sum()
    fit = cavi(DirichletCategorical(conc, n_categories=k), torch.tensor(counts))
    assert_evidence(fit, log_coef + log_dirichlet_ratio(np.full(k, conc), counts.sum(0)))


def test_chunked_local_steps_add_up_to_the_same_elbo():
    counts = torch.tensor(rng(0).integers(0, 9, (23, 3)))
    model = DirichletCategorical([0.5, 1.0, 2.0])
    whole = cavi(model, counts, chunk_size=0).elbo
    assert cavi(model, counts, chunk_size=4).elbo == pytest.approx(whole, rel=1e-13)


@pytest.mark.parametrize(("model", "data", "match"), [
    (DirichletCategorical(1.0, n_categories=3), torch.tensor([0, 3]), "labels y must lie"),
    (DirichletCategorical(1.0, n_categories=3), torch.ones(2, 4), r"shape \(N, 3\)"),
    (DirichletCategorical(1.0, n_categories=2), -torch.ones(2, 2), "counts y must be"),
])
def test_bad_data_names_the_argument(model, data, match):
    with pytest.raises(ValueError, match=match):
        cavi(model, data)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: DirichletCategorical([1.0, 0.0]), "concentration"),
    (lambda: DirichletCategorical(-1.0, n_categories=3), "concentration"),
    (lambda: DirichletCategorical(1.0), "n_categories"),
])
def test_bad_priors_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()
