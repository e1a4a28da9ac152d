"""Coordinate-ascent variational inference (CAVI) for conjugate-exponential models.

The engine is generic over any :class:`~pyro_vi.cavi.model.ConjugateModel`: a **local step**
(data → expected sufficient statistics, summed over the data, plus the data's share of the
ELBO), a **global step** (summed statistics → global variational parameters) and the **global
ELBO** terms. Because the local step's outputs are sums over data points, the engine can split
the data into chunks (bounded memory), minibatches (stochastic VI,
:func:`pyro_vi.cavi.stochastic.svi_cavi`) or processes, and add the pieces up.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from pyro_vi._checks import check_bool, check_int, check_optional_int, check_real, check_seed
from pyro_vi.cavi.model import (
    DEFAULT_CHUNK_BYTES,
    ConjugateModel,
    Local,
    Stats,
    check_params,
    local_pass,
    nonfinite_global_terms,
)
from pyro_vi.cavi.resolve import resolve_model
from pyro_vi.distributed.collectives import Comm
from pyro_vi.distributed.conjugate import (
    check_rows,
    global_roundoff,
    prepare_sharded,
    reduce_local,
    start_stats,
)
from pyro_vi.errors import ConvergenceWarning, ELBODecreaseError, NumericalError, PrecisionWarning
from pyro_vi.results import CAVIResult, CAVIRun

#: Screened restarts carried on to ``tol`` (:func:`cavi`'s ``screen_tol``).
SCREEN_KEEP = 3

__all__ = ["DEFAULT_CHUNK_BYTES", "CAVIResult", "CAVIRun", "ConjugateModel", "Local", "cavi",
           "local_pass"]

def _check_finite(local: Local, iteration: int) -> None:
    # One reduction in the common case: a NaN or inf anywhere makes the sum non-finite. A sum
    # that overflows although every entry is finite goes on to the entry-by-entry check, which
    # then finds nothing to report.
    quick = local.elbo + sum(s.sum() for s in local.stats)
    if torch.isfinite(quick):
        return
    if not torch.isfinite(local.elbo):
        raise NumericalError(
            f"CAVI iteration {iteration}: the ELBO is {float(local.elbo)}: the local step's "
            "share (the data terms, summed over points) is not finite")
    for i, s in enumerate(local.stats):
        if not torch.isfinite(s).all():
            raise NumericalError(f"CAVI iteration {iteration}: sufficient statistic {i} is not finite")


def _local(model: ConjugateModel, data: Any, params: Any, *, chunk_size: int | None,
           iteration: int, comm: Comm | None) -> Local:
    """The (checked) local pass over this process's rows; with ``comm``, summed over ranks."""
    if comm is None:
        local = local_pass(model, data, params, chunk_size=chunk_size)
        _check_finite(local, iteration)
        return local
    mine, err = None, None
    try:
        mine = local_pass(model, data, params, chunk_size=chunk_size)
        _check_finite(mine, iteration)
    except Exception as e:  # noqa: BLE001 - raised on every rank by reduce_local
        err = e
    total = reduce_local(mine, err, comm)
    _check_finite(total, iteration)  # an overflow of the sum
    return total


def param_tensors(params: Any) -> list[torch.Tensor]:
    """Every tensor of a params record (factor fields' tensors, fixed tensors), in field order."""
    out: list[torch.Tensor] = []
    for f in dataclasses.fields(params):
        v = getattr(params, f.name)
        out.extend([v] if isinstance(v, torch.Tensor) else
                   [t for t in vars(v).values() if isinstance(t, torch.Tensor)])
    return out


def _global_elbo(model: ConjugateModel, params: Any, iteration: int) -> float:
    """``model.global_elbo(params)``, or a NumericalError naming the term that is not finite."""
    value = float(model.global_elbo(params))
    if not math.isfinite(value):
        raise NumericalError(f"CAVI iteration {iteration}: the ELBO is {value}: "
                             f"{nonfinite_global_terms(model, params)}")
    return value


