r"""Running a plain Pyro model for detection: its sites, plates and distribution parameters.

Detection never looks at the model's source. It runs the program (in float64) under Pyro's
handlers: once as written, to list the sample sites, their families, shapes and plates; then
many times with every continuous latent *fixed* to chosen probe values
(:func:`pyro.poutine.condition`) and the one local discrete latent, if any, *enumerated*
(:func:`pyro.poutine.enum`, so every child is computed for all its values at once). What is
read back from each run are the distributions' parameters ("slots": a Normal's ``loc`` and
precision, a Poisson's ``rate``, ...), from which :mod:`pyro_vi.cavi.auto.links` works out how
each slot depends on each latent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.distributions as td
from pyro import poutine
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.infer import config_enumerate
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from pyro_vi.errors import NotConjugateError
from pyro_vi.factors import muted_wishart_warning

__all__ = ["ELEMENTWISE", "FAMILIES", "Plate", "SiteInfo", "float64", "model_sites",
           "read_slots", "run_conditioned", "unwrap"]

#: Child families whose slots are elementwise over the site's whole shape (batch + event).
ELEMENTWISE = ("Normal", "Gamma", "Beta", "Poisson", "Exponential", "Bernoulli", "Binomial",
               "Geometric", "Unit")
#: Families whose slots carry trailing event dimensions of their own.
VECTOR = ("MultivariateNormal", "Categorical", "Multinomial", "Dirichlet", "Wishart")
FAMILIES = ELEMENTWISE + VECTOR

_TYPES: tuple[tuple[type, str], ...] = (
    (td.MultivariateNormal, "MultivariateNormal"), (td.Normal, "Normal"), (td.Gamma, "Gamma"),
    (td.Beta, "Beta"), (td.Dirichlet, "Dirichlet"), (td.Wishart, "Wishart"),
    (td.Poisson, "Poisson"), (td.Exponential, "Exponential"), (td.Bernoulli, "Bernoulli"),
    (td.Binomial, "Binomial"), (td.Geometric, "Geometric"), (td.Categorical, "Categorical"),
    (td.Multinomial, "Multinomial"), (dist.Unit, "Unit"),
)


@contextlib.contextmanager
def float64() -> Iterator[None]:
    """Trace with torch's default dtype set to float64 (a model's ``torch.tensor(2.0)`` too)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@dataclass(frozen=True)
class Plate:
    """A plate a site sits in: its name, size and (negative) batch dimension."""

    name: str
    size: int
    dim: int


@dataclass(frozen=True)
class SiteInfo:
    """A sample site of the model as run once: what detection needs to know about it.

    ``family`` names the base distribution (:data:`FAMILIES`), ``event_dims`` counts the
    dimensions ``.to_event`` reinterpreted on top of the base, ``batch_shape`` and
    ``event_shape`` are the site's, ``plates`` its plates outermost first.
    """

    name: str
    family: str
    observed: bool
    value: Tensor
    batch_shape: torch.Size
    event_shape: torch.Size
    event_dims: int
    plates: tuple[Plate, ...]

    @property
    def plate_names(self) -> frozenset[str]:
        """Names of the site's plates."""
        return frozenset(p.name for p in self.plates)


def unwrap(fn: Any, site: str) -> tuple[Any, str, int]:
    """``(base distribution, family name, reinterpreted event dims)`` of a site's ``fn``.

    ``.to_event`` (Independent) and plate broadcasting (ExpandedDistribution) are looked
    through; a masked distribution and any family outside :data:`FAMILIES` raise
    :class:`~pyro_vi.errors.NotConjugateError` naming the site.
    """
    event_dims = 0
    while True:
        if isinstance(fn, td.Independent):
            event_dims += fn.reinterpreted_batch_ndims
            fn = fn.base_dist
        elif isinstance(fn, ExpandedDistribution):
            fn = fn.base_dist
        elif isinstance(fn, MaskedDistribution):
            raise NotConjugateError(site, None, None, "the site is masked (poutine.mask or "
                                    ".mask()); CAVI needs every term of the model unmasked")
        else:
            break
    for cls, name in _TYPES:
        if isinstance(fn, cls):
            if name in VECTOR and event_dims:
                raise NotConjugateError(site, None, None, f".to_event() on a {name} is not "
                                        "supported; put the extra dimensions in a plate")
            return fn, name, event_dims
    raise NotConjugateError(site, None, None, f"its family {type(fn).__name__} is not one "
                            "that conjugate updates know (Normal, MultivariateNormal, Gamma, "
                            "Beta, Dirichlet, Wishart, and discrete or count likelihoods)")


def _plates(site: Any) -> tuple[Plate, ...]:
    frames = [f for f in site["cond_indep_stack"] if f.vectorized]
    return tuple(Plate(f.name, int(f.size), int(f.dim)) for f in sorted(frames, key=lambda f: f.dim))


def _check_site(site: Any) -> None:
    name = site["name"]
    scale = site.get("scale", 1.0)
    if not (isinstance(scale, float | int) and scale == 1.0):
        raise NotConjugateError(name, None, None, "the site is scaled (a plate with "
                                "subsample_size, or poutine.scale); CAVI uses all the data — "
                                "drop the subsampling, or use svi_cavi for minibatches")
    if site.get("mask") is not None and not (isinstance(site["mask"], bool) and site["mask"]):
        raise NotConjugateError(name, None, None, "the site is masked; CAVI needs every term")
    if any(not f.vectorized for f in site["cond_indep_stack"]):
        raise NotConjugateError(name, None, None, "it sits in a sequential pyro.plate (a Python "
                                "loop); write the plate vectorized (`with pyro.plate(...)`)")


