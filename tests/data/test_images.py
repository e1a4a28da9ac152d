"""Data loading and checks: digits split, MNIST download/cache/checksum (offline), minibatches."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sk_load_digits

from pyro_vi.data import images as datasets
from pyro_vi.data.idx import write_idx
from pyro_vi.data.images import (
    Minibatches,
    binarize,
    cache_dir,
    check_images,
    load_digits,
    load_mnist,
)

# ---- digits ------------------------------------------------------------------------------


def test_digits_split_is_seeded_disjoint_and_scaled():
    a, b, c = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    assert a.x_train.shape == (1438, 64)
    assert a.x_test.shape == (359, 64)
    assert a.x_train.dtype == torch.float32
    assert a.y_train.dtype == torch.int64
    assert torch.equal(a.x_test, b.x_test)
    assert torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_test, c.x_test)
    # the split is a partition of sklearn's 1797 images, grey levels 0..16 scaled by 1/16
    raw = torch.as_tensor(sk_load_digits().data, dtype=torch.float32) / 16
    both = torch.cat([a.x_train, a.x_test])
    assert both.shape[0] == raw.shape[0]
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, raw.tolist()))
    assert float(both.min()) == 0.0
    assert float(both.max()) == 1.0
    assert a.image_shape == (8, 8)
    assert a.split_seed == 0


def test_digits_rejects_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.0)
    with pytest.raises(TypeError, match="test_fraction"):
        load_digits(test_fraction="0.2")


# ---- checks ------------------------------------------------------------------------------


def test_check_images_accepts_arrays_and_rejects_bad_data():
    out = check_images(np.ones((2, 3), dtype=np.uint8), input_dim=3, unit_range=True)
    assert out.dtype == torch.float32
    assert out.shape == (2, 3)
    with pytest.raises(ValueError, match=r"x_train: expected shape \(n, D\)"):
        check_images(torch.zeros(4), name="x_train")
    with pytest.raises(ValueError, match="expected 64 columns"):
        check_images(torch.zeros(2, 63), input_dim=64)
    bad = torch.zeros(3, 2)
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf.*row 1"):
        check_images(bad)
    with pytest.raises(ValueError, match=r"\[0, 1\].*Bernoulli.*\[-0.5, 0\]"):
        check_images(torch.tensor([[-0.5, 0.0]]), unit_range=True)
    check_images(torch.tensor([[-0.5, 3.0]]))  # Gaussian data may take any finite value
    with pytest.raises(TypeError, match="x: expected an array of numbers"):
        check_images(object())


def test_binarize_is_bernoulli_of_the_grey_level():
    x = torch.full((20_000, 2), 0.3)
    b = binarize(x, seed=1)
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    # mean of 40000 Bernoulli(0.3): sd = sqrt(.21/40000) = 0.0023; 5 sd is 0.0115
    assert abs(float(b.mean()) - 0.3) < 0.0115
    assert torch.equal(b, binarize(x, seed=1))


# ---- minibatches -------------------------------------------------------------------------


def test_minibatches_cover_each_row_once_per_epoch_and_reshuffle():
    x = torch.arange(10.0).reshape(10, 1)
    mb = Minibatches(x, batch_size=4, seed=3)
    assert len(mb) == 3
    assert mb.num_data == 10
    epochs = [torch.cat([b for (b,) in mb]).flatten().tolist() for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(10))
    assert epochs[0] != epochs[1]
    again = Minibatches(x, batch_size=4, seed=3)
    assert torch.cat([b for (b,) in again]).flatten().tolist() == epochs[0]
    # seed=None draws from the global torch RNG, like a shuffling DataLoader
    torch.manual_seed(7)
    first = torch.cat([b for (b,) in Minibatches(x, batch_size=4)]).flatten().tolist()
    torch.manual_seed(7)
    assert torch.cat([b for (b,) in Minibatches(x, batch_size=4)]).flatten().tolist() == first
    dropped = Minibatches(x, batch_size=4, drop_last=True)
    assert len(dropped) == 2
    assert all(b.shape[0] == 4 for (b,) in dropped)


def test_minibatches_dynamic_binarization_redraws_each_epoch():
    x = torch.full((1000, 4), 0.5)
    mb = Minibatches(x, batch_size=1000, shuffle=False, dynamic_binarize=True)
    (b1,), (b2,) = next(iter(mb)), next(iter(mb))
    assert set(b1.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(b1, b2)
    # mean of 4000 Bernoulli(0.5): sd 0.0079; 5 sd = 0.04
    assert abs(float(b1.mean()) - 0.5) < 0.04


def test_minibatches_reject_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        Minibatches(torch.zeros(3, 1), batch_size=0)
    with pytest.raises(ValueError, match="leaves no batch"):
        Minibatches(torch.zeros(3, 1), batch_size=4, drop_last=True)
    with pytest.raises(ValueError, match="non-empty"):
        Minibatches(torch.zeros(0, 1), batch_size=1)
    with pytest.raises(TypeError, match="batch_size"):
        Minibatches(torch.zeros(3, 1), batch_size=2.0)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        Minibatches([[0.0]], batch_size=1)


# ---- cache dir and MNIST (never touches the network) -----------------------------------------


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("PYRO_VI_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "pyro-vi"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "pyro-vi"
    monkeypatch.setenv("PYRO_VI_CACHE", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "arg") == tmp_path / "arg"


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """Tiny IDX files served by a fake downloader; the checksum table is made to match them."""
    rng = np.random.default_rng(0)
    served = tmp_path / "served"
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (5, 4, 3), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 5, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (2, 4, 3), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 2, dtype=np.uint8),
    }
    md5 = {}
    for name, a in arrays.items():
        p = write_idx(served / name, a)
        md5[name] = hashlib.md5(p.read_bytes()).hexdigest()
    monkeypatch.setattr(datasets, "MNIST_FILES", md5)
    calls: list[str] = []

    def fake_fetch(url: str, dest: Path) -> None:
        calls.append(url)
        dest.write_bytes((served / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(datasets, "_fetch", fake_fetch)
    return arrays, calls, tmp_path / "cache"


def test_mnist_downloads_verifies_caches_and_parses(fake_mnist):
    arrays, calls, cache = fake_mnist
    data = load_mnist(cache=cache)
    assert len(calls) == 4
    assert calls[0].startswith(datasets.MNIST_MIRRORS[0])
    assert data.x_train.shape == (5, 12)
    assert data.x_test.shape == (2, 12)
    assert data.image_shape == (4, 3)
    expect = arrays["train-images-idx3-ubyte.gz"].reshape(5, 12) / 255.0
    np.testing.assert_allclose(data.x_train.numpy(), expect, rtol=1e-6)
    np.testing.assert_array_equal(data.y_test.numpy(), arrays["t10k-labels-idx1-ubyte.gz"])
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(arrays)
    load_mnist(cache=cache)  # second load: from the cache, no download
    assert len(calls) == 4


def test_mnist_corrupt_cached_file_is_named(fake_mnist):
    _, _, cache = fake_mnist
    load_mnist(cache=cache)
    victim = cache / "mnist" / "t10k-images-idx3-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:-3])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz: checksum mismatch"):
        load_mnist(cache=cache)


def test_mnist_missing_file_without_download_is_named(fake_mnist):
    _, calls, cache = fake_mnist
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz is missing"):
        load_mnist(cache=cache, download=False)
    assert calls == []


def test_mnist_bad_download_falls_back_then_fails_cleanly(fake_mnist, monkeypatch):
    _, _, cache = fake_mnist
    tried: list[str] = []

    def corrupt_fetch(url: str, dest: Path) -> None:
        tried.append(url)
        dest.write_bytes(b"not an idx file")

    monkeypatch.setattr(datasets, "_fetch", corrupt_fetch)
    with pytest.raises(OSError, match=r"(?s)could not download train-images-idx3-ubyte.gz.*md5"):
        load_mnist(cache=cache)
    assert len(tried) == len(datasets.MNIST_MIRRORS)  # every mirror tried once
    assert list((cache / "mnist").iterdir()) == []  # nothing half-written is left behind
