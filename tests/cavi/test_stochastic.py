"""Stochastic VI (Hoffman et al. 2013) on the CAVI protocol: exact limits, accuracy, options.

Exact tier: with the full data as the batch and ρ_1 = 1 a step *is* a CAVI sweep; ``blend``
moves natural parameters. Accuracy tier (seeded, deterministic given the seed): on N = 1e5
points of a well-separated GMM the stochastic fit's full-data ELBO is within 5 nats below
batch CAVI's (observed 0.5 of 3.9e5), and bands of the same kind hold for the hierarchical
model with local θ_j and for linear regression.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pyro_vi import (
    BayesianLinearRegression,
    ConvergenceWarning,
    GaussianMixture,
    HierarchicalNormal,
    blend_params,
    cavi,
    svi_cavi,
)
from pyro_vi.cavi.engine import local_pass
from pyro_vi.factors import Gamma
from pyro_vi.models.linreg import LinRegParams

F64 = torch.float64


def mixture(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[-6.0, 0.0], [6.0, 0.0], [0.0, 8.0]], dtype=F64)
    z = torch.randint(3, (n,), generator=g)
    return centers[z] + torch.randn(n, 2, generator=g, dtype=F64)


def groups(j: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sigma = 1 + 4 * torch.rand(j, generator=g, dtype=F64)
    theta = 3 + 2 * torch.randn(j, generator=g, dtype=F64)
    return theta + sigma * torch.randn(j, generator=g, dtype=F64), sigma


HIER = HierarchicalNormal(mean_prior=0.0, mean_scale=10.0, precision_concentration=1.0,
                          precision_rate=1.0)


def test_gmm_on_1e5_points_is_within_5_nats_of_batch_cavi():
    x = mixture(100_000)
    batch = cavi(GaussianMixture(3), x, seed=0)
    fit = svi_cavi(GaussianMixture(3), x, batch_size=10_000, num_epochs=2, seed=0)
    full = batch.cavi_model.elbo(x, fit.params)  # the stochastic fit's ELBO in full batch
    assert full == pytest.approx(fit.elbo, rel=1e-12)
    # Measured gap batch - stochastic, in nats of an ELBO of -3.94e5: 0.52 for seed 0 (the
    # test), 0.66 and 0.47 for seeds 1 and 2 (1.2-1.7e-6 relative), while seed 3 ends 721 nats
    # (1.8e-3) short after its two epochs. So 5 nats (~8x the worst good seed) passes every
    # seed that reached batch CAVI's optimum and fails a run that did not; the old 0.5 % band
    # (~2000 nats) passed all four. The run is deterministic given the seed: failure budget 0.
    # The gap is >= 0 because batch CAVI sits at the optimum's maximum.
    assert 0.0 <= batch.elbo - full <= 5.0
    assert fit.n_steps == 20
    assert len(fit.history) == 20


def test_hierarchical_model_with_local_thetas():
    y, sigma = groups(5000)
    batch = cavi(HIER, (y, sigma))
    fit = svi_cavi(HIER, (y, sigma), batch_size=100, num_epochs=5, seed=0)
    # Observed 1.2e-4 relative (5 epochs of 50 steps); 1e-3 is the band.
    assert abs(fit.elbo - batch.elbo) <= 1e-3 * abs(batch.elbo)
    assert fit.elbo <= batch.elbo + 1e-6 * abs(batch.elbo)  # CAVI's optimum is a maximum here


def test_linear_regression_without_local_variables_reaches_the_exact_evidence():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 3, generator=g, dtype=F64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=F64) + 0.5 * torch.randn(4000, generator=g,
                                                                         dtype=F64)
    model = BayesianLinearRegression(weight_precision=1.0, noise_precision=4.0)
    exact = cavi(model, (x, y))
    fit = svi_cavi(model, (x, y), batch_size=400, num_epochs=10, seed=0)
    # Fixed precisions stay tensors (blend_params keeps equal non-factor fields).
    assert torch.equal(fit.params.noise_precision, exact.params.noise_precision)
    # The exact posterior maximises the ELBO; with κ = 0.7 the iterate's noise decays like ρ_t
    # and 10 epochs end 0.002 nats short (of |ELBO| = 2934), so 0.1 nats is a 50x band.
    assert exact.elbo - 0.1 < fit.elbo <= exact.elbo + 1e-9


def test_a_full_batch_step_with_rho_one_is_a_cavi_sweep():
    y, sigma = groups(50, seed=2)
    model, data = HIER.prepare((y, sigma))
    start = cavi(model, data, max_iter=2, tol=0.0, warn=False).params
    fit = svi_cavi(model, data, batch_size=50, tau=0.0, kappa=1.0, max_steps=1,
                   init_params=start, seed=0)
    sweep = model.global_step(local_pass(model, data, start, chunk_size=0).stats, start)
    assert fit.history["rho"].tolist() == [1.0]
    for got, want in ((fit.params.mean, sweep.mean), (fit.params.precision, sweep.precision)):
        for a, b in zip(got.natural_params, want.natural_params, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=0.0)


def test_step_sizes_follow_the_robbins_monro_schedule_and_runs_repeat():
    y, sigma = groups(200, seed=3)
    a = svi_cavi(HIER, (y, sigma), batch_size=30, tau=2.0, kappa=0.6, max_steps=17, seed=5)
    b = svi_cavi(HIER, (y, sigma), batch_size=30, tau=2.0, kappa=0.6, max_steps=17, seed=5)
    t = np.arange(1, 18)
    np.testing.assert_allclose(a.history["rho"], (t + 2.0) ** -0.6, rtol=1e-15)
    assert a.history["elbo"].tolist() == b.history["elbo"].tolist()  # seeded: identical
    c = svi_cavi(HIER, (y, sigma), batch_size=30, tau=2.0, kappa=0.6, max_steps=17, seed=6)
    assert a.history["elbo"].tolist() != c.history["elbo"].tolist()


def test_callback_stops_and_tol_rule_sets_converged():
    y, sigma = groups(400, seed=4)
    seen = []
    fit = svi_cavi(HIER, (y, sigma), batch_size=40, max_steps=50, seed=0,
                   callback=lambda step, params: seen.append(step) or step == 7)
    assert seen == list(range(1, 8))
    assert fit.n_steps == 7
    fit = svi_cavi(HIER, (y, sigma), batch_size=400, num_epochs=200, tol=1e-6, seed=0)
    assert fit.converged
    assert fit.n_steps < 200
    with pytest.warns(ConvergenceWarning, match="tol"):
        svi_cavi(HIER, (y, sigma), batch_size=40, max_steps=3, tol=1e-12, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no tol, no warning
        svi_cavi(HIER, (y, sigma), batch_size=40, max_steps=3, seed=0)


def test_blend_params_refuses_a_non_factor_field_that_changed():
    one = torch.tensor(1.0, dtype=F64)
    fit = cavi(BayesianLinearRegression(noise_precision=2.0),
               (torch.eye(3, dtype=F64), torch.ones(3, dtype=F64)), max_iter=3, warn=False)
    p = fit.params
    other = LinRegParams(p.weights, p.weight_precision, 3 * one)
    with pytest.raises(TypeError, match="noise_precision"):
        blend_params(p, other, 0.5)
    with pytest.raises(TypeError, match="dataclass"):
        blend_params(Gamma(one, one), Gamma(one, one), 0.5)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=10, kappa=0.5), "kappa"),
    (dict(batch_size=10, kappa=1.2), "kappa"),
    (dict(batch_size=10, tau=-1.0), "tau"),
    (dict(batch_size=10, num_epochs=1, max_steps=3), "not both"),
    (dict(batch_size=10, num_epochs=0), "num_epochs"),
    (dict(batch_size=10, max_steps=0), "max_steps"),
    (dict(batch_size=10, tol=float("nan")), "tol"),
])
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        svi_cavi(HIER, groups(20), **kwargs)
