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
from cavi._toy import NormalMean

from pyro_vi import (
    BayesianLinearRegression,
    ConvergenceWarning,
    GaussianMixture,
    HierarchicalNormal,
    Local,
    NumericalError,
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


# ------------------------------------------------------ minibatch scaling, order, stopping
# The toy Normal mean (known precision tau, prior N(m0, 1/l0)) has the statistics (n, sum x):
# whatever the batch, the count rescaled by N/|B| is exactly N, so every step's target and
# every blend of them has q's precision l0 + tau N, the exact posterior's (PRML 2.141).
def test_every_step_including_a_short_last_batch_estimates_n_points():
    x = torch.randn(10, generator=torch.Generator().manual_seed(0), dtype=F64)
    model = NormalMean()
    seen = []
    # N = 10 in batches of 4: each epoch ends with a batch of 2, here at steps 3 and 6.
    svi_cavi(model, x, batch_size=4, max_steps=6, seed=0,
             callback=lambda step, p: seen.append(float(p.loc.precision)))
    want = model.l0 + model.tau * 10
    # Sums of a few O(1) float64 terms: 1e-12 relative is ~1e4 x their round-off. A batch of 2
    # scaled by N/batch_size = 2.5 would give a target of l0 + 5 tau and move the blend by
    # rho (tau N / 2) ~ 10.
    np.testing.assert_allclose(seen, [want] * 6, rtol=1e-12)


def test_identical_points_keep_every_step_at_the_exact_posterior():
    # With N identical points every minibatch, of any size, scaled by N/|B| has the full-data
    # statistics, so the start (the first batch scaled to N), every target, and every
    # minibatch ELBO estimate (at the params the step started from) are the exact posterior's:
    # the estimate equals the log evidence.
    x = torch.full((10,), 0.7, dtype=F64)
    model = NormalMean()
    exact = cavi(model, x)
    fit = svi_cavi(model, x, batch_size=4, max_steps=6, seed=0)
    np.testing.assert_allclose(fit.history["elbo"], [exact.elbo] * 6, rtol=1e-12)
    for a, b in zip(fit.params.loc.natural_params, exact.params.loc.natural_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0.0)


def test_the_first_step_starts_from_the_first_minibatch_scaled_to_n():
    # One step (rho_1 = 2^-0.7 < 1 keeps part of the start): the start is the global step of
    # the first batch's statistics times N/|B|, i.e. the exact posterior here; unscaled, it
    # would be the posterior of 4 points, l0 + 4 tau instead of l0 + 10 tau.
    x = torch.full((10,), 0.7, dtype=F64)
    model = NormalMean()
    exact = cavi(model, x)
    fit = svi_cavi(model, x, batch_size=4, max_steps=1, seed=0)
    assert fit.history["elbo"].iloc[0] == pytest.approx(exact.elbo, rel=1e-12)
    assert float(fit.params.loc.precision) == pytest.approx(model.l0 + model.tau * 10, rel=1e-12)


class _Recording(NormalMean):
    """Records the data of every minibatch local step (not the start's)."""

    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        self.batches: list[list[float]] = []
        self.nan_at = nan_at

    def init_stats(self, data, *, generator):
        return NormalMean.local_step(self, data, self.prior_params()).stats

    def local_step(self, data, params):
        self.batches.append(data.tolist())
        out = super().local_step(data, params)
        if len(self.batches) == self.nan_at:
            return Local((out.stats[0], out.stats[1] * float("nan")), out.elbo)
        return out


def test_each_epoch_visits_every_point_once_in_a_fresh_order():
    x = torch.arange(12, dtype=F64)  # distinct values name the points
    model = _Recording()
    svi_cavi(model, x, batch_size=4, max_steps=9, seed=0)  # 3 epochs of 3 batches
    epochs = [sum(model.batches[3 * e:3 * e + 3], []) for e in range(3)]
    for order in epochs:
        assert sorted(order) == x.tolist()  # a permutation: each point once per epoch
    # Hoffman et al. draw a new permutation every epoch; two epochs of a correct run repeat
    # an order with probability 1/12! = 2e-9 per pair, and the run is seeded (budget 0).
    assert len({tuple(order) for order in epochs}) == 3


def test_nan_statistics_with_a_finite_elbo_stop_at_the_step_that_made_them():
    x = torch.randn(12, generator=torch.Generator().manual_seed(1), dtype=F64)
    model = _Recording(nan_at=2)  # step 2's sum x is NaN; its ELBO is finite
    with pytest.raises(NumericalError, match="stochastic VI step 2: .*sufficient statistic"):
        svi_cavi(model, x, batch_size=4, max_steps=6, seed=0)
    assert len(model.batches) == 2  # stopped there, before the next local step


def test_tol_stops_at_the_first_epoch_whose_mean_changes_by_at_most_tol():
    y, sigma = groups(400, seed=4)
    tol = 1e-5
    fit = svi_cavi(HIER, (y, sigma), batch_size=40, num_epochs=300, tol=tol, seed=0)
    assert fit.converged
    per_epoch = 10
    assert fit.n_steps % per_epoch == 0
    means = fit.history["elbo"].to_numpy().reshape(-1, per_epoch).mean(1)
    change = np.abs(np.diff(means)) / np.maximum(np.abs(means[1:]), 1.0)
    assert change[-1] <= tol
    assert (change[:-1] > tol).all()  # not one epoch earlier
    # the run passes epochs whose change lies within (tol, 10 tol]: a rule looser by 10x
    # would have stopped at one of them, so this test can tell the two apart
    assert ((change[:-1] > tol) & (change[:-1] <= 10 * tol)).any()
