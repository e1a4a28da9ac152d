r"""Monte-Carlo estimate of the ELBO of any Pyro model/guide pair, with its standard error.

For particles :math:`z_p \sim q` (guide) the per-particle log weights

.. math::

    w_p = \log p(x, z_p) - \log q(z_p), \qquad
    \widehat{\mathrm{ELBO}} = \frac1P \sum_{p=1}^P w_p, \qquad
    \mathrm{SE} = \frac{s_w}{\sqrt P},

with :math:`s_w` the sample standard deviation, are exactly the terms that Pyro's
:class:`~pyro.infer.Trace_ELBO` averages (Wingate & Weber 2013; Ranganath et al. 2014, eq. 2).
The particles are drawn in one ``pyro.plate`` at dim ``-(max_plate_nesting + 1)``, as
``Trace_ELBO(vectorize_particles=True)`` does, in chunks that bound the memory.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.enum import get_importance_trace
from pyro.poutine.util import prune_subsample_sites

from pyro_vi._checks import check_bool, check_callable, check_int, check_optional_int
from pyro_vi.errors import NumericalError

__all__ = ["ELBOEstimate", "elbo_estimate"]

_PLATE = "_elbo_estimate_particles"


@dataclass(frozen=True)
class ELBOEstimate:
    r"""Monte-Carlo ELBO estimate.

    Attributes
    ----------
    mean
        :math:`\widehat{\mathrm{ELBO}}`, in nats.
    stderr
        Its Monte-Carlo standard error :math:`s_w / \sqrt P`.
    num_particles
        :math:`P`.
    log_weights
        The :math:`w_p`, a float64 CPU tensor of shape ``(P,)`` (e.g. for an
        importance-weighted bound ``logsumexp(w) - log P`` or a PSIS diagnostic).
    vectorized
        Whether the particles were drawn in a plate (False after a sequential fallback).
    """

    mean: float
    stderr: float
    num_particles: int
    log_weights: torch.Tensor = field(repr=False, compare=False)
    vectorized: bool = True


def _guess_max_plate_nesting(model: Callable[..., Any], guide: Callable[..., Any],
                             args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Run guide and model once and read the deepest plate dim, as Pyro's ELBO does."""
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs)
    dims = [frame.dim
            for trace in (prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace))
            for site in trace.nodes.values() if site["type"] == "sample"
            for frame in site["cond_indep_stack"]
            if frame.vectorized and frame.dim is not None]
    return -min(dims) if dims else 0


