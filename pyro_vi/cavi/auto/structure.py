r"""The conjugate structure of a plain Pyro model: factors, terms, and where the data lies.

:func:`analyse` turns a model and its data into a :class:`Structure`, or raises
:class:`~pyro_vi.errors.NotConjugateError` naming the latent, the child site and the slot:

1. run the model once (:func:`~pyro_vi.cavi.auto.trace.model_sites`): sites, families,
   plates; the **data plate** is the largest plate that every observed site sits in, and a
   latent inside it is *local* (one factor per data point, optimised inside the local step);
2. give every latent a factor (:func:`~pyro_vi.cavi.auto.links.latent_kind`); the one
   discrete latent allowed, a Categorical inside the data plate (a mixture's ``z``), is
   enumerated instead;
3. probe every slot's link (:func:`~pyro_vi.cavi.auto.links.detect_links`) and check it
   against the registry of conjugate pairs (:data:`CONJUGATE`);
4. fuse a Normal site with the Gamma/Wishart site its prior precision scales, when every use
   of the Normal shares that precision (``joint=True``): one Normal-Gamma/Normal-Wishart factor,
   as Bishop (2006, §10.2) fits the mixture's components;
5. lay the terms' arrays out for chunking: everything with an extent along the data plate
   becomes a per-point array, split with the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pyro_vi.cavi.auto.links import (
    GAUSSIAN,
    Affine,
    Known,
    LatentSpec,
    Link,
    Part,
    Scaled,
    detect_links,
    latent_kind,
)
from pyro_vi.cavi.auto.terms import GPart, GSlot, KSlot, LatentValue, ObsValue, PSlot, TermSpec
from pyro_vi.cavi.auto.trace import ELEMENTWISE, Plate, SiteInfo, model_sites
from pyro_vi.errors import NotConjugateError

__all__ = ["CONJUGATE", "ROWS", "FactorSpec", "Structure", "analyse", "factors_of"]

#: Key of the per-point array holding each data point's row number in the data given.
ROWS = "__rows__"

#: (child family, slot) -> the latent kinds that may enter it, with the conjugate pair's name.
CONJUGATE: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {
    ("Normal", "loc"): (GAUSSIAN, "a Normal location, affine in Gaussian latents"),
    ("Normal", "precision"): (("gamma",), "a Normal precision, a Gamma latent times data"),
    ("MultivariateNormal", "loc"): (GAUSSIAN, "a MultivariateNormal location, affine in Gaussian latents"),
    ("MultivariateNormal", "precision"): (("wishart",), "a precision matrix, a Wishart latent times a constant"),
    ("Gamma", "rate"): (("gamma",), "a Gamma rate (known concentration), a Gamma latent times data"),
    ("Poisson", "rate"): (("gamma",), "a Poisson rate, a Gamma latent times an exposure"),
    ("Exponential", "rate"): (("gamma",), "an Exponential rate, a Gamma latent times data"),
    ("Bernoulli", "probs"): (("beta",), "a Bernoulli probability, a Beta latent"),
    ("Binomial", "probs"): (("beta",), "a Binomial probability, a Beta latent"),
    ("Geometric", "probs"): (("beta",), "a Geometric probability, a Beta latent"),
    ("Categorical", "probs"): (("dirichlet",), "Categorical probabilities, a Dirichlet latent"),
    ("Multinomial", "probs"): (("dirichlet",), "Multinomial probabilities, a Dirichlet latent"),
}

_EXPECTED = {"log_factor": "nothing: a pyro.factor term in a latent has no family that a "
                            "conjugate update could read (only a factor of data alone is allowed)",
             "loc": "a Normal (or MultivariateNormal) latent entering affinely",
             "precision": "a Gamma (Wishart for a matrix) latent, scaled",
             "rate": "a Gamma latent, scaled", "probs": "a Beta (Dirichlet) latent itself"}


def allowed(families: dict[str, str]) -> Any:
    """The registry check :func:`~pyro_vi.cavi.auto.links.detect_links` calls per slot."""

    def check(site: str, slot: str, kind: str, label: str) -> str | None:
        fam = families[site]
        kinds, _ = CONJUGATE.get((fam, slot), ((), ""))
        if kind in kinds:
            return None
        want = _EXPECTED.get(slot, "a known value (no latent)")
        if fam == "Unit":
            return f"a pyro.factor depends on the {kind} latent; its conjugate form is {want}"
        if kind in GAUSSIAN and slot in ("probs", "rate", "precision"):
            link = "a probability" if slot == "probs" else "a positive parameter"
            return (f"a Gaussian latent enters {fam}({label}) through a non-affine link "
                    f"({link}: sigmoid, exp or softplus of a Gaussian has no conjugate prior); "
                    f"{fam}({slot}) is conjugate to {want}")
        return (f"a {kind} latent cannot enter {fam}({label}): its conjugate prior is {want}")

    return check


@dataclass(frozen=True)
class FactorSpec:
    """One variational factor: a latent site, or a fused (loc, precision) pair.

    ``kind`` is one of gamma, beta, dirichlet, normal, mvn, wishart, ng, nw; ``shape`` the
    shape of its independent elements and ``event`` each element's (for ng: ``()``, nw:
    ``(D,)``); ``sites`` the Pyro sites it covers (for a fused pair ``(loc, precision)``).
    ``n_axis`` (local factors) is the dimension of ``shape`` along the data plate.
    """

    name: str
    kind: str
    sites: tuple[str, ...]
    shape: torch.Size
    event: torch.Size
    local: bool
    n_axis: int | None = None


@dataclass
class Structure:
    """What :func:`analyse` found; :class:`~pyro_vi.cavi.auto.derive.DerivedModel` runs it."""

    sites: list[SiteInfo]
    factors: dict[str, FactorSpec]
    terms: list[TermSpec]
    data_terms: list[int]
    global_terms: list[int]
    arrays: dict[str, Tensor]               # global (not per-point) arrays
    point_arrays: list[tuple[str, Tensor, int]]  # (key, N-first tensor, axis counted from the end)
    data_plate: Plate | None
    n_points: int
    nesting: int
    enum_site: str | None
    enum_size: int
    site_factor: dict[str, str]             # latent site -> factor name
    links: dict[str, dict[str, Link]]
    runs: int


def _data_plate(sites: list[SiteInfo]) -> Plate | None:
    obs = [s for s in sites if s.observed and s.family != "Unit"]
    if not obs:
        return None
    common = set(obs[0].plates)
    for s in obs[1:]:
        common &= set(s.plates)
    if not common:
        return None
    return max(common, key=lambda p: (p.size, -p.dim))


@dataclass
class Discovery:
    """The first steps of :func:`analyse`: sites, data plate, latent layouts, links."""

    sites: list[SiteInfo]
    plate: Plate | None
    nesting: int
    specs: dict[str, LatentSpec]
    enum_site: str | None
    found: Any


def discover(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *,
             failures: list[NotConjugateError] | None = None) -> Discovery:
    """Sites, data plate, latent layouts and every slot's link (steps 1–3 of the module doc).

    With a ``failures`` list, refusals are collected there instead of raised (for reports).
    """
    sites = model_sites(model, args, kwargs)
    if not any(s.observed and s.family != "Unit" for s in sites):
        raise ValueError("the model has no observed site (pyro.sample(..., obs=data)): "
                         "nothing to condition on")
    plate = _data_plate(sites)
    nesting = max((-p.dim for s in sites for p in s.plates), default=0)
    specs: dict[str, LatentSpec] = {}
    enum_site: str | None = None
    for s in sites:
        if s.observed:
            continue
        try:
            if s.family in ("Categorical", "Bernoulli"):
                _check_discrete(s, plate, enum_site)
                enum_site = s.name
                continue
            specs[s.name] = latent_kind(s)
        except NotConjugateError as err:
            if failures is None:
                raise
            failures.append(err)
    families = {s.name: s.family for s in sites}
    enum_dim = -(nesting + 1) if enum_site is not None else None
    found = detect_links(model, args, kwargs, sites, specs, enumerate_dim=enum_dim,
                         allowed=allowed(families), failures=failures)
    return Discovery(sites, plate, nesting, specs, enum_site, found)


def _check_discrete(s: SiteInfo, plate: Plate | None, enum_site: str | None) -> None:
    if s.family == "Bernoulli":
        raise NotConjugateError(s.name, None, None, "a latent Bernoulli is not supported; "
                                "write it as a Categorical over 2 values")
    if plate is None or plate.name not in s.plate_names:
        raise NotConjugateError(s.name, None, None, "a discrete latent outside the data plate "
                                "(a global discrete choice) has no conjugate factor here")
    if enum_site is not None:
        raise NotConjugateError(s.name, None, None, f"a second discrete latent (after "
                                f"{enum_site!r}); one per data point is supported")
    if s.event_dims:
        raise NotConjugateError(s.name, None, None, "a discrete latent with event dims")


def analyse(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *,
            joint: bool = True) -> Structure:
    """Detect the conjugate structure of ``model(*args, **kwargs)`` (see the module doc)."""
    d = discover(model, args, kwargs)
    sites, plate, specs, enum_site, found = d.sites, d.plate, d.specs, d.enum_site, d.found
    enum_size = 0
    if enum_site is not None:
        enum_size = int(found.values[enum_site].numel())
    info = {s.name: s for s in sites}
    local = {n for n in specs if plate is not None and plate.name in info[n].plate_names}
    if enum_site is not None and local:
        raise NotConjugateError(sorted(local)[0], None, None, "a continuous local latent "
                                f"beside the discrete {enum_site!r} is not supported")
    fused = _fuse(info, specs, found.links, local) if joint else {}
    return _build(sites, info, specs, found, plate, d.nesting, enum_site, enum_size, local, fused)


# ------------------------------------------------------------------------------ fusion
def _uses(links: dict[str, dict[str, Link]], site: str) -> list[tuple[str, str, Link]]:
    out: list[tuple[str, str, Link]] = []
    for child, slots in links.items():
        for slot, link in slots.items():
            if isinstance(link, Scaled) and link.site == site:
                out.append((child, slot, link))
            elif isinstance(link, Affine) and any(p.site == site for p in link.parts):
                out.append((child, slot, link))
    return out


def _identity_idx(idx: Tensor, spec: LatentSpec) -> bool:
    want = torch.arange(spec.numel).reshape(spec.shape)
    try:
        return bool((torch.broadcast_to(want, idx.shape) == idx).all())
    except RuntimeError:
        return False


def _scalar_a(a: Tensor, vec: bool) -> bool:
    if not vec:
        return a.shape[-1] == 1
    d = a.shape[-1]
    if a.shape[-2] != d:
        return False
    eye = torch.eye(d, dtype=a.dtype)
    return bool(torch.allclose(a, a[..., :1, :1] * eye, rtol=1e-12, atol=0.0))


def _fuse(info: dict[str, SiteInfo], specs: dict[str, LatentSpec],
          links: dict[str, dict[str, Link]], local: set[str]) -> dict[str, str]:
    """Loc site -> precision site, for the pairs that form one Normal-Gamma/-Wishart factor."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for mu, spec in specs.items():
        if spec.kind not in GAUSSIAN or mu in local:
            continue
        own = links.get(mu, {})
        prec = own.get("precision")
        loc = own.get("loc")
        if not isinstance(prec, Scaled) or not isinstance(loc, Known):
            continue
        lam = prec.site
        lspec = specs[lam]
        vec = info[mu].family == "MultivariateNormal"
        if lam in taken or lam in local or (lspec.kind == "wishart") != vec:
            continue
        if vec and spec.kind != "mvn":
            continue
        el_shape = info[mu].batch_shape + (info[mu].event_shape if not vec else torch.Size())
        if lspec.shape != el_shape:
            continue
        if not _identity_idx(prec.idx, lspec):
            continue
        # the prior of lambda must be known; every other use of mu must share lambda
        if any(not isinstance(lk, Known) for lk in links.get(lam, {}).values()):
            continue
        ok = True
        converted: dict[tuple[str, str], Affine] = {}
        for child, slot, link in _uses(links, mu):
            if child == mu:
                continue
            cprec = links[child].get("precision")
            if slot != "loc" or not isinstance(link, Affine) or len(link.parts) != 1 \
                    or not isinstance(cprec, Scaled) or cprec.site != lam:
                ok = False
                break
            part = link.parts[0]
            if not vec and spec.kind == "mvn":
                # a Normal(...).to_event(1) paired with elementwise Gammas: read its use
                # elementwise (element idx * d + coordinate), if it picks one coordinate
                flat = _elementwise(part, spec.event[-1])
                if flat is None:
                    ok = False
                    break
                part = flat
                converted[(child, slot)] = Affine(link.b, (part,))
            cvec = info[child].family == "MultivariateNormal"
            if cvec != vec or not torch.equal(part.idx, cprec.idx) or not _scalar_a(part.a, vec):
                ok = False
                break
        if ok:
            out[mu] = lam
            taken.add(lam)
            for (child, slot), link in converted.items():
                links[child][slot] = link
            if spec.kind == "mvn" and not vec:
                specs[mu] = LatentSpec(mu, "normal", el_shape, torch.Size())
    return out


