"""Bayesian linear regression with ARD and unknown noise precision, under CAVI.

Exact tier: with both precisions fixed, q(w) is the exact Gaussian posterior (Bishop 2006,
eqs. 3.53–3.54), the ELBO is the exact log evidence (eq. 3.86, here scipy's multivariate
normal density of y ~ N(0, I/β + X Xᵀ/α)) and ``predict`` is the exact predictive (eqs.
3.58–3.59), all to 1e-10 relative (round-off ~1e-13 at these sizes). Behaviour tier: ARD
prunes irrelevant inputs of seeded synthetic data. The contract's invariants (monotone ELBO,
Trace_ELBO agreement, SVI) are checked in ``tests/models/test_contract.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from pyro_vi import BayesianLinearRegression, cavi

F64 = torch.float64
W_TRUE = torch.tensor([1.5, -2.0, 0.7, 0.0, 0.0, 0.0], dtype=F64)  # last three irrelevant
NOISE_SD = 0.3


def synthetic(n: int, seed: int, w: torch.Tensor = W_TRUE, noise_sd: float = NOISE_SD):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, w.shape[0], generator=g, dtype=F64)
    return x, x @ w + noise_sd * torch.randn(n, generator=g, dtype=F64)


@pytest.mark.parametrize("ard", [True, False])
def test_fixed_precisions_give_the_exact_posterior_evidence_and_predictive(ard):
    x, y = synthetic(40, seed=0)
    alpha, beta = 2.0, 5.0
    model = BayesianLinearRegression(ard=ard, weight_precision=alpha, noise_precision=beta)
    fit = cavi(model, (x, y))
    xn, yn = x.numpy(), y.numpy()
    s_n = np.linalg.inv(alpha * np.eye(6) + beta * xn.T @ xn)  # Bishop eq. 3.54
    m_n = beta * s_n @ xn.T @ yn  # eq. 3.53
    np.testing.assert_allclose(fit.params.weights.mean(), m_n, rtol=1e-10)
    np.testing.assert_allclose(fit.params.weights.covariance(), s_n, rtol=1e-10, atol=1e-14)
    evidence = multivariate_normal(np.zeros(40), np.eye(40) / beta + xn @ xn.T / alpha).logpdf(yn)
    np.testing.assert_allclose(fit.elbo, evidence, rtol=1e-10)
    x_new = synthetic(5, seed=1)[0]
    pred = model.predict(fit.params, x_new)
    xnew = x_new.numpy()
    np.testing.assert_allclose(pred.mean, xnew @ m_n, rtol=1e-10)
    np.testing.assert_allclose(pred.variance, 1 / beta + np.einsum("md,de,me->m", xnew, s_n, xnew),
                               rtol=1e-10)


def test_ard_prunes_irrelevant_inputs():
    x, y = synthetic(200, seed=1)
    fit = cavi(BayesianLinearRegression(), (x, y), max_iter=2000)
    e_alpha = fit.params.weight_precision.mean()
    e_w = fit.params.weights.mean()
    # Relevant inputs keep E[α_i] = O(1/w_i²) <= 3; irrelevant ones are driven up by orders of
    # magnitude (observed 2.6e3-3.3e4 for this seed), and their weights shrink to below the
    # OLS standard error 0.3/sqrt(200) ≈ 0.02.
    assert e_alpha[3:].min() > 100 * e_alpha[:3].max()
    assert e_w[3:].abs().max() < 0.02
    np.testing.assert_allclose(e_w[:3], W_TRUE[:3], atol=0.06)  # 3 OLS SEs
    assert abs(float(fit.params.noise_precision.mean()) - NOISE_SD**-2) < 0.2 * NOISE_SD**-2


def test_predict_is_the_student_t_style_mean_and_variance_of_the_fitted_factors():
    x, y = synthetic(50, seed=2)
    model = BayesianLinearRegression()
    fit = cavi(model, (x, y), max_iter=2000)
    x_new = synthetic(7, seed=3)[0]
    pred = model.predict(fit.params, x_new)
    q_beta = fit.params.noise_precision
    cov = np.linalg.inv(fit.params.weights.precision().numpy())
    xn = x_new.numpy()
    # Bishop (2006) eq. 10.105 with E[β]: noise 1/E[β] = b/a plus parameter term xᵀ Σ_w x.
    np.testing.assert_allclose(pred.mean, xn @ fit.params.weights.mean().numpy(), rtol=1e-12)
    np.testing.assert_allclose(pred.variance, float(q_beta.rate / q_beta.concentration)
                               + np.einsum("md,de,me->m", xn, cov, xn), rtol=1e-9)
    # The parameter term grows quadratically away from the data.
    far = model.predict(fit.params, 10 * x_new).variance
    assert (far - pred.variance > 50 * (pred.variance - float(q_beta.rate / q_beta.concentration))).all()

@pytest.mark.parametrize(("data", "match"), [
    ((torch.ones(5, 2, dtype=F64), torch.ones(4, dtype=F64)), "X and y differ in length"),
    ((torch.full((3, 2), float("nan"), dtype=F64), torch.ones(3, dtype=F64)), "X holds NaN"),
    ((torch.ones(3, 2, dtype=F64), torch.tensor([1.0, float("inf"), 0.0])), "y holds NaN"),
    ((torch.ones(3, dtype=F64), torch.ones(3, dtype=F64)), "2-D"),
])
def test_bad_data_names_the_argument(data, match):
    with pytest.raises(ValueError, match=match):
        cavi(BayesianLinearRegression(), data)


@pytest.mark.parametrize("name", ["weight_precision", "noise_precision",
                                  "weight_precision_concentration", "weight_precision_rate",
                                  "noise_precision_concentration", "noise_precision_rate"])
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_bad_priors_name_the_argument(name, value):
    with pytest.raises(ValueError, match=name):
        BayesianLinearRegression(**{name: value})


def test_predict_checks_the_input_width():
    x, y = synthetic(20, seed=6)
    model = BayesianLinearRegression(weight_precision=1.0, noise_precision=1.0)
    fit = cavi(model, (x, y))
    with pytest.raises(ValueError, match="D=6 columns"):
        model.predict(fit.params, torch.ones(2, 3, dtype=F64))


# ------------------------------------------------------------------ learned precisions, exactly
# Informative priors with a0 != b0 and c0 != d0, so that swapping a shape with a rate moves the
# answer, and N = 12 points in D = 3, so that the posterior spread of w is
# not negligible: Σ_ii ≈ 0.004 against b_i ≈ 1, so E[w²] = m² + Σ_ii moves b_i by ~2e-3.
A0, B0, C0, D0 = 2.0, 0.5, 3.0, 0.2


def _numpy_mean_field(x, y, n_iter=3000):
    """Bishop (2006) eqs. 10.93-10.100 with ARD, iterated in numpy from the prior means."""
    n, d = x.shape
    xtx, xty, yty = x.T @ x, x.T @ y, y @ y
    e_alpha, e_beta = np.full(d, A0 / B0), C0 / D0
    for _ in range(n_iter):
        cov = np.linalg.inv(np.diag(e_alpha) + e_beta * xtx)
        m = e_beta * cov @ xty
        second = cov + np.outer(m, m)
        a, b = A0 + 0.5, B0 + 0.5 * np.diag(second)
        c, dd = C0 + 0.5 * n, D0 + 0.5 * (yty - 2 * m @ xty + (xtx * second).sum())
        e_alpha, e_beta = a / b, c / dd
    return m, cov, np.full(d, a), b, c, dd


def _numpy_elbo(x, y, m, cov, a, b, c, dd):
    """E_q[log p(y, w, α, β)] + H[q] term by term, with scipy's Gamma entropy."""
    from scipy.special import digamma, gammaln
    from scipy.stats import gamma

    n, d = x.shape
    e_la, e_a, e_lb, e_b = digamma(a) - np.log(b), a / b, digamma(c) - np.log(dd), c / dd
    e_w2 = m**2 + np.diag(cov)
    sq = ((y - x @ m) ** 2).sum() + np.einsum("nd,de,ne->", x, cov, x)
    lik = 0.5 * n * (e_lb - np.log(2 * np.pi)) - 0.5 * e_b * sq
    p_w = (0.5 * (e_la - np.log(2 * np.pi)) - 0.5 * e_a * e_w2).sum()
    p_a = (A0 * np.log(B0) - gammaln(A0) + (A0 - 1) * e_la - B0 * e_a).sum()
    p_b = C0 * np.log(D0) - gammaln(C0) + (C0 - 1) * e_lb - D0 * e_b
    h_w = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * cov)[1]
    h = gamma(a, scale=1 / b).entropy().sum() + gamma(c, scale=1 / dd).entropy()
    return lik + p_w + p_a + p_b + h_w + h


