r"""The collectives of a data-parallel fit, on :mod:`torch.distributed` (gloo or NCCL).

:class:`Comm` wraps an initialised process group with the few operations the fits need:

* :meth:`Comm.sum` — one ``all_reduce`` of a tuple of tensors packed into one flat buffer
  (the CAVI local statistics and ELBO share of a sweep, the SVI gradients);
* :meth:`Comm.broadcast` and :meth:`Comm.broadcast_object` — rank 0's values to every rank;
* :meth:`Comm.gather_rows` — every rank's rows, concatenated in rank order;
* :meth:`Comm.check_identical` — a digest of tensors compared across ranks.

**Errors are collective.** Every operation first takes a vote (a one-element ``all_reduce``):
a rank whose local work raised calls :meth:`Comm.fail` instead, which votes "failed"; the
vote tells every rank, the failed ranks' exceptions are exchanged, and every rank raises the
same exception class: the first failed rank its own exception, the others one with its
message prefixed by ``"rank r of P: "``. A rank that fails therefore never leaves the others
waiting in a collective. Bitwise agreement of the
reduced values follows from ``all_reduce`` itself: gloo's and NCCL's ring algorithms reduce
each element once and send the result to every rank.

The wire device follows the backend: NCCL moves CPU tensors to the current CUDA device for
the collective and back, gloo moves CUDA tensors to the CPU. :func:`backend_for` picks the
backend from where the tensors live.

.. warning::
    Collectives block until every rank of the group joins. Initialise the group with a
    ``timeout`` (``init_process_group(..., timeout=timedelta(seconds=60))``) so that a rank
    that dies outright, which no vote can report, ends the others with an error instead of
    a hang.

References
----------
PyTorch documentation, *Distributed communication package* (``torch.distributed``).
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Sequence
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Comm", "RankError", "agreed", "backend_for"]


class RankError(RuntimeError):
    """An error on one rank whose class cannot be rebuilt from its name and message."""


def agreed(exc: BaseException) -> BaseException:
    """Mark ``exc`` as raised alike on every rank (so :meth:`Comm.fail` does not vote on it)."""
    exc.agreed = True  # type: ignore[attr-defined]
    return exc


def backend_for(device: Any = None) -> str:
    """``"nccl"`` for CUDA tensors when NCCL is available, else ``"gloo"``.

    Examples
    --------
    >>> backend_for("cpu")
    'gloo'
    """
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda" and dist.is_available() and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def _rebuild(kind: tuple[str, str], message: str) -> BaseException:
    """An exception of class ``module.qualname`` with ``message``, or a :class:`RankError`.

    A class whose constructor needs more than the message (keyword-only fields) is made
    without calling its ``__init__``: its extra attributes are then missing.
    """
    module, name = kind
    try:
        cls: Any = importlib.import_module(module)
        for part in name.split("."):
            cls = getattr(cls, part)
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                exc = cls(message)
            except TypeError:
                exc = cls.__new__(cls)
                Exception.__init__(exc, message)
            if str(exc) == message:
                return exc  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - any class we cannot rebuild becomes a RankError
        pass
    return RankError(f"{module}.{name}: {message}")


class Comm:
    """The default (or given) process group, with voting collectives (see the module).

    Raises ``RuntimeError`` when no process group is initialised.

    Examples
    --------
    >>> import torch.distributed as dist
    >>> dist.is_initialized() or Comm()
    Traceback (most recent call last):
    ...
    RuntimeError: distributed=True needs an initialised process group: ...
    """

    def __init__(self, group: Any = None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "distributed=True needs an initialised process group: launch with torchrun "
                "(or pyro_vi.distributed.spawn) and call torch.distributed.init_process_group "
                "first")
        self.group = group
        self.rank: int = dist.get_rank(group)
        self.world_size: int = dist.get_world_size(group)
        self.backend: str = str(dist.get_backend(group))
        self.wire = (torch.device("cuda", torch.cuda.current_device())
                     if self.backend == "nccl" else torch.device("cpu"))

    def __repr__(self) -> str:
        return f"Comm(rank={self.rank}, world_size={self.world_size}, backend={self.backend!r})"

    # ----------------------------------------------------------------------------- errors
    def _vote(self, failed: bool) -> None:
        flag = torch.tensor([1.0 if failed else 0.0], dtype=torch.float64, device=self.wire)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        if float(flag) > 0 and not failed:
            self._exchange(None)

    def _exchange(self, err: BaseException | None) -> NoReturn:
        """Every rank learns the failed ranks' errors and raises the first one."""
        mine = None if err is None else (
            (type(err).__module__, type(err).__qualname__), str(err))
        errors: list[Any] = [None] * self.world_size
        dist.all_gather_object(errors, mine, group=self.group)
        rank, (kind, message) = next((r, e) for r, e in enumerate(errors) if e is not None)
        if err is not None and rank == self.rank:  # the first failed rank raises its own error
            raise agreed(err)
        exc = agreed(_rebuild(kind, f"rank {rank} of {self.world_size}: {message}"))
        if err is not None:
            raise exc from err
        raise exc

    def fail(self, err: BaseException) -> NoReturn:
        """Report ``err`` to the other ranks (which are at their next collective) and raise.

        An error that an earlier vote raised on every rank (``err.agreed``) is re-raised as it
        is: the other ranks know it already.
        """
        if getattr(err, "agreed", False):
            raise err
        self._vote(True)
        self._exchange(err)

    def agree(self) -> None:
        """A vote without data: raise here if another rank has failed."""
        self._vote(False)

    # ------------------------------------------------------------------------ collectives
    def sum(self, tensors: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Elementwise sums over ranks, in one ``all_reduce`` of one flat buffer.

        The result has each input's shape, dtype and device; the buffer is in their common
        floating dtype (float64 for float32 and float64 inputs), so the sum is exact for
        counts and identical on every rank.
        """
        self._vote(False)
        if not tensors:
            return ()
        dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
        if any(t.dtype not in (torch.float32, torch.float64) for t in tensors):
            dtype = torch.float64
        flat = torch.cat([t.detach().reshape(-1).to(device=self.wire, dtype=dtype) for t in tensors])
        dist.all_reduce(flat, group=self.group)
        out, i = [], 0
        for t in tensors:
            out.append(flat[i:i + t.numel()].reshape(t.shape).to(device=t.device, dtype=t.dtype))
            i += t.numel()
        return tuple(out)

    def broadcast(self, tensors: Sequence[Tensor], *, src: int = 0) -> tuple[Tensor, ...]:
        """Rank ``src``'s values of ``tensors`` (same shapes on every rank), as new tensors."""
        self._vote(False)
        out = []
        for t in tensors:
            buf = t.detach().to(self.wire).clone()
            dist.broadcast(buf, src=src, group=self.group)
            out.append(buf.to(device=t.device, dtype=t.dtype))
        return tuple(out)

    def broadcast_object(self, obj: Any, *, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` (pickled: use for small, trusted, in-memory objects only)."""
        self._vote(False)
        box = [obj]
        dist.broadcast_object_list(box, src=src, group=self.group)
        return box[0]

    def gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        self._vote(False)
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def counts(self, n: int) -> list[int]:
        """Every rank's ``n`` (e.g. its number of rows), in rank order, on every rank."""
        self._vote(False)
        mine = torch.tensor([float(n)], dtype=torch.float64, device=self.wire)
        parts = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(parts, mine, group=self.group)
        return [int(p.item()) for p in parts]

    def gather_rows(self, t: Tensor) -> Tensor:
        """Every rank's rows of ``t`` (same trailing shape), concatenated in rank order."""
        sizes = self.counts(t.shape[0])
        buf = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=self.wire)
        buf[:t.shape[0]] = t.to(self.wire)
        parts = [torch.empty_like(buf) for _ in range(self.world_size)]
        self._vote(False)
        dist.all_gather(parts, buf, group=self.group)
        return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]).to(t.device)

    def check_identical(self, tensors: Sequence[Tensor], *, what: str) -> None:
        """Raise ``RuntimeError`` on every rank unless ``tensors`` are bitwise equal on all ranks."""
        h = hashlib.sha256()
        for t in tensors:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        digests = self.gather_object(h.hexdigest())
        if len(set(digests)) > 1:
            differ = [r for r, d in enumerate(digests) if d != digests[0]]
            raise agreed(RuntimeError(f"{what} differ across ranks (rank 0 vs rank(s) {differ})"))
