"""Image data for the VAE: 8x8 digits (bundled with scikit-learn) and MNIST (downloaded).

Also the checks every data set passes before training (:func:`check_images`), binarization,
and :class:`Minibatches`, a shuffling, re-iterable batch source for :func:`pyro_vi.fit_svi`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pyro_vi._checks import check_bool, check_int, check_real, check_seed
from pyro_vi.data.idx import read_idx

__all__ = [
    "ImageData",
    "Minibatches",
    "binarize",
    "cache_dir",
    "check_images",
    "load_digits",
    "load_mnist",
]

#: MNIST files: name -> md5 of the gzipped file (as distributed; same values as torchvision's).
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
#: Mirrors tried in order.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


@dataclass(frozen=True)
class ImageData:
    """A train/test split of flattened images in :math:`[0, 1]` (float32) with int64 labels."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    image_shape: tuple[int, int]
    split_seed: int


def check_images(x: Any, *, input_dim: int | None = None, unit_range: bool = False,
                 name: str = "x") -> Tensor:
    """Return ``x`` as a float32 ``(n, D)`` tensor, or raise :class:`ValueError` naming ``name``.

    Checks: two dimensions, at least one row, ``D == input_dim`` when given, no NaN/inf, and
    every value in :math:`[0, 1]` when ``unit_range`` (what a Bernoulli likelihood needs).

    Examples
    --------
    >>> check_images([[0.0, 2.0]], unit_range=True)
    Traceback (most recent call last):
    ...
    ValueError: x: values must lie in [0, 1] for a Bernoulli likelihood; found range [0, 2]
    """
    if isinstance(x, Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float32))
        except (TypeError, ValueError) as err:
            kind = type(x).__name__
            raise TypeError(f"{name}: expected an array of numbers, got {kind}") from err
    t = t.to(torch.float32)
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"{name}: expected shape (n, D) with n >= 1, got {tuple(t.shape)}")
    if input_dim is not None and t.shape[1] != input_dim:
        raise ValueError(f"{name}: expected {input_dim} columns (input_dim), got {t.shape[1]}")
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"{name}: holds NaN or inf (first in row {bad})")
    if unit_range:
        lo, hi = float(t.min()), float(t.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{name}: values must lie in [0, 1] for a Bernoulli likelihood; "
                             f"found range [{lo:g}, {hi:g}]")
    return t


def binarize(x: Tensor, *, seed: int | None = None, generator: torch.Generator | None = None
             ) -> Tensor:
    r"""Draw binary images :math:`b \sim \mathrm{Bernoulli}(x)`, pixelwise, from grey levels.

    With ``seed`` the draw is reproducible (static binarization); otherwise it uses
    ``generator`` or the global torch RNG.

    Examples
    --------
    >>> import torch
    >>> binarize(torch.tensor([[0.0, 1.0]]), seed=0)
    tensor([[0., 1.]])
    """
    seed = check_seed("seed", seed)
    if seed is not None:
        generator = torch.Generator(device=x.device).manual_seed(seed)
    return torch.bernoulli(x, generator=generator)


class Minibatches:
    """Shuffled minibatches ``(x_batch,)`` of a tensor, a fresh permutation per pass.

    Re-iterable (each ``iter`` is one epoch) with ``len`` = batches per epoch, so it can be
    handed to :func:`pyro_vi.fit_svi` as ``batches=``. With ``seed=None`` the permutations
    (and dynamic binarizations) come from the global torch RNG, like a shuffling
    ``DataLoader``: ``fit_svi(seed=...)`` then makes a run reproducible and its checkpoints
    resumable bitwise. With an int ``seed`` they come from a private generator seeded once.
    Indexing stays on ``x.device``.

    Examples
    --------
    >>> import torch
    >>> mb = Minibatches(torch.arange(5.0).reshape(5, 1), batch_size=2, seed=0)
    >>> len(mb), sorted(float(v) for (b,) in mb for v in b)
    (3, [0.0, 1.0, 2.0, 3.0, 4.0])
    """

    def __init__(self, x: Tensor, *, batch_size: int, seed: int | None = None,
                 shuffle: bool = True, drop_last: bool = False,
                 dynamic_binarize: bool = False) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"Minibatches: x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError("Minibatches: x must be a non-empty tensor")
        batch_size = check_int("batch_size", batch_size, minimum=1)
        seed = check_seed("seed", seed)
        shuffle, drop_last, dynamic_binarize = (
            bool(check_bool(name, value)) for name, value in
            (("shuffle", shuffle), ("drop_last", drop_last), ("dynamic_binarize", dynamic_binarize)))
        if drop_last and batch_size > x.shape[0]:
            raise ValueError(f"Minibatches: batch_size {batch_size} > {x.shape[0]} rows with "
                             "drop_last=True leaves no batch")
        self.x, self.batch_size = x, batch_size
        self.shuffle, self.drop_last, self.dynamic_binarize = shuffle, drop_last, dynamic_binarize
        self._gen = (None if seed is None else
                     torch.Generator(device=x.device).manual_seed(int(seed)))

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_data(self) -> int:
        """Rows in the whole data set (the ``size`` of the data plate)."""
        return int(self.x.shape[0])

    def __iter__(self) -> Iterator[tuple[Tensor]]:
        n, b, device = self.x.shape[0], self.batch_size, self.x.device
        order = (torch.randperm(n, generator=self._gen, device=device) if self.shuffle
                 else torch.arange(n, device=device))
        for i in range(len(self)):
            batch = self.x[order[i * b:(i + 1) * b]]
            if self.dynamic_binarize:
                batch = torch.bernoulli(batch, generator=self._gen)
            yield (batch,)


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """scikit-learn's bundled 8x8 digits (1797 images, offline), scaled to :math:`[0, 1]`.

    Grey levels 0..16 are divided by 16. The train/test split is a permutation drawn from
    ``numpy.random.default_rng(seed)``: the same seed gives the same split on every machine.

    Examples
    --------
    >>> d = load_digits()
    >>> tuple(d.x_train.shape), tuple(d.x_test.shape), float(d.x_train.max())
    ((1438, 64), (359, 64), 1.0)
    """
    test_fraction = check_real("test_fraction", test_fraction)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    seed = check_int("seed", seed, minimum=0)
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as err:  # pragma: no cover - sklearn is a dev dependency
        raise ImportError("load_digits needs scikit-learn (pip install scikit-learn)") from err
    bunch = sk_load_digits()
    x = torch.as_tensor(bunch.data / 16.0, dtype=torch.float32)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    order = torch.as_tensor(np.random.default_rng(seed).permutation(len(x)))
    n_test = round(test_fraction * len(x))
    test, train = order[:n_test], order[n_test:]
    return ImageData("digits", x[train], y[train], x[test], y[test], (8, 8), int(seed))


