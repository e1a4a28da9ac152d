"""The SVI loop Pyro users hand-write, as one call: :func:`fit_svi`.

:func:`fit_svi` checks its keyword options, builds the hooks (evaluation, progress, the user's
callback, checkpoints) and runs one :class:`~pyro_vi.svi.loop.SVIRun`, a thin driver around
:class:`pyro.infer.SVI`, so any Pyro model/guide pair and any ELBO work unchanged. It adds
what every hand-written ``for step in range(n): svi.step()`` loop lacks: a convergence rule,
epochs, periodic evaluation, a progress bar, seeding, a guard against NaN/inf, atomic
checkpoints with bitwise-exact resume, clean Ctrl-C, and a typed :class:`~pyro_vi.SVIResult`.
The step after a fit is ``fit.diagnose()`` (:func:`pyro_vi.diagnose`): is the ELBO flat, and
can the guide be trusted?

.. warning::
    The loop drives Pyro's *global* param store: a run starts from whatever it holds (clear it
    with :func:`pyro.clear_param_store` for a fresh fit), and two runs must not interleave.

References
----------
Ranganath, Gerrish & Blei (2014). Black box variational inference. AISTATS.
Hoffman, Blei, Wang & Paisley (2013). Stochastic variational inference. JMLR 14.
Bingham et al. (2019). Pyro: deep universal probabilistic programming. JMLR 20(28).

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
>>> fit = fit_svi(model, guide, torch.full((4,), 2.0), num_steps=200, seed=0, progress=False,
...               optim=pyro.optim.Adam({"lr": 0.1}))
>>> abs(fit.params["m"].item() - 8 / 4.01) < 1e-3          # the MAP of mu
True
"""

from __future__ import annotations

import difflib
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sized
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
from pyro.infer.elbo import ELBO

from pyro_vi._checks import check_bool, check_callable, check_int, check_real, check_seed
from pyro_vi._io import check_writable
from pyro_vi.distributed.collectives import Comm
from pyro_vi.results import SVIResult
from pyro_vi.svi.checkpoint import Checkpointer, load_checkpoint
from pyro_vi.svi.guard import NonFiniteLossError
from pyro_vi.svi.hooks import Callback, Evaluate, Hook, Progress
from pyro_vi.svi.loop import SVIRun, SVIState
from pyro_vi.svi.stopping import RULES, step_budget

__all__ = ["NonFiniteLossError", "SVIResult", "SVIRun", "SVIState", "fit_svi"]


def _check_batches(batches: Any) -> None:
    if batches is None:
        return
    if not isinstance(batches, Iterable) or isinstance(batches, str | bytes):
        raise TypeError(f"batches must be an iterable of batches, got {type(batches).__name__}")
    if iter(batches) is batches:
        raise TypeError("batches must be re-iterable (a list, a DataLoader), not a one-shot "
                        "iterator or generator: it is iterated again at every epoch")
    if isinstance(batches, Sized) and len(batches) == 0:
        raise ValueError("batches is empty")


def _check_evaluate(evaluate: Any) -> tuple[int, Callable[..., Any]] | None:
    if evaluate is None:
        return None
    if not isinstance(evaluate, tuple | list) or len(evaluate) != 2:
        raise TypeError(f"evaluate must be a pair (every, fn), got {type(evaluate).__name__}")
    return (check_int("evaluate every", evaluate[0], minimum=1),
            check_callable("evaluate fn", evaluate[1]))