def _fixed_point_error(model, x, y):
    """Largest relative gap between a CAVI fit and the numpy mean-field solution and ELBO."""
    # monotone_rtol=1e300 switches the engine's ELBO-decrease guard off: this check alone
    # must catch a wrong update.
    fit = cavi(model, (x, y), max_iter=400, tol=0.0, monotone_rtol=1e300, warn=False)
    p = fit.params
    got = (p.weights.mean(), p.weights.covariance(), p.weight_precision.concentration,
           p.weight_precision.rate, p.noise_precision.concentration, p.noise_precision.rate)
    want = _numpy_mean_field(x.numpy(), y.numpy())
    gaps = [np.max(np.abs(np.asarray(g) - w) / np.abs(w).max()) for g, w in zip(got, want, strict=True)]
    gaps.append(abs(fit.elbo - _numpy_elbo(x.numpy(), y.numpy(), *want)) / abs(fit.elbo))
    return max(gaps)


def _ard_model(cls=BayesianLinearRegression):
    return cls(weight_precision_concentration=A0, weight_precision_rate=B0,
               noise_precision_concentration=C0, noise_precision_rate=D0)


def test_learned_precisions_are_the_exact_mean_field_fixed_point():
    # Both sides iterate the same contraction from the same start and have converged long
    # before 400 sweeps (more sweeps on either side change no digit). The observed gap is
    # 2.5e-10 (the covariance, ~1e-12 absolute; the ELBO agrees to 1e-16), so 1e-8 is safe,
    # while each wrong update below moves some parameter by more than 1e-3 relative.
    x, y = synthetic(12, seed=4, w=W_TRUE[:3])
    assert _fixed_point_error(_ard_model(), x, y) < 1e-8


