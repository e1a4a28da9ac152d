"""The SVI loop itself: :class:`SVIRun` (init, step, run) and its state, :class:`SVIState`.

:meth:`SVIRun.init` seeds the run or restores a checkpoint, :meth:`SVIRun.step` takes one
guarded :meth:`pyro.infer.SVI.step` on the next batch and records it, and :meth:`SVIRun.run`
repeats the step until a rule of :mod:`pyro_vi.svi.stopping` ends it, calling the hooks
(:mod:`pyro_vi.svi.hooks`, :class:`~pyro_vi.svi.checkpoint.Checkpointer`) after every step.
It is numpyro's ``init``/``update``/``run`` split, around Pyro's own ``SVI`` and its global
param store. :func:`pyro_vi.fit_svi` checks the options and builds the hooks.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyro
import pyro.optim
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.elbo import ELBO
from pyro.util import get_rng_state, set_rng_state

from pyro_vi.distributed.collectives import Comm
from pyro_vi.distributed.gradients import AveragedELBO, broadcast_params, check_plates
from pyro_vi.results import SVIResult
from pyro_vi.svi.batches import BatchCursor, split_batch
from pyro_vi.svi.checkpoint import (
    SiteRecorder,
    check_compatible,
    prime,
    restore_param_store,
    rng_to_plain,
    store_to_plain,
)
from pyro_vi.svi.guard import (
    PYRO_NAN_WARNING,
    FiniteGuard,
    NonFiniteLossError,
    NonFiniteStep,
    describe,
)
from pyro_vi.svi.hooks import Evaluate, Hook, Progress
from pyro_vi.svi.stopping import DEFAULT_NUM_STEPS, make_rule, restore_rule, rule_state

__all__ = ["SVIRun", "SVIState"]


@dataclass
class SVIState:
    """What a run has done so far: one entry per step in each list, and the evaluations.

    Attributes
    ----------
    step : int
        Steps taken, counting those before a resume.
    converged : bool
        Whether the convergence rule has been met.
    steps, losses, seconds, epochs : list
        Per step: its number, its loss, the fitting seconds so far (evaluation excluded) and
        its epoch (1-based; empty without batches).
    evaluations : dict
        ``{step: {column: value}}`` for each evaluation; step 0 is the starting point.
    """

    step: int = 0
    converged: bool = False
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    evaluations: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        """The epoch of the last step (0 before the first step or without batches)."""
        return self.epochs[-1] if self.epochs else 0

    def history(self) -> tuple[pd.DataFrame, dict[str, float] | None]:
        """The per-step history frame and the evaluation before the first step (or None)."""
        frame = pd.DataFrame({"step": pd.Series(self.steps, dtype="int64")})
        if self.epochs:
            frame["epoch"] = pd.Series(self.epochs, dtype="int64")
        frame["loss"] = pd.Series(self.losses, dtype="float64")
        frame["elbo"] = -frame["loss"]
        frame["seconds"] = pd.Series(self.seconds, dtype="float64")
        columns = list(dict.fromkeys(k for v in self.evaluations.values() for k in v))
        for name in columns:
            frame[name] = pd.Series([self.evaluations.get(s, {}).get(name, math.nan)
                                     for s in self.steps], dtype="float64")
        return frame, self.evaluations.get(0)


class SVIRun:
    """One SVI fit as init, step and run (see :func:`fit_svi` for the arguments).

    Arguments are taken as given: :func:`fit_svi` checks them. ``hooks`` are called in order
    (see :class:`~pyro_vi.svi.hooks.Hook`); ``num_steps`` is the total step budget.

    Examples
    --------
    >>> import pyro, torch, pyro.distributions as dist
    >>> def model(x):
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    ...     with pyro.plate("data", len(x)):
    ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
    >>> def guide(x):
    ...     pyro.sample("mu", dist.Delta(pyro.param("m", torch.tensor(0.0))))
    >>> pyro.clear_param_store()
    >>> run = SVIRun(model, guide, torch.ones(3), num_steps=5, seed=0)
    >>> state = run.init()
    >>> loss = run.step()                      # one step by hand ...
    >>> fit = run.run()                        # ... then the rest of the budget
    >>> fit.n_steps, fit.stop_reason, state.step
    (5, 'max_steps', 5)
    """

    def __init__(self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any,
                 elbo: ELBO | None = None, optim: pyro.optim.PyroOptim | None = None,
                 num_steps: int = DEFAULT_NUM_STEPS, batches: Iterable[Any] | None = None,
                 tol: float = 1e-4, window: int = 100, patience: int = 3,
                 rule: str = "noise", z: float = 2.0, seed: int | None = None,
                 hooks: Sequence[Hook] = (), comm: Comm | None = None, **kwargs: Any):
        self.model, self.guide, self.args, self.kwargs = model, guide, args, kwargs
        #: The process group of a data-parallel run (``fit_svi(distributed=True)``), or None.
        self.comm = comm
        loss_fn: Any = Trace_ELBO() if elbo is None else elbo  # pyro's ELBO declares no .loss
        self.elbo = loss_fn
        adam: Any = pyro.optim.Adam  # type: ignore[attr-defined]  # made at import time
        self.optim = adam({"lr": 0.01}) if optim is None else optim
        self.num_steps, self.batches, self.window, self.seed = num_steps, batches, window, seed
        self.hooks = list(hooks)
        #: The all-reducing ELBO of a distributed run (it also carries rank 0's clock).
        self.averaged = None if comm is None else AveragedELBO(
            self.elbo, comm, clock=lambda: time.perf_counter() - self._t0)
        grads: Any = self.elbo if self.averaged is None else self.averaged
        self.guard = FiniteGuard(grads)
        self.recorder = SiteRecorder()  # the guide's sample sites, for checkpoints
        self.guide_sites: set[str] = set()
        self.svi = SVI(self.guard.aliases(model), self.recorder(guide), self.optim,
                       loss=loss_fn.loss, loss_and_grads=self.guard)
        self.rule = make_rule(rule, tol=float(tol), window=window, patience=patience,
                              z=float(z))
        self.cursor = BatchCursor(batches, track_rng=True)
        self.state = SVIState()
        self._t0 = time.perf_counter()
        self._batch: tuple[tuple[Any, ...], dict[str, Any]] = ((), {})
        self._ready = False

    def init(self, *, checkpoint: Mapping[str, Any] | None = None) -> SVIState:
        """Seed the RNGs, or continue from a loaded checkpoint; then start the hooks.

        Raises
        ------
        ValueError
            If ``seed`` differs from the checkpoint's seed.
        """
        comm = self.comm
        if self.seed is not None:  # rank r draws its own Monte-Carlo noise: seed + r
            pyro.set_rng_seed(self.seed + (0 if comm is None else comm.rank))
        if checkpoint is not None:
            self._restore(checkpoint)
        elif comm is not None and self.state.step == 0:
            self._start_distributed(comm)
        self._t0 = time.perf_counter() - (self.state.seconds[-1] if self.state.seconds else 0.0)
        for hook in self.hooks:
            hook.start(self)
        self._ready = True
        return self.state

    def _start_distributed(self, comm: Comm) -> None:
        """Check the plates, create the params (one throw-away step), broadcast rank 0's params."""
        batch = next(iter(self.batches)) if self.batches is not None else ()
        args, kwargs = split_batch(batch)
        check_plates(self.model, self.guide, (*args, *self.args), {**self.kwargs, **kwargs}, comm)
        try:
            prime(self.elbo, self.svi.model, self.svi.guide, self.batches, self.args, self.kwargs)
        except Exception as err:  # noqa: BLE001 - raised on every rank
            comm.fail(err)
        broadcast_params(comm)

    def step(self) -> float:
        """Take one guarded SVI step on the next batch, record it and update the rule."""
        self._batch = args, kwargs = self.cursor.next()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=PYRO_NAN_WARNING)
            loss = float(self.svi.step(*args, *self.args, **self.kwargs, **kwargs))
        s = self.state
        s.step += 1
        s.steps.append(s.step)
        s.losses.append(loss)
        # distributed: rank 0's clock, taken in the step's all-reduce, so the history is the
        # same on every rank
        s.seconds.append(time.perf_counter() - self._t0 if self.averaged is None
                         else self.averaged.clock_value)
        if self.batches is not None:
            s.epochs.append(self.cursor.epoch)
        s.converged = self.rule.update(loss)
        return loss

    def run(self) -> SVIResult:
        """Step until a stopping rule ends the run; Ctrl-C returns the partial result.

        Raises
        ------
        NonFiniteLossError
            On a NaN/inf loss or gradient; ``err.result`` holds the last finite step's params.
        """
        if not self._ready:
            self.init()
        s, reason = self.state, None
        comm = self.comm
        # hooks that may stop a run (callbacks): in a distributed run any rank's stop stops all
        vote = comm is not None and any(not isinstance(h, Progress | Evaluate) and
                                        type(h).__name__ != "Checkpointer" for h in self.hooks)
        try:
            while s.step < self.num_steps and not s.converged:
                if comm is None:
                    self.step()
                else:
                    try:
                        self.step()
                    except NonFiniteStep:
                        raise  # decided from the averaged loss and gradients: alike everywhere
                    except Exception as err:  # noqa: BLE001 - e.g. a batch: raised on every rank
                        comm.fail(err)
                if comm is None:
                    stopper = next((h for h in self.hooks if h.after_step(self)), None)
                    reason = None if stopper is None else stopper.stop_reason
                else:
                    try:
                        stopper = next((h for h in self.hooks if h.after_step(self)), None)
                    except Exception as err:  # noqa: BLE001 - raised on every rank
                        comm.fail(err)
                    reason = None if stopper is None else stopper.stop_reason
                    if vote:
                        reason = next((r for r in comm.gather_object(reason) if r), None)
                if reason is not None:
                    break
            reason = "converged" if s.converged else reason or "max_steps"
        except KeyboardInterrupt:
            reason = "interrupted"
        except NonFiniteStep as bad:
            reason = "non_finite"
            (args, kwargs) = self._batch
            msg, sites = describe(bad, s.step + 1, self.guard, self.model, self.guide,
                                  (*args, *self.args), {**self.kwargs, **kwargs})
            raise NonFiniteLossError(msg, step=s.step + 1, sites=sites,
                                     result=self.result(reason)) from None
        finally:
            for hook in self.hooks:
                hook.end(self, reason)
        return self.result(reason)

    def pause(self, seconds: float) -> None:
        """Leave ``seconds`` (spent outside fitting, e.g. evaluating) out of the clock."""
        self._t0 += seconds

    def result(self, reason: str) -> SVIResult:
        """The result of the steps so far, with the param store's current values."""
        s = self.state
        history, initial = s.history()
        recent = s.losses[-self.window:]
        final = sum(recent) / len(recent) if recent else math.nan
        store = pyro.get_param_store()
        params = {name: store[name].detach().clone() for name in store.keys()}
        return SVIResult(params=params, elbo=-final, converged=s.converged, n_steps=s.step,
                         history=history, model=self.model, guide=self.guide, data=self.args,
                         stop_reason=reason, initial_evaluation=initial)

    def snapshot(self) -> dict[str, Any]:
        """Everything a bitwise resume needs, as a picklable dict."""
        s = self.state
        self.guide_sites |= self.recorder.names
        cursor = self.cursor.state()
        if cursor.get("epoch_rng") is not None:
            cursor = {**cursor, "epoch_rng": rng_to_plain(cursor["epoch_rng"])}
        ranks = {}
        if self.comm is not None:  # collective: each rank's RNG and batch position
            ranks = {"world_size": self.comm.world_size, "ranks": self.comm.gather_object(
                {"rng": rng_to_plain(get_rng_state()), "cursor": cursor})}
        return {**ranks, "step": s.step, "seed": self.seed, "converged": s.converged,
                "param_store": store_to_plain(), "guide_sites": sorted(self.guide_sites),
                "optim": self.optim.get_state(), "rng": rng_to_plain(get_rng_state()),
                "cursor": cursor, "rule": rule_state(self.rule),
                "history": {"step": s.steps, "loss": s.losses, "seconds": s.seconds,
                            "epoch": s.epochs},
                "evaluations": s.evaluations}

    def _restore(self, saved: Mapping[str, Any]) -> None:
        if self.seed is not None and saved["seed"] is not None and saved["seed"] != self.seed:
            raise ValueError(f"seed={self.seed} differs from the checkpoint's seed {saved['seed']}")
        world = 1 if self.comm is None else self.comm.world_size
        if self.comm is not None and saved.get("world_size") != world:
            found = saved.get("world_size")
            raise ValueError(f"{saved.get('path', 'the checkpoint')} was written by "
                             f"{'a single-process run' if found is None else f'{found} ranks'}; "
                             f"resume it with as many ranks (this run has {world})")
        prime(self.elbo, self.svi.model, self.svi.guide, self.batches, self.args, self.kwargs)
        self.guard.aliases.unalias()  # before the saved values are copied into the params
        self.guide_sites = set(self.recorder.names)
        check_compatible(dict(saved), self.guide_sites,
                         where=str(saved.get("path", "the checkpoint")))
        restore_param_store(saved["param_store"])
        self.optim.set_state(saved["optim"])
        h = saved["history"]
        self.state = SVIState(step=saved["step"], converged=saved["converged"],
                              steps=list(h["step"]), losses=list(h["loss"]),
                              seconds=list(h["seconds"]), epochs=list(h["epoch"]),
                              evaluations={k: dict(v) for k, v in saved["evaluations"].items()})
        self.rule = restore_rule(saved["rule"])
        mine = saved if self.comm is None else saved["ranks"][self.comm.rank]
        self.cursor.restore(mine["cursor"])
        set_rng_state(mine["rng"])