# ------------------------------------------------------------------------------- layout
class _Layout:
    """Collects a term's arrays, splitting off the per-point ones."""

    def __init__(self, plate: Plate | None, n: int) -> None:
        self.plate, self.n = plate, n
        self.arrays: dict[str, Tensor] = {}
        self.points: list[tuple[str, Tensor, int]] = []
        self.in_data = False  # whether the term being laid out sits in the data plate

    def add(self, key: str, t: Tensor, trailing: int) -> str:
        t = t.detach()
        if not key.endswith(".value"):
            # a link array constant along a batch dim (a mixture's offset b = 0, an identity
            # coefficient) keeps size 1 there: the terms then broadcast instead of expanding
            nb = t.dim() - trailing
            for i in range(nb):
                first = t.narrow(i, 0, 1)
                if t.shape[i] > 1 and (bool((t == first).all()) or (
                        t.is_floating_point()
                        and bool(((t - first).abs() <= 1e-12 * first.abs()).all()))):
                    t = first  # equal to round-off (an identity coefficient read off probes)
            t = t.contiguous()
        if self.plate is not None and self.in_data:
            axis = t.dim() - trailing + self.plate.dim
            if 0 <= axis < t.dim() and t.shape[axis] > 1:
                if t.shape[axis] != self.n:
                    raise NotConjugateError(key.split(".")[0], None, None,
                                            f"its array {key} has {t.shape[axis]} entries "
                                            f"along the data plate, not {self.n}")
                self.points.append((key, t.movedim(axis, 0), axis - t.dim()))
                return key
        self.arrays[key] = t
        return key


