r"""What a distributed CAVI fit adds to the engine: shard checks, a coordinated start, sums.

The :class:`~pyro_vi.cavi.model.ConjugateModel` contract makes a conjugate model data-parallel
without model-specific code: :meth:`~pyro_vi.cavi.model.ConjugateModel.local_step` returns
statistics and an ELBO share that are *sums over rows*, so the sum over ranks of their
shard's values is the full data's value, and the global step, a pure function of those
sums, gives every rank the same parameters. This is the map-reduce of bnpy's
``ParallelVBAlg`` and of Spark MLlib's Gaussian mixture (``ExpectationSum``), with
``torch.distributed.all_reduce`` as the reduce.

Each function here is collective: every rank of the group calls it, in the same order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from pyro_vi.cavi.model import ConjugateModel, Local, Stats, local_pass
from pyro_vi.distributed.collectives import Comm, agreed

__all__ = ["PROBE_ROWS", "SUBSAMPLE_ROWS", "check_rows", "global_roundoff", "prepare_sharded",
           "reduce_local", "start_stats", "subsample_start"]

#: Rows of the subsample a random start is drawn from (:func:`subsample_start`).
SUBSAMPLE_ROWS = 4096
#: Rows on which :func:`start_stats` tells a random start from a deterministic one.
PROBE_ROWS = 256


def _rows(data: Any) -> int:
    if isinstance(data, Tensor | np.ndarray):
        return int(data.shape[0]) if data.ndim else 1
    if isinstance(data, tuple | list) and data:
        return _rows(data[0])
    try:
        return len(data)
    except TypeError:
        raise TypeError(f"cannot count the rows of data of type {type(data).__name__}") from None


def check_rows(data: Any, comm: Comm, *, where: str) -> list[int]:
    """Every rank's number of rows; ``ValueError`` on every rank if one rank has none.

    A rank without rows is refused rather than fitted: a model's ``prepare`` validates
    non-empty data, and the refusal is the same, clear error on every rank.
    """
    try:
        n = _rows(data)
    except Exception as err:  # noqa: BLE001 - reported to every rank
        comm.fail(err)
    counts = comm.counts(n)
    empty = [r for r, c in enumerate(counts) if c == 0]
    if empty:
        raise agreed(ValueError(f"{where}(distributed=True): rank(s) {empty} of {comm.world_size} hold "
                         f"no rows (rows per rank: {counts}); give every rank at least one row "
                         f"(pyro_vi.distributed.shard does whenever N >= world size)"))
    return counts


def prepare_sharded(model: ConjugateModel[Any, Any, Any], data: Any,
                    comm: Comm) -> tuple[ConjugateModel[Any, Any, Any], Any]:
    """``model.prepare_shard(data)`` with its errors raised on every rank."""
    try:
        out = model.prepare_shard(data, comm=comm)
    except Exception as err:  # noqa: BLE001 - reported to every rank
        comm.fail(err)
    comm.agree()
    return out


def reduce_local(local: Local | None, err: BaseException | None, comm: Comm) -> Local:
    """The sum over ranks of each rank's :class:`Local`; an ``err`` raised on every rank."""
    if err is not None or local is None:
        comm.fail(err if err is not None else RuntimeError("no local step result"))
    assert local is not None
    *stats, elbo = comm.sum((*local.stats, local.elbo))
    return Local(tuple(stats), elbo)


def global_roundoff(model: ConjugateModel[Any, Any, Any], data: Any, comm: Comm) -> float | None:
    """The sum over ranks of ``model.elbo_roundoff(shard)`` (each shard's offset and spread).

    The same number on every rank, so the monotonicity guard decides alike everywhere; it
    approximates the concatenated data's round-off (it is exact for equal shard moments).
    """
    try:
        value = model.elbo_roundoff(data)
    except Exception as err:  # noqa: BLE001 - reported to every rank
        comm.fail(err)
    (total,) = comm.sum((torch.tensor(np.nan if value is None else float(value),
                                      dtype=torch.float64),))
    return None if not bool(torch.isfinite(total)) else float(total)


def _take(data: Any, idx: Tensor) -> Any:
    if isinstance(data, Tensor):
        return data[idx.to(data.device)]
    if isinstance(data, tuple):
        return tuple(_take(d, idx) for d in data)
    raise TypeError(f"cannot subsample data of type {type(data).__name__}")


