"""A resumable cursor over minibatches, one batch per SVI step.

:class:`BatchCursor` walks through any re-iterable of batches (a list, a ``DataLoader``) and
re-iterates it at the end of each epoch. Its position is ``(epoch, offset)``: ``epoch`` counts
the ``iter()`` calls, ``offset`` the batches drawn from the current iterator.

**Resume convention.** To rebuild the position in a new process the cursor keeps the global
RNG state (torch, python, numpy; :func:`pyro.util.get_rng_state`) from the moment the current
epoch's ``iter()`` was called. :meth:`BatchCursor.restore` sets that state, calls ``iter()``
again and skips ``offset`` batches. A shuffling ``torch.utils.data.DataLoader`` without its own
generator draws its permutation from the global torch RNG inside ``iter()``, so it replays the
same order. The caller then restores the step's RNG state, so randomness a loader draws from
the global RNG while yielding a batch (random transforms, dynamic binarization) is replayed too.
What breaks the replay is randomness from a private generator (one seeded once per process
rather than per ``iter()``) or from background prefetching whose order depends on timing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pyro.util import get_rng_state, set_rng_state

__all__ = ["BatchCursor", "split_batch"]


def split_batch(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Turn a batch into model arguments: a tuple/list positional, a mapping keyword, else one."""
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, tuple | list):
        return tuple(batch), {}
    return (batch,), {}


class BatchCursor:
    """One batch per call of :meth:`next`; ``batches=None`` yields no arguments.

    Parameters
    ----------
    batches
        A re-iterable of batches, or None.
    track_rng
        Keep the RNG state at each epoch start (needed only to checkpoint the position).
    """

    def __init__(self, batches: Iterable[Any] | None, *, track_rng: bool):
        self.batches, self.track_rng = batches, track_rng
        self.epoch, self.offset = 0, 0
        self.epoch_rng: dict[str, Any] | None = None
        self._it: Iterator[Any] | None = None

    def _new_epoch(self) -> Iterator[Any]:
        assert self.batches is not None
        self.epoch_rng = get_rng_state() if self.track_rng else None
        self._it = iter(self.batches)
        self.epoch, self.offset = self.epoch + 1, 0
        return self._it

    def next(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Arguments of the next batch, starting a new epoch when the current one is spent."""
        if self.batches is None:
            return (), {}
        it = self._it if self._it is not None else self._new_epoch()
        try:
            batch = next(it)
        except StopIteration:
            try:
                batch = next(self._new_epoch())
            except StopIteration:
                raise ValueError("batches yielded no batch in a whole epoch") from None
        self.offset += 1
        return split_batch(batch)

    def state(self) -> dict[str, Any]:
        """Return the position as a checkpointable dict."""
        return {"epoch": self.epoch, "offset": self.offset, "epoch_rng": self.epoch_rng}

    def restore(self, state: dict[str, Any]) -> None:
        """Rebuild the position of :meth:`state` (leaves the global RNG state changed)."""
        if self.batches is None or state["epoch"] == 0:
            return
        set_rng_state(state["epoch_rng"])
        it = self._it = iter(self.batches)
        for _ in range(state["offset"]):
            next(it)
        self.epoch, self.offset = state["epoch"], state["offset"]
        self.epoch_rng = state["epoch_rng"]
