r"""The model contract: what a conjugate-exponential model gives the CAVI engine and Pyro.

A model subclasses :class:`ConjugateModel` and implements

* the five CAVI methods: :meth:`~ConjugateModel.prepare` (validate the data, resolve
  data-dependent priors), :meth:`~ConjugateModel.init_stats` (statistics to start from),
  :meth:`~ConjugateModel.local_step` (data → summed expected sufficient statistics and the
  data's share of the ELBO), :meth:`~ConjugateModel.global_step` (summed statistics → global
  factors) and, unless the default fits, :meth:`~ConjugateModel.global_elbo`;
* :meth:`~ConjugateModel.prior_params`, the prior written as a params record;
* the Pyro side: :meth:`~ConjugateModel.model` (the generative program),
  :meth:`~ConjugateModel.sample_guide` (sample every guide site from a params record) and
  :meth:`~ConjugateModel.guide_params` (the params record built from ``pyro.param`` sites).

Everything else is derived here: the trainable :meth:`~ConjugateModel.guide`, the fixed
:meth:`~ConjugateModel.fitted_guide`, the analytic :meth:`~ConjugateModel.elbo`,
:meth:`~ConjugateModel.params_from_store`, the chunking estimate
:meth:`~ConjugateModel.local_bytes_per_point` and the exact posterior table
:meth:`~ConjugateModel.posterior_summary` (from :meth:`~ConjugateModel.summary_sites`).
:func:`local_pass` runs a local step over the data in chunks; the engine (:func:`pyro_vi.cavi`,
:func:`pyro_vi.svi_cavi`) is built on it.
"""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NamedTuple, TypeVar

import pandas as pd
import torch
from torch import Tensor

from pyro_vi._checks import check_device, check_dtype
from pyro_vi.cavi.summary import summary_table
from pyro_vi.factors import ExpFamFactor

if TYPE_CHECKING:
    from pyro_vi.distributed.collectives import Comm

__all__ = ["DEFAULT_CHUNK_BYTES", "ConjugateModel", "FittedGuide", "LabelAlignment", "Local",
           "Stats", "check_params", "data_roundoff", "detach_params", "local_pass",
           "nonfinite_global_terms"]

#: Bytes of temporaries one chunk of the local step may use (see :func:`local_pass`). Chunks this
#: size keep the GMM's N·K·D temporaries near the last-level cache: one CPU thread spent 10–20 %
#: less time per sweep than with 64 MiB chunks (benchmarks/scaling.py, D=8..64, K=8..16).
DEFAULT_CHUNK_BYTES = 16 * 2**20

Stats = tuple[Tensor, ...]

DataT = TypeVar("DataT")
ParamsT = TypeVar("ParamsT")
StatsT = TypeVar("StatsT", bound=Stats)
M = TypeVar("M", bound="ConjugateModel[Any, Any, Any]")


class Local(NamedTuple):
    """What a local step returns: summed expected sufficient statistics and ELBO share.

    Both are *additive over data points*: the sum over chunks equals the full-data value.
    """

    stats: Stats
    elbo: Tensor


def check_params(params: Any, *, where: str = "params") -> Any:
    """Return ``params`` after checking the contract's rule for a params record.

    A params record is a frozen dataclass whose fields are
    :class:`~pyro_vi.factors.ExpFamFactor` s (the variational factors) or tensors (quantities
    held fixed, e.g. a known precision). Anything else is a ``TypeError`` naming ``where``.
    """
    if not dataclasses.is_dataclass(params) or isinstance(params, type):
        raise TypeError(f"{where} must be a frozen dataclass of ExpFamFactor fields, got "
                        f"{type(params).__name__}")
    if not getattr(getattr(type(params), "__dataclass_params__", None), "frozen", False):
        raise TypeError(f"{where}: {type(params).__name__} must be a frozen dataclass")
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if not isinstance(value, ExpFamFactor | Tensor):
            raise TypeError(f"{where}: field {f.name!r} of {type(params).__name__} is a "
                            f"{type(value).__name__}, not an ExpFamFactor or a fixed Tensor")
    return params