def _chunk_weights(model: Callable[..., Any], guide: Callable[..., Any], size: int, nesting: int,
                   args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """Log weights of ``size`` particles drawn at once in a plate at dim ``-(nesting + 1)``."""
    dim = -(nesting + 1)
    plate = pyro.plate(_PLATE, size, dim=dim)
    model_trace, guide_trace = get_importance_trace(
        "flat", nesting + 1, plate(model), plate(guide), args, kwargs)
    total: torch.Tensor | None = None
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            log_prob = site["log_prob"].to(torch.float64)
            if log_prob.dim() >= -dim and log_prob.shape[dim] == size:
                # Sum every dim but the particle dim.
                other = [d for d in range(log_prob.dim()) if d != log_prob.dim() + dim]
                term = log_prob.sum(other) if other else log_prob
            else:  # A term shared by all particles (it does not depend on them).
                term = log_prob.sum().expand(size)
            total = sign * term if total is None else total + sign * term
    return torch.zeros(size, dtype=torch.float64) if total is None else total


def _sequential_weights(model: Callable[..., Any], guide: Callable[..., Any], num: int,
                        nesting: int | float, args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> torch.Tensor:
    """Log weights of ``num`` particles drawn one trace at a time (any model)."""
    out = torch.empty(num, dtype=torch.float64)
    for p in range(num):
        model_trace, guide_trace = get_importance_trace(
            "flat", nesting, model, guide, args, kwargs)
        out[p] = float(model_trace.log_prob_sum()) - float(guide_trace.log_prob_sum())
    return out


def _check(num_particles: Any, max_plate_nesting: Any, chunk_size: Any, model: Any,
           guide: Any, vectorize: Any) -> tuple[int, int | None, int, bool | None]:
    check_callable("model", model)
    check_callable("guide", guide)
    return (check_int("num_particles", num_particles, minimum=2),
            check_optional_int("max_plate_nesting", max_plate_nesting, minimum=0),
            check_int("chunk_size", chunk_size, minimum=1),
            check_bool("vectorize", vectorize, optional=True))


def _check_guide_covers_model(model: Callable[..., Any], guide: Callable[..., Any],
                              args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse a guide that lacks a latent site of the model (ValueError naming the site).

    One guide trace and one replayed model trace, with the RNG state put back afterwards so
    that the estimate draws the same numbers as without this check.
    """
    import pyro.poutine as poutine
    from pyro.poutine.util import site_is_subsample
    from pyro.util import get_rng_state, set_rng_state

    rng = get_rng_state()
    try:
        with torch.no_grad(), poutine.block():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs)
    finally:
        set_rng_state(rng)
    missing = [name for name, site in model_trace.nodes.items()
               if site["type"] == "sample" and not site["is_observed"]
               and not site_is_subsample(site) and name not in guide_trace.nodes]
    if missing:
        raise ValueError(f"elbo_estimate: the guide has no sample site {missing[0]!r} of the "
                         f"model (latent sites the guide lacks: {', '.join(missing)}); the "
                         f"estimate would not be an ELBO of this model")


def elbo_estimate(model: Callable[..., Any], guide: Callable[..., Any], *args: Any,
                  num_particles: int = 10000, max_plate_nesting: int | None = None,
                  chunk_size: int = 1000, vectorize: bool | None = None,
                  **kwargs: Any) -> ELBOEstimate:
    r"""Estimate the ELBO of ``guide`` for ``model`` with ``num_particles`` particles.

    The estimator is Pyro's ``Trace_ELBO`` (see the module docstring), returned with its
    standard error so that two ELBOs, e.g. an analytic CAVI bound and this estimate on the
    CAVI guide, can be compared within a stated number of standard errors.

    Parameters
    ----------
    model, guide
        Pyro callables; ``*args`` and ``**kwargs`` are passed to both.
    num_particles
        :math:`P \ge 2`.
    max_plate_nesting
        Plate depth of model and guide; None guesses it by running them once (consuming random
        numbers exactly as ``Trace_ELBO`` does, so with ``chunk_size >= num_particles`` the
        estimate equals ``-Trace_ELBO(num_particles=P, vectorize_particles=True).loss`` under
        the same seed).
    chunk_size
        Particles drawn per vectorized trace; memory grows linearly with it.
    vectorize
        True: plate only; False: one trace per particle; None (default): try the plate and fall
        back to the sequential loop, with a warning, if the model fails under it (Python
        control flow on sampled values, ``.item()``, shapes that ignore plates).

    Returns
    -------
    ELBOEstimate
        ``mean``, ``stderr``, ``num_particles``, the log weights and whether it vectorized.

    .. warning::
        Every latent site must be sampled by the guide or be reparameterisable by sampling
        from the model (as in ``Trace_ELBO``); enumerated (``TraceEnum_ELBO``) marginalisation
        is not used, so a discrete site left to enumeration is sampled instead. The estimate is
        of the ELBO, a lower bound: it equals :math:`\log p(x)` only if the guide is the exact
        posterior. The standard error assumes finite variance of :math:`w_p`.

    References
    ----------
    Wingate & Weber (2013). Automated variational inference in probabilistic programming.
    Ranganath, Gerrish & Blei (2014). Black box variational inference. AISTATS.
    Pyro's :class:`pyro.infer.Trace_ELBO` (Bingham et al. 2019, JMLR 20(28)).

    Examples
    --------
    With the exact posterior as guide every weight equals the log evidence:

    >>> import pyro, torch, pyro.distributions as dist
    >>> def model():
    ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...     pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(1.0))
    >>> def guide():  # p(z | x=1) = N(1/2, 1/2)
    ...     pyro.sample("z", dist.Normal(0.5, 0.5 ** 0.5))
    >>> est = elbo_estimate(model, guide, num_particles=1000)
    >>> exact = dist.Normal(0.0, 2.0 ** 0.5).log_prob(torch.tensor(1.0)).item()
    >>> abs(est.mean - exact) < 1e-5, est.stderr < 1e-5
    (True, True)
    """
    num_particles, max_plate_nesting, chunk_size, vectorize = _check(
        num_particles, max_plate_nesting, chunk_size, model, guide, vectorize)
    _check_guide_covers_model(model, guide, args, kwargs)
    with torch.no_grad():
        nesting = (_guess_max_plate_nesting(model, guide, args, kwargs)
                   if max_plate_nesting is None else int(max_plate_nesting))
        weights, vectorized = None, vectorize is not False
        if vectorized:
            try:
                weights = torch.cat([
                    _chunk_weights(model, guide, min(chunk_size, num_particles - start),
                                   nesting, args, kwargs).cpu()
                    for start in range(0, num_particles, chunk_size)])
            except Exception as err:  # any failure under the plate falls back
                if vectorize:
                    raise
                reason = (str(err).splitlines() or [""])[0][:200]
                warnings.warn(f"elbo_estimate: the model/guide cannot be vectorized over "
                              f"particles ({type(err).__name__}: {reason}); falling back to "
                              f"{num_particles} sequential traces", UserWarning, stacklevel=2)
                vectorized = False
        if weights is None:
            weights = _sequential_weights(model, guide, num_particles, nesting, args, kwargs)
    if not bool(torch.isfinite(weights).all()):
        bad = int((~torch.isfinite(weights)).sum())
        raise NumericalError(f"elbo_estimate: {bad} of {num_particles} log weights are not "
                             f"finite (a particle outside the model's support?)")
    mean = float(weights.mean())
    stderr = float(weights.std(correction=1)) / math.sqrt(num_particles)
    return ELBOEstimate(mean=mean, stderr=stderr, num_particles=num_particles,
                        log_weights=weights, vectorized=vectorized)
