"""``conjugacy(model, *data)``: what automatic CAVI found in a model, site by site.

The report never raises for a non-conjugate model: every refusal that detection meets is
collected and shown against its latent, so the user sees all the sites to change at once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from pyro_vi.cavi.auto.links import Affine, Scaled
from pyro_vi.cavi.auto.structure import _trailing, analyse, discover
from pyro_vi.errors import NotConjugateError

__all__ = ["ConjugacyReport", "SiteReport", "conjugacy"]

_Q = {"gamma": "Gamma", "beta": "Beta", "dirichlet": "Dirichlet", "normal": "Normal",
      "mvn": "MultivariateNormal (full covariance over the event)", "wishart": "Wishart",
      "ng": "NormalGamma, joint with {other!r}", "nw": "NormalWishart, joint with {other!r}"}


@dataclass(frozen=True)
class SiteReport:
    """One latent site: its prior family, q family, children, links, and why not (if not).

    ``local`` is True for one factor per data point (optimised inside each local step);
    ``reason`` is None for a conjugate site.
    """

    name: str
    prior: str
    q: str
    local: bool
    children: tuple[str, ...]
    links: tuple[str, ...]
    reason: str | None

    @property
    def conjugate(self) -> bool:
        """True when the site has a closed-form update."""
        return self.reason is None


@dataclass(frozen=True)
class ConjugacyReport:
    """What :func:`conjugacy` detected; ``str(report)`` prints it as a table.

    ``sites`` maps every latent site to its :class:`SiteReport`; ``observed`` lists the
    observed sites; ``data_plate`` names the plate the data are split along (None: no plate
    holds every observed site); ``runs`` counts the model runs detection took and
    ``seconds`` their time.
    """

    sites: Mapping[str, SiteReport]
    observed: tuple[str, ...]
    data_plate: str | None
    runs: int
    seconds: float

    @property
    def conjugate(self) -> bool:
        """True when every latent site has a closed-form update (``cavi`` will fit it)."""
        return all(s.conjugate for s in self.sites.values())

    def __str__(self) -> str:
        verdict = ("conjugate: pyro_vi.cavi(model, *data) fits it in closed form"
                   if self.conjugate else
                   "NOT conjugate: fit it with pyro_vi.fit_svi and an autoguide, or change "
                   "the sites marked below")
        plate = "none" if self.data_plate is None else repr(self.data_plate)
        lines = [f"Conjugacy report: {verdict}",
                 f"  observed: {', '.join(map(repr, self.observed))}; data plate: {plate}; "
                 f"{self.runs} model runs in {self.seconds:.2f} s"]
        for s in self.sites.values():
            where = "local, one per data point" if s.local else "global"
            lines.append(f"- {s.name!r} ~ {s.prior}  →  q: {s.q} ({where})")
            for link in s.links:
                lines.append(f"    {link}")
            if s.reason is not None:
                lines.append(f"    NOT CONJUGATE: {s.reason}")
        return "\n".join(lines)


def _describe(links: Mapping[str, Any], deps: Mapping[tuple[str, str], list[str]],
              families: Mapping[str, str], latent: str, enum_site: str | None,
              enum_slots: set[tuple[str, str]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    children, out = [], []
    for (child, slot), who in deps.items():
        if latent not in who or child == latent:
            continue
        children.append(child)
        link = links.get(child, {}).get(slot)
        fam = families[child]
        sel = (f", selected by the enumerated {enum_site!r}"
               if enum_site is not None and (child, slot) in enum_slots else "")
        if isinstance(link, Scaled):
            ones = bool((link.coef == 1).all())
            how = "as itself" if ones else (
                "linearly, scaled by data" if link.coef.numel() > 1
                and not bool(torch.allclose(link.coef, link.coef.reshape(-1)[0], rtol=1e-9, atol=0))
                else f"linearly, scaled by {float(link.coef.reshape(-1)[0]):.4g}")
            out.append(f"enters {fam}({slot}) of {child!r} {how}{sel}")
        elif isinstance(link, Affine):
            others = [p.site for p in link.parts if p.site != latent]
            also = f" (with {', '.join(map(repr, others))})" if others else ""
            out.append(f"enters {fam}({slot}) of {child!r} affinely{also}{sel}")
        else:
            out.append(f"enters {fam}({slot}) of {child!r} (refused, see below)")
    return tuple(dict.fromkeys(children)), tuple(out)


def conjugacy(model: Any, *args: Any, joint: bool = True, **kwargs: Any) -> ConjugacyReport:
    """Detect and report the conjugate structure of ``model(*args, **kwargs)``.

    It never raises for a non-conjugate model: the report says why, site by site.

    For each latent site the report gives the q family, the children it feeds and the link
    found ("enters Poisson(rate) of 'claims' linearly, scaled by data"), or why there is no
    closed-form update. ``print(report)`` shows it.

    Examples
    --------
    >>> import torch, pyro, pyro.distributions as dist
    >>> def model(x):
    ...     rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
    ...     with pyro.plate("data", len(x)):
    ...         pyro.sample("x", dist.Poisson(rate), obs=x)
    >>> report = conjugacy(model, torch.tensor([1.0, 3.0]))
    >>> report.conjugate, report.sites["rate"].q, report.sites["rate"].links
    (True, 'Gamma', ("enters Poisson(rate) of 'x' as itself",))
    """
    t0 = time.perf_counter()
    failures: list[NotConjugateError] = []
    d = discover(model, args, kwargs, failures=failures)
    kinds: dict[str, str] = {n: sp.kind for n, sp in d.specs.items()}
    partner: dict[str, str] = {}
    local_sites = {s.name for s in d.sites if d.plate is not None and d.plate.name in s.plate_names}
    if not failures:
        try:
            st = analyse(model, args, kwargs, joint=joint)
        except NotConjugateError as err:
            failures.append(err)
        else:
            for f in st.factors.values():
                for site in f.sites:
                    kinds[site] = f.kind
                if len(f.sites) == 2:
                    partner[f.sites[0]], partner[f.sites[1]] = f.sites[1], f.sites[0]
    families = {s.name: s.family for s in d.sites}
    enum_slots = set()
    if d.enum_site is not None:
        for (child, slot), rs in _enum_slots(d).items():
            if rs:
                enum_slots.add((child, slot))
    sites: dict[str, SiteReport] = {}
    for s in d.sites:
        if s.observed:
            continue
        reasons = [e for e in failures if e.site == s.name]
        if s.name == d.enum_site:
            q = "Categorical (enumerated; optimal q per data point)"
        elif s.name in kinds:
            q = _Q[kinds[s.name]].format(other=partner.get(s.name, "?"))
        else:
            q = "none"
        children, links = _describe(d.found.links, d.found.deps, families, s.name,
                                    d.enum_site, enum_slots)
        if s.name == d.enum_site:
            children = tuple(c for (c, _), who in d.found.deps.items()
                             if (c, _) in enum_slots and c != s.name)
            children = tuple(dict.fromkeys(children))
            links = tuple(f"selects the parameters of {c!r}" for c in children)
        reason = None
        if reasons:
            reason = "; ".join(
                (f"in {e.slot or 'the distribution'} of {e.child!r}: " if e.child else "")
                + str(e.reason) for e in reasons)
        prior = s.family + (f".to_event({s.event_dims})" if s.event_dims else "")
        sites[s.name] = SiteReport(s.name, prior, q, s.name in local_sites, children, links,
                                   reason)
    return ConjugacyReport(sites=sites, observed=tuple(s.name for s in d.sites if s.observed),
                           data_plate=None if d.plate is None else d.plate.name,
                           runs=d.found.runs, seconds=time.perf_counter() - t0)


def _enum_slots(d: Any) -> dict[tuple[str, str], bool]:
    """Whether each slot varies along the enumerated latent's dimension (z selects it)."""
    dim = -(d.nesting + 1)
    info = {s.name: s for s in d.sites}
    out = {}
    for child, slots in d.found.links.items():
        for slot, link in slots.items():
            s = info[child]
            if isinstance(link, Scaled):
                pairs = [(link.idx, _trailing(s, slot, "idx"))]
            elif isinstance(link, Affine):
                pairs = [(p.idx, _trailing(s, slot, "idx")) for p in link.parts]
                pairs.append((link.b, _trailing(s, slot, "value")))
            else:
                pairs = [(link.value, _trailing(s, slot, "value"))]
            hit = False
            for t, trail in pairs:
                ax = t.dim() - trail + dim
                hit = hit or (0 <= ax < t.dim() and t.shape[ax] > 1)
            out[(child, slot)] = hit
    return out
