"""Single-factor conjugate models: q is the exact posterior, so the ELBO is the log evidence.

Exact tier: the CAVI ELBO equals the closed-form log evidence (scipy ``betaln``/``gammaln``,
written out here independently of the model code) to 1e-10 relative in float64, for random
priors and data (hypothesis); the round-off of these sums is ~1e-14, and a wrong term (a
missing base measure, a digamma for a log) is off by >= 1e-3. Stochastic tier: with q the
exact posterior, log p(x, θ) - log q(θ) = log p(x) for *every* draw, so Pyro's Trace_ELBO
estimate has zero variance and must hit the evidence up to round-off.
"""

from __future__ import annotations

import math

import numpy as np
import pyro.optim
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import betaln, gammaln

from pyro_vi import (
    BetaBernoulli,
    DirichletCategorical,
    GammaPoisson,
    cavi,
    elbo_estimate,
    fit_svi,
)

HYP = settings(max_examples=20, deadline=None, derandomize=True)
prior = st.floats(0.05, 20.0)
seeds = st.integers(0, 2**16)
RTOL = 1e-10


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def assert_evidence(fit, log_evidence: float) -> None:
    assert abs(fit.elbo - log_evidence) <= RTOL * max(1.0, abs(log_evidence))
    # Invariant: one sweep reaches the optimum and the bound never decreases.
    assert (np.diff(fit.history["elbo"].to_numpy()) >= -1e-12 * max(1.0, abs(fit.elbo))).all()


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


@HYP
@given(a=prior, b=prior, n=st.integers(1, 200), rate=st.floats(0.0, 50.0), seed=seeds)
def test_gamma_poisson_elbo_is_the_log_evidence(a, b, n, rate, seed):
    x = rng(seed).poisson(rate, n)
    s = x.sum()
    evidence = (a * math.log(b) - gammaln(a) + gammaln(a + s) - (a + s) * math.log(b + n)
                - gammaln(x + 1).sum())
    fit = cavi(GammaPoisson(shape=a, rate=b), torch.tensor(x))
    assert_evidence(fit, evidence)


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


def f64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# Float64 data: Pyro evaluates the model's log-likelihood in the data's dtype.
CASES = {
    "bernoulli": (BetaBernoulli(alpha=2.0, beta=3.0), (f64([1, 0, 1, 1, 0, 1]),)),
    "binomial": (BetaBernoulli(alpha=0.5, beta=0.5), (f64([3, 0, 5]), f64([4, 2, 9]))),
    "poisson": (GammaPoisson(shape=2.0, rate=0.5), (f64([3, 1, 4, 1, 5, 9, 2, 6]),)),
    "categorical": (DirichletCategorical([1.0, 2.0, 0.5]), (torch.tensor([0, 2, 2, 1, 0]),)),
    "multinomial": (DirichletCategorical(1.5, n_categories=3),
                    (f64([[1, 2, 0], [0, 0, 4], [3, 1, 1]]),)),
    "multinomial_equal_totals": (DirichletCategorical(1.5, n_categories=3),
                                 (f64([[1, 2, 0], [0, 0, 3], [2, 1, 0]]),)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_trace_elbo_on_the_exact_posterior_guide_is_the_evidence(case):
    model, data = CASES[case]
    fit = cavi(model, data[0] if len(data) == 1 else data)
    est = elbo_estimate(model.model, fit.guide, *data, num_particles=2000)
    # Zero-variance estimator: stderr is round-off, so allow 4 SE plus 1e-9 relative for the
    # float64 sum of 2000 equal log weights.
    assert abs(est.mean - fit.elbo) <= 4 * est.stderr + 1e-9 * abs(fit.elbo), (est, fit.elbo)


# (Beta reparameterised gradients cost ~30 ms a step on CPU, so Beta-Bernoulli is left out.)
@pytest.mark.parametrize("case", ["poisson", "categorical"])
def test_fit_svi_on_the_pyro_guide_approaches_the_exact_posterior(case):
    model, data = CASES[case]
    fit = cavi(model, data[0])
    start = model.elbo(data[0], model.params_from_store(*data))  # the guide starts at the prior
    fit_svi(model.model, model.guide, *data, optim=pyro.optim.Adam({"lr": 0.1}),
            num_steps=300, tol=0.0, seed=0, progress=False)
    svi_elbo = model.elbo(data[0], model.params_from_store(*data))
    # The ELBO's maximum is log p(x) (here = fit.elbo). Over seeds 0-2, 300 Adam steps leave
    # at most 31% of the gap from the prior start (7 and 3 nats); a guide that does not learn
    # leaves 100%, so "less than half" separates the two.
    assert svi_elbo <= fit.elbo + 1e-9
    assert fit.elbo - svi_elbo < 0.5 * (fit.elbo - start)


@pytest.mark.parametrize(("model", "data", "match"), [
    (GammaPoisson(), torch.tensor([1.0, -2.0]), "x must hold counts >= 0"),
    (GammaPoisson(), torch.tensor([1.0, 2.5]), "x must hold whole numbers"),
    (GammaPoisson(), torch.tensor([1.0, float("nan")]), "x holds NaN"),
    (BetaBernoulli(), torch.tensor([0.0, 1.0, 2.0]), "y must hold only 0s and 1s"),
    (BetaBernoulli(), (torch.tensor([1.0, 2.0]), torch.tensor([1.0])), "differ in length"),
    (BetaBernoulli(), (torch.tensor([3.0]), torch.tensor([2.0])), "successes must lie in"),
    (BetaBernoulli(), (torch.tensor([0.0]), torch.tensor([-1.0])), "trials must be >= 0"),
    (DirichletCategorical(1.0, n_categories=3), torch.tensor([0, 3]), "labels y must lie"),
    (DirichletCategorical(1.0, n_categories=3), torch.ones(2, 4), r"shape \(N, 3\)"),
    (DirichletCategorical(1.0, n_categories=2), -torch.ones(2, 2), "counts y must be"),
])
def test_bad_data_names_the_argument(model, data, match):
    with pytest.raises(ValueError, match=match):
        cavi(model, data)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: BetaBernoulli(alpha=0.0), "alpha"),
    (lambda: BetaBernoulli(beta=-1.0), "beta"),
    (lambda: GammaPoisson(shape=float("nan")), "shape"),
    (lambda: GammaPoisson(rate=0.0), "rate"),
    (lambda: DirichletCategorical([1.0, 0.0]), "concentration"),
    (lambda: DirichletCategorical(-1.0, n_categories=3), "concentration"),
    (lambda: DirichletCategorical(1.0), "n_categories"),
])
def test_bad_priors_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()