def _decrease_message(noise: float | None, it: int, old: float, new: float) -> str:
    """Say why the ELBO fell: round-off of the data's magnitude (``noise``), or a wrong update."""
    head = (f"CAVI iteration {it}: the ELBO decreased from {old:.12g} to {new:.12g} "
            f"(by {old - new:.3g})")
    if noise is not None and old - new <= noise:
        return (f"{head}, within the ELBO's round-off for this data (about {noise:.3g} nats: "
                "values far from their mean or spread over many orders of magnitude lose "
                "digits in this dtype). This is a precision problem, not a wrong update; the "
                "run stops here with its fit. To resolve more, centre and scale the data "
                "((x - x.mean(0)) / x.std(0)) or fit in dtype=torch.float64")
    extra = "" if noise is None else f" (the data's round-off is only about {noise:.3g} nats)"
    return (f"{head}; coordinate ascent cannot do that, so an update is wrong{extra}")


def _validate_options(max_iter: Any, tol: Any, n_init: Any, chunk_size: Any, monotone_rtol: Any,
                      seed: Any, progress: Any, warn: Any, distributed: Any = False) -> None:
    check_int("max_iter", max_iter, minimum=1)
    check_real("tol", tol, minimum=0.0)
    check_int("n_init", n_init, minimum=1)
    check_optional_int("chunk_size", chunk_size, minimum=0)
    check_real("monotone_rtol", monotone_rtol, minimum=0.0)
    check_seed("seed", seed)
    check_bool("progress", progress, optional=True)
    check_bool("warn", warn)
    check_bool("distributed", distributed)


def _one_run(
    model: ConjugateModel,
    data: Any,
    init_stats: Stats,
    *,
    max_iter: int,
    tol: float,
    chunk_size: int | None,
    monotone_rtol: float,
    bar: Any,
    roundoff: Callable[[], float | None],
    comm: Comm | None = None,
    params0: Any = None,
) -> CAVIRun:
    t0 = time.perf_counter()
    params = check_params(model.global_step(init_stats, params0), where="the global step's params")
    if comm is not None:  # a prepare_shard that kept data-dependent choices local shows here
        comm.check_identical(param_tensors(params), what=(
            f"the first global parameters of {type(model).__name__} (its prepare_shard or "
            "init_stats_shard depends on the rank's rows)"))
    local = _local(model, data, params, chunk_size=chunk_size, iteration=0, comm=comm)
    elbo = float(local.elbo) + _global_elbo(model, params, 0)
    # The bound is evaluated in the model's dtype and its local step in its compute precision:
    # never ask for less than their round-off.
    allowance = max(monotone_rtol, 1e3 * max(torch.finfo(local.elbo.dtype).eps, model.compute_eps()))
    rows = [(0, elbo, time.perf_counter() - t0)]
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        params = model.global_step(local.stats, params)
        local = _local(model, data, params, chunk_size=chunk_size, iteration=it, comm=comm)
        new = float(local.elbo) + _global_elbo(model, params, it)
        rows.append((it, new, time.perf_counter() - t0))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(elbo=f"{new:.6g}")
        change = new - elbo
        scale = max(abs(new), 1.0)
        if change < -allowance * scale:
            noise = roundoff()
            if noise is None or elbo - new > noise:
                raise ELBODecreaseError(_decrease_message(noise, it, elbo, new))
            # Within the data's round-off: as far as this dtype can resolve. Stop, keep the fit.
            warnings.warn(_decrease_message(noise, it, elbo, new), PrecisionWarning,
                          stacklevel=3)
            elbo = new
            converged = True
            break
        elbo = new
        if abs(change) < tol * scale:
            converged = True
            break
    history = pd.DataFrame(rows, columns=["step", "elbo", "seconds"])
    return CAVIRun(params=params, elbo=elbo, n_steps=it, converged=converged, history=history)