def _accepts(fn: Callable[..., Any]) -> tuple[set[str], bool] | None:
    """The keyword names ``fn`` takes and whether it has ``**kwargs``; None if unknown."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or an exotic callable: nothing to check
        return None
    names = {p.name for p in sig.parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def _check_model_kwargs(model: Callable[..., Any], guide: Callable[..., Any],
                        kwargs: Mapping[str, Any]) -> None:
    """Refuse a keyword that the model or the guide cannot take, naming the nearest option.

    Keywords other than fit_svi's own options go to the model and guide at every step, so a
    typo (``loss=`` for ``elbo=``) would fail inside the model at step 1, or be swallowed by a
    model with ``**kwargs``. A keyword must be a named parameter of a callable that lists it,
    or go to one with ``**kwargs``; one that is close to a fit_svi option and named by neither
    callable is refused even then.
    """
    if not kwargs:
        return
    options = [p for p in inspect.signature(fit_svi).parameters if p not in ("model", "guide",
                                                                           "args", "kwargs")]
    for key in kwargs:
        named: set[str] = set()
        for role, fn in (("model", model), ("guide", guide)):
            accepted = _accepts(fn)
            if accepted is None:
                continue
            names, var = accepted
            named |= names
            if key not in names and not var:
                near = difflib.get_close_matches(key, [*options, *sorted(names)], n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise TypeError(f"fit_svi got an unknown option {key!r}: it is not a fit_svi "
                                f"option and the {role} takes no such keyword{hint}")
        near = difflib.get_close_matches(key, options, n=1, cutoff=0.75)
        if key not in named and near:
            raise TypeError(f"fit_svi got an unknown option {key!r} (passed on to the model's "
                            f"**kwargs); did you mean {near[0]!r}?")


def fit_svi(model: Callable[..., Any], guide: Callable[..., Any], *args: Any,
            elbo: ELBO | None = None, optim: pyro.optim.PyroOptim | None = None,
            num_steps: int | None = None, num_epochs: int | None = None,
            batches: Iterable[Any] | None = None, tol: float = 1e-4, window: int = 100,
            patience: int = 3, rule: str = "noise", z: float = 2.0, seed: int | None = None,
            progress: bool | None = None,
            checkpoint: str | os.PathLike[str] | None = None, checkpoint_every: int = 500,
            resume: bool = False, callback: Callable[[int, float], bool | None] | None = None,
            evaluate: tuple[int, Callable[[SVIState], Mapping[str, Any]]] | None = None,
            distributed: bool = False, **kwargs: Any) -> SVIResult:
    r"""Fit ``guide`` to ``model`` by stochastic variational inference.

    Each step is one :meth:`pyro.infer.SVI.step` on the loss :math:`-\widehat{\mathrm{ELBO}}`
    of ``elbo`` (Ranganath et al. 2014; Kingma & Welling 2014), called as
    ``svi.step(*batch, *args, **kwargs)``.

    **Stopping rule.** Steps are grouped in non-overlapping windows of ``window`` steps with
    mean loss :math:`\bar L_k` and sample variance :math:`s_k^2`. By default
    (``rule="noise"``) window :math:`k` is flat when its mean moved by no more than ``z``
    standard errors of the difference, or by less than ``tol`` relative to the loss:

    .. math::

        |\bar L_k - \bar L_{k-1}| \le z \sqrt{(s_k^2 + s_{k-1}^2) / w}
        \quad\text{or}\quad
        \frac{|\bar L_k - \bar L_{k-1}|}{\max(|\bar L_{k-1}|, 1)} < \mathrm{tol},

    and the run has converged after ``patience`` consecutive flat windows; otherwise it stops
    when the step budget is spent. The first clause lets a 1-particle ELBO, whose noise dwarfs
    ``tol``·|loss|, converge once its mean stops moving; the second serves deterministic
    losses. ``rule="relative"`` keeps only the second clause (the earlier default, which with a
    noisy loss rarely fires). ``tol=0`` turns both off. Every rule and its ``stop_reason`` is
    listed in :mod:`pyro_vi.svi.stopping`.

    **After the fit: diagnose it.** A converged rule only says the loss stopped moving; a
    model whose likelihood is counted 8 times by a broadcasting bug "converges" as well as the
    right one. ``fit.diagnose()`` (:func:`pyro_vi.diagnose`: ELBO flatness, PSIS
    :math:`\hat k`, optionally NUTS) is the step that says whether the fit can be trusted.

    **Minibatches and epochs.** With ``batches`` (a list of tensors or tuples, a
    ``DataLoader``, any re-iterable), step :math:`t` takes the next batch and the iterable is
    re-iterated at the end of each epoch; the history gains an ``epoch`` column (1-based). A
    tuple/list batch is unpacked into positional arguments before ``args``, a mapping is
    merged into ``kwargs``. The model must scale its likelihood by :math:`N/|B|` so that the
    minibatch loss is unbiased for the full-data loss (Hoffman et al. 2013, §2): declare
    ``pyro.plate("data", size=N, subsample=idx)`` and Pyro applies the factor. E.g. with
    ``DataLoader(TensorDataset(x, torch.arange(N)), batch_size=B, shuffle=True)`` each batch
    is ``[x_b, idx_b]`` and the call is ``model(x_b, idx_b, *args)``. The budget is either
    ``num_steps`` steps or ``num_epochs`` whole passes (``num_epochs * len(batches)`` steps),
    never both. On resume the epoch is rebuilt and the batches already used are skipped (see
    :mod:`pyro_vi.svi.batches`).

    **Evaluation.** ``evaluate=(every, fn)`` calls ``fn(state)`` (an :class:`SVIState`) before
    the first step, every ``every`` steps and after the last one, and the mapping of numbers
    it returns becomes extra history columns (NaN on the other steps; the values before the
    first step are ``result.initial_evaluation``). Evaluations take no part in the stopping
    rule, their time is left out of ``seconds``, and they leave the RNG state as they found
    it (see :class:`~pyro_vi.svi.hooks.Evaluate`).

    Parameters
    ----------
    model, guide
        Pyro callables; ``*args`` and ``**kwargs`` are passed to both at every step.
    elbo
        Any :class:`pyro.infer.ELBO` (default ``Trace_ELBO()``).
    optim
        A :class:`pyro.optim.PyroOptim` (default ``Adam({"lr": 0.01})``).
    num_steps
        Total step budget, counting steps before a resume (default 5000).
    num_epochs
        Total budget in passes over ``batches``, which must have a ``len()``.
    batches
        Re-iterable of minibatches, or None.
    tol, window, patience
        The stopping rule above; ``tol=0`` runs the whole budget.
    rule
        ``"noise"`` (default: the standard-error test or ``tol``) or ``"relative"`` (``tol``
        only), as above.
    z
        Standard errors allowed by ``rule="noise"`` (default 2).
    seed
        If given, :func:`pyro.set_rng_seed` first: on CPU, equal seeds with a fresh param store
        and fresh guide give bitwise equal histories.
    progress
        tqdm bar on stderr with the running ELBO; None shows it only when stderr is a terminal.
    checkpoint, checkpoint_every
        Path of a checkpoint written atomically every ``checkpoint_every`` steps and at the end
        (param store, optimizer state, torch/python/numpy RNG states, history, evaluations,
        loop and batch position). See :mod:`pyro_vi.svi.checkpoint`.
    resume
        Continue from ``checkpoint`` if the file exists (else start afresh).
    callback
        ``callback(step, loss)`` after every step; returning True stops the run.
    evaluate
        ``(every, fn)``: periodic evaluation, as above.
    distributed
        Data-parallel SVI inside an initialised ``torch.distributed`` process group (see
        below).

    Returns
    -------
    SVIResult
        Params, history, converged flag, steps and the stop reason. Next, ``fit.diagnose()``
        reports whether the fit can be trusted, and ``fit.to_inference_data()`` exports it.

    Raises
    ------
    NonFiniteLossError
        On a NaN/inf loss or gradient, or a parameter that Pyro's validation rejects after a
        finite step (a scale driven to 0); ``err.result`` holds the history so far, and the
        last finite step's params are back in the param store.
    TypeError
        A keyword that neither fit_svi nor the model and guide take (naming the nearest).
    ValueError
        A ``checkpoint`` that cannot be written (a folder, read-only), or one of another guide
        on resume (naming the param or site that differs); a truncated file names the file.
    pyro_vi.svi.checkpoint.CheckpointError
        An ``OSError`` when a checkpoint save fails mid-run; ``err.result`` holds the run.

    **Distributed.** With ``distributed=True`` every rank of the process group (``torchrun``,
    :func:`pyro_vi.distributed.spawn`) calls ``fit_svi`` with its own rows or batches. Rank 0's
    initial params are broadcast (as :class:`~torch.nn.parallel.DistributedDataParallel`
    does at construction), and every step averages the ranks' losses and gradients in one
    ``all_reduce`` before the optimizer (DDP's mean, :class:`pyro_vi.distributed.gradients.
    AveragedELBO`): params, losses, the stopping rule and the history are bitwise identical on
    every rank. The model must declare its data plate with the *global* size,
    ``pyro.plate("data", N, subsample_size=len(x_rank))``, so each rank's loss estimates the
    full data's (a plate whose size differs across ranks is refused). ``seed`` seeds rank
    ``r`` with ``seed + r``. Only rank 0 shows progress and writes ``checkpoint`` (holding every
    rank's RNG state and batch position); ``resume`` reads rank 0's file and needs the same
    number of ranks. Any rank's callback stopping stops every rank; an error on one rank is
    raised on every rank. Evaluation columns are each rank's own.

    .. warning::
        The stopping rule compares noisy Monte-Carlo losses: a slow drift smaller than ``z``
        standard errors per window passes as flat (raise ``window`` or ``patience``, or lower
        ``z``; the benchmark ``pyro-vi bench stopping`` measures the cost on five models), and
        ``rule="relative"`` with a high-variance estimator may never be met. Exceptions other
        than Ctrl-C propagate; a resume continues from the last checkpoint, not from the crash
        or Ctrl-C point. Resume reproduces an uninterrupted run bitwise on CPU only with the
        first run's model, guide, data and evaluation, a fresh optimizer, and a batch iterable
        whose randomness comes from the global RNG (a ``DataLoader`` with or without
        ``shuffle``; not one with its own generator seeded once
        per process). Ctrl-C during a step may leave that step half applied.
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

    Two epochs over two minibatches (the plate scales each half by 2), with the posterior mean
    evaluated after each epoch (before step 1 the autoguide has no parameters yet):

    >>> def halves(xb):
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    ...     with pyro.plate("data", 4, subsample_size=len(xb)):
    ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=xb)
    >>> def mean(state):
    ...     return {"loc": pyro.param("AutoNormal.locs.mu").item()} if state.step else {}
    >>> pyro.clear_param_store()
    >>> fit = fit_svi(halves, AutoNormal(halves), batches=[x[:2], x[2:]], num_epochs=2, seed=0,
    ...               progress=False, evaluate=(2, mean))
    >>> fit.history[["step", "epoch"]].values.tolist(), fit.history["loc"].notna().tolist()
    ([[1, 1], [2, 1], [3, 2], [4, 2]], [False, True, False, True])
    >>> fit.evaluations["step"].tolist()
    [0, 2, 4]
    """
    for name, fn in (("model", model), ("guide", guide)):
        check_callable(name, fn)
    if elbo is not None and not isinstance(elbo, ELBO):
        raise TypeError(f"elbo must be a pyro.infer.ELBO instance, got {type(elbo).__name__}")
    if optim is not None and not isinstance(optim, pyro.optim.PyroOptim):
        raise TypeError(f"optim must be a pyro.optim.PyroOptim, got {type(optim).__name__}")
    _check_batches(batches)
    budget = step_budget(num_steps=num_steps, num_epochs=num_epochs, batches=batches)
    for name, value in (("window", window), ("patience", patience),
                        ("checkpoint_every", checkpoint_every)):
        check_int(name, value, minimum=1)
    tol = check_real("tol", tol, minimum=0.0)
    z = check_real("z", z, minimum=0.0)
    if not isinstance(rule, str):
        raise TypeError(f"rule must be a string, got {type(rule).__name__}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {sorted(RULES)}, got {rule!r}")
    seed = check_seed("seed", seed)
    show = check_bool("progress", progress, optional=True)
    if checkpoint is not None and not isinstance(checkpoint, str | os.PathLike):
        raise TypeError(f"checkpoint must be a path, got {type(checkpoint).__name__}")
    check_bool("resume", resume)
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=<path>")
    if callback is not None:
        check_callable("callback", callback)
    periodic = _check_evaluate(evaluate)
    check_bool("distributed", distributed)
    _check_model_kwargs(model, guide, kwargs)
    comm = Comm() if distributed else None
    lead = comm is None or comm.rank == 0

    hooks: list[Hook] = []
    if periodic is not None:
        hooks.append(Evaluate(*periodic))
    if lead and (_stderr_is_terminal() if show is None else show):
        hooks.append(Progress(budget, window))
    if callback is not None:
        hooks.append(Callback(callback))
    if checkpoint is not None:
        hooks.append(Checkpointer(checkpoint, checkpoint_every))
    run = SVIRun(model, guide, *args, elbo=elbo, optim=optim, num_steps=budget,
                 batches=batches, tol=tol, window=window, patience=patience, rule=rule, z=z,
                 seed=seed, hooks=hooks, comm=comm, **kwargs)
    saved = None
    try:  # only rank 0 writes the checkpoint and reads it for a resume
        if lead and checkpoint is not None:  # a folder, a read-only file: refused before step 1
            check_writable(checkpoint, what="checkpoint=")
        if lead and resume and checkpoint is not None and Path(checkpoint).exists():
            saved = load_checkpoint(checkpoint)
    except Exception as err:
        if comm is None:
            raise
        comm.fail(err)
    if comm is not None:
        saved = comm.broadcast_object(saved)
        try:
            run.init(checkpoint=saved)
        except Exception as err:  # noqa: BLE001 - raised on every rank
            comm.fail(err)
        return run.run()
    run.init(checkpoint=saved)
    return run.run()


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)  # sys.stderr may be None (pythonw) or a stub
    return bool(isatty()) if callable(isatty) else False
