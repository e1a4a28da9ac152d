"""compare_to_mcmc: NUTS and an exact-family guide agree within Monte-Carlo error on a
conjugate model (fast); on a GMM the mean-field guide's sds are below NUTS's (slow); the
positive-definite transform's Jacobian against autograd; Hungarian label alignment recovers
known permutations exactly; bad input fails before NUTS runs.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from _trust_models import F64, exact_guide, gmm_data, normal_data, normal_model, normal_posterior

from pyro_vi import GaussianMixture, MCMCComparison, cavi, compare_to_mcmc, match_components
from pyro_vi.diagnostics.nuts import PositiveDefiniteVectorTransform

COLUMNS = ["param", "vi_mean", "vi_sd", "nuts_mean", "nuts_sd", "std_mean_diff", "sd_ratio",
           "nuts_ess"]


def test_conjugate_model_vi_and_nuts_agree_within_mc_error(tmp_path):
    y = normal_data()
    mean, sd = normal_posterior(y)
    vi_samples = 4000
    res = compare_to_mcmc(normal_model, exact_guide, y, num_samples=300, warmup_steps=200,
                          vi_samples=vi_samples, seed=0, plot=tmp_path / "cmp.png")
    assert isinstance(res, MCMCComparison)
    t = res.table
    assert list(t.columns) == COLUMNS
    assert list(t["param"]) == ["mu[0]", "mu[1]"]
    # Means: the difference has SE sqrt(sd^2/ESS + sd^2/S_vi); 5 SE (P(fail) < 1e-6 each).
    se = np.sqrt(t["nuts_sd"] ** 2 / t["nuts_ess"] + t["vi_sd"] ** 2 / vi_samples)
    np.testing.assert_array_less(np.abs(t["vi_mean"] - t["nuts_mean"]), 5 * se)
    # sds: relative SE of a sd estimate is ~1/sqrt(2 n) (normal theory); 5 SE on the log ratio
    se_log = np.sqrt(1 / (2 * t["nuts_ess"]) + 1 / (2 * vi_samples))
    np.testing.assert_array_less(np.abs(np.log(t["sd_ratio"])), 5 * se_log)
    # and NUTS itself finds the closed-form posterior
    np.testing.assert_array_less(np.abs(t["nuts_mean"] - mean.numpy()),
                                 5 * sd / np.sqrt(t["nuts_ess"]))
    assert (t["nuts_ess"] > 50).all()
    assert res.figure_path == tmp_path / "cmp.png"
    assert res.figure_path.stat().st_size > 1000
    assert len(res.worst(1)) == 1


def test_positive_definite_transform_is_a_bijection_with_the_right_jacobian():
    t = PositiveDefiniteVectorTransform(3)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(4, 6, generator=g, dtype=F64)
    m = t(v)
    assert m.shape == (4, 3, 3)
    assert (torch.linalg.eigvalsh(m) > 0).all()
    torch.testing.assert_close(t.inv(m), v)
    rows, cols = torch.tril_indices(3, 3)
    for i in range(4):
        # The density of a symmetric matrix is w.r.t. its D(D+1)/2 free entries.
        jac = torch.autograd.functional.jacobian(lambda u: t(u)[rows, cols], v[i])
        expected = torch.linalg.slogdet(jac)[1]
        torch.testing.assert_close(t.log_abs_det_jacobian(v[i], m[i]), expected)
    assert t.inverse_shape(torch.Size([5, 3, 3])) == (5, 6)
    assert t.forward_shape(torch.Size([5, 6])) == (5, 3, 3)


def test_match_components_recovers_known_permutations():
    rng = np.random.default_rng(0)
    centres = np.array([[-3.0, 0.0], [0.0, 3.0], [4.0, -1.0]])
    weights = np.array([0.2, 0.3, 0.5])
    perms = np.array([rng.permutation(3) for _ in range(50)])
    nuts = {"loc": centres[perms] + 0.1 * rng.normal(size=(50, 3, 2)),
            "w": weights[perms], "scalar": np.arange(50.0)}
    vi = {"loc": np.repeat(centres[None], 10, axis=0)}
    out = match_components("loc", ["loc", "w"])(nuts, vi)
    np.testing.assert_array_equal(out["w"], np.broadcast_to(weights, (50, 3)))
    np.testing.assert_allclose(out["loc"], np.broadcast_to(centres, (50, 3, 2)), atol=0.5)
    np.testing.assert_array_equal(out["scalar"], nuts["scalar"])  # untouched


def test_match_components_rejects_missing_sites_and_mismatched_sizes():
    nuts = {"loc": np.zeros((2, 3)), "w": np.zeros((2, 4))}
    with pytest.raises(ValueError, match="no NUTS draws of site 'x'"):
        match_components("loc", ["x"])(nuts, {"loc": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="has 4 components"):
        match_components("loc", ["w"])(nuts, {"loc": np.zeros((2, 3))})


def test_discrete_site_without_enumerable_support_is_rejected():
    def model():
        pyro.sample("n", dist.Poisson(torch.tensor(3.0, dtype=F64)))

    def guide():
        pyro.sample("n", dist.Poisson(torch.tensor(3.0, dtype=F64)))

    with pytest.raises(ValueError, match="NUTS cannot sample discrete site 'n'"):
        compare_to_mcmc(model, guide, num_samples=5, warmup_steps=5)


@pytest.mark.parametrize(("kwargs", "error"), [({"num_samples": 0}, ValueError),
                                               ({"warmup_steps": -1}, ValueError),
                                               ({"vi_samples": 0}, ValueError),
                                               ({"align": 3}, TypeError)])
def test_bad_options(kwargs, error):
    with pytest.raises(error):
        compare_to_mcmc(normal_model, exact_guide, normal_data(), **kwargs)


class _Wishart(dist.Wishart):
    # torch <= 2.13 flags every *valid* Wishart draw as singular, warns and redraws it
    # (pytorch/pytorch#122021); the Bartlett draw itself is exact.
    def rsample(self, sample_shape=(), max_try_correction=None):
        return self._bartlett_sampling(torch.Size(sample_shape))


@pytest.mark.slow
def test_wishart_nuts_with_the_transform_matches_the_prior_moments():
    scale = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64)
    df = 5.0

    def model():
        pyro.sample("prec", _Wishart(torch.tensor(df, dtype=F64), covariance_matrix=scale))

    def guide():
        model()

    res = compare_to_mcmc(model, guide, num_samples=500, warmup_steps=300, vi_samples=4000)
    t = res.table.set_index("param")
    # E[W] = df * scale (Anderson 2003, §7.3); 5 SE with NUTS's ESS
    for (i, j), expected in np.ndenumerate(df * scale.numpy()):
        row = t.loc[f"prec[{i}, {j}]"]
        assert abs(row["nuts_mean"] - expected) < 5 * row["nuts_sd"] / math.sqrt(row["nuts_ess"])


@pytest.mark.slow
def test_gmm_mean_field_underestimates_posterior_sds():
    # Why: CAVI's q(z) q(pi) prod_k q(mu_k, Lambda_k) ignores the posterior dependence between
    # the assignments and the component parameters, and minimising KL(q || p) over a factorised
    # family under-disperses the marginals (Bishop 2006, §10.1.2; Turner & Sahani 2011).
    # Every marginal, not half of them: all six sd ratios (VI sd / NUTS sd; two locs, two
    # precisions, two weights) must be below 1. Measured once (seed 0, 200 + 200 NUTS draws):
    # 0.09-0.29 for loc and weights, 0.55 and 0.64 for the precisions, with NUTS ESS 6-36 (the
    # chain visits near-empty components, so its weight and loc marginals are wide). A sd from
    # ESS e draws has relative MC error ~ 1/sqrt(2e), so the ratio's SE is ~ ratio/sqrt(2e):
    # the largest ratio (0.64, e = 6.4) sits 2.0 SE below 1, the other precision 3.2 SE, loc
    # and weights >= 13 SE; the run is seeded, so the check is deterministic (failure budget
    # 0 on this platform). A guide that matched or over-dispersed any marginal fails.
    x = gmm_data(n=30, sep=4.0, dim=1)
    fit = cavi(GaussianMixture(2, covariance="diag"), x, seed=0)
    align = match_components("loc", ["weights", "loc", "precision"])
    res = compare_to_mcmc(fit.model, fit.guide, x, num_samples=200, warmup_steps=200,
                          vi_samples=2000, align=align, seed=0, jit_compile=True)
    t = res.table
    assert len(t) == 6
    assert (t["nuts_ess"] > 5).all()  # each NUTS sd rests on a few effective draws at least
    assert (t["sd_ratio"] < 1).all(), t
    # and the under-dispersion is large where the mixture's label uncertainty enters: the loc
    # and weight marginals are under half as wide (measured <= 0.29, >= 4 SE below 0.5)
    lw = t[~t["param"].str.startswith("precision")]
    assert (lw["sd_ratio"] < 0.5).all(), t
