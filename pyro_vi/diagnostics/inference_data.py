r"""ArviZ export of variational fits, on either ArviZ line.

``az.from_pyro`` accepts only MCMC objects (and ArviZ 1.x has no Pyro converter), so a
variational posterior — a CAVI or SVI result, or any user guide, autoguides included — has no
route into ArviZ. :func:`to_inference_data` draws from the guide, scores every draw under the
model (:mod:`pyro_vi.diagnostics._draws`) and builds ArviZ's container, an
``arviz.InferenceData`` on ArviZ 0.2x or an ``xarray.DataTree`` on ArviZ 1.x, with the groups

``posterior``
    every latent site the guide samples (discrete sites as integers), dims named after the
    ``pyro.plate`` s, one chain per independent fit;
``posterior_predictive``
    every observed site, drawn with :class:`pyro.infer.Predictive` from the model with its
    observations removed (:func:`pyro.poutine.uncondition`);
``log_likelihood``
    the pointwise :math:`\log p(x_n \mid \theta)` of every observed site, local discrete
    latents (a mixture's ``z``) summed out (:func:`pyro_vi.diagnostics._draws.pointwise_log_likelihood`);
``observed_data`` / ``constant_data``
    the observed sites' values / the model's other tensor arguments;
``sample_stats``
    ``lp`` (:math:`\log p(x, \theta)`), ``log_q`` (:math:`\log q(\theta)`), and per fit the
    ELBO history (dim ``elbo_iteration``, NaN-padded), final ELBO and convergence flag; the
    fitting method is in the attrs.

Both lines get the same groups, dims and values; what differs between them (the container,
``dict_to_dataset``'s keywords, where PSIS lives) is in :mod:`pyro_vi.diagnostics._arviz_compat`,
the only module that imports ArviZ. Convert with ``InferenceData.to_datatree()`` /
``InferenceData.from_datatree(tree)`` on 0.2x.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pyro import poutine
from pyro.infer import Predictive
from torch import Tensor

from pyro_vi._checks import check_bool, check_callable
from pyro_vi.diagnostics._arviz_compat import assemble, dataset
from pyro_vi.diagnostics._draws import GuideDraws, check_num_samples, draw_from_guide, seeded
from pyro_vi.diagnostics._sites import ModelStructure, inspect_model
from pyro_vi.diagnostics.nuts import align_chains, label_alignment
from pyro_vi.factors import muted_wishart_warning

if TYPE_CHECKING:
    from pyro_vi.results import FitResult

__all__ = [
    "FitInfo",
    "NoObservedSitesWarning",
    "fit_info_from_result",
    "inference_data_from_result",
    "to_inference_data",
]


class NoObservedSitesWarning(UserWarning):
    """The model has no observed sites, so there is no log-likelihood (or predictive) group."""


@dataclass(frozen=True)
class FitInfo:
    """What a fit reports about itself, stored in ``sample_stats`` and the attrs.

    Attributes
    ----------
    method : str
        e.g. ``"CAVI"`` or ``"SVI"``.
    elbo : sequence of float, optional
        ELBO history (one value per iteration or step).
    converged : bool, optional
        The fit's convergence flag.
    final_elbo : float, optional
        The final ELBO (defaults to the history's last value).
    """

    method: str = "variational"
    elbo: Sequence[float] | None = None
    converged: bool | None = None
    final_elbo: float | None = None


def fit_info_from_result(result: FitResult) -> FitInfo:
    """Method, ELBO history, final ELBO and convergence flag of a fit, read off its record."""
    elbo = [float(v) for v in result.history["elbo"]]
    return FitInfo(result.method, elbo, bool(result.converged), float(result.elbo))


def _numpy(t: Tensor, discrete: bool) -> np.ndarray:
    arr = t.detach().cpu().numpy()
    return arr.astype(np.int64) if discrete else arr.astype(np.float64)


def _dims(name: str, dims: Sequence[str | None], user: Mapping[str, Sequence[str]]) -> list[str]:
    if name in user:
        return list(user[name])
    return [d if d is not None else f"{name}_dim_{i}" for i, d in enumerate(dims)]


def _constant_data(model: Callable[..., Any], structure: ModelStructure, args: Sequence[Any],
                   kwargs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Collect the model's tensor/array arguments that are not an observed site's value."""
    try:
        bound = inspect.signature(model).bind(*args, **kwargs).arguments
    except (TypeError, ValueError):
        bound = {f"arg{i}": a for i, a in enumerate(args)} | dict(kwargs)
    observed = list(structure.observed_values.values())
    out = {}
    for name, value in bound.items():
        if isinstance(value, np.ndarray):
            value = torch.as_tensor(value)
        if not isinstance(value, Tensor) or name in structure.sites or name in structure.plates:
            continue
        if any(value is o or (value.shape == o.shape and torch.equal(value.to(o.dtype), o))
               for o in observed):
            continue
        out[name] = value.detach().cpu().numpy()
    return out


def _posterior_predictive(model: Callable[..., Any], draws: Sequence[GuideDraws],
                          seed: int | None, args: Sequence[Any],
                          kwargs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Observed sites re-drawn from the model at every posterior draw, ``(chain, draw, ...)``."""
    structure = draws[0].structure
    chains, samples = len(draws), draws[0].log_p.shape[0]
    flat = {k: torch.cat([d.values[k] for d in draws]) for k in draws[0].values}
    with seeded(seed), torch.no_grad(), muted_wishart_warning():
        pred = Predictive(poutine.uncondition(model), posterior_samples=flat,
                          return_sites=list(structure.observed))(*args, **kwargs)
    return {k: _numpy(v.reshape(chains, samples, *structure.sites[k].shape),
                      structure.sites[k].discrete) for k, v in pred.items()}


def _sample_stats(draws: Sequence[GuideDraws], infos: Sequence[FitInfo]) -> dict[str, Any]:
    """``lp``/``log_q`` per draw; ELBO history, final ELBO and convergence flag per fit."""
    import xarray as xr

    stats: dict[str, Any] = {
        "lp": (("chain", "draw"), np.stack([d.log_p.numpy() for d in draws])),
        "log_q": (("chain", "draw"), np.stack([d.log_q.numpy() for d in draws])),
    }
    histories = [np.asarray(i.elbo, dtype=np.float64) for i in infos if i.elbo is not None]
    if len(histories) == len(infos) and histories:
        hist = np.full((len(infos), max(len(h) for h in histories)), np.nan)
        for c, h in enumerate(histories):
            hist[c, : len(h)] = h
        stats["elbo"] = (("chain", "elbo_iteration"), hist)
    if all(i.final_elbo is not None for i in infos):
        stats["final_elbo"] = (("chain",), np.array([i.final_elbo for i in infos], float))
    if all(i.converged is not None for i in infos):
        stats["converged"] = (("chain",), np.array([bool(i.converged) for i in infos]))
    return {k: xr.Variable(*v) for k, v in stats.items()}


def _build(model: Callable[..., Any], chains: Sequence[tuple[Callable[..., Any], Any]],
           args: Sequence[Any], kwargs: Mapping[str, Any], *, num_samples: int,
           seed: int | None, coords: Mapping[str, Any] | None,
           dims: Mapping[str, Sequence[str]] | None, infos: Sequence[FitInfo],
           alignment: Any = None) -> Any:
    import xarray as xr

    num_samples = check_num_samples(num_samples)
    coords, dims = dict(coords or {}), dict(dims or {})
    check_callable("model", model)
    with seeded(seed):
        pointwise = bool(inspect_model(model, *args, **kwargs).observed)
    draws: list[GuideDraws] = []
    for c, (guide, params) in enumerate(chains):
        d = draw_from_guide(model, guide, *args, num_samples=num_samples,
                            seed=None if seed is None else seed + c, pointwise=pointwise,
                            params=params, **kwargs)
        if draws and set(d.values) != set(draws[0].values):
            raise ValueError(f"guides sample different sites: {sorted(draws[0].values)} "
                             f"(fit 0) vs {sorted(d.values)} (fit {c})")
        draws.append(d)
    structure = draws[0].structure
    sites = structure.sites

    def dims_of(name: str, batch_only: bool = False) -> list[str]:
        info = sites[name]
        names = info.dims[: len(info.dims) - info.event_dim] if batch_only else info.dims
        return _dims(name, names, dims)

    per_chain = [{k: _numpy(d.values[k], sites[k].discrete) for k in draws[0].values}
                 for d in draws]
    if alignment is not None:
        per_chain = align_chains(per_chain, alignment)
    posterior = {k: np.stack([c[k] for c in per_chain]) for k in draws[0].values}
    method = infos[0].method if len({i.method for i in infos}) == 1 else "mixed"
    attrs: dict[str, Any] = {"inference_method": method, "num_fits": len(chains)}
    if alignment is not None and len(chains) > 1:
        attrs["label_alignment"] = f"components matched to chain 0 on {alignment.by!r}"
    groups: dict[str, Any] = {"posterior": dataset(
        posterior, dims={k: dims_of(k) for k in posterior}, coords=coords, attrs=attrs)}
    sample_stats = _sample_stats(draws, infos)
    groups["sample_stats"] = xr.Dataset(
        sample_stats, coords={"chain": np.arange(len(draws)), "draw": np.arange(num_samples)},
        attrs=attrs)
    if not structure.observed:
        warnings.warn("the model has no observed sites: the log_likelihood, "
                      "posterior_predictive and observed_data groups are left out",
                      NoObservedSitesWarning, stacklevel=3)
    else:
        obs_dims = {k: dims_of(k) for k in structure.observed}
        pp = _posterior_predictive(model, draws, seed, args, kwargs)
        groups["posterior_predictive"] = dataset(pp, dims=obs_dims, coords=coords)
        log_lik = {k: np.stack([d.log_lik[k].double().numpy() for d in draws])
                   for k in structure.observed}
        groups["log_likelihood"] = dataset(
            log_lik, dims={k: dims_of(k, batch_only=True) for k in log_lik}, coords=coords)
        observed = {k: _numpy(v, sites[k].discrete) for k, v in structure.observed_values.items()}
        groups["observed_data"] = dataset(observed, dims=obs_dims, coords=coords, sampled=False)
    constant = _constant_data(model, structure, args, kwargs)
    if constant:
        groups["constant_data"] = dataset(
            constant, dims={k: _dims(k, [None] * v.ndim, dims) for k, v in constant.items()},
            coords=coords, sampled=False)
    return assemble(groups)


def _infos(fit_info: FitInfo | Sequence[FitInfo] | None, n: int) -> list[FitInfo]:
    if fit_info is None:
        return [FitInfo()] * n
    if isinstance(fit_info, FitInfo):
        return [fit_info] * n
    infos = list(fit_info)
    if len(infos) != n or not all(isinstance(i, FitInfo) for i in infos):
        raise ValueError(f"fit_info must be a FitInfo or one FitInfo per guide ({n})")
    return infos


def to_inference_data(model: Callable[..., Any], guide: Callable[..., Any] | None, *args: Any,
                      num_samples: int = 1000, seed: int | None = None,
                      coords: Mapping[str, Any] | None = None,
                      dims: Mapping[str, Sequence[str]] | None = None,
                      guides: Sequence[Callable[..., Any]] | None = None,
                      fit_info: FitInfo | Sequence[FitInfo] | None = None,
                      **kwargs: Any) -> Any:
    """Draw from a fitted guide and export the variational posterior to ArviZ.

    Parameters
    ----------
    model, guide : callable
        A Pyro model and a fitted guide, both called with ``*args, **kwargs``. The guide
        reads its parameters from the current param store (or holds them itself).
    *args, **kwargs
        The model's data arguments.
    num_samples : int
        Draws per fit (per chain), >= 1.
    seed : int, optional
        Seed for the draws (fit ``c`` uses ``seed + c``); the global RNG state is restored.
    coords : mapping, optional
        Coordinate values per dim, e.g. ``{"data": dates}`` for ``pyro.plate("data", ...)``.
    dims : mapping, optional
        Dims per variable, overriding the plate-derived ones (``{"X": ["data", "feature"]}``).
    guides : sequence of callable, optional
        Several independently fitted guides (restarts, seeds): one chain each, so
        between-fit disagreement shows in ``az.summary``'s ``r_hat``. Pass ``guide=None``.
    fit_info : FitInfo or sequence of FitInfo, optional
        Method, ELBO history and convergence flag of the fit (one per guide), stored in
        ``sample_stats`` and the attrs.

    Returns
    -------
    arviz.InferenceData or xarray.DataTree
        ``arviz.InferenceData`` with ArviZ 0.2x, ``xarray.DataTree`` with ArviZ 1.x (Python
        >= 3.12); both have the groups ``posterior``, ``posterior_predictive``,
        ``log_likelihood``, ``observed_data``, ``constant_data`` (when the model has other
        tensor arguments) and ``sample_stats``, with arrays ``(chain, draw, *dims)``, float64
        (int64 for discrete sites). ``az.summary``, ``az.loo``, ``az.ess``, ``az.rhat`` and
        the line's plots take either.

    Warns
    -----
    NoObservedSitesWarning
        The model has no observed site: ``log_likelihood``, ``posterior_predictive`` and
        ``observed_data`` are left out.

    Raises
    ------
    ValueError
        ``num_samples < 1``, a latent site the guide does not cover, plate sizes that differ
        between guide and model, or guides that sample different sites.

    .. warning::
       The posterior is the guide's, not the model's: ``az.summary`` reports the variational
       approximation, whose uncertainty mean-field families understate (see
       :func:`pyro_vi.psis_diagnostic` and :func:`pyro_vi.compare_to_mcmc`). ``r_hat`` across
       chains measures agreement between fits, not MCMC mixing. Plates must not subsample.

    References
    ----------
    Kumar, Carroll, Hartikainen & Martin (2019), "ArviZ a unified library for exploratory
    analysis of Bayesian models in Python", JOSS 4(33):1143. Vehtari, Gelman & Gabry (2017),
    "Practical Bayesian model evaluation using leave-one-out cross-validation and WAIC",
    Statistics and Computing 27:1413-1432.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch
    >>> def model(y):
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     with pyro.plate("data", len(y)):
    ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> def guide(y):
    ...     pyro.sample("mu", dist.Normal(0.5, 0.5))
    >>> idata = to_inference_data(model, guide, torch.ones(4), num_samples=20, seed=0)
    >>> [g for g in ("posterior", "log_likelihood", "constant_data") if g in idata]
    ['posterior', 'log_likelihood']
    >>> idata.log_likelihood["y"].dims
    ('chain', 'draw', 'data')
    """
    if guides is None:
        if guide is None:
            raise ValueError("pass a guide, or several fitted guides as guides=[...]")
        chain_guides: list[Callable[..., Any]] = [guide]
    else:
        if guide is not None:
            raise ValueError("pass either guide or guides=[...], not both")
        chain_guides = list(guides)
        if not chain_guides:
            raise ValueError("guides is empty")
    infos = _infos(fit_info, len(chain_guides))
    return _build(model, [(g, None) for g in chain_guides], args, kwargs,
                  num_samples=num_samples, seed=seed, coords=coords, dims=dims, infos=infos)


def inference_data_from_result(result: FitResult | Sequence[FitResult], *args: Any,
                               model: Callable[..., Any] | None = None,
                               num_samples: int = 1000, seed: int | None = None,
                               coords: Mapping[str, Any] | None = None,
                               dims: Mapping[str, Sequence[str]] | None = None,
                               align: bool = True, **kwargs: Any) -> Any:
    """``to_inference_data`` for one fit result or several (one chain each).

    ``result`` is a :class:`~pyro_vi.results.FitResult` (a CAVI or SVI fit), or a sequence of
    them fitted to the same data. Each guide runs with its own fit's parameters: when
    :attr:`~pyro_vi.results.FitResult.store_params` is set (an SVI fit), in a scoped param
    store holding exactly those values, so several fits with the same param names each use
    their own. ``*args, **kwargs`` are the model's data arguments; without them the first
    fit's ``data`` is used. ``model`` overrides the first fit's Pyro model.

    Several fits of a mixture (a conjugate model whose ``label_alignment()`` is not None, like
    the GMM) have their component labels aligned to the first fit's by default
    (:func:`pyro_vi.diagnostics.nuts.align_chains`), so restarts that found the same solution
    with permuted labels agree in ``r_hat``; ``align=False`` keeps the labels as fitted. The
    posterior's attrs then say ``label_alignment``.

    Examples
    --------
    See :func:`to_inference_data`; ``result.to_inference_data()`` calls this.
    """
    results: list[FitResult] = list(result) if isinstance(result, Sequence) else [result]
    if not results:
        raise ValueError("result is an empty sequence")
    if not args and not kwargs:
        args = results[0].data
    pyro_model = results[0].model if model is None else model
    chains = [(r.guide, r.store_params) for r in results]
    infos = [fit_info_from_result(r) for r in results]
    alignment = label_alignment(results[0]) if check_bool("align", align) else None
    return _build(pyro_model, chains, args, kwargs, num_samples=num_samples, seed=seed,
                  coords=coords, dims=dims, infos=infos, alignment=alignment)