def _gather(data: Any, comm: Comm) -> Any:
    if isinstance(data, Tensor):
        return comm.gather_rows(data)
    return tuple(_gather(d, comm) for d in data)


def subsample_start(model: ConjugateModel[Any, Any, Stats], data: Any, *,
                    generator: torch.Generator, comm: Comm,
                    rows: int = SUBSAMPLE_ROWS) -> Stats:
    r"""A random start that depends on the data and seed only, not on the number of ranks.

    1. ``generator`` (seeded alike on every rank) draws up to ``rows`` global row indices
       out of :math:`N = \sum_r N_r` (all rows when :math:`N \le` ``rows``); each rank
       contributes those it holds, and every rank gathers the subsample :math:`S` in global
       row order.
    2. The model's own :meth:`~pyro_vi.cavi.model.ConjugateModel.init_stats` runs on
       :math:`S` (e.g. the GMM's k-means++), and rank 0's statistics are broadcast.
    3. Scaled by :math:`N/|S|`, as :func:`pyro_vi.svi_cavi` scales a first minibatch, they
       give the starting global parameters; one local pass over every rank's rows at those
       parameters gives the summed start statistics.

    Rows are indexed in rank order, so the same concatenated data gives the same :math:`S`,
    hence the same start (to the round-off of the sums), with any number of ranks.
    """
    counts = comm.counts(_rows(data))
    n, offset = sum(counts), sum(counts[:comm.rank])
    if n <= rows:
        idx = torch.arange(n)
    else:
        idx = torch.unique(torch.randint(n, (rows,), generator=generator))
    mine = idx[(idx >= offset) & (idx < offset + counts[comm.rank])] - offset
    try:
        part = _take(data, mine)
    except Exception as err:  # noqa: BLE001 - reported to every rank
        comm.fail(err)
    sub = _gather(part, comm)
    try:
        stats = model.init_stats(sub, generator=generator)
    except Exception as err:  # noqa: BLE001 - reported to every rank
        comm.fail(err)
    stats = comm.broadcast(stats, src=0)
    scale = n / _rows(sub)
    failure: BaseException | None = None
    local = None
    try:
        params = model.global_step(tuple(s * scale for s in stats), None)
        local = local_pass(model, data, params, chunk_size=None)
    except Exception as e:  # noqa: BLE001 - reported to every rank
        failure = e
    return reduce_local(local, failure, comm).stats


def _is_random(model: ConjugateModel[Any, Any, Stats], data: Any) -> bool:
    """Whether ``init_stats`` on the first :data:`PROBE_ROWS` rows depends on the generator."""
    part = _take(data, torch.arange(min(_rows(data), PROBE_ROWS)))
    try:
        a = model.init_stats(part, generator=torch.Generator().manual_seed(1))
        b = model.init_stats(part, generator=torch.Generator().manual_seed(2))
    except Exception:  # noqa: BLE001 - too few rows for the start: draw it from the subsample
        return True
    return not all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def start_stats(model: ConjugateModel[Any, Any, Stats], data: Any, *,
                generator: torch.Generator, comm: Comm) -> Stats:
    """The summed start statistics of a distributed fit, independent of the number of ranks.

    The model's :meth:`~pyro_vi.cavi.model.ConjugateModel.init_stats_shard` if it gives them;
    else ``init_stats`` summed over ranks when it is deterministic (two generators give
    equal statistics on every rank's first :data:`PROBE_ROWS` rows), and
    :func:`subsample_start` when it is random (a mixture's k-means++).
    """
    try:
        own = model.init_stats_shard(data, generator=generator, comm=comm)
        if own is not None:
            return own
        random = _is_random(model, data)
    except Exception as err:  # noqa: BLE001 - raised on every rank
        comm.fail(err)
    (votes,) = comm.sum((torch.tensor(float(random), dtype=torch.float64),))
    if votes > 0:
        return subsample_start(model, data, generator=generator, comm=comm)
    try:
        stats = model.init_stats(data, generator=generator)
    except Exception as err:  # noqa: BLE001 - raised on every rank
        comm.fail(err)
    return comm.sum(stats)