def _trace(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> poutine.Trace:
    # block(): detection may run inside a guide that an outer handler (a Trace_ELBO) traces.
    # This run draws the latents from their priors, only for their shapes: torch's Wishart
    # warns spuriously on valid draws (pytorch/pytorch#122021), so that warning is muted here.
    with float64(), pyro.validation_enabled(False), poutine.block(), muted_wishart_warning():
        return poutine.trace(model).get_trace(*args, **kwargs)


def model_sites(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[SiteInfo]:
    """Run ``model(*args, **kwargs)`` once and describe its sample sites, in program order."""
    try:
        tr = _trace(model, args, kwargs)
    except NotConjugateError:
        raise
    except Exception as exc:  # the user's program failed: say so, with its own message
        raise ValueError(f"running the model on the data given failed: "
                         f"{type(exc).__name__}: {exc}") from exc
    out = []
    for name, site in tr.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        _check_site(site)
        fn: Any = site["fn"]
        _, family, event_dims = unwrap(fn, name)
        value = site["value"]
        assert isinstance(value, Tensor)
        out.append(SiteInfo(name=name, family=family, observed=bool(site["is_observed"]),
                            value=value, batch_shape=fn.batch_shape,
                            event_shape=fn.event_shape, event_dims=event_dims,
                            plates=_plates(site)))
    return out


def run_conditioned(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                    values: dict[str, Tensor], *, enumerate_dim: int | None) -> poutine.Trace:
    """Run the model with latent ``values`` fixed and discrete latents enumerated.

    ``enumerate_dim`` is the first free dimension left of every plate (``-(nesting + 1)``);
    None: nothing to enumerate.
    """
    fn = poutine.condition(model, data=values)
    if enumerate_dim is not None:
        fn = poutine.enum(config_enumerate(fn, default="parallel", expand=False),
                          first_available_dim=enumerate_dim)
    with float64(), pyro.validation_enabled(False), poutine.block():
        return poutine.trace(fn).get_trace(*args, **kwargs)


def _full(t: Any, shape: torch.Size) -> Tensor:
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.broadcast_to(t, torch.broadcast_shapes(t.shape, shape))


def read_slots(fn: Any, site: str) -> dict[str, Tensor]:
    """The parameters of a site's distribution, broadcast to the site's full shape.

    Elementwise families give tensors of the site's ``batch_shape + event_shape``; vector
    families add their own trailing dimensions (a MultivariateNormal's ``loc`` ``(..., D)``
    and ``precision`` ``(..., D, D)``, a Categorical's ``probs`` ``(..., K)``). A Normal's
    slot is its precision ``scale ** -2``, the parameter the conjugate Gamma multiplies.
    """
    base, family, _ = unwrap(fn, site)
    if family == "Unit":  # pyro.factor: its log-density itself
        return {"log_factor": _full(base.log_factor, fn.batch_shape)}
    shape = fn.batch_shape + fn.event_shape
    if family == "Normal":
        return {"loc": _full(base.loc, shape), "precision": _full(base.scale, shape) ** -2}
    if family == "Gamma":
        return {"concentration": _full(base.concentration, shape), "rate": _full(base.rate, shape)}
    if family == "Beta":
        return {"concentration1": _full(base.concentration1, shape),
                "concentration0": _full(base.concentration0, shape)}
    if family in ("Poisson", "Exponential"):
        return {"rate": _full(base.rate, shape)}
    if family in ("Bernoulli", "Geometric"):
        return {"probs": _full(base.probs, shape)}
    if family == "Binomial":
        return {"total_count": _full(base.total_count, shape), "probs": _full(base.probs, shape)}
    bshape = fn.batch_shape
    if family == "MultivariateNormal":
        d = base.event_shape[-1]
        return {"loc": _full(base.loc, bshape + (d,)),
                "precision": _full(base.precision_matrix, bshape + (d, d))}
    if family == "Categorical":
        return {"probs": _full(base.probs, bshape + base.probs.shape[-1:])}
    if family == "Multinomial":
        return {"total_count": _full(float(base.total_count), bshape),
                "probs": _full(base.probs, bshape + base.probs.shape[-1:])}
    if family == "Dirichlet":
        return {"concentration": _full(base.concentration, bshape + base.event_shape)}
    if family == "Wishart":
        d = base.event_shape[-1]
        return {"df": _full(base.df, bshape), "scale_tril": _full(base.scale_tril, bshape + (d, d))}
    raise AssertionError(family)  # unwrap() admits only the families above


def slot_labels(fn: Any, site: str) -> dict[str, str]:
    """The parameter names the user wrote, per slot (for messages).

    ``scale`` for a Normal's precision, ``logits`` when a probability was given as logits,
    ``scale_tril`` or ``covariance_matrix`` for a precision matrix given that way.
    """
    base, family, _ = unwrap(fn, site)
    given = vars(base)
    out: dict[str, str] = {}
    if family == "Normal":
        out["precision"] = "scale"
    if "probs" not in given and "logits" in given:
        out["probs"] = "logits"
    if family == "MultivariateNormal":
        for name in ("precision_matrix", "scale_tril", "covariance_matrix"):
            if name in given:
                out["precision"] = name
                break
    return out


def family_of(fn: Any) -> str:
    """The family name of a site's ``fn`` (see :func:`unwrap`)."""
    return unwrap(fn, "?")[1]