def _polish(model: ConjugateModel, data: Any, run: CAVIRun, *, max_iter: int, tol: float,
            chunk_size: int | None, monotone_rtol: float, bar: Any,
            roundoff: Callable[[], float | None], comm: Comm | None) -> CAVIRun:
    """Continue a screened ``run`` to ``tol``: the same sweeps it would have gone on with.

    The statistics of the run's last params start the next global step (which also gets those
    params), so the polished run is the run itself, carried on; its history continues the
    screened one's steps and clock.
    """
    left = max_iter - run.n_steps - 1
    if left < 1:
        return run
    t0 = time.perf_counter()
    local = _local(model, data, run.params, chunk_size=chunk_size, iteration=run.n_steps, comm=comm)
    offset = float(run.history.seconds.iloc[-1]) + time.perf_counter() - t0  # and the extra local pass
    more = _one_run(model, data, local.stats, max_iter=left, tol=tol, chunk_size=chunk_size,
                    monotone_rtol=monotone_rtol, bar=bar, roundoff=roundoff, comm=comm,
                    params0=run.params)
    tail = more.history.assign(step=more.history.step + run.n_steps + 1,
                               seconds=more.history.seconds + offset)
    history = pd.concat([run.history, tail], ignore_index=True)
    return CAVIRun(params=more.params, elbo=more.elbo, n_steps=run.n_steps + 1 + more.n_steps,
                   converged=more.converged, history=history)


def _move_search(model: ConjugateModel, data: Any, best: CAVIRun, *, moves: int, run_tol: float,
                 tol: float, run: Callable[..., CAVIRun],
                 polish: Callable[[CAVIRun], CAVIRun]) -> tuple[CAVIRun, pd.DataFrame]:
    """Up to ``moves`` runs from the model's proposals (:meth:`ConjugateModel.proposals`), first improvement.

    Each round asks the model for proposals from the best run's params and runs them in order
    (like a restart, to ``run_tol``); the first that ends above the best by more than ``tol``
    relative becomes the best (carried on to ``tol``: ``polish``) and a new round starts from
    it. The search stops when a round's proposals all fail, or after ``moves`` runs. A move
    run that stops on numerical trouble (:class:`~pyro_vi.errors.NumericalError`, its
    :class:`~pyro_vi.errors.ELBODecreaseError` included, e.g. a degenerate split) is a failed
    move (``elbo`` NaN), not a failed fit: the restarts ran the same updates and passed. Returns the best run
    and one row per run: ``move``, ``elbo``, ``accepted``, ``sweeps``, ``seconds`` (wall clock
    since the search began, at the run's end).
    """
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    while len(rows) < moves:
        improved = False
        for what, stats in model.proposals(data, best.params):
            if len(rows) >= moves:
                break
            try:
                cand = run(stats, run_tol)
            except NumericalError:
                rows.append({"move": what, "elbo": math.nan, "accepted": False, "sweeps": 0,
                             "seconds": time.perf_counter() - t0})
                continue
            improved = cand.elbo - best.elbo > tol * max(abs(best.elbo), 1.0)
            if improved:
                cand = polish(cand)
                best = cand
            rows.append({"move": what, "elbo": cand.elbo, "accepted": improved,
                         "sweeps": cand.n_steps, "seconds": time.perf_counter() - t0})
            if improved:
                break
        if not improved:
            break
    table = pd.DataFrame(rows, columns=["move", "elbo", "accepted", "sweeps", "seconds"])
    return best, table


