r"""Stochastic variational inference: minibatch CAVI with natural-gradient steps.

Hoffman, Blei, Wang & Paisley (2013) turn CAVI's global update into a stochastic natural-gradient
step. :func:`svi_cavi` reuses the :class:`~pyro_vi.cavi.model.ConjugateModel` contract unchanged: the
local step runs on a minibatch, its (additive) statistics are rescaled by :math:`N/|B|`, the
model's global step turns them into the intermediate parameters :math:`\hat\lambda`, and every
global factor moves part of the way there in natural parameters (:func:`pyro_vi.factors.blend`).
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
from torch import Tensor
from tqdm.auto import tqdm

from pyro_vi._checks import check_bool, check_int, check_optional_int, check_real, check_seed
from pyro_vi.cavi.model import Local, check_params, local_pass
from pyro_vi.cavi.resolve import resolve_model
from pyro_vi.distributed.collectives import Comm
from pyro_vi.distributed.conjugate import check_rows, prepare_sharded, start_stats
from pyro_vi.errors import ConvergenceWarning, NumericalError
from pyro_vi.factors import ExpFamFactor, blend
from pyro_vi.results import CAVIResult, CAVIRun

__all__ = ["blend_params", "step_size", "svi_cavi"]


def step_size(t: int, *, tau: float, kappa: float) -> float:
    r"""Robbins–Monro step :math:`\rho_t = (t + \tau)^{-\kappa}` for ``t >= 1``.

    Hoffman et al. (2013, eq. 26); with ``t >= 1`` and ``tau >= 0``, :math:`\rho_t \le 1`.

    Examples
    --------
    >>> step_size(1, tau=1.0, kappa=1.0)
    0.5
    """
    return float((t + tau) ** (-kappa))


def blend_params(old: Any, new: Any, rho: float) -> Any:
    r"""Step every :class:`~pyro_vi.factors.ExpFamFactor` field of a params dataclass.

    .. math:: \lambda \leftarrow (1-\rho)\lambda + \rho\hat\lambda
        \quad\text{(natural parameters; Hoffman et al. 2013, eq. 25)}

    Fields that are not factors (fixed quantities such as a known precision) must be equal in
    ``old`` and ``new``; otherwise a ``TypeError`` says which field cannot be stepped. An
    integer tensor field is bookkeeping (a derived model's sweep counter) and is taken from
    ``new``.

    Examples
    --------
    >>> import torch
    >>> from pyro_vi.factors import Gamma
    >>> from pyro_vi.models.gamma_rate import GammaParams
    >>> one = torch.tensor(1.0, dtype=torch.float64)
    >>> old, new = GammaParams(Gamma(one, one)), GammaParams(Gamma(3 * one, 3 * one))
    >>> blend_params(old, new, 0.5).rate.rate
    tensor(2., dtype=torch.float64)
    """
    check_params(old)
    if type(old) is not type(new):
        raise TypeError(f"params must be one dataclass type, got {type(old).__name__} and "
                        f"{type(new).__name__}")
    out = {}
    for f in dataclasses.fields(old):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if isinstance(a, ExpFamFactor):
            out[f.name] = blend(a, b, rho)
        elif a is b or (isinstance(a, Tensor) and isinstance(b, Tensor) and torch.equal(a, b)):
            out[f.name] = a
        elif isinstance(b, Tensor) and not b.is_floating_point() and not b.is_complex():
            out[f.name] = b
        else:
            raise TypeError(f"params field {f.name!r} is not an ExpFamFactor and changed in the "
                            "global step; stochastic VI can only step factors")
    return dataclasses.replace(old, **out)


def _rows(data: Any) -> int:
    if isinstance(data, Tensor):
        return int(data.shape[0])
    if isinstance(data, tuple) and data:
        return _rows(data[0])
    raise TypeError(f"svi_cavi needs data as a Tensor or a tuple of Tensors, got "
                    f"{type(data).__name__}")


def _take(data: Any, idx: Tensor) -> Any:
    if isinstance(data, Tensor):
        return data[idx.to(data.device)]
    return tuple(_take(d, idx) for d in data)


def _check(local_elbo: Tensor, stats: tuple[Tensor, ...], step: int) -> None:
    if not torch.isfinite(local_elbo) or not all(torch.isfinite(s).all() for s in stats):
        raise NumericalError(f"stochastic VI step {step}: the local step gave a non-finite "
                             "ELBO or sufficient statistic")


def _summed(local: Any, rows: int, comm: Comm | None, step: int) -> tuple[Local, int]:
    """``local`` (a Local, or the exception its pass raised) checked, summed over ranks with its rows."""
    if comm is None:
        if isinstance(local, BaseException):
            raise local
        _check(local.elbo, local.stats, step)
        return local, rows
    try:
        if isinstance(local, BaseException):
            raise local
        _check(local.elbo, local.stats, step)
    except Exception as err:  # noqa: BLE001 - raised on every rank
        comm.fail(err)
    *stats, elbo, count = comm.sum((*local.stats, local.elbo,
                                    torch.tensor(float(rows), dtype=torch.float64)))
    return Local(tuple(stats), elbo), int(count)


def _pass(model: Any, data: Any, params: Any, chunk_size: int | None) -> Any:
    """``local_pass``, or the exception it raised (reported to every rank by :func:`_summed`)."""
    try:
        return local_pass(model, data, params, chunk_size=chunk_size)
    except Exception as err:  # noqa: BLE001 - handed to _summed
        return err


def _validate(batch_size: Any, tau: Any, kappa: Any, num_epochs: Any, max_steps: Any,
              tol: Any, seed: Any, chunk_size: Any, final_elbo: Any, progress: Any,
              warn: Any, distributed: Any = False) -> None:
    check_int("batch_size", batch_size, minimum=1)
    check_real("tau", tau, minimum=0.0)
    if not 0.5 < check_real("kappa", kappa) <= 1.0:
        raise ValueError(f"kappa must lie in (0.5, 1] (Robbins–Monro conditions), got {kappa!r}")
    if num_epochs is not None and max_steps is not None:
        raise ValueError("give num_epochs or max_steps, not both")
    if num_epochs is not None:
        check_real("num_epochs", num_epochs, positive=True)
    check_optional_int("max_steps", max_steps, minimum=1)
    if tol is not None:
        check_real("tol", tol, minimum=0.0)
    check_seed("seed", seed)
    check_optional_int("chunk_size", chunk_size, minimum=0)
    check_bool("final_elbo", final_elbo)
    check_bool("progress", progress, optional=True)
    check_bool("warn", warn)
    check_bool("distributed", distributed)


def svi_cavi(
    model: Any,
    *data: Any,
    batch_size: int,
    tau: float = 1.0,
    kappa: float = 0.7,
    num_epochs: float | None = None,
    max_steps: int | None = None,
    tol: float | None = None,
    seed: int | None = 0,
    init_params: Any = None,
    chunk_size: int | None = None,
    final_elbo: bool = True,
    callback: Callable[[int, Any], bool | None] | None = None,
    progress: bool | None = False,
    warn: bool = True,
    init: Any = None,
    joint: bool = True,
    distributed: bool = False,
    **model_kwargs: Any,
) -> CAVIResult:
    r"""Fit a conjugate-exponential model by stochastic VI (natural-gradient minibatch CAVI).

    Step :math:`t = 1, 2, \dots` draws a minibatch :math:`B_t` (a fresh random permutation
    every epoch), runs the local step on it, and updates every global factor:

    .. math::
        \hat\lambda = \text{global\_step}\Big(\tfrac{N}{|B_t|}\textstyle\sum_{n\in B_t}
            E[t(x_n, z_n)],\ \lambda_{t-1}\Big),\qquad
        \lambda_t = (1-\rho_t)\lambda_{t-1} + \rho_t\hat\lambda,\qquad
        \rho_t = (t + \tau)^{-\kappa}

    (Hoffman et al. 2013, Algorithm 1 and eqs. 25–26). For a model whose natural parameters
    are linear in the statistics (e.g. the GMM) :math:`\hat\lambda - \lambda` is the natural
    gradient of the ELBO; for a model whose global step is a coordinate sweep over coupled
    global factors (e.g. :class:`~pyro_vi.models.hierarchical.HierarchicalNormal`)
    :math:`\hat\lambda` is that sweep's result given :math:`\lambda_{t-1}`.

    Parameters
    ----------
    model : ConjugateModel or callable
        Any :class:`~pyro_vi.cavi.model.ConjugateModel`; its params record is a frozen
        dataclass of :class:`~pyro_vi.factors.ExpFamFactor` s (or fixed tensors). Or a plain
        Pyro model, derived as :func:`pyro_vi.cavi` does (``init``, ``joint`` and
        ``**model_kwargs`` as there).
    *data : Tensor or tuple of Tensor
        A ConjugateModel's data as one argument, split along dimension 0; a Pyro model's
        positional arguments.
    batch_size : int, keyword-only
        :math:`|B|` (capped at :math:`N`).
    tau, kappa : float
        Delay :math:`\tau \ge 0` and forgetting rate :math:`\kappa \in (0.5, 1]`.
    num_epochs, max_steps : float or int, optional
        Budget in passes over the data or in steps (default: 10 epochs).
    tol : float or None
        Stop when the mean minibatch ELBO estimate of an epoch changes by less than
        ``tol · max(|ELBO|, 1)`` from the previous epoch (``None``: run the whole budget).
    seed : int or None
        Seed of the minibatch order and the initialisation.
    init_params : params record, optional
        Start from these global parameters; by default from ``model.init_stats`` on the first
        minibatch (its statistics rescaled by :math:`N/|B|`), as the model's options say.
    chunk_size : int or None
        Chunking of each local step (see :func:`pyro_vi.cavi.local_pass`).
    final_elbo : bool
        Evaluate the full-data analytic ELBO at the end (one pass over the data); else NaN.
    callback : callable, optional
        ``callback(step, params)`` after every step; returning True stops the run.
    progress : bool or None
        tqdm bar (None: only when stderr is a terminal).
    warn : bool
        Emit :class:`~pyro_vi.errors.ConvergenceWarning` when ``tol`` is set and not met.
    distributed : bool
        Data-parallel run inside an initialised ``torch.distributed`` process group, each rank
        on its own rows (as :func:`pyro_vi.cavi` with ``distributed=True``). Each rank draws
        its own minibatch of ``batch_size`` rows from its shard (its own permutation per
        pass), the statistics and ELBO shares are summed over ranks with the batch sizes, and
        :math:`N` and :math:`|B|` above are the totals over ranks, so the step is the
        single-process step on the union of the ranks' minibatches. Params stay bitwise
        identical across ranks. An epoch is a pass over the largest shard; the start is
        :meth:`~pyro_vi.cavi.model.ConjugateModel.init_stats_shard` of the first minibatches.
    init, joint, **model_kwargs
        Plain Pyro models only; see :func:`pyro_vi.cavi`.

    Returns
    -------
    CAVIResult
        ``elbo`` is the full-data ELBO; ``history`` has one row per step with the minibatch
        estimate :math:`\tfrac{N}{|B|}\,\mathrm{local} + \mathrm{global}` of the ELBO at the
        parameters the step started from (column ``elbo``), ``rho`` and ``seconds``.

    .. warning::
        Assumes what CAVI assumes (conditional conjugacy, a local optimum of a non-convex ELBO)
        plus i.i.d. data points whose statistics add up. The step sizes must satisfy
        :math:`\sum\rho_t = \infty`, :math:`\sum\rho_t^2 < \infty` (hence :math:`\kappa`);
        the result is noisy at the scale of :math:`\rho_t` and is not monotone in the ELBO.

    References
    ----------
    Hoffman, M. D., Blei, D. M., Wang, C., Paisley, J. (2013). Stochastic variational
    inference. *JMLR* 14, 1303–1347.
    Robbins, H., Monro, S. (1951). A stochastic approximation method. *Ann. Math. Statist.*

    Examples
    --------
    >>> import torch
    >>> from pyro_vi.models.gmm.model import GaussianMixture
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.cat([torch.randn(500, 2, generator=g) - 4, torch.randn(500, 2, generator=g) + 4])
    >>> fit = svi_cavi(GaussianMixture(2), x.double(), batch_size=100, num_epochs=3, seed=0)
    >>> sorted(round(v, 1) for v in fit.params.weights.mean().tolist())
    [0.5, 0.5]
    """
    model, data = resolve_model(model, data, model_kwargs, init=init, joint=joint,
                                where="svi_cavi")
    _validate(batch_size, tau, kappa, num_epochs, max_steps, tol, seed, chunk_size, final_elbo,
              progress, warn, distributed)
    comm = Comm() if distributed else None
    if comm is None:
        model, data = model.prepare(data)
        n = n_local = _rows(data)
    else:
        check_rows(data, comm, where="svi_cavi")
        model, data = prepare_sharded(model, data, comm)
        counts = comm.counts(_rows(data))
        n, n_local = sum(counts), counts[comm.rank]
    batch_size = min(int(batch_size), n_local)
    local_epoch = math.ceil(n_local / batch_size)
    # an epoch is a pass over the largest shard, so that every rank counts the same steps
    per_epoch = local_epoch if comm is None else math.ceil(max(counts) / batch_size)
    epochs = 10 if num_epochs is None else num_epochs
    total = max_steps if max_steps is not None else max(1, math.ceil(epochs * per_epoch))
    seed0 = int(torch.randint(2**62, ())) if seed is None else int(seed)
    if comm is not None and seed is None:
        seed0 = int(comm.broadcast_object(seed0))
    gen = torch.Generator()
    gen.manual_seed(seed0)
    # single process: one generator for the start and the order, as before; distributed: the
    # start's generator is shared, each rank's order has its own
    order_gen = gen if comm is None else torch.Generator().manual_seed(
        (seed0 + 7919 * (comm.rank + 1)) % 2**63)
    t0 = time.perf_counter()
    order = torch.randperm(n_local, generator=order_gen)
    if init_params is None:
        first = _take(data, order[:batch_size])
        if comm is None:
            stats = model.init_stats(first, generator=gen)
            first_rows = batch_size
        else:
            stats = start_stats(model, first, generator=gen, comm=comm)
            (first_total,) = comm.sum((torch.tensor(float(batch_size), dtype=torch.float64),))
            first_rows = int(first_total)
        params = check_params(model.global_step(tuple(s * (n / first_rows) for s in stats), None),
                              where="the global step's params")
    else:
        params = check_params(init_params, where="init_params")
    if progress is None:
        progress = sys.stderr.isatty()
    progress = progress and (comm is None or comm.rank == 0)
    bar = tqdm(total=total, desc="SVI-CAVI", leave=False) if progress else None
    rows: list[tuple[int, float, float, float]] = []
    converged, prev_epoch, step = False, None, 0
    try:
        for step in range(1, total + 1):
            pos = (step - 1) % per_epoch
            mine = (step - 1) % local_epoch
            if mine == 0 and step > 1:
                order = torch.randperm(n_local, generator=order_gen)
            batch = _take(data, order[mine * batch_size:(mine + 1) * batch_size])
            local, batch_rows = _summed(_pass(model, batch, params, chunk_size), _rows(batch),
                                        comm, step)
            scale = n / batch_rows
            estimate = float(scale * local.elbo + model.global_elbo(params))
            target = model.global_step(tuple(s * scale for s in local.stats), params)
            rho = step_size(step, tau=float(tau), kappa=float(kappa))
            params = blend_params(params, target, rho)
            rows.append((step, estimate, time.perf_counter() - t0, rho))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(elbo=f"{estimate:.6g}")
            if callback is not None:
                stop = bool(callback(step, params))
                if comm is not None:  # any rank's callback stops every rank
                    (votes,) = comm.sum((torch.tensor(float(stop), dtype=torch.float64),))
                    stop = bool(votes > 0)
                if stop:
                    break
            if tol is not None and pos == per_epoch - 1:
                mean = sum(r[1] for r in rows[-per_epoch:]) / per_epoch
                if prev_epoch is not None and abs(mean - prev_epoch) <= tol * max(abs(mean), 1):
                    converged = True
                    break
                prev_epoch = mean
    finally:
        if bar is not None:
            bar.close()
    elbo = math.nan
    if final_elbo:
        local, _ = _summed(_pass(model, data, params, chunk_size), n_local, comm, step)
        elbo = float(local.elbo + model.global_elbo(params))
        if not math.isfinite(elbo):
            raise NumericalError(f"stochastic VI: the final full-data ELBO is {elbo}")
    history = pd.DataFrame(rows, columns=["step", "elbo", "seconds", "rho"])
    if warn and tol is not None and not converged:
        warnings.warn(f"stochastic VI did not meet tol={tol} in {step} steps; raise the "
                      "budget or tol", ConvergenceWarning, stacklevel=2)
    run = CAVIRun(params=params, elbo=elbo, n_steps=step, converged=converged, history=history)
    return CAVIResult.from_run(model, run, runs=(run,), data=data if isinstance(data, tuple) else (data,))
