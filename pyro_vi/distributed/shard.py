"""A rank's rows of a data set: :func:`shard` for arrays in memory, :func:`load_shard` for ``.npy`` files.

Both split ``N`` rows into ``world_size`` contiguous blocks in rank order, the first
``N mod world_size`` blocks one row longer (:func:`shard_bounds`), so concatenating the shards
of ranks ``0, 1, …`` gives the data back in order. :func:`load_shard` memory-maps the file and
copies only this rank's rows: no rank ever holds the whole data set.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from pyro_vi._checks import check_int

__all__ = ["load_shard", "shard", "shard_bounds"]


def _rank_world(rank: Any, world_size: Any) -> tuple[int, int]:
    if (rank is None) != (world_size is None):
        raise ValueError("give both rank and world_size, or neither (then the process group's)")
    if rank is None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("shard needs rank and world_size, or an initialised process group")
        return dist.get_rank(), dist.get_world_size()
    world = check_int("world_size", world_size, minimum=1)
    r = check_int("rank", rank, minimum=0)
    if r >= world:
        raise ValueError(f"rank must be below world_size={world}, got {r}")
    return r, world


def shard_bounds(n: int, *, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank`` out of ``world_size`` for ``n`` rows.

    Raises ``ValueError`` when ``n < world_size`` (a rank would get no rows: the distributed
    fits refuse such a rank).

    Examples
    --------
    >>> [shard_bounds(10, rank=r, world_size=3) for r in range(3)]
    [(0, 4), (4, 7), (7, 10)]
    """
    n = check_int("n", n, minimum=0)
    r, world = _rank_world(rank, world_size)
    if n < world:
        raise ValueError(f"{n} rows cannot give each of {world} ranks a row; use fewer ranks")
    base, extra = divmod(n, world)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def shard(x: Any, *, rank: int | None = None, world_size: int | None = None) -> Any:
    """Return this rank's contiguous block of rows of ``x``.

    ``x`` is a tensor or array (rows along dimension 0) or a tuple/list of them with one
    number of rows (e.g. ``(X, y)``), sliced alike. ``rank`` and ``world_size`` default to the
    initialised process group's. Tensors are returned as views.

    Examples
    --------
    >>> import torch
    >>> x, y = torch.arange(10.0).reshape(5, 2), torch.arange(5.0)
    >>> shard((x, y), rank=1, world_size=2)[1]
    tensor([3., 4.])
    """
    if isinstance(x, tuple | list):
        if not x:
            raise ValueError("x is an empty tuple")
        if not all(isinstance(part, Tensor | np.ndarray) for part in x):
            raise TypeError("x must be a tensor, an array or a tuple of them, got a "
                            f"{type(x).__name__} of {sorted({type(p).__name__ for p in x})}")
        rows = {len(part) for part in x}
        if len(rows) != 1:
            raise ValueError(f"the parts of x differ in their number of rows: {sorted(rows)}")
        return type(x)(shard(part, rank=rank, world_size=world_size) for part in x)
    if not isinstance(x, Tensor | np.ndarray):
        raise TypeError(f"x must be a tensor, an array or a tuple of them, got {type(x).__name__}")
    if x.ndim == 0:
        raise ValueError("x must have a row dimension (it is a scalar)")
    start, stop = shard_bounds(int(x.shape[0]), rank=rank, world_size=world_size)
    return x[start:stop]


def load_shard(path: str | os.PathLike[str], *, rank: int | None = None,
               world_size: int | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Read this rank's rows of the ``.npy`` file ``path`` through a memory map.

    Only rows ``shard_bounds(N)`` are copied into memory (the file is opened with
    ``numpy.load(mmap_mode="r")``, which never unpickles: object arrays are refused). Returns
    a tensor (of ``dtype`` if given).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
    >>> np.save(path, np.arange(12.0).reshape(6, 2))
    >>> load_shard(path, rank=2, world_size=3).tolist()
    [[8.0, 9.0], [10.0, 11.0]]
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a path, got {type(path).__name__}")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"path={str(path)!r} is not a readable .npy array: {err}") from err
    if not isinstance(arr, np.ndarray) or arr.ndim == 0:
        raise ValueError(f"path={str(path)!r} holds no array with a row dimension")
    start, stop = shard_bounds(int(arr.shape[0]), rank=rank, world_size=world_size)
    out = torch.from_numpy(np.array(arr[start:stop]))  # copies this rank's rows only
    return out if dtype is None else out.to(dtype)