def _elementwise(part: Part, d: int) -> Part | None:
    """An MVN-layout part that selects one coordinate per slot element, made elementwise."""
    nonzero = part.a != 0
    if bool((nonzero.sum(-1) > 1).any()):
        return None
    coord = part.a.abs().argmax(-1)
    a = part.a.gather(-1, coord.unsqueeze(-1))
    return Part(part.site, part.idx * d + coord, a)


def _build(sites: list[SiteInfo], info: dict[str, SiteInfo], specs: dict[str, LatentSpec],
           found: Any, plate: Plate | None, nesting: int, enum_site: str | None,
           enum_size: int, local: set[str], fused: dict[str, str]) -> Structure:
    n = plate.size if plate is not None else 1
    lay = _Layout(plate, n)
    factors: dict[str, FactorSpec] = {}
    site_factor: dict[str, str] = {}
    for s in sites:
        name = s.name
        if name not in specs:
            continue
        spec = specs[name]
        if name in fused.values():
            continue  # the precision half of a fused pair: added with its loc
        if name in fused:
            lam = fused[name]
            kind = "nw" if spec.kind == "mvn" else "ng"
            fname = f"{name}__{lam}"
            factors[fname] = FactorSpec(fname, kind, (name, lam), specs[lam].shape,
                                        spec.event if kind == "nw" else torch.Size(), False)
            site_factor[name] = site_factor[lam] = fname
            continue
        n_axis = None
        if name in local:
            assert plate is not None
            n_axis = len(info[name].batch_shape) + plate.dim
        factors[name] = FactorSpec(name, spec.kind, (name,), spec.shape, spec.event,
                                   name in local, n_axis)
        site_factor[name] = name
    # fused precision sites come first in program order: move each fused factor there
    order = []
    for s in sites:
        f = site_factor.get(s.name)
        if f is not None and f not in order:
            order.append(f)
    factors = {f: factors[f] for f in order}
    terms: list[TermSpec] = []
    data_terms: list[int] = []
    global_terms: list[int] = []
    for s in sites:
        in_data = plate is not None and plate.name in s.plate_names
        lay.in_data = in_data
        term = _term(s, info, specs, found, lay, site_factor, factors, fused, enum_site)
        (data_terms if in_data else global_terms).append(len(terms))
        terms.append(term)
    if plate is not None:  # each point's row number: minibatches and shards know their rows
        lay.points.append((ROWS, torch.arange(n), -1))
    for i in data_terms:
        locs = sorted(f for f in factors_of(terms[i]) if factors[f].local)
        if len(locs) > 1:
            raise NotConjugateError(locs[1], terms[i].site, None, f"two local latents "
                                    f"({', '.join(map(repr, locs))}) meet in one term; their "
                                    "factors would need iterating within each data point")
    return Structure(sites=sites, factors=factors, terms=terms, data_terms=data_terms,
                     global_terms=global_terms, arrays=lay.arrays, point_arrays=lay.points,
                     data_plate=plate, n_points=n, nesting=nesting, enum_site=enum_site,
                     enum_size=enum_size, site_factor=site_factor, links=found.links,
                     runs=found.runs)


