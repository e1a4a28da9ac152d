"""Atomic, validated checkpoints of a Pyro fit: param store, optimizer, RNG and loop state.

A checkpoint is one :func:`torch.save` file of plain data only: tensors, numbers, strings,
lists, tuples and dicts. Constraints are stored by name (module, class and fields, e.g.
``_GreaterThan(lower_bound=0.0)``) and NumPy's RNG state as a tensor, so loading is
``torch.load(weights_only=True)`` (:func:`pyro_vi._io.load_tensors`): a file never runs code,
and a crafted pickle is refused. It is written with :func:`pyro_vi._io.atomic_write`: a
temporary file in the target's folder, flushed to disk and moved over the target with
:func:`os.replace`, keeping the old file's mode; a reader, or a run killed mid-write, sees
either the previous checkpoint or the new one, never a torn file.

Each file records its format (:data:`FORMAT`), every param's name, shape and dtype, and the
guide's sample sites. A resume (:func:`check_compatible`) refuses a checkpoint of another
guide with an error naming the first param or site that differs; a truncated or foreign file
is a ``ValueError`` naming the file.

Parameters are restored *in place* (:func:`restore_param_store`): a tensor already in the param
store keeps its identity and receives the saved values, so ``nn.Module`` parameters registered
with :func:`pyro.module` and :class:`~pyro.nn.PyroModule` attributes that share the store's
tensors see the restored values too.

:class:`Checkpointer` is the loop's hook that writes them: every ``every`` steps and once at the
end (not after Ctrl-C or an error, so the file keeps the last periodic state). A save that
fails is a :class:`CheckpointError` (an ``OSError``) carrying the run so far. Resuming is
:meth:`pyro_vi.svi.runner.SVIRun.init` with the loaded dict; :func:`prime` replays the lazy
set-up a first step performs, before the saved RNG state is restored.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import torch
from pyro.params.param_store import StateDict
from pyro.poutine.messenger import Messenger
from torch.distributions.constraints import Constraint

from pyro_vi._io import load_tensors, save_tensors
from pyro_vi.svi.batches import split_batch
from pyro_vi.svi.guard import PYRO_NAN_WARNING
from pyro_vi.svi.hooks import Hook

if TYPE_CHECKING:
    from pyro_vi.svi.loop import SVIRun

__all__ = ["FORMAT", "CheckpointError", "Checkpointer", "SiteRecorder", "check_compatible",
           "load_checkpoint", "prime", "restore_param_store", "rng_from_plain", "rng_to_plain",
           "save_checkpoint", "store_to_plain"]

#: Format tag stored in every checkpoint; bumped when the layout changes (2: epochs and
#: evaluations in the history; 3: the stopping rule's name beside its state; 4: plain data
#: only, loaded with ``weights_only=True``, with param shapes/dtypes and guide sites).
FORMAT = "pyro_vi.fit_svi/4"

#: Modules whose constraint classes a checkpoint may name; nothing else is looked up.
_CONSTRAINT_MODULES = ("torch.distributions.constraints", "pyro.distributions.constraints")


class CheckpointError(OSError):
    """A checkpoint could not be written; ``result`` holds the run up to that point."""

    def __init__(self, message: str, *, result: Any):
        super().__init__(message)
        self.result = result


class SiteRecorder(Messenger):
    """Record the names of the (latent) sample sites a guide visits; changes nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def _postprocess_message(self, msg: Any) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            self.names.add(msg["name"])


class Checkpointer(Hook):
    """Save :meth:`SVIRun.snapshot <pyro_vi.svi.runner.SVIRun.snapshot>` to ``path``.

    In a distributed run every rank takes the snapshot (it gathers each rank's RNG state and
    batch position) and rank 0 alone writes the file; a failed write is raised on every rank.
    """

    def __init__(self, path: str | os.PathLike[str], every: int):
        self.path, self.every = path, every
        self.saved_at = -1

    def start(self, run: SVIRun) -> None:
        """Note the step a resume starts from: it is on disk already."""
        self.saved_at = run.state.step

    def after_step(self, run: SVIRun) -> bool | None:
        """Save every ``every`` steps."""
        if run.state.step % self.every == 0:
            self._save(run, "checkpoint_failed")
            self.saved_at = run.state.step
        return None

    def end(self, run: SVIRun, reason: str | None) -> None:
        """Save the final state, unless the run broke off or the last step is saved already."""
        if reason in ("converged", "callback", "max_steps") and self.saved_at != run.state.step:
            self._save(run, reason)

    def _save(self, run: SVIRun, reason: str) -> None:
        comm = run.comm
        state = run.snapshot()  # collective in a distributed run: every rank's RNG state
        if comm is not None and comm.rank != 0:
            comm.agree()  # only rank 0 writes; its failure is raised here too
            return
        try:
            save_checkpoint(self.path, state)
        except (OSError, ValueError) as err:
            failure = CheckpointError(
                f"fit_svi: writing checkpoint={str(self.path)!r} at step {run.state.step} "
                f"failed: {err}; the steps so far are in err.result, and the file holds the "
                f"previous checkpoint", result=run.result(reason))
            if comm is None:
                raise failure from err
            comm.fail(failure)
        if comm is not None:
            comm.agree()


def constraint_to_plain(c: Constraint) -> dict[str, Any]:
    """A constraint as plain data: its module, class name and fields (nested constraints too)."""
    cls = type(c)
    if cls.__module__ not in _CONSTRAINT_MODULES:
        raise TypeError(f"cannot checkpoint constraint {c!r} of {cls.__module__}: only those "
                        f"of {', '.join(_CONSTRAINT_MODULES)}")
    fields = {k: constraint_to_plain(v) if isinstance(v, Constraint) else v
              for k, v in vars(c).items()}
    return {"module": cls.__module__, "class": cls.__qualname__, "fields": fields}


