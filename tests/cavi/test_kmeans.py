"""Seeded initialisation: k-means++ seeding and initial responsibilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_vi.cavi.kmeans import initial_responsibilities, kmeans_plusplus


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(40, 3, dtype=torch.float64, generator=_gen(123))


def test_kmeans_plusplus_is_deterministic_per_seed(x):
    a = kmeans_plusplus(x, 5, generator=_gen(7))
    b = kmeans_plusplus(x, 5, generator=_gen(7))
    c = kmeans_plusplus(x, 5, generator=_gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_kmeans_plusplus_centers_are_distinct_data_rows(x):
    centers = kmeans_plusplus(x, 6, generator=_gen(0))
    assert centers.shape == (6, 3)
    assert centers.dtype == x.dtype
    rows = {tuple(r) for r in x.tolist()}
    assert all(tuple(c) in rows for c in centers.tolist())
    assert len({tuple(c) for c in centers.tolist()}) == 6


def test_kmeans_plusplus_with_k_equal_n_picks_every_point_once(x):
    # A point already chosen has distance 0, so D^2 sampling never picks it again while some
    # point is still at positive distance: K = N must return a permutation of the rows.
    centers = kmeans_plusplus(x, x.shape[0], generator=_gen(3))
    assert sorted(map(tuple, centers.tolist())) == sorted(map(tuple, x.tolist()))


def test_kmeans_plusplus_samples_proportional_to_squared_distance():
    # Points 0, 1, 3 on a line. The first center is uniform, the second has probability
    # proportional to the squared distance to the first (Arthur & Vassilvitskii 2007):
    #   first 0 -> (1, 9)/10,  first 1 -> (1, 4)/5,  first 3 -> (9, 4)/13.
    pts = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    exact = {(0, 1): 1 / 10, (0, 3): 9 / 10, (1, 0): 1 / 5, (1, 3): 4 / 5,
             (3, 0): 9 / 13, (3, 1): 4 / 13}
    m = 2000
    counts = dict.fromkeys(exact, 0)
    for seed in range(m):
        c = kmeans_plusplus(pts, 2, generator=_gen(seed)).squeeze(-1).tolist()
        counts[(int(c[0]), int(c[1]))] += 1
    for pair, p_cond in exact.items():
        p = p_cond / 3
        se = np.sqrt(p * (1 - p) / m)
        # 4.5 binomial standard errors per cell: a correct sampler fails one of the six cells
        # with probability < 6 * 7e-6 = 4e-5 (normal tail), and the draws are seeded.
        assert abs(counts[pair] / m - p) < 4.5 * se, (pair, counts[pair] / m, p)


def test_kmeans_plusplus_on_identical_points_falls_back_to_uniform():
    x = torch.ones(10, 2, dtype=torch.float64)
    centers = kmeans_plusplus(x, 4, generator=_gen(0))
    assert torch.equal(centers, torch.ones(4, 2, dtype=torch.float64))


def test_kmeanspp_responsibilities_are_one_hot_nearest_center(x):
    r = initial_responsibilities(x, 4, method="kmeans++", generator=_gen(5))
    assert r.shape == (40, 4)
    assert r.dtype == x.dtype
    assert torch.equal(r.sum(-1), torch.ones(40, dtype=x.dtype))
    assert set(r.unique().tolist()) == {0.0, 1.0}
    # the same seed reproduces the centers; each point goes to its nearest one (numpy distances)
    centers = kmeans_plusplus(x, 4, generator=_gen(5)).numpy()
    d2 = ((x.numpy()[:, None, :] - centers[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(r.argmax(-1).numpy(), d2.argmin(-1))


def test_random_responsibilities_are_soft_and_normalised(x):
    r = initial_responsibilities(x, 3, method="random", generator=_gen(2))
    assert r.shape == (40, 3)
    # rows of 3 float64 numbers sum to 1 up to a few ulps
    torch.testing.assert_close(r.sum(-1), torch.ones(40, dtype=x.dtype), rtol=0, atol=1e-14)
    assert (r > 0).all()
    assert (r < 1).all()


@pytest.mark.parametrize("method", ["kmeans++", "random"])
def test_responsibilities_are_deterministic_per_seed(x, method):
    a = initial_responsibilities(x, 4, method=method, generator=_gen(11))
    b = initial_responsibilities(x, 4, method=method, generator=_gen(11))
    c = initial_responsibilities(x, 4, method=method, generator=_gen(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("method", ["kmeans++", "random"])
def test_float32_in_float32_out(x, method):
    r = initial_responsibilities(x.float(), 3, method=method, generator=_gen(0))
    assert r.dtype == torch.float32


def test_unknown_method_is_a_value_error(x):
    with pytest.raises(ValueError, match="init must be"):
        initial_responsibilities(x, 3, method="kmeans", generator=_gen(0))