def cavi(
    model: Any,
    *data: Any,
    max_iter: int = 500,
    tol: float = 1e-8,
    n_init: int = 1,
    seed: int | None = 0,
    chunk_size: int | None = None,
    progress: bool | None = False,
    monotone_rtol: float = 1e-9,
    warn: bool = True,
    init: Any = None,
    joint: bool = True,
    distributed: bool = False,
    screen_tol: float | None = None,
    moves: int = 0,
    **model_kwargs: Any,
) -> CAVIResult:
    r"""Fit a conjugate-exponential model by coordinate ascent; keep the best of ``n_init``.

    Each sweep updates every global factor to

    .. math:: q^*(\theta_j) \propto \exp E_{q(\theta_{-j})}[\log p(x, \theta)]

    (Bishop 2006, eq. 10.9) through the model's global step, then every local factor (e.g.
    the responsibilities, eq. 10.49) through its local step. The ELBO is evaluated after every
    sweep; it can never decrease, so a drop of more than ``monotone_rtol · max(|ELBO|, 1)``
    raises :class:`~pyro_vi.errors.ELBODecreaseError` naming the iteration, unless the drop is
    within the round-off that the data's magnitude causes (:meth:`ConjugateModel.elbo_roundoff
    <pyro_vi.cavi.model.ConjugateModel.elbo_roundoff>`, e.g. raw columns far from zero): then
    the run has gone as far as its dtype can resolve, stops as converged, and a
    :class:`~pyro_vi.errors.PrecisionWarning` says so and what to do.

    Parameters
    ----------
    model : ConjugateModel or callable
        Any subclass of :class:`~pyro_vi.cavi.model.ConjugateModel`, e.g.
        :class:`pyro_vi.models.gmm.GaussianMixture`, or a plain Pyro model: its conjugate
        structure is then detected and the updates derived (:func:`pyro_vi.conjugacy` shows
        what was found; a site without a closed-form update raises
        :class:`~pyro_vi.errors.NotConjugateError` before any work).
    *data : Any
        A ConjugateModel's data as one argument (for the GMM an ``(N, D)`` float tensor or
        array); a Pyro model's positional arguments.
    max_iter : int, keyword-only
        Maximum number of sweeps per restart.
    tol : float
        Stop when ``|ΔELBO| < tol · max(|ELBO|, 1)`` (relative change; ``tol=0`` runs all
        ``max_iter`` sweeps, as scikit-learn's ``tol=0`` does). A float32 model's
        ELBO carries ~1e-6 relative round-off, so it needs ``tol >= 1e-6`` to converge.
    n_init : int
        Number of restarts; restart ``i`` uses seed ``seed + i``. The best final ELBO wins.
    screen_tol : float or None
        With ``n_init > 1``: run every restart only to ``tol=screen_tol`` (e.g. ``1e-5``), then
        carry the :data:`SCREEN_KEEP` (3) best of them on to ``tol``, each along its own path;
        the other runs in ``fit.runs`` stop at ``screen_tol``. Most sweeps of a restart creep
        towards an optimum that is already ranked: on Old Faithful, iris, wine, breast cancer
        and a penguins-sized set (K = 2× the classes, 10 k-means++ starts, 8 seeds each),
        ``screen_tol=1e-5`` took 0.57-0.71 of the sweeps (0.98 on Old Faithful, whose starts
        converge fast) and every one of the 40 fits ended at the optimum full runs of every start
        find best; ``1e-4`` took 0.39-0.78 but missed it in 9 of 40 (a start creeping along a
        plateau at the screen climbs past the others later). None (default): every restart
        runs to ``tol``.
    moves : int
        After the restarts, up to ``moves`` more runs started from the model's moves of the
        best fit (:meth:`ConjugateModel.proposals <pyro_vi.cavi.model.ConjugateModel.proposals>`;
        for the GMM, split and merge moves of its components, :mod:`pyro_vi.models.gmm.moves`),
        each run like a restart (to ``screen_tol`` when given); the first that ends higher
        than the best by more than ``tol`` replaces it, and the moves start again from it.
        Coordinate ascent cannot merge two components that share a cluster or split one that
        straddles two; a move can. On Old Faithful, iris, wine, breast cancer and a
        penguins-sized set (K = 2× the classes, 10 k-means++ starts, 3 seeds,
        ``benchmarks/gmm_starts.py``), ``moves=10`` with ``screen_tol=1e-4`` took iris from
        -449.3 to -441.1 and wine from -2846.5 to -2775.3 (plain CAVI's best of 100 starts:
        -2797.9), reached scikit-learn's best of 10 in all 15 fits, and took 0.50-0.91× its
        time. ``fit.moves`` lists every move run; the result is
        the best run, which may be a moved one rather than one of ``fit.runs``. 0 (default):
        no moves. A model without moves refuses ``moves > 0`` (ValueError), as does
        ``distributed=True``.
    seed : int or None
        Seed of the model's initialisation, e.g. the GMM's k-means++ start (None: drawn from
        torch's global generator). How to initialise is the model's option (its constructor).
    chunk_size : int or None
        Rows per chunk of the local step (None: automatic from the model's memory estimate,
        0: no chunking).
    progress : bool or None
        Show a tqdm bar (None: only when stderr is a terminal).
    monotone_rtol : float
        Relative round-off allowance for the ELBO-never-decreases check; at least 1000
        machine epsilons of the ELBO's dtype (no change in float64, 1.2e-4 in float32).
    warn : bool
        Emit :class:`~pyro_vi.errors.ConvergenceWarning` when the best run did not converge.
    init : Tensor, str or None
        Plain Pyro models only: the start of the local discrete latent (a mixture's ``z``):
        ``None`` or ``"kmeans++"`` (k-means++ seeding on the observed site it selects),
        ``"random"`` (Dirichlet-random responsibilities) or an ``(N, K)`` tensor of
        responsibilities.
    joint : bool
        Plain Pyro models only: fit a Normal site whose prior precision scales with a
        Gamma/Wishart site, and whose every use shares that precision, as one joint
        Normal-Gamma/Normal-Wishart factor (as Bishop 2006, §10.2 does for the GMM).
        ``False``: one factor per site (mean field over sites).
    distributed : bool
        Data-parallel fit inside an initialised ``torch.distributed`` process group (launched
        by ``torchrun`` or :func:`pyro_vi.distributed.spawn`): each rank passes its own rows
        (:func:`pyro_vi.distributed.shard`), every sweep sums the local statistics and ELBO
        shares over ranks in one ``all_reduce``, and every rank ends with the same params
        and ELBO, bitwise. Priors and centring taken from the data use sums over all rows
        (:meth:`~pyro_vi.cavi.model.ConjugateModel.prepare_shard`); a random start is drawn
        from a subsample chosen by the seed among all rows
        (:meth:`~pyro_vi.cavi.model.ConjugateModel.init_stats_shard`), so it does not depend on
        the number of ranks. An error on one rank is raised on every rank, as the same
        exception class with the message prefixed ``"rank r of P: "``. A rank without rows is
        refused (ValueError). The result's ``data`` is this rank's rows.
    **model_kwargs
        Plain Pyro models only: keyword arguments of the model.

    Returns
    -------
    CAVIResult
        Params, ELBO, iterations, convergence flag, history, and ``.guide`` for Pyro.

    Raises
    ------
    TypeError
        An option of the wrong kind (``max_iter=1.5``, ``tol=True``), before any work.
    ValueError
        An option out of range, or bad data, before any work.
    ELBODecreaseError, NumericalError
        Numerical trouble, naming the iteration.

    Warns
    -----
    PrecisionWarning
        A run stopped because the ELBO's change fell within the data's round-off.

    .. warning::
        CAVI needs every complete conditional to be in the exponential family (conditional
        conjugacy); the model supplies the closed-form updates. It finds a *local* optimum of a
        non-convex ELBO: use ``n_init > 1`` for mixtures. Mean-field posteriors underestimate
        posterior variances (Bishop 2006, §10.1.2).

    References
    ----------
    Bishop, C. M. (2006). *Pattern Recognition and Machine Learning*, §10.1–10.2.
    Blei, D. M., Kucukelbir, A., McAuliffe, J. D. (2017). Variational inference: a review for
    statisticians. *JASA* 112(518), 859–877.

    Examples
    --------
    >>> import torch
    >>> from pyro_vi import cavi, load_old_faithful
    >>> from pyro_vi.models.gmm.model import GaussianMixture
    >>> x = load_old_faithful(standardize=True)
    >>> fit = cavi(GaussianMixture(2), x, seed=0)
    >>> fit.converged, fit.params.weights.mean().shape
    (True, torch.Size([2]))
    """
    _validate_options(max_iter, tol, n_init, chunk_size, monotone_rtol, seed, progress, warn,
                      distributed)
    if screen_tol is not None:
        check_real("screen_tol", screen_tol, minimum=0.0)
        screen_tol = float(screen_tol)
    check_int("moves", moves, minimum=0)
    if moves and distributed:
        raise ValueError("moves: a distributed fit has no moves yet (their proposals are "
                         "computed from one process's rows); pass moves=0")
    model, data = resolve_model(model, data, model_kwargs, init=init, joint=joint, where="cavi")
    if moves and type(model).proposals is ConjugateModel.proposals:
        raise ValueError(f"moves: {type(model).__name__} offers no moves (it does not implement "
                         "ConjugateModel.proposals); pass moves=0")
    max_iter, n_init, tol = int(max_iter), int(n_init), float(tol)
    comm = Comm() if distributed else None
    if comm is None:
        model, data = model.prepare(data)
        roundoff: Callable[[], float | None] = lambda: model.elbo_roundoff(data)  # noqa: E731
    else:
        check_rows(data, comm, where="cavi")
        model, data = prepare_sharded(model, data, comm)
        noise = global_roundoff(model, data, comm)
        roundoff = lambda: noise  # noqa: E731
    if progress is None:
        progress = sys.stderr.isatty()
    progress = progress and (comm is None or comm.rank == 0)
    seed0 = None if seed is None else int(seed)
    if comm is not None and seed0 is None:  # rank 0's draw: one start for all ranks
        seed0 = int(comm.broadcast_object(int(torch.randint(2**62, ()))))
    runs: list[CAVIRun] = []
    run_tol = tol if screen_tol is None or n_init == 1 else max(tol, screen_tol)
    for i in range(n_init):
        gen = torch.Generator()
        gen.manual_seed(int(torch.randint(2**62, ())) if seed0 is None else seed0 + i)
        if comm is None:
            init_stats = model.init_stats(data, generator=gen)
        else:
            init_stats = start_stats(model, data, generator=gen, comm=comm)
        bar = tqdm(total=max_iter, desc=f"CAVI {i + 1}/{n_init}", leave=False) if progress else None
        try:
            runs.append(_one_run(model, data, init_stats, max_iter=max_iter, tol=run_tol,
                                 chunk_size=chunk_size, monotone_rtol=monotone_rtol, bar=bar,
                                 roundoff=roundoff, comm=comm))
        finally:
            if bar is not None:
                bar.close()
    if run_tol > tol:  # screened: carry the best SCREEN_KEEP on to tol
        ranked = sorted(range(len(runs)), key=lambda j: runs[j].elbo, reverse=True)
        for j in ranked[:SCREEN_KEEP]:
            bar = tqdm(total=max_iter, desc=f"CAVI {j + 1}/{n_init} on", leave=False) if progress else None
            try:
                runs[j] = _polish(model, data, runs[j], max_iter=max_iter, tol=tol, chunk_size=chunk_size,
                                  monotone_rtol=monotone_rtol, bar=bar, roundoff=roundoff, comm=comm)
            finally:
                if bar is not None:
                    bar.close()
    best = max(runs, key=lambda r: r.elbo)
    table = None
    if moves:
        def run(stats: Stats, tol_: float) -> CAVIRun:
            return _one_run(model, data, stats, max_iter=max_iter, tol=tol_, chunk_size=chunk_size,
                            monotone_rtol=monotone_rtol, bar=None, roundoff=roundoff)

        def polish(r: CAVIRun) -> CAVIRun:
            if run_tol <= tol:
                return r
            return _polish(model, data, r, max_iter=max_iter, tol=tol, chunk_size=chunk_size,
                           monotone_rtol=monotone_rtol, bar=None, roundoff=roundoff, comm=None)

        best, table = _move_search(model, data, best, moves=int(moves), run_tol=run_tol, tol=tol,
                                   run=run, polish=polish)
    if warn and not best.converged:
        warnings.warn(
            f"CAVI did not converge in max_iter={max_iter} sweeps (tol={tol}); "
            "raise max_iter or tol", ConvergenceWarning, stacklevel=2)
    return CAVIResult.from_run(model, best, runs=tuple(runs), moves=table,
                               data=data if isinstance(data, tuple) else (data,))

