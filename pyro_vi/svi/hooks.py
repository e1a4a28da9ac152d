"""Hooks of the SVI loop: evaluation, progress bar and the user's callback.

A hook has three methods, all optional: :meth:`Hook.start` runs once before the first step
(after a resume has restored the state), :meth:`Hook.after_step` after every step, and
:meth:`Hook.end` once when the loop is left, with the stop reason (None when an exception
escapes). ``after_step`` returning True ends the run with the hook's :attr:`Hook.stop_reason`.
The loop calls them in list order; :func:`pyro_vi.fit_svi` orders them evaluation, progress,
callback, checkpoint, so a checkpoint holds the evaluation of its own step. The checkpoint
hook lives with the file format in :mod:`pyro_vi.svi.checkpoint`; the non-finite guard is part
of the step itself (:mod:`pyro_vi.svi.guard`), since it must veto a gradient before the
optimizer applies it.
"""

from __future__ import annotations

import math
import numbers
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from pyro.util import get_rng_state, set_rng_state
from tqdm.std import tqdm

if TYPE_CHECKING:
    from pyro_vi.svi.loop import SVIRun, SVIState

__all__ = ["Callback", "Evaluate", "Hook", "Progress"]

#: Columns every SVI history has; evaluation columns must not reuse these names.
STEP_COLUMNS = ("step", "epoch", "loss", "elbo", "seconds")


class Hook:
    """The common interface; the defaults do nothing."""

    #: The run's ``stop_reason`` when :meth:`after_step` asks to stop.
    stop_reason = "callback"

    def start(self, run: SVIRun) -> None:
        """Before the first step of this call (``run.state`` may hold resumed steps)."""

    def after_step(self, run: SVIRun) -> bool | None:
        """After each step; True stops the run."""
        return None

    def end(self, run: SVIRun, reason: str | None) -> None:
        """When the loop is left; ``reason`` is the stop reason, None if an exception escapes."""


class Callback(Hook):
    """``fn(step, loss)`` after every step; returning True stops the run (``"callback"``)."""

    def __init__(self, fn: Callable[[int, float], bool | None]):
        self.fn = fn

    def after_step(self, run: SVIRun) -> bool | None:
        """Call the user's function with the step number and its loss."""
        return bool(self.fn(run.state.step, run.state.losses[-1]))


class Progress(Hook):
    """A tqdm bar on stderr with the running ELBO (the mean over the last ``window`` steps)."""

    def __init__(self, total: int, window: int):
        self.total, self.window = total, window
        self.bar: tqdm[Any] | None = None

    def start(self, run: SVIRun) -> None:
        """Open the bar at the resumed step."""
        self.bar = tqdm(total=self.total, initial=run.state.step, desc="SVI", file=sys.stderr,
                        dynamic_ncols=True)

    def after_step(self, run: SVIRun) -> bool | None:
        """Advance the bar; refresh the ELBO every 10 steps."""
        assert self.bar is not None
        self.bar.update(1)
        if run.state.step % 10 == 0:
            recent = run.state.losses[-self.window:]
            self.bar.set_postfix_str(f"elbo={-sum(recent) / len(recent):.6g}", refresh=False)
        return None

    def end(self, run: SVIRun, reason: str | None) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()


class Evaluate(Hook):
    """``fn(state)`` before the first step, every ``every`` steps and after the last one.

    ``fn`` gets the run's :class:`~pyro_vi.svi.runner.SVIState` (read it, do not change it)
    and returns a mapping of column names to numbers. Its values become extra columns of the
    history at the steps it ran (NaN elsewhere); the values before the first step become
    :attr:`pyro_vi.SVIResult.initial_evaluation`. It runs under :func:`torch.no_grad`, its
    time is excluded from the history's ``seconds``, and the global RNG state is restored
    afterwards, so a run takes bitwise the same steps with or without it. No final evaluation
    follows Ctrl-C or an error. Before the first step a guide's parameters may not exist yet
    (autoguides create them in step 1): ``fn`` can test ``state.step``.
    """

    def __init__(self, every: int, fn: Callable[[SVIState], Mapping[str, Any]]):
        self.every, self.fn = every, fn

    def start(self, run: SVIRun) -> None:
        """Evaluate the starting point of a fresh run."""
        if run.state.step == 0 and 0 not in run.state.evaluations:
            self._evaluate(run)

    def after_step(self, run: SVIRun) -> bool | None:
        """Evaluate every ``every`` steps."""
        if run.state.step % self.every == 0:
            self._evaluate(run)
        return None

    def end(self, run: SVIRun, reason: str | None) -> None:
        """Evaluate the final step unless it was evaluated already or the run broke off."""
        if reason in ("converged", "callback", "max_steps") and (
                run.state.step not in run.state.evaluations):
            self._evaluate(run)

    def _evaluate(self, run: SVIRun) -> None:
        t0 = time.perf_counter()
        rng = get_rng_state()
        try:
            with torch.no_grad():
                raw = self.fn(run.state)
        finally:
            set_rng_state(rng)
        run.state.evaluations[run.state.step] = _numbers(raw)
        run.pause(time.perf_counter() - t0)


def _numbers(raw: Any) -> dict[str, float]:
    """Check an evaluation's return value: a mapping of new column names to real numbers."""
    if not isinstance(raw, Mapping):
        raise TypeError(f"evaluate: the function must return a mapping of column names to "
                        f"numbers, got {type(raw).__name__}")
    out: dict[str, float] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or name in STEP_COLUMNS:
            raise ValueError(f"evaluate: column name {name!r} must be a string other than "
                             f"{', '.join(STEP_COLUMNS)}")
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"evaluate: column {name!r} must be a real number, got "
                            f"{type(value).__name__}")
        out[name] = float(value) if not math.isnan(value) else math.nan
    return out