def constraint_from_plain(data: Any, *, where: str) -> Constraint:
    """Invert :func:`constraint_to_plain`; classes outside the constraint modules are refused."""
    try:
        module, name, fields = data["module"], data["class"], data["fields"]
    except (TypeError, KeyError):
        raise ValueError(f"{where}: malformed constraint {data!r}") from None
    cls = getattr(importlib.import_module(module), name, None) if (
        module in _CONSTRAINT_MODULES) else None
    if not (isinstance(cls, type) and issubclass(cls, Constraint)):
        raise ValueError(f"{where}: refers to constraint {module}.{name}, which is not a "
                         f"torch/pyro constraint; refused")
    obj: Any = object.__new__(cls)
    obj.__dict__.update({k: constraint_from_plain(v, where=where)
                         if isinstance(v, dict) and "class" in v else v
                         for k, v in fields.items()})
    return obj  # type: ignore[no-any-return]


def rng_to_plain(state: dict[str, Any]) -> dict[str, Any]:
    """:func:`pyro.util.get_rng_state` with NumPy's key array as a tensor (plain data)."""
    kind, keys, *rest = state["numpy"]
    return {**state, "numpy": (kind, torch.from_numpy(np.asarray(keys).astype(np.int64)), *rest)}


def rng_from_plain(state: dict[str, Any]) -> dict[str, Any]:
    """Invert :func:`rng_to_plain`."""
    kind, keys, *rest = state["numpy"]
    return {**state, "numpy": (kind, keys.numpy().astype(np.uint32), *rest)}


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (:func:`pyro_vi._io.atomic_write`).

    Parameters
    ----------
    path
        Target file. Its directory must exist; an existing file keeps its mode.
    state
        A :meth:`SVIRun.snapshot <pyro_vi.svi.loop.SVIRun.snapshot>` (plain data only);
        ``"format"`` is added.
    """
    save_tensors(path, {**state, "format": FORMAT})


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, without running any code in it.

    Raises
    ------
    ValueError
        If the file is truncated, not a ``pyro_vi`` checkpoint of the current format, or holds
        pickled objects (refused by ``weights_only=True``); the message names the file.
    """
    state = load_tensors(path, what="fit_svi checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint={str(path)!r} is not a {FORMAT} checkpoint (found {found!r})")
    where = f"checkpoint={str(path)!r}"
    store = state["param_store"]
    store["constraints"] = {k: constraint_from_plain(v, where=where)
                            for k, v in store["constraints"].items()}
    for part in (state, *state.get("ranks", ())):  # a distributed run's: one per rank
        part["rng"] = rng_from_plain(part["rng"])
        cursor = part["cursor"]
        if cursor.get("epoch_rng") is not None:
            cursor["epoch_rng"] = rng_from_plain(cursor["epoch_rng"])
    state["path"] = where
    return state


def store_to_plain() -> dict[str, Any]:
    """The param store's state as plain data, with each param's shape and dtype."""
    raw = pyro.get_param_store().get_state()
    return {"params": raw["params"],
            "constraints": {k: constraint_to_plain(c) for k, c in raw["constraints"].items()},
            "shapes": {k: [list(v.shape), str(v.dtype)] for k, v in raw["params"].items()}}


def check_compatible(saved: dict[str, Any], guide_sites: Iterable[str], *, where: str) -> None:
    """Refuse a checkpoint whose params or guide sites differ from this run's (after :func:`prime`).

    Raises
    ------
    ValueError
        Naming the first param that is missing on either side or differs in shape or dtype,
        or the guide site that differs.
    """
    live = {k: [list(v.shape), str(v.dtype)]
            for k, v in pyro.get_param_store().named_parameters()}
    shapes = saved["param_store"]["shapes"]
    for name in sorted(set(live) | set(shapes)):
        if name not in live:
            raise ValueError(f"{where} holds param {name!r}, which this model/guide does not "
                             f"create: it is a checkpoint of another guide")
        if name not in shapes:
            raise ValueError(f"{where} lacks param {name!r} of this model/guide: it is a "
                             f"checkpoint of another guide")
        if live[name] != shapes[name]:
            raise ValueError(f"{where}: param {name!r} has shape/dtype {shapes[name]} there but "
                             f"{live[name]} in this run: it is a checkpoint of another guide")
    ours, theirs = set(guide_sites), set(saved["guide_sites"])
    if ours != theirs:
        site = sorted(ours ^ theirs)[0]
        side = "this guide" if site in ours else "the checkpoint's guide"
        raise ValueError(f"{where}: guide sample site {site!r} exists only in {side}: it is "
                         f"a checkpoint of another guide")


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
          batches: Iterable[Any] | None, args: tuple[Any, ...],
          kwargs: dict[str, Any]) -> None:
    """Run one throw-away ``loss_and_grads`` before a resume restores the RNG state.

    Lazily created state (autoguide prototypes, ``pyro.module`` registrations, a guessed
    ``max_plate_nesting``, JIT compilation) is created here, consuming random numbers that the
    restored RNG state then overrides, as the first run created it at its step 1. Pass the
    guide the run's ``SVI`` steps (wrapped in its :class:`SiteRecorder`): a JIT-compiled ELBO
    keeps the callable of its first call.
    """
    batch = next(iter(batches)) if batches is not None else ()
    batch_args, batch_kwargs = split_batch(batch)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PYRO_NAN_WARNING)
        elbo.loss_and_grads(model, guide, *batch_args, *args, **kwargs, **batch_kwargs)
    for _, p in pyro.get_param_store().named_parameters():
        if p.grad is not None:
            p.grad = torch.zeros_like(p.grad)
