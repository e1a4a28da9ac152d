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