def factors_of(term: TermSpec) -> set[str]:
    """The factors a term reads: its value's and its slots' latents."""
    out = set()
    if isinstance(term.value, LatentValue):
        out.add(term.value.factor)
    for slot in term.slots.values():
        if isinstance(slot, PSlot):
            out.add(slot.factor)
        elif isinstance(slot, GSlot):
            out.update(p.factor for p in slot.parts)
    return out


def _view(kind: str, site: str, spec: FactorSpec) -> str:
    if kind == "ng":
        return "ng_loc" if site == spec.sites[0] else "ng_prec"
    if kind == "nw":
        return "nw_loc" if site == spec.sites[0] else "nw_prec"
    return kind


def _trailing(s: SiteInfo, slot: str, what: str) -> int:
    """Dims after the batch part of a slot array (see :class:`_Layout`)."""
    if s.family in ELEMENTWISE:
        return s.event_dims + (1 if what == "a" else 0)
    extra = {"loc": 1, "precision": 2, "probs": 1, "concentration": 1, "scale_tril": 2}.get(slot, 0)
    if what in ("idx", "coef"):
        return 0
    if what == "a":
        return 2
    return extra


def _local_idx(latent: str, child: str, slot: str, idx: Tensor,
               specs: dict[str, LatentSpec]) -> str | None:
    """A local latent must be used by its own data point: check, and return None (aligned)."""
    if not _identity_idx(idx, specs[latent]):
        raise NotConjugateError(latent, child, slot, "a local latent (one per data point) "
                                "must enter its own point's terms, element by element; this "
                                "use mixes points or elements")
    return None


