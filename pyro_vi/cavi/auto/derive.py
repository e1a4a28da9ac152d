r"""A plain Pyro model's closed-form CAVI updates, derived onto the one model contract.

:func:`derive` analyses the model (:func:`pyro_vi.cavi.auto.structure.analyse`) and returns
a :class:`DerivedModel`, an ordinary :class:`~pyro_vi.cavi.model.ConjugateModel`, so the
engine fits it like a hand-written model: chunks, restarts, stochastic VI and the
never-decreasing-ELBO guard all apply.

The updates are variational message passing (Winn & Bishop 2005; Bishop 2006, §10.4.1):
with each term's expected log-density written as a function of the factors' moments
(:mod:`pyro_vi.cavi.auto.terms`), the optimal factor is

.. math::
    \ln q^*(\theta_j) = \Big\langle \nabla_{\mu_j} \sum_{s} E_q[\log p(x_s\mid\mathrm{pa}(s))],
        \; T_j(\theta_j) \Big\rangle + \text{const}

(Bishop 2006, eq. 10.9, with :math:`\mu_j = E_q[T_j]`), because every term is linear in
:math:`\mu_j`. The gradient is taken by autograd. The contract's split follows:

* **local step** (per chunk of data points): optimal local factors (a mixture's
  :math:`q(z_n)` by enumeration, eq. 10.49's form; a per-point Gaussian in closed form), the
  chunk's share of the ELBO and, as the summed statistics, the gradient of that share with
  respect to every global factor's moments: the data's messages, additive over points;
* **global step**: each global factor in program order gets its prior's message and the
  messages of global terms (computed there, from the freshest neighbours) plus the data's.

Two global factors that meet in one *data* term (a Normal's location and precision, fitted
mean-field) must not both be updated from messages computed before either moved; they are
coloured apart and updated on alternate sweeps, so every sweep is an exact coordinate step
and the ELBO never decreases.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from pyro_vi.cavi.auto.structure import ROWS, FactorSpec, Structure, analyse, factors_of
from pyro_vi.cavi.auto.terms import (
    ChoiceTerm,
    Ctx,
    GSlot,
    KSlot,
    LatentValue,
    MixtureTerm,
    ObsValue,
    PSlot,
    TermSpec,
    choice_messages,
    choice_term,
    expected_log_prob,
    mixture_messages,
    mixture_term,
)
from pyro_vi.cavi.kmeans import initial_responsibilities
from pyro_vi.cavi.model import ConjugateModel, Local, Stats
from pyro_vi.errors import NumericalError
from pyro_vi.factors import (
    BartlettWishart,
    Beta,
    Dirichlet,
    ExpFamFactor,
    Gamma,
    MultivariateNormal,
    Normal,
    NormalGamma,
    NormalWishart,
    Wishart,
)

__all__ = ["DerivedModel", "derive"]

_FAMILY: dict[str, type[ExpFamFactor]] = {
    "gamma": Gamma, "beta": Beta, "dirichlet": Dirichlet, "normal": Normal,
    "mvn": MultivariateNormal, "wishart": Wishart, "ng": NormalGamma, "nw": NormalWishart,
}


def _sym(t: Tensor) -> Tensor:
    return 0.5 * (t + t.transpose(-1, -2))


def _natural_to_factor(spec: FactorSpec, eta: list[Tensor]) -> ExpFamFactor:
    """The factor with natural parameters ``eta`` (matrices symmetrised), or a named error."""
    if spec.kind == "mvn":
        eta[1] = _sym(eta[1])
    elif spec.kind == "wishart":
        eta[0] = _sym(eta[0])
    elif spec.kind == "nw":
        eta[2] = _sym(eta[2])
    try:
        q = _FAMILY[spec.kind].from_natural(*eta)
    except Exception as exc:  # noqa: BLE001 - a Cholesky or domain failure: say where
        raise NumericalError(f"the update of factor {spec.name!r} ({spec.kind}) is not a "
                             f"valid distribution: {exc}") from exc
    bad = [k for k, v in vars(q).items() if isinstance(v, Tensor) and not torch.isfinite(v).all()]
    if bad:
        raise NumericalError(f"the update of factor {spec.name!r} ({spec.kind}) has non-finite "
                             f"parameters ({', '.join(bad)})")
    return q


class DerivedModel(ConjugateModel[tuple[Tensor, ...], Any, Stats]):
    r"""A plain Pyro model with its conjugate structure detected: the CAVI contract, derived.

    Build it with :func:`derive` (or let :func:`pyro_vi.cavi` do it). Its params record is a
    frozen dataclass with one field per factor (named after the site, ``"loc+precision"`` for
    a fused pair) and ``sweep``, the number of global steps taken (it picks the colour class
    a sweep updates). Everything is float64 on the CPU.

    Examples
    --------
    >>> import torch, pyro, pyro.distributions as dist
    >>> def model(x):
    ...     rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
    ...     with pyro.plate("data", len(x)):
    ...         pyro.sample("x", dist.Poisson(rate), obs=x)
    >>> m = derive(model, torch.tensor([1.0, 3.0, 2.0]))
    >>> q = m.posterior(m.global_step(m.init_stats(m.data, generator=torch.Generator()), None),
    ...                 "rate")
    >>> float(q.concentration), float(q.rate)  # Gamma(2 + 6, 1 + 3), the exact posterior
    (8.0, 4.0)
    """

    name = "auto"

    def __init__(self, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                 structure: Structure, *, init: Any = None) -> None:
        super().__init__()
        self.user_model = model
        self.args, self.kwargs = args, kwargs
        self.s = structure
        self.init = init
        self.max_plate_nesting = structure.nesting  # type: ignore[misc]
        self.data: tuple[Tensor, ...] = tuple(t for _, t, _ in structure.point_arrays)
        self._keys = [(k, ax) for k, _, ax in structure.point_arrays]
        self._global = [f for f, sp in structure.factors.items() if not sp.local]
        self._local = [f for f, sp in structure.factors.items() if sp.local]
        touched: dict[str, set[int]] = {f: set() for f in structure.factors}
        for i, t in enumerate(structure.terms):
            for f in factors_of(t):
                touched[f].add(i)
        self._touched = touched
        data = set(structure.data_terms)
        self._data_factors = [f for f in self._global if touched[f] & data]
        self._pairs, conflicts = _pairs(self._data_factors, structure, touched,
                                        {f: self._size(f) for f in self._data_factors})
        self._colour = _colour(self._data_factors, conflicts)
        self.n_colours = 1 + max(self._colour.values(), default=0)
        self._start: Any = None
        self._buffers: dict[int, Tensor] = {}
        self._moment_cache: tuple[Any, dict[str, Tensor], dict[str, tuple[Tensor, ...]]] | None = None
        self._product_factors = sorted({
            p.factor for t in structure.terms for sl in t.slots.values()
            if isinstance(sl, GSlot) and sl.bilinear is not None
            for j, p in enumerate(sl.parts) if j in sl.bilinear[:2]
            and not structure.factors[p.factor].local})
        #: location factors computed in coordinates centred on their current mean (raw-unit
        #: data: no moment of size 1e18 cancels); a product's factors stay uncentred
        self._centred = [f for f in self._global
                         if structure.factors[f].kind in ("normal", "mvn", "ng", "nw")
                         and f not in self._product_factors]
        info = {site.name: site for site in structure.sites}
        #: leading dims of a factor's location that are its site's batch (plate) dims
        self._plate_ndim = {f: len(info[structure.factors[f].sites[0]].batch_shape)
                            for f in self._centred}
        fields = [(f, ExpFamFactor) for f in self._global] + [("sweep", Tensor)]
        self.params_type = dataclasses.make_dataclass("DerivedParams", fields, frozen=True)

    # ------------------------------------------------------------------ the contract
    def prepare(self, data: Any) -> tuple[DerivedModel, tuple[Tensor, ...]]:
        """The data are this model's own per-point arrays (:attr:`data`): checked, returned."""
        if not isinstance(data, tuple) or len(data) != len(self.data):
            raise TypeError("a DerivedModel fits the data it was derived from (its .data)")
        return self, data

    def prior_params(self) -> Any:
        """Every global factor at its prior given its parents' prior moments (program order)."""
        return self._initial()

    def _initial(self) -> Any:
        cur: dict[str, ExpFamFactor] = {}
        origins = {f: self._prior_origin(f) for f in self._centred}
        for f in self._global:
            own = [i for i in self._touched[f] if _value_factor(self.s.terms[i]) == f]
            cur[f] = self._update(f, cur, own, None, origins)
        return self._record(cur, -1)

    def _prior_origin(self, f: str) -> Tensor:
        """Where factor ``f``'s coordinates are centred before it has a mean.

        Its prior's location when that is known, zero otherwise.
        """
        spec = self.s.factors[f]
        shape = spec.shape + (spec.event if spec.kind in ("mvn", "nw") else torch.Size())
        for t in self.s.terms:
            if isinstance(t.value, LatentValue) and t.value.factor == f \
                    and t.value.view in ("normal", "mvn", "ng_loc", "nw_loc"):
                loc = t.slots.get("loc")
                if isinstance(loc, KSlot):
                    v = self.s.arrays[loc.key]
                    try:
                        return self._common(f, torch.broadcast_to(v, shape).clone())
                    except RuntimeError:
                        break
        return torch.zeros(shape, dtype=torch.float64)

    def _origins(self, factors: dict[str, ExpFamFactor]) -> dict[str, Tensor]:
        """The centring point of each centred factor: its mean location over the plate.

        One point for all of a plate's elements (a mixture's components, a hierarchy's
        groups), so a term selecting a component by the enumerated latent still sees one
        offset for every component and stays one matrix product; per coordinate of an
        event, since coordinates may sit at different offsets.
        """
        out = {}
        for f in self._centred:
            loc = factors[f].location
            assert loc is not None
            out[f] = self._common(f, loc.detach())
        return out

    def _common(self, f: str, loc: Tensor) -> Tensor:
        nb = self._plate_ndim[f]
        if not nb:
            return loc
        mean = loc.mean(tuple(range(nb)), keepdim=True)
        # a vector factor keeps one row (terms then broadcast it); an elementwise one is
        # gathered per element, so it keeps its shape
        return mean if self.s.factors[f].kind in ("mvn", "nw") else mean.expand_as(loc)

    def _jittered(self, params: Any, generator: torch.Generator) -> Any:
        if not self._product_factors:
            return params
        cur = {f: getattr(params, f) for f in self._global}
        for f in self._product_factors:
            q = cur[f]
            if isinstance(q, Normal):
                eps = torch.randn(q.loc.shape, generator=generator, dtype=torch.float64)
                cur[f] = Normal(q.loc + eps * q.precision.rsqrt(), precision=q.precision)
            elif isinstance(q, MultivariateNormal):
                eps = torch.randn(q.loc.shape, generator=generator, dtype=torch.float64)
                step = torch.linalg.solve_triangular(q.precision_tril.transpose(-1, -2),
                                                     eps.unsqueeze(-1), upper=True).squeeze(-1)
                cur[f] = MultivariateNormal(q.loc + step, q.precision_tril)
        return self._record(cur, int(params.sweep))

    def _record(self, factors: dict[str, ExpFamFactor], sweep: int) -> Any:
        return self.params_type(**factors, sweep=torch.tensor(sweep))

    def _stats_of(self, factors: dict[str, ExpFamFactor],
                  origins: dict[str, Tensor]) -> dict[str, tuple[Tensor, ...]]:
        """Moments of each factor, of ``theta - origin`` for the centred ones."""
        return {f: tuple((q.shifted(-origins[f]) if f in origins else q).expected_stats())
                for f, q in factors.items()}

    def _update(self, f: str, cur: dict[str, ExpFamFactor], terms: list[int],
                message: tuple[Tensor, ...] | None, origins: dict[str, Tensor]) -> ExpFamFactor:
        """The optimal factor ``f`` given ``cur`` (the others), from ``terms`` and ``message``.

        ``message`` and the result's natural parameters are in ``f``'s centred coordinates
        (``theta - origins[f]``); the factor returned is shifted back.
        """
        with torch.enable_grad():
            q = self._update_grad(f, cur, terms, message, origins)
        return q.shifted(origins[f]) if f in origins else q

    def _update_grad(self, f: str, cur: dict[str, ExpFamFactor], terms: list[int],
                     message: tuple[Tensor, ...] | None,
                     origins: dict[str, Tensor]) -> ExpFamFactor:
        spec = self.s.factors[f]
        q_like = self._template(f)
        leaves = tuple(t.detach().clone().requires_grad_(True) for t in q_like)
        stats = self._stats_of({g: q for g, q in cur.items() if g != f}, origins)
        stats[f] = leaves
        ctx = Ctx(self.s.arrays, stats, origins)
        total = sum((expected_log_prob(ctx, self.s.terms[i]).sum() for i in terms),
                    torch.zeros((), dtype=torch.float64))
        grads = torch.autograd.grad(total, leaves, allow_unused=True)
        eta = [torch.zeros_like(l) if g is None else g for g, l in zip(grads, leaves, strict=True)]
        if message is not None:
            eta = [e + m for e, m in zip(eta, message, strict=True)]
        return _natural_to_factor(spec, eta)

    def _template(self, f: str, shape: torch.Size | None = None) -> tuple[Tensor, ...]:
        """Zero moments of factor ``f``'s shapes (leaves for autograd)."""
        spec = self.s.factors[f]
        sh = spec.shape if shape is None else shape
        z = functools.partial(torch.zeros, dtype=torch.float64)
        if spec.kind in ("gamma", "beta"):
            return (z(sh), z(sh))
        if spec.kind == "dirichlet":
            return (z(sh + spec.event),)
        if spec.kind == "normal":
            return (z(sh), z(sh))
        if spec.kind == "mvn":
            d = spec.event[-1]
            return (z(sh + (d,)), z(sh + (d, d)))
        if spec.kind == "wishart":
            d = spec.event[-1]
            return (z(sh + (d, d)), z(sh))
        if spec.kind == "ng":
            return (z(sh), z(sh), z(sh), z(sh))
        d = spec.event[-1]
        return (z(sh + (d,)), z(sh), z(sh + (d, d)), z(sh))

    def _arrays(self, data: tuple[Tensor, ...]) -> dict[str, Tensor]:
        arrays = dict(self.s.arrays)
        for (key, ax), t in zip(self._keys, data, strict=True):
            arrays[key] = t.movedim(0, ax)
        return arrays

    def _points(self, data: tuple[Tensor, ...]) -> int:
        return int(data[0].shape[0]) if data else self.s.n_points

    def init_stats(self, data: tuple[Tensor, ...], *, generator: torch.Generator) -> Stats:
        """The data's messages at the start (for a mixture: at the ``init`` responsibilities).

        The start is every factor at its prior, except that the Gaussian factors of a product
        of latents (``w_d^T z_n``) start from a draw of their prior (seeded by ``generator``):
        at the prior means the product's gradient vanishes, a saddle CAVI would not leave.
        The next :meth:`global_step` with ``params=None`` continues from this start.
        """
        params = self._start = self._jittered(self._initial(), generator)
        resp = self._init_resp(data, generator) if self.s.enum_site is not None else None
        n = self._points(data)
        rows = self._chunk_rows(data)
        total: list[Tensor] | None = None
        for start in range(0, max(n, 1), rows):
            part = tuple(t[start:start + rows] for t in data)
            r = None if resp is None else resp[start:start + rows]
            local = self._local_step(part, params, resp=r)
            total = list(local.stats) if total is None else [a + b for a, b in
                                                            zip(total, local.stats, strict=True)]
        assert total is not None
        return tuple(total)

    def _chunk_rows(self, data: tuple[Tensor, ...]) -> int:
        per = self.local_bytes_per_point(data) or 1
        from pyro_vi.cavi.model import DEFAULT_CHUNK_BYTES

        return max(1024, DEFAULT_CHUNK_BYTES // max(1, per))

    def _init_resp(self, data: tuple[Tensor, ...], generator: torch.Generator) -> Tensor:
        n, k = self._points(data), self.s.enum_size
        init = self.init
        if isinstance(init, Tensor):
            r = init.to(torch.float64)
            full = self.s.n_points
            if r.shape != (full, k) or not torch.isfinite(r).all() or bool((r < 0).any()):
                raise ValueError(f"init must be a finite, non-negative ({full}, {k}) tensor of "
                                 f"responsibilities, got shape {tuple(r.shape)}")
            r = r[self._arrays(data)[ROWS]] if n != full else r  # a minibatch's own rows
            return r / r.sum(-1, keepdim=True).clamp_min(1e-300)
        method = "kmeans++" if init is None else init
        if method not in ("kmeans++", "random"):
            raise ValueError(f"init must be None, 'kmeans++', 'random' or a tensor, got {init!r}")
        x = self._selected_data(data)
        return initial_responsibilities(x, k, method=method, generator=generator)

    def _selected_data(self, data: tuple[Tensor, ...]) -> Tensor:
        """The observed site the discrete latent selects, as an ``(N, features)`` matrix."""
        arrays = dict(zip([k for k, _ in self._keys], data, strict=True))
        for i in self.s.data_terms:
            t = self.s.terms[i]
            if t.site == self.s.enum_site or not isinstance(t.value, ObsValue):
                continue
            if t.value.key in arrays:
                x = arrays[t.value.key].to(torch.float64)
                x = x.reshape(x.shape[0], -1)
                # centred: k-means++ distances then keep their digits at raw-unit offsets
                return x - x.mean(0)
        raise ValueError("init='kmeans++' needs an observed site with one row per data point")

    def local_step(self, data: tuple[Tensor, ...], params: Any) -> Local:
        r"""Optimal local factors; the data's ELBO share and its messages to the globals.

        With the enumerated discrete latent ``z`` the share is
        :math:`\sum_n \log\sum_k \exp\big(\sum_{s \ni z} E_q[\log p(x_s|z_n{=}k, \cdot)]\big)`
        (the optimal :math:`q(z_n)` is its softmax, Bishop 2006, eq. 10.46–10.49); a local
        Gaussian factor is set to its closed-form optimum first.
        """
        return self._local_step(data, params, resp=None)

    def _local_step(self, data: tuple[Tensor, ...], params: Any, *, resp: Tensor | None,
                    want_local: bool = False) -> Any:
        # messages are gradients: taken even when the caller (a guide under an ELBO
        # estimate) runs without autograd
        with torch.enable_grad():
            return self._local_step_grad(data, params, resp=resp, want_local=want_local)

    def _local_step_grad(self, data: tuple[Tensor, ...], params: Any, *, resp: Tensor | None,
                         want_local: bool) -> Any:
        n = self._points(data)
        arrays = self._arrays(data)
        factors = {f: getattr(params, f) for f in self._global}
        cached = self._moment_cache
        if cached is not None and cached[0] is params:
            origins, moments = cached[1], cached[2]  # the chunks of one pass share params
        else:
            origins = self._origins(factors)
            moments = {f: tuple(t.detach() for t in m)
                       for f, m in self._stats_of(factors, origins).items()}
            self._moment_cache = (params, origins, moments)
        leaves = {f: tuple(t.clone().requires_grad_(True) for t in moments[f])
                  for f in self._data_factors}
        stats = {f: m for f, m in moments.items() if f not in leaves}
        stats.update(leaves)
        ctx = Ctx(arrays, stats, origins)
        extra = torch.zeros((), dtype=torch.float64)
        local_q: dict[str, ExpFamFactor] = {}
        for f in self._local:
            q = self._local_factor(f, ctx, n)
            local_q[f] = q
            ctx.stats[f] = tuple(t.detach() for t in q.expected_stats())
            extra = extra + q.entropy().sum()
        fast = self._mixture_terms(ctx) if not self._pairs and self.s.enum_site else {}
        k_terms, total = self._evaluate(ctx, n, skip=set(fast))
        r = None
        value = total
        if k_terms is not None or fast:
            logits = sum((m.logits for m in fast.values()),
                         torch.zeros((), dtype=torch.float64))
            if k_terms is not None:
                logits = k_terms + logits
            logits = logits.expand(-1, n) if logits.dim() == 2 else logits
            if resp is not None:
                r = resp.T.to(logits)
                share = (r * logits).sum() - torch.xlogy(r, r).sum()
            else:
                # log-sum-exp and softmax from one exp (the value only: the messages are the
                # r-weighted terms, by the envelope theorem)
                with torch.no_grad():
                    top = logits.amax(0)
                    r = (logits - top).exp_()
                    norm = r.sum(0)
                    share = (top + torch.log(norm)).sum()
                    r.div_(norm)
            value = value + share
            # the messages of the optimal-q(z) share are r-weighted (envelope theorem)
            if k_terms is not None:
                total = total + (r.detach() * k_terms).sum()
        total = total + extra
        value = value + extra
        if want_local:
            return local_q, (None if r is None else r.T)
        flat = [t for f in self._data_factors for t in leaves[f]]
        pairs = self._pairs
        grads = torch.autograd.grad(total, flat, allow_unused=True, create_graph=bool(pairs)) \
            if flat and total.requires_grad else ()  # none left when every term took a fast path
        msgs = [torch.zeros_like(t) if g is None else g
                for g, t in zip(grads or [None] * len(flat), flat, strict=True)]
        if fast:
            assert r is not None
            first: dict[str, int] = {}
            at = 0
            for f in self._data_factors:
                first[f] = at
                at += len(leaves[f])
            for m in fast.values():
                shapes = tuple(t.shape for t in leaves[m.factor])
                if isinstance(m, ChoiceTerm):
                    j = first[m.factor]
                    msgs[j] = msgs[j] + choice_messages(m, r.detach(), shapes[0])
                    continue
                for j, g in enumerate(mixture_messages(m, r.detach(), shapes)):
                    msgs[first[m.factor] + j] = msgs[first[m.factor] + j] + g
        out = [m.detach() for m in msgs]
        if pairs:
            by_factor: dict[str, list[Tensor]] = {}
            pos = 0
            for f in self._data_factors:
                k = len(leaves[f])
                by_factor[f] = msgs[pos:pos + k]
                pos += k
            for later, earlier in pairs:
                out.append(_cross(by_factor, leaves, later, earlier))
        return Local(tuple(out), value.detach())

    def _mixture_terms(self, ctx: Ctx) -> dict[int, MixtureTerm | ChoiceTerm]:
        """The data terms that take the autograd-free mixture path (:func:`mixture_term`)."""
        out: dict[int, MixtureTerm | ChoiceTerm] = {}
        with torch.no_grad():
            for i in self.s.data_terms:
                # one features buffer per term, reused chunk after chunk: the path runs no
                # autograd, and a chunk's messages are taken before the next chunk starts
                m = mixture_term(ctx, self.s.terms[i], self._buffers.get(i))
                if m is not None:
                    out[i] = m
                    self._buffers[i] = m.features
                    continue
                c = choice_term(ctx, self.s.terms[i], self.s.enum_size)
                if c is not None:
                    out[i] = c
        return out

    def _size(self, f: str) -> int:
        return sum(int(t.numel()) for t in self._template(f))

    def _evaluate(self, ctx: Ctx, n: int, skip: set[int] | None = None
                  ) -> tuple[Tensor | None, Tensor]:
        """Data terms: ``(K, n)`` logits of the enumerated latent (None: none), and the rest."""
        p = self.s.nesting
        plate = self.s.data_plate
        total = torch.zeros((), dtype=torch.float64)
        logits: Tensor | None = None
        for i in self.s.data_terms:
            if skip and i in skip:
                continue
            out = expected_log_prob(ctx, self.s.terms[i])
            assert plate is not None
            out = out.reshape((1,) * (p + 1 - out.dim()) + out.shape)
            axis = p + 1 + plate.dim
            others = tuple(j for j in range(1, p + 1) if j != axis)
            if others:
                out = out.sum(others, keepdim=True)
            out = out.reshape(out.shape[0], out.shape[axis])  # (K or 1, n or 1)
            if out.shape[0] > 1:
                logits = out.expand(out.shape[0], n) if logits is None else logits + out
            else:
                total = total + out.sum() * (n if out.shape[1] == 1 else 1)
        return logits, total

    def _local_factor(self, f: str, ctx: Ctx, n: int) -> ExpFamFactor:
        """The optimal local factor ``f`` for this chunk, given the global moments in ``ctx``."""
        spec = self.s.factors[f]
        shape = list(spec.shape)
        assert spec.n_axis is not None
        shape[spec.n_axis] = n
        leaves = tuple(t.requires_grad_(True) for t in self._template(f, torch.Size(shape)))
        ctx.stats[f] = leaves
        terms = [i for i in self.s.data_terms if i in self._touched[f]]
        total = sum((expected_log_prob(ctx, self.s.terms[i]).sum() for i in terms),
                    torch.zeros((), dtype=torch.float64))
        grads = torch.autograd.grad(total, leaves, retain_graph=True, allow_unused=True)
        eta = [torch.zeros_like(l) if g is None else g.detach()
               for g, l in zip(grads, leaves, strict=True)]
        return _natural_to_factor(spec, eta)

    def global_step(self, stats: Stats, params: Any) -> Any:
        """Update the global factors in program order: prior, global terms and data messages.

        Updated are this sweep's colour class and every factor no data term touches.
        """
        if params is None:
            params = self._start if self._start is not None else self._initial()
        sweep = int(params.sweep) + 1
        active = sweep % self.n_colours
        cur = {f: getattr(params, f) for f in self._global}
        msgs: dict[str, tuple[Tensor, ...]] = {}
        pos = 0
        for f in self._data_factors:
            k = len(self._template(f))
            msgs[f] = tuple(stats[pos:pos + k])
            pos += k
        cross = dict(zip(self._pairs, stats[pos:], strict=True))
        moved: dict[str, Tensor] = {}  # factor -> change of its flattened moments this step
        glob = set(self.s.global_terms)
        origins = self._origins(cur)  # the local step's coordinates: the sweep's start
        for f in self._global:
            if f in msgs and self._colour[f] != active:
                continue
            message = msgs.get(f)
            if message is not None:
                message = self._corrected(f, message, cross, moved)
            terms = sorted(self._touched[f] & glob)
            old = cur[f]
            cur[f] = self._update(f, cur, terms, message, origins)
            if f in msgs:
                new_m = self._stats_of({f: cur[f]}, origins)[f]
                old_m = self._stats_of({f: old}, origins)[f]
                moved[f] = _flat(new_m) - _flat(old_m)
        return self._record(cur, sweep)

    def _corrected(self, f: str, message: tuple[Tensor, ...], cross: dict[tuple[str, str], Tensor],
                   moved: dict[str, Tensor]) -> tuple[Tensor, ...]:
        r"""The data's message to ``f`` at the moments its partners have *now*.

        A data term shared by ``f`` and an earlier factor ``g`` is bilinear in their moments
        (the local factors held at the sweep's start), so the message moves exactly by
        :math:`J_{fg}\,\Delta\mu_g`, with :math:`J_{fg} = \partial^2 L/\partial\mu_f\partial\mu_g`
        summed over the data by the local step: coordinate ascent within one sweep.
        """
        delta: Tensor | None = None
        for (later, earlier), jac in cross.items():
            if later == f and earlier in moved:
                step = jac @ moved[earlier]
                delta = step if delta is None else delta + step
        if delta is None:
            return message
        out, pos = [], 0
        for m in message:
            out.append(m + delta[pos:pos + m.numel()].reshape(m.shape))
            pos += m.numel()
        return tuple(out)

    def global_elbo(self, params: Any) -> Tensor:
        """The global terms' expected log-densities plus every global factor's entropy."""
        factors = {f: getattr(params, f) for f in self._global}
        origins = self._origins(factors)
        ctx = Ctx(self.s.arrays, self._stats_of(factors, origins), origins)
        total = torch.zeros((), dtype=torch.float64)
        for i in self.s.global_terms:
            total = total + expected_log_prob(ctx, self.s.terms[i]).sum()
        for q in factors.values():
            total = total + q.entropy().sum()
        return total

    def local_bytes_per_point(self, data: tuple[Tensor, ...]) -> int | None:
        """About 16 float64 temporaries per element a data term holds for one data point.

        A mixture whose data terms all take the autograd-free path (:func:`mixture_term`)
        holds its point's features ``D(D+3)/2`` and a few ``K``-vectors instead.
        """
        if self.s.data_plate is None:
            return None
        k = max(1, self.s.enum_size)
        obs = [self.s.terms[i] for i in self.s.data_terms if self.s.terms[i].site != self.s.enum_site]
        if k > 1 and obs and all(t.joint is not None and t.family == "MultivariateNormal"
                                 for t in obs):
            d = max(int(t.shape[-1]) for key, t, _ in self.s.point_arrays if key.endswith(".value")
                    and t.dim() == 2)
            return 8 * 4 * (d * (d + 3) // 2)  # 4 MiB of features per (16 MiB) chunk
        per = 0
        for _key, t, _ in self.s.point_arrays:
            per += int(t[0].numel()) if t.shape[0] else 1
        return 8 * 16 * k * max(1, per)

    def elbo_roundoff(self, data: tuple[Tensor, ...]) -> float | None:
        """Round-off of the data's own magnitude (the observed values only)."""
        from pyro_vi.cavi.model import data_roundoff

        obs = tuple(t for (key, _), t in zip(self._keys, data, strict=True)
                    if key.endswith(".value") and t.is_floating_point())
        return data_roundoff(obs) if obs else None

    # ------------------------------------------------------------------------ Pyro side
    def model(self, *args: Any) -> Any:
        """The user's model (with the keyword arguments it was derived with)."""
        return self.user_model(*args, **self.kwargs)

    def pyro_data(self, data: tuple[Any, ...]) -> tuple[Any, ...]:
        """The user's positional arguments (what the model and guide take)."""
        return self.args

    def local_factors(self, params: Any, *args: Any) -> tuple[dict[str, ExpFamFactor], Tensor | None]:
        """Optimal local factors and the discrete latent's ``(N, K)`` responsibilities."""
        same = len(args) == len(self.args) and all(a is b for a, b in zip(args, self.args, strict=True))
        model = self if not args or same else derive(self.user_model, *args, init=self.init,
                                                     **self.kwargs)
        return model._local_step(model.data, params, resp=None, want_local=True)

    def sample_guide(self, params: Any, *args: Any) -> dict[str, Tensor]:
        """Sample every latent site from q, with the model's site names and plates."""
        local_q, resp = self.local_factors(params, *args)
        out: dict[str, Tensor] = {}
        info = {s.name: s for s in self.s.sites}
        cache: dict[str, Any] = {}
        for s in self.s.sites:
            if s.observed:
                continue
            with _plates(s, cache):
                if s.name == self.s.enum_site:
                    assert resp is not None
                    probs = resp.reshape(s.batch_shape + (resp.shape[-1],)) \
                        if s.batch_shape.numel() == resp.shape[0] else resp
                    out[s.name] = pyro.sample(s.name, dist.Categorical(probs=probs))
                    continue
                f = self.s.site_factor[s.name]
                q = local_q[f] if f in local_q else getattr(params, f)
                out[s.name] = pyro.sample(s.name, self._site_dist(s, q, out, info))
        return out

    def _site_dist(self, s: Any, q: ExpFamFactor, out: dict[str, Tensor], info: dict[str, Any]) -> Any:
        spec = self.s.factors[self.s.site_factor[s.name]]
        shape = s.batch_shape + s.event_shape
        if spec.kind in ("ng", "nw"):
            loc_site, prec_site = spec.sites
            if s.name == prec_site:
                if spec.kind == "ng":
                    return _gamma(q.concentration, q.rate, s)  # type: ignore[attr-defined]
                return _wishart(q.df, q.scale_tril)  # type: ignore[attr-defined]
            lam = out[prec_site]
            if spec.kind == "ng":
                prec = q.precision_scale * lam.reshape(q.loc.shape)  # type: ignore[attr-defined]
                return _event(dist.Normal(q.loc.reshape(shape),  # type: ignore[attr-defined]
                                          prec.rsqrt().reshape(shape)), s)
            beta = q.precision_scale  # type: ignore[attr-defined]
            return dist.MultivariateNormal(q.loc,  # type: ignore[attr-defined]
                                           precision_matrix=beta[..., None, None] * lam)
        return self.posterior_factor(spec, q, s)

    def posterior_factor(self, spec: FactorSpec, q: Any, s: Any) -> Any:
        """Q of one plain factor as a Pyro distribution with the site's batch/event shape."""
        if spec.kind == "gamma":
            return _gamma(q.concentration, q.rate, s)
        if spec.kind == "beta":
            return _event(dist.Beta(q.concentration1.reshape(s.batch_shape + s.event_shape),
                                    q.concentration0.reshape(s.batch_shape + s.event_shape)), s)
        if spec.kind == "dirichlet":
            return dist.Dirichlet(q.concentration)
        if spec.kind == "wishart":
            return _wishart(q.df, q.scale_tril)
        if spec.kind == "normal":
            return dist.Normal(q.loc, q.precision.rsqrt())
        return dist.MultivariateNormal(q.loc, scale_tril=_cov_tril(q))

    def posterior(self, params: Any, name: str, *args: Any) -> Any:
        """Q's marginal of latent site ``name`` as a torch distribution (see the module doc)."""
        if name not in self.s.site_factor and name != self.s.enum_site:
            latent = sorted(self.s.site_factor) + ([self.s.enum_site] if self.s.enum_site else [])
            raise ValueError(f"no latent site {name!r}; the latent sites are {latent}")
        info = {s.name: s for s in self.s.sites}[name]
        if name == self.s.enum_site:
            _, resp = self.local_factors(params, *args)
            return dist.Categorical(probs=resp)
        f = self.s.site_factor[name]
        spec = self.s.factors[f]
        if spec.local:
            local_q, _ = self.local_factors(params, *args)
            return self.posterior_factor(spec, local_q[f], info)
        q = getattr(params, f)
        if spec.kind == "ng":
            if name == spec.sites[1]:
                return _gamma(q.concentration, q.rate, info)
            scale = (q.rate / (q.concentration * q.precision_scale)).sqrt()
            return _event(dist.StudentT(2.0 * q.concentration, q.loc, scale), info)
        if spec.kind == "nw":
            if name == spec.sites[1]:
                return _wishart(q.df, q.scale_tril)
            d = q.loc.shape[-1]
            nu = q.df - d + 1.0
            prec = (nu * q.precision_scale)[..., None, None] * q.precision.scale
            return dist.MultivariateStudentT(nu, q.loc, torch.linalg.cholesky(torch.linalg.inv(prec)))
        return self.posterior_factor(spec, q, info)

    def guide_params(self, *args: Any) -> Any:
        """Trainable ``pyro.param`` sites ``"auto.<factor>.<param>"`` started at the prior."""
        prior = self._initial()
        out: dict[str, ExpFamFactor] = {}
        pos = constraints.positive
        for f in self._global:
            q = getattr(prior, f)
            n = f"{self.name}.{f}"
            kind = self.s.factors[f].kind
            if kind == "gamma":
                out[f] = Gamma(pyro.param(f"{n}.concentration", q.concentration.clone, constraint=pos),
                               pyro.param(f"{n}.rate", q.rate.clone, constraint=pos))
            elif kind == "beta":
                out[f] = Beta(pyro.param(f"{n}.concentration1", q.concentration1.clone, constraint=pos),
                              pyro.param(f"{n}.concentration0", q.concentration0.clone, constraint=pos))
            elif kind == "dirichlet":
                out[f] = Dirichlet(pyro.param(f"{n}.concentration", q.concentration.clone,
                                              constraint=pos))
            elif kind == "normal":
                out[f] = Normal(pyro.param(f"{n}.loc", q.loc.clone),
                                precision=pyro.param(f"{n}.precision", q.precision.clone,
                                                     constraint=pos))
            elif kind == "mvn":
                out[f] = MultivariateNormal(pyro.param(f"{n}.loc", q.loc.clone),
                                            pyro.param(f"{n}.precision_tril", q.precision_tril.clone,
                                                       constraint=constraints.lower_cholesky))
            elif kind == "wishart":
                d = q.scale_tril.shape[-1]
                out[f] = Wishart(pyro.param(f"{n}.scale_tril", q.scale_tril.clone,
                                            constraint=constraints.lower_cholesky),
                                 pyro.param(f"{n}.df", q.df.clone,
                                            constraint=constraints.greater_than(d - 1.0)))
            elif kind == "ng":
                out[f] = NormalGamma(pyro.param(f"{n}.loc", q.loc.clone),
                                     pyro.param(f"{n}.precision_scale", q.precision_scale.clone,
                                                constraint=pos),
                                     pyro.param(f"{n}.concentration", q.concentration.clone,
                                                constraint=pos),
                                     pyro.param(f"{n}.rate", q.rate.clone, constraint=pos))
            else:
                d = q.loc.shape[-1]
                out[f] = NormalWishart(pyro.param(f"{n}.loc", q.loc.clone),
                                       pyro.param(f"{n}.precision_scale", q.precision_scale.clone,
                                                  constraint=pos),
                                       pyro.param(f"{n}.scale_tril", q.scale_tril.clone,
                                                  constraint=constraints.lower_cholesky),
                                       pyro.param(f"{n}.df", q.df.clone,
                                                  constraint=constraints.greater_than(d - 1.0)))
        return self._record(out, -1)

    def summary_sites(self, params: Any, *data: Any) -> dict[str, Any]:
        """Every global latent site's factor (fused pairs split into their marginals)."""
        from pyro_vi.cavi.summary import loc_marginal

        out: dict[str, Any] = {}
        for f in self._global:
            q = getattr(params, f)
            spec = self.s.factors[f]
            if spec.kind in ("ng", "nw"):
                out[spec.sites[1]] = q.precision
                out[spec.sites[0]] = loc_marginal(q)
            else:
                out[f] = q
        return out


# ----------------------------------------------------------------------------- helpers
def _value_factor(term: TermSpec) -> str | None:
    return term.value.factor if isinstance(term.value, LatentValue) else None


#: Largest moment count of the smaller factor of a coupled pair whose cross-Jacobian the local
#: step returns (one extra backward pass per moment); larger pairs alternate sweeps instead.
MAX_CROSS = 256


def _flat(ts: Any) -> Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def _pairs(factors: list[str], s: Structure, touched: dict[str, set[int]],
           sizes: dict[str, int]) -> tuple[list[tuple[str, str]], set[frozenset[str]]]:
    """Data-coupled factor pairs: ``(later, earlier)`` with a cross-Jacobian, and the rest.

    Two global factors meeting in one data term are coupled. A pair gets an exact
    within-sweep correction when every shared term holds no third global factor (so the
    term is bilinear in the pair) and the smaller factor has at most :data:`MAX_CROSS`
    moments; other pairs are left to colouring.
    """
    data = set(s.data_terms)
    glob = set(factors)
    pairs, conflicts = [], set()
    for i, g in enumerate(factors):
        for f in factors[i + 1:]:
            shared = touched[f] & touched[g] & data
            if not shared:
                continue
            three = any(_trilinear(s.terms[t], glob) for t in shared)
            if three or min(sizes[f], sizes[g]) > MAX_CROSS:
                conflicts.add(frozenset((f, g)))
            else:
                pairs.append((f, g))
    return pairs, conflicts


def _trilinear(term: TermSpec, glob: set[str]) -> bool:
    r"""Whether a term holds a product of three global factors' moments.

    A Normal's term is :math:`E[\lambda]E[(x - \mathrm{loc})^2]`: with a latent precision and
    two or more global factors in the value and location, products of three appear; every
    other term is at most bilinear in its factors.
    """
    prec = term.slots.get("precision")
    if not isinstance(prec, PSlot) or prec.factor not in glob or term.joint is not None:
        return False
    others = {p.factor for sl in term.slots.values() if isinstance(sl, GSlot) for p in sl.parts}
    if isinstance(term.value, LatentValue):
        others.add(term.value.factor)
    return len((others & glob) - {prec.factor}) >= 2


def _cross(msgs: dict[str, list[Tensor]], leaves: dict[str, tuple[Tensor, ...]], later: str,
           earlier: str) -> Tensor:
    r""":math:`\partial\,\mathrm{msg}_{later} / \partial \mu_{earlier}`, flattened, by autograd."""
    m_l = _flat(msgs[later])
    m_e = _flat(msgs[earlier])
    rows: list[Tensor] = []
    if m_l.numel() <= m_e.numel():
        for i in range(m_l.numel()):
            g = torch.autograd.grad(m_l[i], leaves[earlier], retain_graph=True, allow_unused=True)
            rows.append(_flat([torch.zeros_like(x) if y is None else y
                               for x, y in zip(leaves[earlier], g, strict=True)]))
        return torch.stack(rows).detach()
    for j in range(m_e.numel()):
        g = torch.autograd.grad(m_e[j], leaves[later], retain_graph=True, allow_unused=True)
        rows.append(_flat([torch.zeros_like(x) if y is None else y
                           for x, y in zip(leaves[later], g, strict=True)]))
    return torch.stack(rows).T.detach()


def _colour(factors: list[str], conflicts: set[frozenset[str]]) -> dict[str, int]:
    """Greedy colouring: factors of a conflicting pair get different colours."""
    colour: dict[str, int] = {}
    for f in factors:
        taken = {colour[g] for g in colour if frozenset((f, g)) in conflicts}
        c = 0
        while c in taken:
            c += 1
        colour[f] = c
    return colour


class _PlateStack:
    """Enter a site's plates, each built once per guide call (``cache``: name -> plate)."""

    def __init__(self, site: Any, cache: dict[str, Any]) -> None:
        for p in site.plates:
            if p.name not in cache:
                cache[p.name] = pyro.plate(p.name, p.size, dim=p.dim)
        self.plates = [cache[p.name] for p in site.plates]

    def __enter__(self) -> None:
        for p in self.plates:
            p.__enter__()

    def __exit__(self, *exc: Any) -> None:
        for p in reversed(self.plates):
            p.__exit__(*exc)


def _plates(site: Any, cache: dict[str, Any]) -> _PlateStack:
    return _PlateStack(site, cache)


def _event(d: Any, s: Any) -> Any:
    return d.to_event(s.event_dims) if s.event_dims else d


def _gamma(conc: Tensor, rate: Tensor, s: Any) -> Any:
    shape = s.batch_shape + s.event_shape
    return _event(dist.Gamma(conc.reshape(shape), rate.reshape(shape)), s)


def _wishart(df: Tensor, tril: Tensor) -> Any:
    return BartlettWishart(df=df, scale_tril=tril)


def _cov_tril(q: MultivariateNormal) -> Tensor:
    return torch.linalg.cholesky(torch.cholesky_inverse(q.precision_tril))


def _float64(value: Any) -> Any:
    """Floating tensors and arrays as float64 tensors (CAVI's dtype); anything else as is."""
    if isinstance(value, Tensor):
        return value.to(torch.float64) if value.is_floating_point() else value
    if isinstance(value, np.ndarray):
        t = torch.as_tensor(value)
        return t.to(torch.float64) if t.is_floating_point() else t
    return value


def derive(model: Any, *args: Any, init: Any = None, joint: bool = True,
           **kwargs: Any) -> DerivedModel:
    """Detect the conjugate structure of ``model(*args, **kwargs)``; return its CAVI model.

    Raises :class:`~pyro_vi.errors.NotConjugateError` naming the latent, the child site and
    the slot when some latent has no closed-form update, before any fitting. Floating
    arguments (tensors, numpy arrays) are converted to float64 and the model is traced with
    float64 as torch's default dtype: a derived fit is float64 on the CPU.
    """
    if not isinstance(joint, bool):
        raise TypeError(f"joint must be a bool, got {type(joint).__name__}")
    args = tuple(_float64(a) for a in args)
    kwargs = {k: _float64(v) for k, v in kwargs.items()}
    structure = analyse(model, args, kwargs, joint=joint)
    return DerivedModel(model, args, kwargs, structure, init=init)

