r"""The sites and plates of a Pyro model, and whether a guide covers them.

:func:`inspect_model` traces a model's prior once and records, for every sample site, its shape,
its event rank, the ``pyro.plate`` that names each batch dimension, and whether it is observed,
discrete or enumerable. :func:`check_guide` compares one guide trace with that record: every
latent site must be sampled by the guide with the model's shape, except discrete sites with
enumerable support, which the diagnostics sum out instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from pyro_vi.factors import muted_wishart_warning

__all__ = ["ModelStructure", "SiteInfo", "check_guide", "inspect_model", "node", "sample_sites"]


def sample_sites(trace: poutine.Trace) -> list[Any]:
    """The sample-site messages of a trace, in order (typed loosely: Pyro's are TypedDicts)."""
    return [s for s in trace.nodes.values() if s["type"] == "sample"]


def node(trace: poutine.Trace, name: str) -> Any:
    """The message of site ``name`` (typed loosely, see :func:`sample_sites`)."""
    return trace.nodes[name]


@dataclass(frozen=True)
class SiteInfo:
    """Shape and role of one sample site of a model.

    ``dims`` names every dimension of the site's value: the ``pyro.plate`` name for a batch
    dimension inside a plate, ``None`` for any other dimension (event or unplated batch).
    """

    name: str
    shape: tuple[int, ...]
    event_dim: int
    dims: tuple[str | None, ...]
    plates: frozenset[str]
    observed: bool
    discrete: bool
    enumerable: bool


@dataclass(frozen=True)
class ModelStructure:
    """The sites of a model, from one trace of its prior (see :func:`inspect_model`)."""

    sites: dict[str, SiteInfo]
    plates: dict[str, int]
    max_plate_nesting: int
    observed_values: dict[str, Tensor]

    @property
    def latent(self) -> tuple[str, ...]:
        """Names of the latent (unobserved) sample sites, in model order."""
        return tuple(n for n, s in self.sites.items() if not s.observed)

    @property
    def observed(self) -> tuple[str, ...]:
        """Names of the observed sample sites (data), in model order."""
        return tuple(n for n, s in self.sites.items() if s.observed)

    @property
    def local_discrete(self) -> tuple[str, ...]:
        """Enumerable latent sites inside (a subset of) some observed site's plates."""
        obs = [self.sites[o].plates for o in self.observed]
        return tuple(n for n in self.latent if self.sites[n].enumerable
                     and self.sites[n].plates and any(self.sites[n].plates <= p for p in obs))


def _site_info(name: str, site: dict[str, Any]) -> SiteInfo:
    fn, value = site["fn"], site["value"]
    shape = tuple(value.shape)
    event_dim = len(fn.event_shape)
    batch = len(shape) - event_dim
    frames = {f.dim: f for f in site["cond_indep_stack"] if f.vectorized}
    dims: list[str | None] = []
    for i in range(batch):
        frame = frames.get(i - batch)
        if frame is not None and shape[i] != 1 and shape[i] != frame.size:
            raise ValueError(
                f"site {name!r} has {shape[i]} elements along plate {frame.name!r} of size "
                f"{frame.size}: subsampled plates are not supported, pass the full data"
            )
        dims.append(frame.name if frame is not None and shape[i] == frame.size else None)
    dims += [None] * event_dim
    observed = bool(site["is_observed"])
    return SiteInfo(
        name=name, shape=shape, event_dim=event_dim, dims=tuple(dims),
        plates=frozenset(f.name for f in frames.values()), observed=observed,
        discrete=bool(fn.support.is_discrete),
        enumerable=bool(getattr(fn, "has_enumerate_support", False)) and not observed,
    )


def _is_data_site(site: dict[str, Any]) -> bool:
    """Sample sites that are latent variables or data (not factors or deterministics)."""
    infer = site["infer"]
    return not (infer.get("_deterministic") or infer.get("is_auxiliary"))


def inspect_model(model: Callable[..., Any], *args: Any, **kwargs: Any) -> ModelStructure:
    """Trace the model's prior once and record its sites, plates and plate nesting.

    Raises :class:`ValueError` on a plate with subsampling (diagnostics need the full data).

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch
    >>> def model(y):
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     with pyro.plate("data", len(y)):
    ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> s = inspect_model(model, torch.zeros(3))
    >>> s.latent, s.observed, s.plates, s.sites["y"].dims
    (('mu',), ('y',), {'data': 3}, ('data',))
    """
    # a draw from the prior, for shapes only: a user's dist.Wishart warns spuriously there
    with torch.no_grad(), poutine.block(), muted_wishart_warning():
        trace = prune_subsample_sites(poutine.trace(model).get_trace(*args, **kwargs))
    sites: dict[str, SiteInfo] = {}
    plates: dict[str, int] = {}
    nesting = 0
    observed: dict[str, Tensor] = {}
    for site in sample_sites(trace):
        name = site["name"]
        if not _is_data_site(site):
            continue
        for f in site["cond_indep_stack"]:
            full = getattr(f, "full_size", None)
            if full is not None and full != f.size:
                raise ValueError(f"plate {f.name!r} subsamples {f.size} of {full}: subsampled "
                                 "plates are not supported, pass the full data")
            if f.vectorized:
                if plates.get(f.name, f.size) != f.size:
                    raise ValueError(f"plate {f.name!r} has sizes {plates[f.name]} and {f.size}")
                plates[f.name] = f.size
                nesting = max(nesting, -f.dim)
        sites[name] = _site_info(name, site)
        if site["is_observed"]:
            observed[name] = site["value"]
    return ModelStructure(sites, plates, nesting, observed)


def check_guide(structure: ModelStructure, trace: poutine.Trace) -> tuple[str, ...]:
    """Check that the guide covers the model; return the discrete sites it leaves out."""
    missing = []
    for name in structure.latent:
        info = structure.sites[name]
        if name not in trace.nodes:
            if not info.enumerable:
                raise ValueError(
                    f"the guide does not sample latent site {name!r} of the model; every "
                    "continuous (or non-enumerable) latent site needs a guide site"
                )
            missing.append(name)
            continue
        shape = tuple(node(trace, name)["value"].shape)
        if shape != info.shape:
            plates = ", ".join(f"{p}={structure.plates[p]}" for p in sorted(info.plates))
            raise ValueError(
                f"guide site {name!r} has shape {shape} but the model's site has shape "
                f"{info.shape} (model plates: {plates or 'none'}); do the plate sizes match?"
            )
        for f in node(trace, name)["cond_indep_stack"]:
            size = structure.plates.get(f.name)
            if f.vectorized and size is not None and size != f.size:
                raise ValueError(
                    f"plate {f.name!r} has size {f.size} in the guide but {size} in the model"
                )
    return tuple(missing)


