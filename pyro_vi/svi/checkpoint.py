"""Atomic checkpoints of a Pyro fit: param store, optimizer, RNG streams and loop state.

A checkpoint is one :func:`torch.save` file holding a plain dict. It is written to a temporary
file in the target's directory, flushed to disk and moved over the target with
:func:`os.replace`, which is atomic on POSIX and Windows: a reader, or a run killed mid-write,
sees either the previous checkpoint or the new one, never a torn file.

Parameters are restored *in place* (:func:`restore_param_store`): a tensor already in the param
store keeps its identity and receives the saved values, so ``nn.Module`` parameters registered
with :func:`pyro.module` and :class:`~pyro.nn.PyroModule` attributes that share the store's
tensors see the restored values too.

:class:`Checkpointer` is the loop's hook that writes them: every ``every`` steps and once at the
end (not after Ctrl-C or an error, so the file keeps the last periodic state). Resuming is
:meth:`pyro_vi.svi.runner.SVIRun.init` with the loaded dict; :func:`prime` replays the lazy
set-up a first step performs, before the saved RNG state is restored.

.. warning::
    Checkpoints are pickles (``torch.load(..., weights_only=False)``: the param store holds
    constraint objects and the RNG states hold NumPy arrays). Load only files you wrote.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyro
import torch
from pyro.params.param_store import StateDict

from pyro_vi.svi.batches import split_batch
from pyro_vi.svi.guard import PYRO_NAN_WARNING
from pyro_vi.svi.hooks import Hook

if TYPE_CHECKING:
    from pyro_vi.svi.loop import SVIRun

__all__ = ["Checkpointer", "load_checkpoint", "prime", "restore_param_store", "save_checkpoint"]

#: Format tag stored in every checkpoint; bumped when the layout changes (2: epochs and
#: evaluations in the history; 3: the stopping rule's name beside its state).
FORMAT = "pyro_vi.fit_svi/3"


class Checkpointer(Hook):
    """Save :meth:`SVIRun.snapshot <pyro_vi.svi.runner.SVIRun.snapshot>` to ``path``."""

    def __init__(self, path: str | os.PathLike[str], every: int):
        self.path, self.every = path, every
        self.saved_at = -1

    def start(self, run: SVIRun) -> None:
        """Note the step a resume starts from: it is on disk already."""
        self.saved_at = run.state.step

    def after_step(self, run: SVIRun) -> bool | None:
        """Save every ``every`` steps."""
        if run.state.step % self.every == 0:
            save_checkpoint(self.path, run.snapshot())
            self.saved_at = run.state.step
        return None

    def end(self, run: SVIRun, reason: str | None) -> None:
        """Save the final state, unless the run broke off or the last step is saved already."""
        if reason in ("converged", "callback", "max_steps") and self.saved_at != run.state.step:
            save_checkpoint(self.path, run.snapshot())


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file + :func:`os.replace`).

    Parameters
    ----------
    path
        Target file. Its directory must exist.
    state
        A picklable dict; ``"format"`` is added.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({**state, "format": FORMAT}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        # Also on KeyboardInterrupt: never leave a stray temporary file behind.
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    ValueError
        If the file is not a ``pyro_vi`` checkpoint of the current format.
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint={str(path)!r} is not a {FORMAT} checkpoint (found {found!r})")
    return state


def restore_param_store(state: dict[str, Any]) -> None:
    """Load a :meth:`~pyro.params.param_store.ParamStoreDict.get_state` dict, in place.

    Existing parameters of the same name and shape receive the saved unconstrained values with
    ``copy_`` (bitwise, dtype and device of the live tensor kept); the others are added.
    """
    store = pyro.get_param_store()
    live = dict(store.named_parameters())
    missing: StateDict = {"params": {}, "constraints": {}}
    with torch.no_grad():
        for name, saved in state["params"].items():
            current = live.get(name)
            if current is not None and current.shape == saved.shape:
                current.copy_(saved)
            else:
                if current is not None:
                    del store[name]
                missing["params"][name] = saved.to(
                    device=current.device if current is not None else saved.device
                ).requires_grad_()
                missing["constraints"][name] = state["constraints"][name]
    if missing["params"]:
        store.set_state(missing)


def prime(elbo: Any, model: Callable[..., Any], guide: Callable[..., Any],
          batches: Iterable[Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Run one throw-away ``loss_and_grads`` before a resume restores the RNG state.

    Lazily created state (autoguide prototypes, ``pyro.module`` registrations, a guessed
    ``max_plate_nesting``, JIT compilation) is created here, consuming random numbers that the
    restored RNG state then overrides, as the first run created it at its step 1.
    """
    batch = next(iter(batches)) if batches is not None else ()
    batch_args, batch_kwargs = split_batch(batch)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PYRO_NAN_WARNING)
        elbo.loss_and_grads(model, guide, *batch_args, *args, **kwargs, **batch_kwargs)
    for _, p in pyro.get_param_store().named_parameters():
        if p.grad is not None:
            p.grad = torch.zeros_like(p.grad)
