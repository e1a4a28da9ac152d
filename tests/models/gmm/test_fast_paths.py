"""The GMM's fast local-step paths (issue 16): quadratic features, float32 compute, k-means start."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_iris, load_wine

from pyro_vi import cavi, load_old_faithful
from pyro_vi.cavi.engine import local_pass
from pyro_vi.cavi.kmeans import initial_labels, lloyd
from pyro_vi.models.gmm.model import VECH_MAX_D, VECH_MIN_D, GaussianMixture, replace_model


def _mixture(n: int, d: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(k, d, generator=g, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + means[torch.randint(k, (n,), generator=g)]


def _on_path(gmm: GaussianMixture, path: str) -> GaussianMixture:
    new = replace_model(gmm)
    new._path = path
    return new


@pytest.mark.parametrize(("d", "k", "covariance"), [(2, 3, "full"), (9, 4, "full"), (32, 16, "full"),
                                                     (5, 3, "diag"), (32, 16, "diag")])
def test_feature_path_matches_triangular_path_after_ten_sweeps(d, k, covariance):
    # Same start, same answer: the two paths are the same sums in another order, so after 10
    # sweeps the ELBOs agree to round-off. Measured: <= 5e-16 relative over these cases; 1e-12
    # leaves 2000x room while a wrong coefficient (a factor 2 on the off-diagonals) moves it ~1e-2.
    x = _mixture(3000, d, k, seed=d)
    gmm = GaussianMixture(k, covariance=covariance)
    old = cavi(_on_path(gmm, "triangular"), x, max_iter=10, tol=0.0, seed=0, warn=False)
    new = cavi(_on_path(gmm, "features"), x, max_iter=10, tol=0.0, seed=0, warn=False)
    assert new.elbo == pytest.approx(old.elbo, rel=1e-12)
    for a, b in zip(old.params.components.loc, new.params.components.loc, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_feature_path_statistics_equal_triangular_ones_per_chunk():
    # one local pass, chunked into blocks that do not divide N: the statistics are sums
    x = _mixture(2100, 6, 3, seed=4)
    gmm, data = GaussianMixture(3).prepare(x)
    params = gmm.global_step(gmm.init_stats(data, generator=torch.Generator().manual_seed(1)), None)
    a = local_pass(_on_path(gmm, "triangular"), data, params, chunk_size=0)
    b = local_pass(_on_path(gmm, "features"), data, params, chunk_size=1000)
    for s, t in zip(a.stats, b.stats, strict=True):
        torch.testing.assert_close(s, t, rtol=1e-11, atol=1e-10)
    assert float(b.elbo) == pytest.approx(float(a.elbo), rel=1e-13)


def test_default_path_follows_dimension():
    gmm = GaussianMixture(4)
    assert not gmm._use_features(VECH_MIN_D - 1)
    assert gmm._use_features(VECH_MIN_D)
    assert gmm._use_features(VECH_MAX_D)
    assert not gmm._use_features(VECH_MAX_D + 1)
    assert GaussianMixture(4, covariance="diag")._use_features(2)


def _datasets():
    wine = load_wine().data
    return {"old_faithful": (load_old_faithful(standardize=True), 6),
            "iris": (torch.tensor(load_iris().data), 3),
            "wine": (torch.tensor((wine - wine.mean(0)) / wine.std(0)), 3),
            "synthetic_1e5": (_mixture(100_000, 4, 3, seed=7), 3)}


@pytest.mark.parametrize("name", ["old_faithful", "iris", "wine", "synthetic_1e5"])
def test_float32_compute_reaches_the_float64_elbo(name):
    # From the same start, float32 GEMMs with float64 accumulation reach the float64 fit's ELBO
    # to 1e-6 relative. Measured: 2e-9..4e-8 relative on these sets (the float32 error of
    # each point's log-normaliser averages out over points); 1e-6 leaves >= 25x room.
    x, k = _datasets()[name]
    iters = 30 if name == "synthetic_1e5" else 200
    ref = cavi(GaussianMixture(k), x, max_iter=iters, tol=1e-9, seed=0, warn=False)
    low = cavi(GaussianMixture(k, compute_dtype=torch.float32), x, max_iter=iters, tol=1e-9,
               seed=0, warn=False)
    assert low.elbo == pytest.approx(ref.elbo, rel=1e-6)
    assert low.params.components.loc.dtype == torch.float64


def test_float32_allowance_is_stated_by_compute_eps():
    assert GaussianMixture(2).compute_eps() == torch.finfo(torch.float64).eps
    assert GaussianMixture(2, compute_dtype=torch.float32).compute_eps() == torch.finfo(torch.float32).eps


def test_compute_dtype_is_checked():
    with pytest.raises(ValueError, match="compute_dtype"):
        GaussianMixture(2, compute_dtype=torch.float16)


def test_lloyd_matches_sklearn_kmeans_from_the_same_centers():
    # Lloyd's fixed point from the same seeds is unique given the iteration: sklearn's KMeans
    # (algorithm="lloyd", tol=0) run from our k-means++ centers must give the same labels.
    x = torch.tensor(load_iris().data)
    centers0 = x[[0, 60, 120, 30]]
    labels, centers = lloyd(x, centers0, tol=0.0)
    km = KMeans(4, init=centers0.numpy(), n_init=1, algorithm="lloyd", tol=0.0).fit(x.numpy())
    np.testing.assert_array_equal(labels.numpy(), km.labels_)
    np.testing.assert_allclose(centers.numpy(), km.cluster_centers_, rtol=1e-10)


def test_kmeans_labels_are_translation_free_and_chunked():
    # offset 1e8 spreads: seeding and Lloyd on x - offset give the labels of the centred data
    x = _mixture(5000, 3, 4, seed=3)
    a = initial_labels(x, 4, method="kmeans", generator=torch.Generator().manual_seed(2))
    shift = torch.full((3,), 1e8, dtype=torch.float64)
    b = initial_labels(x + shift, 4, method="kmeans", generator=torch.Generator().manual_seed(2),
                       offset=shift)
    assert torch.equal(a, b)


def test_kmeans_init_is_seeded_and_starts_cavi():
    x = torch.tensor(load_iris().data)
    a = cavi(GaussianMixture(3, init="kmeans"), x, seed=3, max_iter=5, tol=0.0, warn=False)
    b = cavi(GaussianMixture(3, init="kmeans"), x, seed=3, max_iter=5, tol=0.0, warn=False)
    assert a.elbo == b.elbo
