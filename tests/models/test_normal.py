"""The Normal with unknown mean and precision (Bishop 2006, §10.1.3) under CAVI.

Exact tier: the CAVI fixed point equals the closed-form mean-field solution, derived here
independently of the model code, and the exact Normal-Gamma posterior (Student-t marginal of
μ, from scipy) shows the known underestimation of Var(μ); the ELBO stays below the exact log
evidence. The contract's invariants (monotone ELBO, Trace_ELBO agreement, SVI) are checked in
``tests/models/test_contract.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import gammaln

from pyro_vi import UnivariateNormal, cavi

F64 = torch.float64
PRIOR = dict(mean_prior=0.5, mean_precision=2.0, precision_concentration=3.0, precision_rate=2.0)


def data(n: int = 30, seed: int = 0, loc: float = 1.5, scale: float = 0.8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return loc + scale * torch.randn(n, generator=g, dtype=F64)


def exact_posterior(x: np.ndarray, mu0, lam0, a0, b0):
    """Normal-Gamma posterior (Murphy 2007, 'Conjugate Bayesian analysis of the Gaussian', §3)."""
    n, xbar = len(x), x.mean()
    lam_n = lam0 + n
    mu_n = (lam0 * mu0 + n * xbar) / lam_n
    a_n = a0 + n / 2
    b_n = b0 + 0.5 * ((x - xbar) ** 2).sum() + lam0 * n * (xbar - mu0) ** 2 / (2 * lam_n)
    return mu_n, lam_n, a_n, b_n


def mean_field_solution(x: np.ndarray, mu0, lam0, a0, b0):
    """Closed-form fixed point of Bishop's eqs. 10.26–10.30.

    m_N does not depend on E[τ]; then b_N = c + (N + λ0) / (2 λ_N) with λ_N = (λ0 + N) E[τ],
    c = b0 + ½[Σ(x - m_N)² + λ0 (m_N - μ0)²], so E[τ] = a_N / b_N = a_N / (c + 1/(2 E[τ])),
    whose solution is E[τ] = (a_N - ½) / c.
    """
    n = len(x)
    m_n = (lam0 * mu0 + x.sum()) / (lam0 + n)
    c = b0 + 0.5 * (((x - m_n) ** 2).sum() + lam0 * (m_n - mu0) ** 2)
    a_n = a0 + (n + 1) / 2
    e_tau = (a_n - 0.5) / c
    return m_n, (lam0 + n) * e_tau, a_n, a_n / e_tau


def test_fixed_point_matches_the_closed_form_mean_field_solution():
    x = data()
    fit = cavi(UnivariateNormal(**PRIOR), x, tol=0.0, max_iter=60, warn=False)
    m_n, lam_n, a_n, b_n = mean_field_solution(x.numpy(), *PRIOR.values())
    p = fit.params
    # Each sweep contracts the error in E[τ] by 1/(2 a_N) ≈ 0.03 (tol=0 runs all 60 sweeps, the
    # ELBO being too flat at the optimum for a tolerance to pin the parameters), so only
    # round-off is left; 1e-10 is loose by 1e4 and catches any wrong update.
    np.testing.assert_allclose([p.loc.loc, p.loc.precision, p.precision.concentration, p.precision.rate],
                               [m_n, lam_n, a_n, b_n], rtol=1e-10)


def test_mean_field_underestimates_the_variance_of_the_mean():
    x = data(n=12, seed=3)
    fit = cavi(UnivariateNormal(**PRIOR), x, tol=0.0, max_iter=60, warn=False)
    mu_n, lam_n, a_n, b_n = exact_posterior(x.numpy(), *PRIOR.values())
    # Exact marginal of μ: Student-t with 2 a_N dof, location μ_N, scale² b_N / (a_N λ_N).
    exact_var = stats.t(df=2 * a_n, loc=mu_n, scale=math.sqrt(b_n / (a_n * lam_n))).var()
    q_var = float(fit.params.loc.variance())
    assert q_var < exact_var
    # ... by exactly the factor (a_N - 1)/a_N: E_q[τ] equals the exact E[τ] = a_N/b_N.
    np.testing.assert_allclose(q_var / exact_var, (a_n - 1) / a_n, rtol=1e-10)
    np.testing.assert_allclose(float(fit.params.loc.mean()), mu_n, rtol=1e-12)
    np.testing.assert_allclose(float(fit.params.precision.mean()), a_n / b_n, rtol=1e-10)


def test_elbo_is_below_the_exact_log_evidence():
    x = data(n=20, seed=1)
    mu0, lam0, a0, b0 = PRIOR.values()
    fit = cavi(UnivariateNormal(**PRIOR), x, tol=0.0, max_iter=60, warn=False)
    _, lam_n, a_n, b_n = exact_posterior(x.numpy(), mu0, lam0, a0, b0)
    log_evidence = (gammaln(a_n) - gammaln(a0) + a0 * math.log(b0) - a_n * math.log(b_n)
                    + 0.5 * math.log(lam0 / lam_n) - 0.5 * len(x) * math.log(2 * math.pi))
    gap = log_evidence - fit.elbo  # = KL(q || exact posterior) > 0
    assert 0 < gap < 0.5

@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(mean_precision=0.0), "mean_precision"),
    (dict(precision_concentration=-1.0), "precision_concentration"),
    (dict(precision_rate=float("nan")), "precision_rate"),
    (dict(mean_prior=float("inf")), "mean_prior"),
])
def test_bad_priors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UnivariateNormal(**kwargs)


@pytest.mark.parametrize(("x", "match"), [
    (torch.tensor([1.0, float("nan")]), "x holds NaN"),
    (torch.ones(2, 2), "1-D"),
    (torch.ones(0), "non-empty"),
])
def test_bad_data_names_the_argument(x, match):
    with pytest.raises(ValueError, match=match):
        cavi(UnivariateNormal(), x)
