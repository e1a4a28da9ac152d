r"""How each distribution parameter depends on each latent: probing, then checking.

For every sample site of the model and every parameter slot of its distribution
(:func:`pyro_vi.cavi.auto.trace.read_slots`), detection finds a **link** of one of the forms
that conjugate updates need, or refuses:

* :class:`Known` — the slot depends on no continuous latent (it may depend on the enumerated
  discrete latent: that is exact, the update sums over its values);
* :class:`Scaled` — ``slot = coef * theta[idx]`` for one positive latent ``theta`` (a Gamma
  rate or precision, a Wishart precision matrix) or ``slot = theta[idx]`` (a Beta or
  Dirichlet probability), with ``coef`` and ``idx`` read off per slot element;
* :class:`Affine` — ``slot = b + sum_f A_f theta_f[idx_f]`` for Gaussian latents
  ``theta_f`` (a Normal's or MultivariateNormal's location).

The links are found by *probing*: the model is run with the latents fixed to random values,
one latent moved at a time (:func:`probe_plan`); a slot's change under a move of latent
``theta`` identifies which element of ``theta`` each slot element uses and with what
coefficient. Two moves per coordinate (of different sign and size) must agree on a single
affine (or scaled) map, and then the map is **checked** against runs in which every latent
takes fresh random values over several orders of magnitude, both signs for Gaussians. A
slot that does not match its claimed link to round-off in every run is refused. That is what
makes detection sound in practice: piecewise-linear code (``relu``, ``abs``, ``where``) or a
link through ``exp``/``sigmoid`` changes the slot differently for different moves and fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from pyro_vi.cavi.auto.trace import (
    ELEMENTWISE,
    SiteInfo,
    read_slots,
    run_conditioned,
    slot_labels,
)
from pyro_vi.errors import NotConjugateError

__all__ = ["Affine", "Known", "LatentSpec", "Link", "Part", "Scaled", "SlotLinks",
           "detect_links", "latent_kind"]

#: Relative round-off within which a slot must match its link in every probe run.
RTOL = 1e-9

#: Latent families and the kind of factor each gets (before Normal-Gamma/-Wishart fusion).
_KINDS = {"Gamma": "gamma", "Beta": "beta", "Dirichlet": "dirichlet", "Wishart": "wishart",
          "MultivariateNormal": "mvn"}
POSITIVE = ("gamma", "wishart")
SIMPLEX = ("beta", "dirichlet")
GAUSSIAN = ("normal", "mvn")


@dataclass(frozen=True)
class LatentSpec:
    """A continuous latent site as a factor: its kind and element layout.

    ``shape`` is the shape of the batch of independent elements (for ``"gamma"``, ``"beta"``
    and ``"normal"`` the site's whole shape), ``event`` the per-element shape (``(d,)`` for
    ``"mvn"``, ``(K,)`` for ``"dirichlet"``, ``(D, D)`` for ``"wishart"``).
    """

    site: str
    kind: str
    shape: torch.Size
    event: torch.Size

    @property
    def numel(self) -> int:
        """Number of independent elements."""
        return int(torch.Size(self.shape).numel())


def latent_kind(info: SiteInfo) -> LatentSpec:
    """The factor layout of a continuous latent site, or NotConjugateError saying why not."""
    fam = info.family
    if fam == "Normal":
        if info.event_dims == 0:
            return LatentSpec(info.name, "normal", info.batch_shape, torch.Size())
        if info.event_dims == 1:
            return LatentSpec(info.name, "mvn", info.batch_shape, info.event_shape)
        raise NotConjugateError(info.name, None, None, "a Normal with more than one event "
                                "dimension (a matrix-valued Gaussian) is not supported; use a "
                                "plate for the extra dimension")
    kind = _KINDS.get(fam)
    if kind is None:
        raise NotConjugateError(info.name, None, None, f"a latent {fam} has no conjugate "
                                "variational family here (latents must be Normal, "
                                "MultivariateNormal, Gamma, Beta, Dirichlet, Wishart, or a "
                                "Categorical inside the data plate)")
    if kind in ("gamma", "beta"):
        return LatentSpec(info.name, kind, info.batch_shape + info.event_shape, torch.Size())
    return LatentSpec(info.name, kind, info.batch_shape, info.event_shape)


@dataclass(frozen=True)
class Known:
    """A slot that no continuous latent moves (shape: the slot's compact shape)."""

    value: Tensor


@dataclass(frozen=True)
class Scaled:
    """``slot = coef * theta[idx]`` (positive latents) or ``theta[idx]`` (Beta, Dirichlet).

    ``idx`` indexes the latent's flattened elements and has the slot's compact batch shape,
    ``coef`` too (all ones for Beta and Dirichlet).
    """

    site: str
    idx: Tensor
    coef: Tensor


@dataclass(frozen=True)
class Part:
    """One Gaussian latent's share of an affine slot: ``A @ theta[idx]``.

    ``a`` has shape ``slot_batch + (d,)`` for an elementwise slot and
    ``slot_batch + (D, d)`` for a vector (MultivariateNormal) location.
    """

    site: str
    idx: Tensor
    a: Tensor


@dataclass(frozen=True)
class Affine:
    """``slot = b + sum(parts) [+ theta_u^T B theta_v]``: affine in each Gaussian latent.

    ``bilinear`` is ``(u, v, B)``: the indices of two parts whose latents also enter as a
    product (a factor model's ``w_d^T z_n``), with ``B`` of shape ``slot_shape + (d_u, d_v)``;
    None when the slot is affine in the latents jointly.
    """

    b: Tensor
    parts: tuple[Part, ...]
    bilinear: tuple[int, int, Tensor] | None = None


Link = Known | Scaled | Affine


@dataclass
class SlotLinks:
    """Every slot's link, per site: ``links[site][slot]``; ``vector[site]`` says the layout."""

    links: dict[str, dict[str, Link]] = field(default_factory=dict)
    values: dict[str, Tensor] = field(default_factory=dict)
    runs: int = 0
    deps: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    labels: dict[tuple[str, str], str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- probe values
def _positive(gen: torch.Generator, shape: torch.Size, lo: float, hi: float) -> Tensor:
    return torch.exp(torch.empty(shape, dtype=torch.float64).uniform_(lo, hi, generator=gen))


def _spd(gen: torch.Generator, batch: torch.Size, d: int, spread: float) -> Tensor:
    a = torch.randn(batch + (d, d), generator=gen, dtype=torch.float64)
    m = a @ a.transpose(-1, -2) / d + 0.5 * torch.eye(d, dtype=torch.float64)
    return m * _positive(gen, batch, -spread, spread)[..., None, None]


def _simplex(gen: torch.Generator, shape: torch.Size) -> Tensor:
    w = _positive(gen, shape, -1.5, 1.5)
    return w / w.sum(-1, keepdim=True)


def _value(spec: LatentSpec, gen: torch.Generator, *, wide: bool) -> Tensor:
    """A random value of the latent in its support (``wide``: over several magnitudes)."""
    shape = spec.shape + spec.event
    if spec.kind == "gamma":
        return _positive(gen, shape, -4.0, 4.0) if wide else _positive(gen, shape, -0.5, 0.5)
    if spec.kind == "beta":
        lo = 1e-3 if wide else 0.2
        return torch.empty(shape, dtype=torch.float64).uniform_(lo, 1 - lo, generator=gen)
    if spec.kind == "dirichlet":
        return _simplex(gen, shape)
    if spec.kind == "wishart":
        return _spd(gen, spec.shape, spec.event[-1], 3.0 if wide else 0.3)
    scale = torch.exp(torch.empty(shape, dtype=torch.float64).uniform_(-3.0, 6.0, generator=gen)) \
        if wide else torch.ones(shape, dtype=torch.float64)
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale


@dataclass(frozen=True)
class _Probe:
    """One run of the plan: latent values, and what it moves (site, coordinate, kind)."""

    values: dict[str, Tensor]
    site: str | None = None
    coord: int | None = None
    kind: str = "base"  # base, a, b (moves of one latent), joint, check
    delta: Tensor | None = None


def probe_plan(specs: dict[str, LatentSpec], *, seed: int = 12345) -> list[_Probe]:
    """The runs detection makes: base, two moves per latent (per coordinate), joint, checks."""
    gen = torch.Generator().manual_seed(seed)
    base = {s: _value(sp, gen, wide=False) for s, sp in specs.items()}
    plan = [_Probe(base)]
    for s, sp in specs.items():
        v0 = base[s]
        if sp.kind in POSITIVE:
            u = torch.empty(sp.shape, dtype=torch.float64).uniform_(-1.0, 1.0, generator=gen)
            scale = torch.exp(u)
            moved = v0 * (scale[..., None, None] if sp.kind == "wishart" else scale)
            plan.append(_Probe({**base, s: moved}, s, None, "a", u))
            plan.append(_Probe({**base, s: _value(sp, gen, wide=False)}, s, None, "b"))
        elif sp.kind in SIMPLEX:
            plan.append(_Probe({**base, s: _value(sp, gen, wide=False)}, s, None, "a"))
            plan.append(_Probe({**base, s: _value(sp, gen, wide=False)}, s, None, "b"))
        else:
            d = sp.event[-1] if sp.event else 1
            for e in range(d):
                mag = torch.empty(sp.shape, dtype=torch.float64).uniform_(0.5, 2.0, generator=gen)
                sign = torch.where(torch.rand(sp.shape, generator=gen) < 0.5, -1.0, 1.0)
                da = (mag * sign).to(torch.float64)
                ratio = -torch.empty(sp.shape, dtype=torch.float64).uniform_(1.5, 3.0, generator=gen)
                for kind, delta in (("a", da), ("b", da * ratio)):
                    moved = v0.clone()
                    if sp.event:
                        moved[..., e] += delta
                    else:
                        moved += delta
                    plan.append(_Probe({**base, s: moved}, s, e, kind, delta))
    gauss = [s for s, sp in specs.items() if sp.kind in GAUSSIAN]
    if len(gauss) > 1:
        joint = dict(base)
        for s in gauss:
            joint[s] = base[s] + torch.randn(base[s].shape, generator=gen, dtype=torch.float64)
        plan.append(_Probe(joint, None, None, "joint"))
    for _ in range(2):
        plan.append(_Probe({s: _value(sp, gen, wide=True) for s, sp in specs.items()},
                           None, None, "check"))
    # a sweep of magnitudes, both signs: code that is linear only near the probes' centre
    # (where(w > 50, ...), a clamp) leaves the affine form somewhere along it
    for j, k in enumerate((-3, -1, 1, 2, 3, 5)):
        for sgn in (1.0, -1.0):
            vals = {}
            for s, sp in specs.items():
                v = _value(sp, gen, wide=False)
                if sp.kind in GAUSSIAN:
                    v = sgn * float(10.0 ** k) * (1.0 + 0.5 * v.abs())
                elif sp.kind in POSITIVE:
                    v = v * math.exp(sgn * 2.0 * k if j % 2 else sgn * k)
                vals[s] = v
            plan.append(_Probe(vals, None, None, "check"))
    return plan


# ------------------------------------------------------------------------------- readings
def _constant_dims(t: Tensor, ndim: int) -> set[int]:
    """Batch dims (of the first ``ndim``) along which ``t`` does not vary.

    Broadcast dims (stride 0) are dropped first, so the comparisons along the others run on
    the small tensor, never on an expanded ``(K, N, D, D)`` view.
    """
    out = {i for i in range(ndim) if t.shape[i] == 1 or t.stride(i) == 0}
    small = t
    for i in out:
        small = small.narrow(i, 0, 1)
    for i in range(ndim):
        if i not in out and bool((small == small.narrow(i, 0, 1)).all()):
            out.add(i)
    return out


def _compact(t: Tensor, dims: set[int]) -> Tensor:
    for i in sorted(dims):
        t = t.narrow(i, 0, 1)
    return t.contiguous()


def _slot_batch_ndim(family: str, slot: str, t: Tensor) -> int:
    """How many leading dims of a slot tensor are batch dims (the rest: vector event)."""
    if family in ELEMENTWISE:
        return t.dim()
    extra = {"loc": 1, "precision": 2, "probs": 1, "concentration": 1, "scale_tril": 2}.get(slot, 0)
    return t.dim() - extra


def collect(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any], plan: list[_Probe],
            families: dict[str, str], *, enumerate_dim: int | None
            ) -> tuple[dict[tuple[str, str], list[Tensor]], dict[str, Tensor],
                       dict[tuple[str, str], set[int]], dict[tuple[str, str], str]]:
    """Run every probe; return the compact readings and the sites' values in the base run.

    Readings map ``(site, slot)`` to one tensor per run; the values are the observed data and
    the enumerated discrete latent's values.
    """
    raw: dict[tuple[str, str], list[Tensor]] = {}
    values: dict[str, Tensor] = {}
    labels: dict[tuple[str, str], str] = {}
    names = None
    for i, probe in enumerate(plan):
        try:
            tr = run_conditioned(model, args, kwargs, probe.values, enumerate_dim=enumerate_dim)
        except Exception as exc:  # noqa: BLE001 - the model failed at a probe value: name it
            where = "" if probe.site is None else f" with {probe.site!r} moved"
            raise NotConjugateError(probe.site or "?", None, None,
                                    f"the model failed when run at probe values{where} "
                                    f"({type(exc).__name__}: {exc}); control flow or checks "
                                    "that depend on latent values defeat detection") from exc
        sites = [n for n, s in tr.nodes.items()
                 if s["type"] == "sample" and not site_is_subsample(s)]
        if names is None:
            names = sites
        elif sites != names:
            raise NotConjugateError(probe.site or "?", None, None, "the model's sites change "
                                    "with the latents' values (control flow on a latent)")
        for name in sites:
            site = tr.nodes[name]
            if i == 0 and site["value"] is not None:
                values[name] = site["value"]
            if i == 0:
                for slot, label in slot_labels(site["fn"], name).items():
                    labels[(name, slot)] = label
            for slot, t in read_slots(site["fn"], name).items():
                raw.setdefault((name, slot), []).append(t)
    out = {}
    dims: dict[tuple[str, str], set[int]] = {}
    for key, ts in raw.items():
        nb = _slot_batch_ndim(families[key[0]], key[1], ts[0])
        shape = ts[0].shape
        if any(t.shape != shape for t in ts):
            raise NotConjugateError(key[0], None, key[1], "its shape changes with the latents' "
                                    "values")
        const = set(range(nb))
        for t in ts:
            const &= _constant_dims(t, nb)
            if not const:
                break
        out[key] = [_compact(t, const) for t in ts]
        dims[key] = const
    return out, values, dims, labels


# --------------------------------------------------------------------------------- fitting
def _holds(link: Affine, plan: list[_Probe], rs: list[Tensor], base: Tensor,
           specs: dict[str, LatentSpec], vec: int, kinds: tuple[str, ...]) -> bool:
    for p, r in zip(plan, rs, strict=True):
        if p.kind in kinds:
            pred = affine_value(link, p.values, specs, vec)
            if not _close(pred, r, base.abs() + r.abs() + (pred - base).abs()):
                return False
    return True


def _fit_bilinear(site: str, slot: str, deps: list[str], parts: tuple[Part, ...],
                  specs: dict[str, LatentSpec], plan: list[_Probe], rs: list[Tensor],
                  base: Tensor, rerun: Any) -> Affine:
    r"""``b + a_u theta_u + a_v theta_v + theta_u^T B theta_v`` for two Gaussian latents.

    ``B[e, e']`` is the mixed difference of the slot under a move of coordinate ``e`` of
    ``u`` and ``e'`` of ``v`` (one extra run per pair of coordinates), divided by the moves;
    the parts' coefficients, measured at the other latent's base value, lose their share of
    the product: :math:`a_u = a_u(	heta_v^0) - B	heta_v^0`.
    """
    u, v = deps
    pu, pv = parts
    du = specs[u].event[-1] if specs[u].event else 1
    dv = specs[v].event[-1] if specs[v].event else 1
    bmat = torch.zeros(base.shape + (du, dv), dtype=base.dtype)
    values0 = plan[0].values
    for e in range(du):
        iu = next(i for i, p in enumerate(plan) if p.site == u and p.coord == e and p.kind == "a")
        for e2 in range(dv):
            iv = next(i for i, p in enumerate(plan) if p.site == v and p.coord == e2
                      and p.kind == "a")
            vals = {**values0, u: plan[iu].values[u], v: plan[iv].values[v]}
            both = rerun(("pair", u, e, v, e2), vals)[(site, slot)]
            mixed = both - rs[iu] - rs[iv] + base
            dlt_u, dlt_v = plan[iu].delta, plan[iv].delta
            assert dlt_u is not None
            assert dlt_v is not None
            bmat[..., e, e2] = mixed / (dlt_u.reshape(-1)[pu.idx] * dlt_v.reshape(-1)[pv.idx])
    tu = _theta(pu, values0, specs)
    tv = _theta(pv, values0, specs)
    au = pu.a - (bmat * tv.unsqueeze(-2)).sum(-1)
    av = pv.a - (tu.unsqueeze(-1) * bmat).sum(-2)
    lin = (Part(u, pu.idx, au), Part(v, pv.idx, av))
    zero = Affine(torch.zeros_like(base), lin, (0, 1, bmat))
    return Affine(base - affine_value(zero, values0, specs, 0), lin, (0, 1, bmat))



def _match(pool: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """For each ``target`` value the index of the equal value in ``pool`` (1-D), and ok flags."""
    srt, order = pool.sort()
    pos = torch.searchsorted(srt, target.contiguous()).clamp(0, pool.numel() - 1)
    lower = (pos - 1).clamp(0, pool.numel() - 1)
    near = torch.where((srt[pos] - target).abs() <= (srt[lower] - target).abs(), pos, lower)
    ok = (srt[near] - target).abs() <= 1e-7 * target.abs().clamp_min(1e-12)
    return order[near], ok


def _close(a: Tensor, b: Tensor, scale: Tensor) -> bool:
    return bool(((a - b).abs() <= RTOL * scale + 1e-300).all())


class _Fail(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _flat(v: Tensor, spec: LatentSpec) -> Tensor:
    return v.reshape((spec.numel,) + spec.event)


def _fit_scaled(spec: LatentSpec, probes: list[_Probe], readings: list[Tensor], base: Tensor,
                vec: int) -> Scaled:
    """``slot = coef * theta[idx]`` from the two moves of a positive or simplex latent."""
    s0 = base
    ia = next(i for i, p in enumerate(probes) if p.site == spec.site and p.kind == "a")
    sa = readings[ia]
    theta0 = _flat(probes[0].values[spec.site], spec)
    red = (lambda t: t[..., 0, 0]) if spec.kind == "wishart" else \
        (lambda t: t[..., 0]) if spec.kind == "dirichlet" else (lambda t: t)
    if vec and spec.kind != "wishart" and spec.kind != "dirichlet":
        raise _Fail("a vector slot cannot hold a scalar latent")
    if spec.kind in POSITIVE:
        ratio = red(sa) / red(s0)
        if not bool(torch.isfinite(ratio).all()) or bool((ratio <= 0).any()):
            raise _Fail("it does not scale with the latent")
        u = probes[ia].delta
        assert u is not None
        idx, ok = _match(u.reshape(-1), torch.log(ratio))
        if not bool(ok.all()):
            raise _Fail("it is not proportional to one element of the latent")
        coef = red(s0) / red(theta0[idx])
    else:
        pool = red(_flat(probes[ia].values[spec.site], spec))
        idx, ok = _match(pool.reshape(-1), red(sa))
        if not bool(ok.all()):
            raise _Fail("it is not the latent itself (an element of it, unchanged)")
        coef = torch.ones_like(red(s0))
    link = Scaled(spec.site, idx, coef)
    for p, r in zip(probes, readings, strict=True):
        pred = _scaled_value(link, _flat(p.values[spec.site], spec), spec.kind)
        if p.site in (None, spec.site) and not _close(pred, r, r.abs()):
            raise _Fail("the scaled link does not hold at other values of the latent")
    if spec.kind in SIMPLEX and not _close(coef, torch.ones_like(coef), torch.ones_like(coef)):
        raise _Fail("a probability slot must be the latent itself")
    return link


def _scaled_value(link: Scaled, flat: Tensor, kind: str) -> Tensor:
    got = flat[link.idx]
    if kind == "wishart":
        return link.coef[..., None, None] * got
    if kind == "dirichlet":
        return link.coef[..., None] * got
    return link.coef * got


def _fit_part(spec: LatentSpec, probes: list[_Probe], readings: list[Tensor], base: Tensor,
              vec: int) -> Part:
    """``A @ theta[idx]`` from the two moves per coordinate of a Gaussian latent."""
    d = spec.event[-1] if spec.event else 1
    idx_all: Tensor | None = None
    cols = []
    for e in range(d):
        ia = next(i for i, p in enumerate(probes) if p.site == spec.site and p.coord == e
                  and p.kind == "a")
        ib = ia + 1
        da, db = readings[ia] - base, readings[ib] - base
        dlt_a, dlt_b = probes[ia].delta, probes[ib].delta
        assert dlt_a is not None
        assert dlt_b is not None
        moved = (da != 0) | (db != 0)
        if vec:  # a vector slot: one element per slot batch element, across its D entries
            moved_any = moved.any(-1)
        else:
            moved_any = moved
        ratio = torch.where(da != 0, db / torch.where(da != 0, da, 1.0), torch.zeros_like(da))
        if vec:
            # the entry of largest change carries the element's ratio
            pick = da.abs().argmax(-1, keepdim=True)
            ratio = ratio.gather(-1, pick).squeeze(-1)
        pool = (dlt_b / dlt_a).reshape(-1)
        idx, ok = _match(pool, ratio)
        if not bool(ok[moved_any].all()):
            raise _Fail("its change is not proportional to the latent's (a non-affine link)")
        flat_a = dlt_a.reshape(-1)
        a_e = da / (flat_a[idx][..., None] if vec else flat_a[idx])
        pred_b = a_e * (dlt_b.reshape(-1)[idx][..., None] if vec else dlt_b.reshape(-1)[idx])
        if not _close(pred_b, db, base.abs() + readings[ib].abs() + db.abs()):
            raise _Fail("it moves differently for moves of different sign or size "
                        "(a non-affine link, e.g. relu, abs or where)")
        a_e = torch.where(moved, a_e, torch.zeros_like(a_e))
        idx = torch.where(moved_any, idx, torch.full_like(idx, -1))
        if idx_all is None:
            idx_all = idx
        else:
            clash = (idx_all >= 0) & (idx >= 0) & (idx_all != idx)
            if bool(clash.any()):
                raise _Fail("different coordinates of one slot element use different "
                            "elements of the latent")
            idx_all = torch.where(idx_all >= 0, idx_all, idx)
        cols.append(a_e)
    assert idx_all is not None
    return Part(spec.site, idx_all.clamp_min(0), torch.stack(cols, -1))


def _theta(part: Part, values: dict[str, Tensor], specs: dict[str, LatentSpec]) -> Tensor:
    spec = specs[part.site]
    flat = values[part.site].reshape((spec.numel, spec.event[-1] if spec.event else 1))
    return flat[part.idx]  # slot_batch + (d,)


def affine_value(link: Affine, values: dict[str, Tensor], specs: dict[str, LatentSpec],
                 vec: int) -> Tensor:
    """The value an affine (or bilinear) link predicts at latent ``values``."""
    out = link.b
    for part in link.parts:
        theta = _theta(part, values, specs)
        if vec:
            out = out + (part.a @ theta.unsqueeze(-1)).squeeze(-1)
        else:
            out = out + (part.a * theta).sum(-1)
    if link.bilinear is not None:
        u, v, bmat = link.bilinear
        tu, tv = _theta(link.parts[u], values, specs), _theta(link.parts[v], values, specs)
        out = out + ((tu.unsqueeze(-1) * bmat).sum(-2) * tv).sum(-1)
    return out


def detect_links(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                 sites: list[SiteInfo], specs: dict[str, LatentSpec], *,
                 enumerate_dim: int | None, allowed: Any,
                 failures: list[NotConjugateError] | None = None) -> SlotLinks:
    """Probe the model and return every slot's link, or raise NotConjugateError naming it.

    ``allowed(site, slot, latent_kind, label)`` says whether a latent of that kind may enter that
    slot (the registry of conjugate pairs), returning None or the reason it may not. With a
    ``failures`` list, refusals are appended to it and detection goes on (for reports).
    """
    families = {s.name: s.family for s in sites}
    plan = probe_plan(specs)
    readings, values, dims, labels = collect(model, args, kwargs, plan, families,
                                             enumerate_dim=enumerate_dim)
    out = SlotLinks(values=values, runs=len(plan), labels=labels)
    cache: dict[tuple[Any, ...], dict[tuple[str, str], Tensor]] = {}

    def rerun(key: tuple[Any, ...], vals: dict[str, Tensor]) -> dict[tuple[str, str], Tensor]:
        """One more run (cached by ``key``), read and compacted like the plan's."""
        if key not in cache:
            tr = run_conditioned(model, args, kwargs, vals, enumerate_dim=enumerate_dim)
            got = {}
            for name, site in tr.nodes.items():
                if site["type"] != "sample" or site_is_subsample(site):
                    continue
                for slot, t in read_slots(site["fn"], name).items():
                    got[(name, slot)] = _compact(t, dims[(name, slot)])
            cache[key] = got
            out.runs += 1
        return cache[key]

    for (site, slot), rs in readings.items():
        base = rs[0]
        deps = [s for s in specs
                if any(p.site == s and not torch.equal(r, base) for p, r in zip(plan, rs, strict=True))]
        fam = families[site]
        vec = 0 if fam in ELEMENTWISE else 1
        out.deps[(site, slot)] = deps
        try:
            for s in deps:
                why = allowed(site, slot, specs[s].kind, labels.get((site, slot), slot))
                if why is not None:
                    raise NotConjugateError(s, site, labels.get((site, slot), slot), why)
            try:
                link = _fit(site, slot, deps, specs, plan, rs, base, vec, rerun)
            except _Fail as f:
                lat = deps[0] if deps else site
                raise NotConjugateError(lat, site, labels.get((site, slot), slot),
                                        f.reason) from None
        except NotConjugateError as err:
            if failures is None:
                raise
            failures.append(err)
            continue
        out.links.setdefault(site, {})[slot] = link
    return out


def _fit(site: str, slot: str, deps: list[str], specs: dict[str, LatentSpec],
         plan: list[_Probe], rs: list[Tensor], base: Tensor, vec: int, rerun: Any) -> Link:
    if not deps:
        for p, r in zip(plan, rs, strict=True):
            if p.kind == "check" and not torch.equal(r, base):
                raise _Fail("it changes when the latents take other values, though no single "
                            "move changed it")
        return Known(base)
    kinds = {specs[s].kind for s in deps}
    if kinds & set(POSITIVE + SIMPLEX):
        if len(deps) > 1:
            raise _Fail(f"it depends on several latents ({', '.join(map(repr, deps))}); a "
                        "conjugate slot depends on one")
        spec = specs[deps[0]]
        sub = [(p, r) for p, r in zip(plan, rs, strict=True) if p.site in (None, spec.site)]
        return _fit_scaled(spec, [p for p, _ in sub], [r for _, r in sub], base, vec)
    parts = tuple(_fit_part(specs[s], plan, rs, base, vec) for s in deps)
    moved = affine_value(Affine(torch.zeros_like(base), parts), plan[0].values, specs, vec)
    b0 = base - moved
    # an offset at round-off of the parts' size is zero (a mixture's loc = mu[z] exactly):
    # exact zeros let the terms broadcast instead of carrying a component dimension
    b0 = torch.where(b0.abs() <= 1e-12 * (base.abs() + moved.abs()), torch.zeros_like(b0), b0)
    link = Affine(b0, parts)
    if len(deps) == 2 and not vec and not _holds(link, plan, rs, base, specs, vec, ("joint",)):
        link = _fit_bilinear(site, slot, deps, parts, specs, plan, rs, base, rerun)
    for p, r in zip(plan, rs, strict=True):
        if p.kind in ("joint", "check"):
            pred = affine_value(link, p.values, specs, vec)
            scale = base.abs() + r.abs()
            if not _close(pred, r, scale + (pred - base).abs()):
                what = ("the latents' effects do not add up (a product of latents, e.g. "
                        "W @ z, or a non-affine link)") if p.kind == "joint" else \
                    "it leaves the affine form at other values of the latents (a non-affine " \
                    "link, e.g. relu, abs, where, exp or tanh)"
                raise _Fail(what)
    return link
