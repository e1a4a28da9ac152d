"""shard / shard_bounds / load_shard: contiguous rank-ordered blocks that concatenate back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_vi.distributed import load_shard, shard, shard_bounds


@pytest.mark.parametrize(("n", "world"), [(10, 3), (7, 7), (301, 2), (1000, 16)])
def test_blocks_tile_the_rows_in_order_and_differ_by_at_most_one(n, world):
    bounds = [shard_bounds(n, rank=r, world_size=world) for r in range(world)]
    assert bounds[0][0] == 0
    assert bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1
    assert min(sizes) >= 1


def test_tuples_are_sliced_alike_and_concatenate_back():
    x, y = torch.arange(22.0).reshape(11, 2), torch.arange(11.0)
    parts = [shard((x, y), rank=r, world_size=3) for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x)
    assert torch.equal(torch.cat([p[1] for p in parts]), y)
    assert all(torch.equal(p[0][:, 0] / 2, p[1]) for p in parts)


def test_load_shard_reads_only_its_rows(tmp_path):
    arr = np.arange(60.0).reshape(20, 3)
    path = tmp_path / "x.npy"
    np.save(path, arr)
    got = [load_shard(path, rank=r, world_size=3, dtype=torch.float64) for r in range(3)]
    np.testing.assert_array_equal(torch.cat(got).numpy(), arr)
    assert got[0].dtype == torch.float64
    assert [len(g) for g in got] == [7, 7, 6]


@pytest.mark.parametrize(("call", "error", "text"), [
    (lambda: shard_bounds(2, rank=0, world_size=3), ValueError, "2 rows cannot give each of 3"),
    (lambda: shard(torch.ones(4), rank=2, world_size=2), ValueError, "rank must be below"),
    (lambda: shard(torch.ones(4), rank=0), ValueError, "give both rank and world_size"),
    (lambda: shard((torch.ones(4), torch.ones(3)), rank=0, world_size=2), ValueError,
     "differ in their number of rows"),
    (lambda: shard([1, 2, 3], rank=0, world_size=1), TypeError, "must be a tensor"),
    (lambda: shard(torch.ones(4), rank=True, world_size=2), TypeError, "rank"),
    (lambda: shard(torch.ones(4)), RuntimeError, "initialised process group"),
])
def test_bad_arguments_are_named(call, error, text):
    with pytest.raises(error, match=text):
        call()


def test_a_pickled_npy_is_refused(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a readable .npy array"):
        load_shard(path, rank=0, world_size=1)