class _WrongUpdate(BayesianLinearRegression):
    """The issue's four wrong updates, applied on top of the right global step."""

    def __init__(self, wrong: str, **kwargs):
        super().__init__(**kwargs)
        self.wrong = wrong

    def global_step(self, stats, params):
        from pyro_vi.factors import Gamma

        out = super().global_step(stats, params)
        qa, qb, qw = out.weight_precision, out.noise_precision, out.weights
        cov = qw.covariance()
        if self.wrong == "a0 + 1":
            qa = Gamma(qa.concentration + 0.5, qa.rate)
        elif self.wrong == "c0 + (N - 1)/2":
            qb = Gamma(qb.concentration - 0.5, qb.rate)
        elif self.wrong == "E[w2] = m2 in b":
            qa = Gamma(qa.concentration, qa.rate - 0.5 * torch.diagonal(cov))
        elif self.wrong == "E[w2] = m2 in d":
            qb = Gamma(qb.concentration, qb.rate - 0.5 * (stats[1] * cov).sum())
        return type(out)(qw, qa, qb)


@pytest.mark.parametrize("wrong", ["a0 + 1", "c0 + (N - 1)/2", "E[w2] = m2 in b",
                                   "E[w2] = m2 in d", "a0 <-> b0 in the prior"])
def test_the_fixed_point_check_has_power_against_wrong_updates(wrong):
    # The test above is only worth something if it fails for the updates the guard used to be
    # the only defence against (issue 18); a swapped prior moves the ELBO (its KL terms).
    x, y = synthetic(12, seed=4, w=W_TRUE[:3])
    if wrong == "a0 <-> b0 in the prior":
        model = BayesianLinearRegression(weight_precision_concentration=B0,
                                         weight_precision_rate=A0,
                                         noise_precision_concentration=C0,
                                         noise_precision_rate=D0)
        model.global_step = lambda s, p: BayesianLinearRegression.global_step(  # type: ignore
            _ard_model(), s, p)
    else:
        model = _WrongUpdate(wrong, weight_precision_concentration=A0, weight_precision_rate=B0,
                             noise_precision_concentration=C0, noise_precision_rate=D0)
    assert _fixed_point_error(model, x, y) > 1e-3