def cache_dir(override: str | Path | None = None) -> Path:
    """Return the download cache directory.

    ``override`` if given, else ``$PYRO_VI_CACHE``, else ``$XDG_CACHE_HOME/pyro-vi``, else
    ``~/.cache/pyro-vi`` (the XDG base-directory rule that platformdirs follows on Linux).

    Examples
    --------
    >>> cache_dir("/tmp/x").as_posix()
    '/tmp/x'
    """
    if override is not None:
        return Path(override)
    if os.environ.get("PYRO_VI_CACHE"):
        return Path(os.environ["PYRO_VI_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pyro-vi"


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` (the one function that touches the network)."""
    with urllib.request.urlopen(url, timeout=60) as response, dest.open("wb") as out:  # noqa: S310
        shutil.copyfileobj(response, out)


def fetch_file(name: str, md5: str, *, mirrors: tuple[str, ...], directory: Path,
               download: bool = True) -> Path:
    """Return ``directory/name`` with the checksum ``md5``, downloading it if missing.

    A cached file with the wrong checksum raises :class:`ValueError` naming it (delete it to
    download again); a failed download leaves nothing behind.
    """
    download = bool(check_bool("download", download))
    path = directory / name
    if path.is_file():
        got = _md5(path)
        if got != md5:
            raise ValueError(f"{path}: checksum mismatch (md5 {got}, expected {md5}); the "
                             "file is corrupt or incomplete -- delete it to download it again")
        return path
    if not download:
        raise FileNotFoundError(f"{path} is missing and download=False")
    directory.mkdir(parents=True, exist_ok=True)
    errors = []
    for mirror in mirrors:
        fd, tmp_name = tempfile.mkstemp(prefix=name, dir=directory)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _fetch(mirror + name, tmp)
            got = _md5(tmp)
            if got != md5:
                errors.append(f"{mirror + name}: md5 {got}, expected {md5}")
                continue
            tmp.replace(path)
            return path
        except OSError as err:
            errors.append(f"{mirror + name}: {err}")
        finally:
            tmp.unlink(missing_ok=True)
    raise OSError(f"could not download {name} into {directory}:\n  " + "\n  ".join(errors))


def load_mnist(*, cache: str | Path | None = None, download: bool = True) -> ImageData:
    """MNIST (60000 train / 10000 test 28x28 images), scaled to :math:`[0, 1]`.

    The four IDX files are downloaded once into :func:`cache_dir` ``/mnist``, checked against
    their md5 checksums, and parsed with :func:`pyro_vi.data.idx.read_idx`. The split is MNIST's
    own (``split_seed`` is 0).
    """
    directory = cache_dir(cache) / "mnist"
    arrays = {}
    for name, md5 in MNIST_FILES.items():
        path = fetch_file(name, md5, mirrors=MNIST_MIRRORS, directory=directory,
                          download=download)
        arrays[name.split("-idx")[0]] = read_idx(path)
    for part in ("train", "t10k"):
        imgs, labs = arrays[f"{part}-images"], arrays[f"{part}-labels"]
        if imgs.ndim != 3 or labs.ndim != 1 or len(imgs) != len(labs):
            raise ValueError(f"{directory}/{part}-*: images {imgs.shape} and labels "
                             f"{labs.shape} do not match")

    def images(key: str) -> Tensor:
        a = arrays[key]
        return torch.as_tensor(a.reshape(len(a), -1) / 255.0, dtype=torch.float32)

    def labels(key: str) -> Tensor:
        return torch.as_tensor(arrays[key].astype(np.int64))

    shape = arrays["train-images"].shape[1:]
    return ImageData("mnist", images("train-images"), labels("train-labels"),
                     images("t10k-images"), labels("t10k-labels"),
                     (int(shape[0]), int(shape[1])), 0)
