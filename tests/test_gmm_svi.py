"""One model, two optimizers: the GMM under SVI against the CAVI optimum and analytic ELBO."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.datasets import load_iris

from pyro_vi import cavi, elbo_estimate, load_old_faithful
from pyro_vi.models.gmm import GaussianMixture
from pyro_vi.models.gmm_svi import SVI_DEFAULTS, fit_gmm_svi


def _iris() -> torch.Tensor:
    x = torch.tensor(load_iris().data, dtype=torch.float64)
    return (x - x.mean(0)) / x.std(0)


DATA = {"old_faithful": lambda: load_old_faithful(standardize=True), "iris": _iris}


@pytest.mark.parametrize("covariance", ["full", "diag"])
@pytest.mark.parametrize("data", sorted(DATA))
def test_trace_elbo_on_cavi_guide_agrees_with_analytic_elbo(data, covariance):
    x = DATA[data]()
    fit = cavi(GaussianMixture(3, covariance=covariance), x, seed=0, max_iter=1000)
    est = elbo_estimate(fit.model.model, fit.guide, x, num_particles=10_000, max_plate_nesting=1)
    # Pyro's Trace_ELBO estimator on the CAVI guide is unbiased for the analytic ELBO (q(z) in the
    # fitted guide is the optimal one the analytic bound assumes). With 10^4 particles the mean is
    # Gaussian to high accuracy, so |z| > 4 has probability 6e-5 per case (4 cases: budget 2.5e-4).
    assert est.num_particles == 10_000
    assert 0 < est.stderr < 0.05 * max(1.0, abs(fit.elbo))
    z = (est.mean - fit.elbo) / est.stderr
    assert abs(z) < 4, (est.mean, est.stderr, fit.elbo)


def _separated(seed: int = 0, n_per: int = 60) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[-6.0, 0.0], [6.0, 0.0], [0.0, 8.0]], dtype=torch.float64)
    return torch.cat([c + torch.randn(n_per, 2, generator=g, dtype=torch.float64) for c in centers])


def test_trace_enum_svi_reaches_the_cavi_optimum_on_a_separated_mixture():
    x = _separated()
    gmm = GaussianMixture(3)
    best = cavi(gmm, x, seed=0, n_init=3).elbo
    svi = fit_gmm_svi(gmm, x, method="enum", num_steps=600, seed=0, tol=0.0)
    # Both are scored on the same analytic ELBO (optimal q(z) given the globals), which does not
    # depend on how components are labelled, so label switching cannot matter. SVI's MC noise
    # on this easy problem leaves it well inside 1% (measured ~0.1%).
    gap = (best - svi.elbo) / abs(best)
    assert gap < 0.01, (best, svi.elbo)
    assert svi.trace.elbo.iloc[-1] == pytest.approx(svi.elbo)
    assert svi.trace.seconds.is_monotonic_increasing


def test_trace_svi_runs_with_score_function_gradients_for_z():
    # Smoke: Trace_ELBO with q(z) runs from the CAVI-style start, and every recorded point is
    # scored on the analytic scale, which CAVI's optimum bounds from above.
    x = _separated()
    best = cavi(GaussianMixture(3), x, seed=0).elbo
    svi = fit_gmm_svi(GaussianMixture(3), x, method="trace", num_steps=100, seed=0, tol=0.0,
                      eval_every=50)
    assert math.isfinite(svi.elbo)
    assert svi.svi.num_steps == 100
    assert list(svi.trace.step) == [0, 50, 100]
    assert (svi.trace.elbo <= best + 1e-9 * abs(best)).all()


def test_fit_gmm_svi_rejects_bad_options():
    x = _separated()
    with pytest.raises(ValueError, match="method"):
        fit_gmm_svi(GaussianMixture(3), x, method="nuts")
    with pytest.raises(ValueError, match="lr_decay"):
        fit_gmm_svi(GaussianMixture(3), x, lr_decay=0.0)
    with pytest.raises(ValueError, match="num_steps"):
        fit_gmm_svi(GaussianMixture(3), x, num_steps=0)
    with pytest.raises(ValueError, match="NaN"):
        fit_gmm_svi(GaussianMixture(3), torch.full((5, 2), float("nan"), dtype=torch.float64))
    assert set(SVI_DEFAULTS) == {"enum", "trace"}


def test_seed_sets_the_kmeanspp_start():
    x = _separated()
    gmm = GaussianMixture(3)
    a = fit_gmm_svi(gmm, x, num_steps=1, seed=1, tol=0.0).trace.elbo.iloc[0]
    b = fit_gmm_svi(gmm, x, num_steps=1, seed=1, tol=0.0).trace.elbo.iloc[0]
    assert a == b
    starts = {fit_gmm_svi(gmm, x, num_steps=1, seed=s, tol=0.0).trace.elbo.iloc[0] for s in range(6)}
    assert len(starts) > 1  # k-means++ seeds differ across seeds (3 clusters, 6 draws)
    assert gmm.svi_seed == 0  # the caller's model is untouched