def detach_params(params: Any) -> Any:
    """Copy a params record, detaching every factor and tensor from autograd."""
    out = {}
    for f in dataclasses.fields(check_params(params)):
        v = getattr(params, f.name)
        if isinstance(v, ExpFamFactor):
            v = copy.copy(v)
            for key, val in vars(v).items():
                if isinstance(val, Tensor):
                    setattr(v, key, val.detach().clone())
        else:
            v = v.detach().clone()
        out[f.name] = v
    return type(params)(**out)


class LabelAlignment(NamedTuple):
    """How to align a mixture's component labels between fits or samplers (label switching).

    ``by`` is the site whose component means are matched (Hungarian matching, see
    :func:`pyro_vi.diagnostics.nuts.match_components`), ``sites`` are permuted along their
    component ``axis`` (counted in the site's own shape), and ``labels`` are sites whose
    *values* are component indices (a mixture's ``z``), relabelled to match.
    """

    by: str
    sites: tuple[str, ...]
    axis: int = 0
    labels: tuple[str, ...] = ()


class FittedGuide:
    """A Pyro guide with fixed, fitted parameters (``CAVIResult.guide``).

    Calling it with the model's data samples every guide site from ``params``; local factors
    (if the model has any) are set to their optimum given ``params`` for the data it is given.
    ``options`` are passed on to the model's ``sample_guide``.
    """

    def __init__(self, model: ConjugateModel[Any, Any, Any], params: Any, **options: Any) -> None:
        self.model = model
        self.params = params
        self.options = options

    def __call__(self, *data: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Sample the guide sites for ``data`` (the model's arguments)."""
        return self.model.sample_guide(self.params, *data, **self.options)


class ConjugateModel(ABC, Generic[DataT, ParamsT, StatsT]):
    r"""The contract a conjugate-exponential model implements to be fitted by CAVI and Pyro.

    The ELBO at global parameters :math:`\lambda` is
    ``sum(local_step(chunk, λ).elbo for chunk in data) + global_elbo(λ)``, with every local
    factor at its optimum given :math:`\lambda`. Local statistics must *add up over data
    points*: that is what lets the engine chunk the data, subsample it (stochastic VI) or
    split it across processes.

    **The params rule.** ``ParamsT`` is a frozen dataclass whose fields are
    :class:`~pyro_vi.factors.ExpFamFactor` s (or tensors for quantities held fixed); the
    engine checks every record a global step returns with :func:`check_params`. Stochastic
    VI steps exactly those factor fields in natural parameters, and the default
    :meth:`global_elbo` sums their KL divergences to :meth:`prior_params`.

    Options that belong to one model (the GMM's ``init``, say) are constructor arguments:
    the engine knows no model. ``dtype`` and ``device`` are set by ``__init__`` through
    :func:`pyro_vi._checks.check_dtype`.

    Examples
    --------
    The simplest model: :math:`\theta \sim \mathrm{Gam}(a_0, b_0)`, observed Poisson counts,
    is :class:`pyro_vi.models.gamma_poisson.GammaPoisson`; every model in
    :mod:`pyro_vi.models` follows the same contract.

    >>> from pyro_vi.models.gamma_poisson import GammaPoisson
    >>> isinstance(GammaPoisson(), ConjugateModel)
    True
    """

    #: Prefix of the model's ``pyro.param`` names.
    name: ClassVar[str] = "conjugate"
    #: Plates nested inside the model (the data plate); Pyro's ELBOs need it for particles.
    max_plate_nesting: ClassVar[int] = 1

    dtype: torch.dtype
    device: torch.device | None

    def __init__(self, *, dtype: Any = torch.float64, device: Any = None) -> None:
        self.dtype = check_dtype("dtype", dtype)
        self.device = check_device("device", device)

    def _t(self, v: Any) -> Tensor:
        """``v`` as a tensor in the model's dtype and device."""
        return torch.as_tensor(v, dtype=self.dtype, device=self.device)

    # ---------------------------------------------------------------------- CAVI methods
    @abstractmethod
    def prepare(self: M, data: Any) -> tuple[M, DataT]:
        """Validate ``data``; return the model with concrete priors and the canonical data."""

    @abstractmethod
    def init_stats(self, data: DataT, *, generator: torch.Generator) -> StatsT:
        """Summed statistics to start from (the generator seeds any random start)."""

    @abstractmethod
    def local_step(self, data: DataT, params: ParamsT) -> Local:
        """Optimal local factors given ``params``; their summed statistics and ELBO share."""

    @abstractmethod
    def global_step(self, stats: StatsT, params: ParamsT | None) -> ParamsT:
        """Global parameters from summed statistics (``params``: the previous ones, or None)."""

    @abstractmethod
    def prior_params(self) -> ParamsT:
        """The prior as a params record of the guide's families."""

    def proposals(self, data: DataT, params: ParamsT) -> list[tuple[str, StatsT]]:
        """Moved starts near a fitted state, for :func:`~pyro_vi.cavi` ``(moves=...)``: best first.

        ``(description, stats)`` pairs: summed statistics of local factors moved away from
        their optimum under ``params`` (e.g. a mixture's split and merge moves), each the
        start of a run that may climb past ``params``' optimum. A model without moves does
        not override this (the engine refuses ``moves`` for it before any work).
        """
        raise NotImplementedError(f"{type(self).__name__} offers no moves")

    # ------------------------------------------------------- data-parallel (distributed=True)
    def prepare_shard(self: M, data: Any, *, comm: Comm) -> tuple[M, DataT]:
        """:meth:`prepare` for one rank's rows of a distributed fit.

        Every rank must get the model that :meth:`prepare` of the concatenated rows gives. The
        default, ``prepare(data)``, is right when the prepared model does not depend on the
        data's values (validation only); a model with data-dependent choices (priors from the
        data's moments, a centring origin) overrides it and takes them from sums over ranks
        (``comm.sum``). The engine checks that the first global parameters agree bitwise
        across ranks, so a forgotten override is an error, not a silent difference.
        """
        return self.prepare(data)

    def init_stats_shard(self, data: DataT, *, generator: torch.Generator,
                         comm: Comm) -> StatsT | None:
        """:meth:`init_stats` summed over every rank's rows, the same for any number of ranks.

        None (the default) leaves it to the engine
        (:func:`pyro_vi.distributed.conjugate.start_stats`): ``init_stats`` summed over ranks
        when it is deterministic (a sum over rows of a function of each row), else a start
        drawn from a seeded subsample of all rows
        (:func:`~pyro_vi.distributed.conjugate.subsample_start`). A model that knows which
        applies returns the summed statistics itself.
        """
        return None

    def global_elbo(self, params: ParamsT) -> Tensor:
        r"""ELBO terms that do not sum over data points; by default :math:`-\sum_j \mathrm{KL}`.

        .. math:: -\sum_j \mathrm{KL}\big(q(\theta_j)\,\|\,p(\theta_j)\big)

        over the :class:`~pyro_vi.factors.ExpFamFactor` fields of ``params`` against the same
        fields of :meth:`prior_params` (batched factors summed). This is the whole global
        part of the ELBO when every global factor's prior is fixed (no prior depends on
        another latent); a model with coupled priors overrides it.
        """
        prior = self.prior_params()
        total: Tensor | None = None
        for f in dataclasses.fields(check_params(params)):
            q = getattr(params, f.name)
            if isinstance(q, ExpFamFactor):
                term = -q.kl(getattr(prior, f.name)).sum()
                total = term if total is None else total + term
        if total is None:
            raise TypeError(f"{type(params).__name__} has no ExpFamFactor field")
        return total

    def elbo_roundoff(self, data: DataT) -> float | None:
        r"""Round-off of the ELBO, in nats, that the data's magnitude alone can cause.

        The engine compares a decrease of the ELBO with it: a decrease within it is a
        precision problem (raw units, a large offset), not a wrong update. The default is
        :func:`data_roundoff`, the cancellation of squared raw values against squared
        deviations; a model that computes in centred coordinates may return less. None: unknown.
        """
        return data_roundoff(data)

    def compute_eps(self) -> float:
        """Machine epsilon of the local step's arithmetic (default: of ``dtype``).

        The engine's ELBO-never-decreases check allows a relative decrease of ``1000 ×`` it; a
        model whose local step runs in a lower precision than ``dtype`` returns that precision's.
        """
        return float(torch.finfo(self.dtype).eps)

    def local_bytes_per_point(self, data: DataT) -> int | None:
        """Bytes of temporaries per data point in :meth:`local_step`; None: never chunk."""
        return None

    def label_alignment(self) -> LabelAlignment | None:
        """How the diagnostics align this model's component labels; None: no labels to align."""
        return None

    # ------------------------------------------------------------------------- Pyro side
    @abstractmethod
    def model(self, *data: Any) -> Any:
        """The generative model as a Pyro program of the (canonical) data."""

    @abstractmethod
    def sample_guide(self, params: ParamsT, *data: Any) -> dict[str, Tensor]:
        """Sample every guide site from ``params`` (local factors at their optimum)."""

    @abstractmethod
    def guide_params(self, *data: Any) -> ParamsT:
        """The params record built from ``pyro.param`` sites ``"{name}.*"`` (for SVI)."""

    def guide(self, *data: Any) -> dict[str, Tensor]:
        """The mean-field guide with trainable ``pyro.param`` sites (for :func:`pyro_vi.fit_svi`)."""
        return self.sample_guide(self.guide_params(*data), *data)

    def pyro_data(self, data: tuple[Any, ...]) -> tuple[Any, ...]:
        """The Pyro model's arguments for the (prepared) ``data`` tuple; by default the same."""
        return data

    def posterior(self, params: ParamsT, name: str, *data: Any) -> Any:
        """Q's marginal of latent site ``name`` as a torch distribution.

        By default the :meth:`summary_sites` entry of ``name`` converted by
        :func:`pyro_vi.cavi.summary.as_distribution` (a ``ValueError`` names the sites when
        ``name`` is not one).
        """
        from pyro_vi.cavi.summary import as_distribution

        sites = self.summary_sites(params, *data)
        if name not in sites:
            raise ValueError(f"no latent site {name!r}; the latent sites are {sorted(sites)}")
        return as_distribution(sites[name])

    def fitted_guide(self, params: ParamsT) -> FittedGuide:
        """A Pyro guide carrying fixed ``params`` (``CAVIResult.guide``)."""
        return FittedGuide(self, params)

    def params_from_store(self, *data: Any) -> ParamsT:
        """The params in Pyro's param store, detached (after training :meth:`guide`)."""
        with torch.no_grad():
            params: ParamsT = detach_params(self.guide_params(*data))
        return params

    # ------------------------------------------------------------------------ summaries
    def summary_sites(self, params: ParamsT, *data: Any) -> dict[str, Any]:
        """Pyro site name → q's marginal of that site, for :meth:`posterior_summary`.

        The default names every :class:`~pyro_vi.factors.ExpFamFactor` field of ``params``
        after itself (fixed tensors are no latent site): right for a model whose sample sites
        are named like its params fields. A model overrides it to rename sites, to split a
        joint factor into its marginals (:func:`pyro_vi.cavi.summary.loc_marginal`) or to add
        local factors computed from ``data``.
        """
        return {f.name: getattr(params, f.name) for f in dataclasses.fields(check_params(params))
                if isinstance(getattr(params, f.name), ExpFamFactor)}

    def posterior_summary(self, params: ParamsT, *data: Any, prob: float = 0.94,
                          seed: int = 0) -> pd.DataFrame:
        """One row per scalar of every latent site, computed from q (``CAVIResult.summary``).

        Columns ``mean``, ``sd``, ``eti_3%``, ``eti_97%`` (the equal-tailed interval of mass
        ``prob``), ``method`` and ``negligible``; see :func:`pyro_vi.cavi.summary.summary_table`
        for the formulas and what ``method`` says. The default flags nothing as negligible.
        """
        return summary_table(self.summary_sites(params, *data), prob=prob, seed=seed)

    def elbo(self, data: Any, params: ParamsT, *, chunk_size: int | None = None) -> float:
        """Analytic ELBO in nats at ``params`` (local factors, if any, at their optimum)."""
        model, prepared = self.prepare(data)
        local = local_pass(model, prepared, params, chunk_size=chunk_size)
        return float(local.elbo + model.global_elbo(params))


def _float_tensors(data: Any) -> list[Tensor]:
    if isinstance(data, Tensor):
        return [data] if data.is_floating_point() and data.numel() else []
    if isinstance(data, tuple | list):
        return [t for d in data for t in _float_tensors(d)]
    return []


def data_roundoff(data: Any) -> float | None:
    r"""Nats of ELBO round-off that the data's offset can cause: :math:`10\,\epsilon\sum_j N(1 + |\bar x_j|/s_j)^2`.

    For each floating column :math:`j` (mean :math:`\bar x_j`, standard deviation
    :math:`s_j`) a quadratic form of raw values loses about :math:`\epsilon(1 + |\bar x_j|/s_j)^2`
    of its size per point, in units where the point's term is :math:`O(1)` nats. None when
    ``data`` holds no floating tensor.
    """
    total, eps = 0.0, None
    for t in _float_tensors(data):
        t2 = t.reshape(t.shape[0], -1) if t.dim() else t.reshape(1, 1)
        eps = torch.finfo(t2.dtype).eps
        sd = t2.std(0) if t2.shape[0] > 1 else torch.zeros_like(t2[0])
        mean = t2.mean(0).abs()
        ratio = torch.where(sd > 0, mean / sd.clamp_min(torch.finfo(t2.dtype).tiny),
                            torch.zeros_like(mean))
        total += float(t2.shape[0] * (1.0 + ratio).square().sum())
    return None if eps is None else 10.0 * eps * total


def nonfinite_global_terms(model: ConjugateModel[Any, Any, Any], params: Any) -> str:
    """Name the global factor whose parameters or KL to its prior is not finite (for errors)."""
    try:
        prior = model.prior_params()
    except Exception:  # noqa: BLE001 - a diagnostic: a prior that fails is reported, not raised
        prior = None
    for f in dataclasses.fields(params):
        q = getattr(params, f.name)
        kind = type(q).__name__
        if isinstance(q, Tensor):
            if not torch.isfinite(q).all():
                return f"the fixed global {f.name!r} is not finite"
            continue
        bad = [k for k, v in vars(q).items() if isinstance(v, Tensor) and not torch.isfinite(v).all()]
        if bad:
            return (f"the global factor {f.name!r} ({kind}) has non-finite parameters "
                    f"({', '.join(bad)}) after the global step")
        p = getattr(prior, f.name, None)
        if isinstance(p, ExpFamFactor) and type(p) is type(q):
            kl = q.kl(p)
            if not torch.isfinite(kl).all():
                return (f"the global KL of factor {f.name!r} ({kind}) to its prior is "
                        f"{float(kl.sum())}")
    return (f"{type(model).__name__}.global_elbo is not finite although every global factor "
            "and its KL to the prior is")


def _split(data: Any, start: int, stop: int) -> Any:
    if isinstance(data, Tensor):
        return data[start:stop]
    if isinstance(data, tuple):
        return tuple(_split(d, start, stop) for d in data)
    raise TypeError(f"cannot chunk data of type {type(data).__name__}; pass chunk_size=0")


def _num_points(data: Any) -> int:
    if isinstance(data, Tensor):
        return int(data.shape[0])
    if isinstance(data, tuple) and data:
        return _num_points(data[0])
    raise TypeError(f"cannot chunk data of type {type(data).__name__}; pass chunk_size=0")


def _add(a: Local, b: Local) -> Local:
    return Local(tuple(x + y for x, y in zip(a.stats, b.stats, strict=True)), a.elbo + b.elbo)


def local_pass(model: ConjugateModel[Any, Any, Any], data: Any, params: Any, *,
               chunk_size: int | None) -> Local:
    """Run ``model.local_step`` over ``data`` in chunks of rows and add the results up.

    ``chunk_size=None`` picks the chunk from ``model.local_bytes_per_point(data)`` so that
    temporaries stay under :data:`DEFAULT_CHUNK_BYTES` (a model that returns None is not
    chunked); ``chunk_size=0`` disables chunking.
    """
    if not isinstance(model, ConjugateModel):
        raise TypeError(f"model must be a pyro_vi.ConjugateModel, got {type(model).__name__}")
    if chunk_size is None:
        per_point = model.local_bytes_per_point(data)
        chunk_size = 0 if per_point is None else max(1024, DEFAULT_CHUNK_BYTES // max(1, per_point))
    n = _num_points(data) if chunk_size else 0
    if not chunk_size or n <= chunk_size:
        return model.local_step(data, params)
    total: Local | None = None
    for start in range(0, n, chunk_size):
        part = model.local_step(_split(data, start, start + chunk_size), params)
        total = part if total is None else _add(total, part)
    assert total is not None
    return total
