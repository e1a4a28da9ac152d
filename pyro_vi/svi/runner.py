"""The SVI loop Pyro users hand-write, with a stopping rule, a history and checkpoints.

:func:`fit_svi` is a thin driver around :class:`pyro.infer.SVI`: any Pyro model/guide pair and
any ELBO work unchanged. It adds what every hand-written ``for step in range(n): svi.step()``
loop lacks: a convergence rule, a progress bar, seeding, minibatches, a guard against NaN/inf,
atomic checkpoints with bitwise-exact resume, clean Ctrl-C, and a typed result.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sized
from pathlib import Path
from typing import Any

import pandas as pd
import pyro
import pyro.optim
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.elbo import ELBO
from pyro.util import get_rng_state, set_rng_state
from tqdm.std import tqdm

from pyro_vi.results import SVIResult
from pyro_vi.svi.batches import BatchCursor, split_batch
from pyro_vi.svi.checkpoint import load_checkpoint, restore_param_store, save_checkpoint
from pyro_vi.svi.guard import FiniteGuard, NonFiniteLossError, NonFiniteStep, describe
from pyro_vi.svi.stopping import WindowRule

__all__ = ["NonFiniteLossError", "SVIResult", "fit_svi"]

#: Pyro's own NaN warning (``pyro.util.warn_if_nan``); fit_svi raises an error instead.
_PYRO_NAN_WARNING = r"Encountered (NaN|[+-]?inf)"


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _validate(model: Any, guide: Any, elbo: Any, optim: Any, num_steps: Any, batches: Any,
              tol: Any, window: Any, patience: Any, seed: Any, progress: Any, checkpoint: Any,
              checkpoint_every: Any, resume: Any, callback: Any) -> None:
    """Raise TypeError/ValueError naming the first bad argument, before any work."""
    for name, fn in (("model", model), ("guide", guide)):
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    if elbo is not None and not isinstance(elbo, ELBO):
        raise TypeError(f"elbo must be a pyro.infer.ELBO instance, got {type(elbo).__name__}")
    if optim is not None and not isinstance(optim, pyro.optim.PyroOptim):
        raise TypeError(f"optim must be a pyro.optim.PyroOptim, got {type(optim).__name__}")
    for name, value, low in (("num_steps", num_steps, 1), ("window", window, 1),
                             ("patience", patience, 1), ("checkpoint_every", checkpoint_every, 1)):
        _check_int(name, value, low)
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol must be a real number, got {type(tol).__name__}")
    if not (float(tol) >= 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be finite and >= 0, got {tol}")
    if seed is not None:
        _check_int("seed", seed, 0)
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be None, True or False, got {type(progress).__name__}")
    if batches is not None:
        if not isinstance(batches, Iterable) or isinstance(batches, str | bytes):
            raise TypeError(f"batches must be an iterable of batches, got {type(batches).__name__}")
        if iter(batches) is batches:
            raise TypeError("batches must be re-iterable (a list, a DataLoader), not a one-shot "
                            "iterator or generator: it is iterated again at every epoch")
        if isinstance(batches, Sized) and len(batches) == 0:
            raise ValueError("batches is empty")
    if checkpoint is not None and not isinstance(checkpoint, str | os.PathLike):
        raise TypeError(f"checkpoint must be a path, got {type(checkpoint).__name__}")
    if checkpoint is not None and not Path(checkpoint).parent.is_dir():
        raise ValueError(f"checkpoint={str(checkpoint)!r}: directory does not exist")
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be a bool, got {type(resume).__name__}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=<path>")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")


def fit_svi(model: Callable[..., Any], guide: Callable[..., Any], *args: Any,
            elbo: ELBO | None = None, optim: pyro.optim.PyroOptim | None = None,
            num_steps: int = 5000, batches: Iterable[Any] | None = None, tol: float = 1e-4,
            window: int = 100, patience: int = 3, seed: int | None = None,
            progress: bool | None = None, checkpoint: str | os.PathLike[str] | None = None,
            checkpoint_every: int = 500, resume: bool = False,
            callback: Callable[[int, float], bool | None] | None = None,
            **kwargs: Any) -> SVIResult:
    r"""Fit ``guide`` to ``model`` by stochastic variational inference.

    Each step is one :meth:`pyro.infer.SVI.step` on the loss :math:`-\widehat{\mathrm{ELBO}}`
    of ``elbo`` (Ranganath et al. 2014; Kingma & Welling 2014), called as
    ``svi.step(*batch, *args, **kwargs)``.

    **Stopping rule.** Steps are grouped in non-overlapping windows of ``window`` steps with
    mean loss :math:`\bar L_k`. The run has converged when

    .. math::

        \frac{|\bar L_k - \bar L_{k-1}|}{\max(|\bar L_{k-1}|, 1)} < \mathrm{tol}

    for ``patience`` consecutive windows (the floor of 1 nat keeps a loss near zero from
    inflating the ratio); otherwise it stops after ``num_steps`` steps in total.

    **Minibatches.** With ``batches`` (a list of tensors or tuples, a ``DataLoader``, any
    re-iterable), step :math:`t` takes the next batch and the iterable is re-iterated at the
    end of each epoch. A tuple/list batch is unpacked into positional arguments before
    ``args``, a mapping is merged into ``kwargs``. The model must scale its likelihood by
    :math:`N/|B|` so that the minibatch loss is unbiased for the full-data loss (Hoffman et al.
    2013, §2): declare ``pyro.plate("data", size=N, subsample=idx)`` and Pyro applies the
    factor. E.g. with ``DataLoader(TensorDataset(x, torch.arange(N)), batch_size=B,
    shuffle=True)`` each batch is ``[x_b, idx_b]`` and the call is
    ``model(x_b, idx_b, *args)``. On resume the epoch is rebuilt and the batches already used
    are skipped (see :mod:`pyro_vi.svi.batches`).

    Parameters
    ----------
    model, guide
        Pyro callables; ``*args`` and ``**kwargs`` are passed to both at every step.
    elbo
        Any :class:`pyro.infer.ELBO` (default ``Trace_ELBO()``).
    optim
        A :class:`pyro.optim.PyroOptim` (default ``Adam({"lr": 0.01})``).
    num_steps
        Total step budget, counting steps before a resume.
    batches
        Re-iterable of minibatches, or None.
    tol, window, patience
        The stopping rule above; ``tol=0`` runs all ``num_steps``.
    seed
        If given, :func:`pyro.set_rng_seed` first: on CPU, equal seeds with a fresh param store
        and fresh guide give bitwise equal histories.
    progress
        tqdm bar on stderr with the running ELBO; None shows it only when stderr is a terminal.
    checkpoint, checkpoint_every
        Path of a checkpoint written atomically every ``checkpoint_every`` steps and at the end
        (param store, optimizer state, torch/python/numpy RNG states, history, loop and batch
        position). See :mod:`pyro_vi.svi.checkpoint`.
    resume
        Continue from ``checkpoint`` if the file exists (else start afresh).
    callback
        ``callback(step, loss)`` after every step; returning True stops the run.

    Returns
    -------
    SVIResult
        Params, history, converged flag, steps and the stop reason.

    Raises
    ------
    NonFiniteLossError
        On a NaN/inf loss or gradient; ``err.result`` holds the last finite step's params.

    .. warning::
        The stopping rule compares noisy Monte-Carlo losses: with a high-variance estimator
        ``tol`` may never be met (raise ``window`` or ``tol``) or be met by chance early (raise
        ``patience``). Exceptions other than Ctrl-C propagate; a resume continues from the last
        checkpoint, not from the crash or Ctrl-C point. Resume reproduces an uninterrupted run
        bitwise on CPU only with the first run's model, guide and data, a fresh optimizer, and
        a batch iterable whose randomness comes from the global RNG (a ``DataLoader`` with or
        without ``shuffle``; not one with its own generator seeded once per process). Ctrl-C
        during a step may leave that step half applied.
        Same-seed runs are bitwise equal only from an equal param store and a fresh guide
        (autoguides keep their parameters).

    References
    ----------
    Ranganath, Gerrish & Blei (2014). Black box variational inference. AISTATS.
    Kingma & Welling (2014). Auto-encoding variational Bayes. ICLR.
    Hoffman, Blei, Wang & Paisley (2013). Stochastic variational inference. JMLR 14.
    Pyro's :class:`pyro.infer.SVI` (Bingham et al. 2019, JMLR 20(28)).

    Examples
    --------
    >>> import pyro, torch, pyro.distributions as dist
    >>> from pyro.infer.autoguide import AutoNormal
    >>> def model(x):
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    ...     with pyro.plate("data", len(x)):
    ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
    >>> x = torch.tensor([0.9, 1.1, 1.3, 0.7])
    >>> pyro.clear_param_store()
    >>> fit = fit_svi(model, AutoNormal(model), x, num_steps=300, seed=0, progress=False,
    ...               optim=pyro.optim.ClippedAdam({"lr": 0.1, "lrd": 0.99}))
    >>> fit.stop_reason, fit.n_steps, list(fit.history.columns)
    ('max_steps', 300, ['step', 'loss', 'elbo', 'seconds'])
    >>> # exact posterior: N(4 / 4.01, 1 / 4.01)
    >>> loc, scale = fit.params["AutoNormal.locs.mu"], fit.params["AutoNormal.scales.mu"]
    >>> abs(loc.item() - 4 / 4.01) < 0.1, abs(scale.item() - 4.01 ** -0.5) < 0.05
    (True, True)
    """
    _validate(model, guide, elbo, optim, num_steps, batches, tol, window, patience, seed,
              progress, checkpoint, checkpoint_every, resume, callback)
    elbo = Trace_ELBO() if elbo is None else elbo
    loss_fn: Any = elbo  # pyro.infer.ELBO declares neither .loss nor .loss_and_grads
    optim = pyro.optim.Adam({"lr": 0.01}) if optim is None else optim  # type: ignore[attr-defined]
    guard = FiniteGuard(elbo)
    svi = SVI(model, guide, optim, loss=loss_fn.loss, loss_and_grads=guard)
    rule = WindowRule(float(tol), window, patience)
    cursor = BatchCursor(batches, track_rng=checkpoint is not None)
    steps: list[int] = []
    losses: list[float] = []
    seconds: list[float] = []
    converged = False
    if seed is not None:
        pyro.set_rng_seed(seed)
    if resume and checkpoint is not None and Path(checkpoint).exists():
        saved = load_checkpoint(checkpoint)
        if seed is not None and saved["seed"] is not None and saved["seed"] != seed:
            raise ValueError(f"seed={seed} differs from the checkpoint's seed {saved['seed']}")
        _prime(elbo, model, guide, batches, args, kwargs)
        restore_param_store(saved["param_store"])
        optim.set_state(saved["optim"])
        steps, losses, seconds = (list(saved["history"][k]) for k in ("step", "loss", "seconds"))
        rule = WindowRule(**saved["rule"])
        converged = saved["converged"]
        cursor.restore(saved["cursor"])
        set_rng_state(saved["rng"])
    step, saved_at = len(losses), len(losses)

    def snapshot() -> dict[str, Any]:
        return {"step": step, "seed": seed, "converged": converged,
                "param_store": pyro.get_param_store().get_state(), "optim": optim.get_state(),
                "rng": get_rng_state(), "cursor": cursor.state(), "rule": vars(rule).copy(),
                "history": {"step": steps, "loss": losses, "seconds": seconds}}

    show = _stderr_is_terminal() if progress is None else progress
    bar = tqdm(total=num_steps, initial=step, desc="SVI", file=sys.stderr, disable=not show,
               dynamic_ncols=True)
    reason = "converged" if converged else "max_steps"
    t0 = time.perf_counter() - (seconds[-1] if seconds else 0.0)
    batch_args: tuple[Any, ...] = ()
    batch_kwargs: dict[str, Any] = {}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_PYRO_NAN_WARNING)
            while step < num_steps and not converged:
                batch_args, batch_kwargs = cursor.next()
                loss = float(svi.step(*batch_args, *args, **kwargs, **batch_kwargs))
                step += 1
                steps.append(step)
                losses.append(loss)
                seconds.append(time.perf_counter() - t0)
                converged = rule.update(loss)
                if show:
                    bar.update(1)
                    if step % 10 == 0:
                        recent = losses[-window:]
                        bar.set_postfix_str(f"elbo={-sum(recent) / len(recent):.6g}",
                                            refresh=False)
                if callback is not None and callback(step, loss):
                    reason = "callback"
                    break
                if checkpoint is not None and step % checkpoint_every == 0:
                    save_checkpoint(checkpoint, snapshot())
                    saved_at = step
            reason = "converged" if converged else reason
    except KeyboardInterrupt:
        reason = "interrupted"
    except NonFiniteStep as bad:
        msg, sites = describe(bad, step + 1, guard, model, guide, (*batch_args, *args),
                              {**kwargs, **batch_kwargs})
        partial = _result(steps, losses, seconds, window, False, "non_finite", model, guide, args)
        raise NonFiniteLossError(msg, step=step + 1, sites=sites, result=partial) from None
    finally:
        bar.close()
    if checkpoint is not None and reason != "interrupted" and saved_at != step:
        save_checkpoint(checkpoint, snapshot())
    return _result(steps, losses, seconds, window, converged, reason, model, guide, args)


def _prime(elbo: Any, model: Callable[..., Any], guide: Callable[..., Any],
           batches: Iterable[Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Run one throw-away ``loss_and_grads`` before a resume restores the RNG state.

    Lazily created state (autoguide prototypes, ``pyro.module`` registrations, a guessed
    ``max_plate_nesting``, JIT compilation) is created here, consuming random numbers that the
    restored RNG state then overrides, as the first run created it at its step 1.
    """
    batch = next(iter(batches)) if batches is not None else ()
    batch_args, batch_kwargs = split_batch(batch)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PYRO_NAN_WARNING)
        elbo.loss_and_grads(model, guide, *batch_args, *args, **kwargs, **batch_kwargs)
    for _, p in pyro.get_param_store().named_parameters():
        if p.grad is not None:
            p.grad = torch.zeros_like(p.grad)


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)  # sys.stderr may be None (pythonw) or a stub
    return bool(isatty()) if callable(isatty) else False


def _params() -> dict[str, torch.Tensor]:
    store = pyro.get_param_store()
    return {name: store[name].detach().clone() for name in store.keys()}


def _result(steps: list[int], losses: list[float], seconds: list[float], window: int,
            converged: bool, reason: str, model: Callable[..., Any],
            guide: Callable[..., Any], args: tuple[Any, ...]) -> SVIResult:
    history = pd.DataFrame({"step": pd.Series(steps, dtype="int64"),
                            "loss": pd.Series(losses, dtype="float64"),
                            "seconds": pd.Series(seconds, dtype="float64")})
    history.insert(2, "elbo", -history["loss"])
    recent = losses[-window:]
    final = sum(recent) / len(recent) if recent else math.nan
    return SVIResult(params=_params(), elbo=-final, converged=converged, n_steps=len(losses),
                     history=history, model=model, guide=guide, data=args, stop_reason=reason)