def _term(s: SiteInfo, info: dict[str, SiteInfo], specs: dict[str, LatentSpec], found: Any,
          lay: _Layout,
          site_factor: dict[str, str], factors: dict[str, FactorSpec], fused: dict[str, str],
          enum_site: str | None) -> TermSpec:
    name = s.name
    value: ObsValue | LatentValue
    if s.family == "Unit":
        value = ObsValue("")
    elif s.observed or name == enum_site:
        v = found.values[name]
        v = v.to(torch.float64) if name != enum_site else v
        value = ObsValue(lay.add(f"{name}.value", v, len(s.event_shape)))
    else:
        f = site_factor[name]
        value = LatentValue(f, _view(factors[f].kind, name, factors[f]))
    slots: dict[str, Any] = {}
    joint = None
    for slot, link in found.links.get(name, {}).items():
        key = f"{name}.{slot}"
        if isinstance(link, Known):
            slots[slot] = KSlot(lay.add(key, link.value, _trailing(s, slot, "value")))
        elif isinstance(link, Scaled):
            f = site_factor[link.site]
            fs = factors[f]
            idx = _local_idx(link.site, name, slot, link.idx, specs) if fs.local else \
                lay.add(f"{key}.idx", link.idx, _trailing(s, slot, "idx"))
            coef = lay.add(f"{key}.coef", link.coef, _trailing(s, slot, "coef"))
            slots[slot] = PSlot(f, _view(fs.kind, link.site, fs), idx, coef)
        else:
            parts = []
            for j, part in enumerate(link.parts):
                f = site_factor[part.site]
                fs = factors[f]
                pidx = _local_idx(part.site, name, slot, part.idx, specs) if fs.local else \
                    lay.add(f"{key}.{j}.idx", part.idx, _trailing(s, slot, "idx"))
                a = lay.add(f"{key}.{j}.a", part.a, _trailing(s, slot, "a"))
                parts.append(GPart(f, _view(fs.kind, part.site, fs), pidx, a))
            bil = None
            if link.bilinear is not None:
                u, v, bmat = link.bilinear
                bil = (u, v, lay.add(f"{key}.B", bmat, _trailing(s, slot, "a") + 1))
            slots[slot] = GSlot(lay.add(f"{key}.b", link.b, _trailing(s, slot, "value")),
                                tuple(parts), bil)
    prec = slots.get("precision")
    if isinstance(prec, PSlot) and prec.view in ("ng_prec", "nw_prec"):
        loc = slots.get("loc")
        if isinstance(value, LatentValue) and value.view in ("ng_loc", "nw_loc"):
            joint = prec.factor
        elif isinstance(loc, GSlot) and any(p.view in ("ng_loc", "nw_loc") for p in loc.parts):
            joint = prec.factor
    return TermSpec(name, s.family, value, slots, s.event_dims if s.family in ELEMENTWISE else 0,
                    joint)
