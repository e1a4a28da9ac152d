r"""Expected log-densities of a model's terms under the mean-field q, from factors' moments.

Every sample site of the model is a **term** :math:`E_q[\log p(x_s \mid \mathrm{pa}(s))]`.
Under the mean field, and for the links that detection admits, it is a function of the
factors' expected sufficient statistics (their *moments*) that is linear in each factor's
moments separately. That is what variational message passing needs (Winn & Bishop 2005,
§3; Bishop 2006, §10.4.1): the natural parameters of the optimal factor :math:`q^*(\theta_j)`
are the gradient of the expected log-joint with respect to :math:`\theta_j`'s moments, so
:mod:`pyro_vi.cavi.auto.derive` gets every message by automatic differentiation of the
functions here. Every constant is kept: the sum of terms plus the factors' entropies is the
ELBO on Trace_ELBO's scale.

Moments (``stats[factor]``, in the order of :meth:`ExpFamFactor.expected_stats`):

======== =============================================
kind     moments
======== =============================================
gamma    :math:`(E\log\lambda, E\lambda)`
beta     :math:`(E\log p, E\log(1-p))`
dirichlet :math:`(E\log\pi,)`
normal   :math:`(E\theta, E\theta^2)`
mvn      :math:`(E\theta, E\theta\theta^T)`
wishart  :math:`(E\Lambda, E\log|\Lambda|)`
ng       :math:`(E\lambda\mu, E\lambda\mu^2, E\lambda, E\log\lambda)`
nw       :math:`(E\Lambda\mu, E\mu^T\Lambda\mu, E\Lambda, E\log|\Lambda|)`
======== =============================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pyro_vi.factors import log_wishart_normalizer

__all__ = ["ChoiceTerm", "GSlot", "KSlot", "LatentValue", "MixtureTerm", "ObsValue", "PSlot",
           "TermSpec", "choice_messages", "choice_term", "expected_log_prob", "mixture_messages",
           "mixture_term"]

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class KSlot:
    """A known slot: ``arrays[key]``."""

    key: str


@dataclass(frozen=True)
class PSlot:
    """``coef * theta[idx]`` of factor ``factor`` read through ``view`` (see module doc)."""

    factor: str
    view: str
    idx: str | None
    coef: str


@dataclass(frozen=True)
class GPart:
    """``A @ theta[idx]`` of a Gaussian factor (``idx`` None: aligned with the slot)."""

    factor: str
    view: str
    idx: str | None
    a: str


@dataclass(frozen=True)
class GSlot:
    """``b + sum(parts) [+ theta_u^T B theta_v]``: an affine (or bilinear) location.

    ``bilinear`` is ``(u, v, key of B)`` with part indices ``u``, ``v`` (see
    :class:`pyro_vi.cavi.auto.links.Affine`).
    """

    b: str
    parts: tuple[GPart, ...]
    bilinear: tuple[int, int, str] | None = None


@dataclass(frozen=True)
class ObsValue:
    """The site's value is data (or the enumerated values of a discrete latent)."""

    key: str


@dataclass(frozen=True)
class LatentValue:
    """The site's value is a latent factor, read through ``view``."""

    factor: str
    view: str


Slot = KSlot | PSlot | GSlot


@dataclass(frozen=True)
class TermSpec:
    """One term: the site, its family, value and slots; ``event_dims`` summed at the end.

    ``joint`` names the Normal-Gamma/Normal-Wishart factor when the term's location and
    precision both come from it (the joint formula applies).
    """

    site: str
    family: str
    value: ObsValue | LatentValue
    slots: dict[str, Slot]
    event_dims: int
    joint: str | None = None


def _gather(t: Tensor, n_event: int, idx: Tensor | None, shape: torch.Size) -> Tensor:
    """``t`` (factor shape + event) flattened and gathered at ``idx``; aligned if idx None."""
    if idx is None:
        return t
    flat = t.reshape((-1,) + t.shape[t.dim() - n_event:])
    return flat[idx]


class Ctx:
    """What a term evaluation reads: arrays (data and links) and factor moments."""

    def __init__(self, arrays: dict[str, Tensor], stats: dict[str, tuple[Tensor, ...]],
                 origins: dict[str, Tensor] | None = None) -> None:
        self.arrays = arrays
        self.stats = stats
        #: factor -> the point its location coordinates are centred on: ``stats`` of such a
        #: factor are moments of ``theta - origin``
        self.origins = origins or {}

    def origin(self, factor: str, n_event: int, idx: str | None) -> Tensor | None:
        """The factor's origin gathered like :meth:`stat` (None: not centred)."""
        t = self.origins.get(factor)
        if t is None:
            return None
        if n_event and t.reshape((-1,) + t.shape[t.dim() - n_event:]).shape[0] == 1:
            return t.reshape(t.shape[t.dim() - n_event:])  # one origin for every element
        return _gather(t, n_event, None if idx is None else self.arrays[idx], t.shape)

    def arr(self, key: str) -> Tensor:
        return self.arrays[key]

    def stat(self, factor: str, i: int, n_event: int, idx: str | None) -> Tensor:
        t = self.stats[factor][i]
        return _gather(t, n_event, None if idx is None else self.arrays[idx], t.shape)


# --------------------------------------------------------------------------- slot moments
def _positive(ctx: Ctx, slot: Slot, matrix: bool) -> tuple[Tensor, Tensor]:
    """``(E[slot], E[log slot])`` (matrix: ``(E[slot], E[log|slot|])``)."""
    if isinstance(slot, KSlot):
        v = ctx.arr(slot.key)
        if matrix:
            return v, torch.logdet(v)
        return v, torch.log(v)
    assert isinstance(slot, PSlot)
    coef = ctx.arr(slot.coef)
    if slot.view in ("gamma", "wishart"):
        i_mean, i_log = (1, 0) if slot.view == "gamma" else (0, 1)
    else:  # ng / nw precision views
        i_mean, i_log = 2, 3
    n_ev = 2 if matrix else 0
    mean = ctx.stat(slot.factor, i_mean, n_ev, slot.idx)
    log = ctx.stat(slot.factor, i_log, 0, slot.idx)
    if matrix:
        d = mean.shape[-1]
        return coef[..., None, None] * mean, log + d * torch.log(coef)
    return coef * mean, log + torch.log(coef)


def _probs(ctx: Ctx, slot: Slot) -> tuple[Tensor, Tensor | None]:
    """Beta: ``(E log p, E log(1-p))``; Dirichlet: ``(E log pi, None)``; known: ``(p, None)``."""
    if isinstance(slot, KSlot):
        return ctx.arr(slot.key), None
    assert isinstance(slot, PSlot)
    if slot.view == "beta":
        return ctx.stat(slot.factor, 0, 0, slot.idx), ctx.stat(slot.factor, 1, 0, slot.idx)
    return ctx.stat(slot.factor, 0, 1, slot.idx), None


def _part_moments(ctx: Ctx, p: GPart) -> tuple[Tensor, Tensor]:
    """``(m, M)`` of a part's latent, gathered per slot element: ``(..., d)``, ``(..., d, d)``."""
    if p.view == "normal":
        m = ctx.stat(p.factor, 0, 0, p.idx).unsqueeze(-1)
        s = ctx.stat(p.factor, 1, 0, p.idx).unsqueeze(-1).unsqueeze(-1)
    else:
        m = ctx.stat(p.factor, 0, 1, p.idx)
        s = ctx.stat(p.factor, 1, 2, p.idx)
    return m, s


def _gauss_parts(ctx: Ctx, slot: GSlot, vec: bool) -> tuple[Tensor, Tensor]:
    r"""``(E[loc], Var[loc])``; vector slots give ``(E, Cov)`` with trailing ``(D,)``/``(D, D)``.

    With a bilinear pair :math:`L = a_u^T\theta_u + a_v^T\theta_v + \theta_u^T B\theta_v`
    (independent factors, moments :math:`m, M`):

    .. math::
        E[L^2] = a_u^T M_u a_u + a_v^T M_v a_v + \mathrm{tr}(B^T M_u B M_v)
            + 2(a_u^T m_u)(a_v^T m_v) + 2a_u^T M_u B m_v + 2 m_u^T B M_v a_v .
    """
    mean = ctx.arr(slot.b)
    var: Tensor | int = 0
    pair = () if slot.bilinear is None else slot.bilinear[:2]
    for j, p in enumerate(slot.parts):
        if j in pair:
            continue
        a = ctx.arr(p.a)
        m, s = _part_moments(ctx, p)
        cov = s - m.unsqueeze(-1) * m.unsqueeze(-2)
        c = ctx.origin(p.factor, 0 if p.view == "normal" else 1, p.idx)
        if c is not None:  # centred moments: the origin's share joins the offset first
            c = c.unsqueeze(-1) if p.view == "normal" else c
            mean = mean + ((a @ c.unsqueeze(-1)).squeeze(-1) if vec else (a * c).sum(-1))
        if vec:
            mean = mean + (a @ m.unsqueeze(-1)).squeeze(-1)
            var = var + a @ cov @ a.transpose(-1, -2)
        else:
            mean = mean + (a * m).sum(-1)
            var = var + ((a.unsqueeze(-1) * cov).sum(-2) * a).sum(-1)
    if slot.bilinear is not None:
        u, v, key = slot.bilinear
        b = ctx.arr(key)
        au, av = ctx.arr(slot.parts[u].a), ctx.arr(slot.parts[v].a)
        mu, su = _part_moments(ctx, slot.parts[u])
        mv, sv = _part_moments(ctx, slot.parts[v])
        bm_v = (b * mv.unsqueeze(-2)).sum(-1)          # B m_v, (..., d_u)
        el = (au * mu).sum(-1) + (av * mv).sum(-1) + (mu * bm_v).sum(-1)
        quad_u = ((au.unsqueeze(-1) * su).sum(-2) * au).sum(-1)
        quad_v = ((av.unsqueeze(-1) * sv).sum(-2) * av).sum(-1)
        btmub = b.transpose(-1, -2) @ su @ b          # B^T M_u B, (..., d_v, d_v)
        trace = (btmub * sv.transpose(-1, -2)).sum((-1, -2))
        cross = 2.0 * (au * mu).sum(-1) * (av * mv).sum(-1)
        mixed_u = 2.0 * ((au.unsqueeze(-1) * su).sum(-2) * bm_v).sum(-1)
        b_sv_av = (b * (sv @ av.unsqueeze(-1)).squeeze(-1).unsqueeze(-2)).sum(-1)
        mixed_v = 2.0 * (mu * b_sv_av).sum(-1)
        el2 = quad_u + quad_v + trace + cross + mixed_u + mixed_v
        mean = mean + el
        var = var + el2 - el * el
    if isinstance(var, int):
        var = torch.zeros_like(mean)
        if vec:
            var = torch.zeros(mean.shape + mean.shape[-1:], dtype=mean.dtype, device=mean.device)
    return mean, var


def _gauss_value(ctx: Ctx, value: ObsValue | LatentValue, vec: bool) -> tuple[Tensor, Tensor | None]:
    """``(E[x], Var[x] or Cov[x])`` of a Normal/MVN site's value (None: observed)."""
    if isinstance(value, ObsValue):
        return ctx.arr(value.key), None
    t0, t1 = ctx.stats[value.factor][0], ctx.stats[value.factor][1]
    c = ctx.origins.get(value.factor)
    if value.view == "normal":
        return (t0 if c is None else c + t0), t1 - t0 * t0
    cov = t1 - t0.unsqueeze(-1) * t0.unsqueeze(-2)
    mean = t0 if c is None else c + t0
    if vec:
        return mean, cov
    return mean, torch.diagonal(cov, dim1=-2, dim2=-1)


#: From this dimension on, a mixture's quadratic forms go through quadratic features (see
#: :func:`quad`). Measured here (1 thread, N=1e5, float64, autograd messages, 1024-row chunks):
#: the one ``(N, D) @ (D, K D)`` product beat the features at D=8, K=8 (0.064 s against
#: 0.065 s per sweep) and at D=32, K=16 (0.33 s against 0.51 s; a fresh feature buffer per
#: chunk costs its page faults), so the features are kept for larger D only.
VECH_MIN_D = 64


def _layout(yb: torch.Size, pb: torch.Size) -> tuple[list[int], list[int], list[int]]:
    """Split broadcast batch dims into shared, ``y``-only (rows) and ``p``-only (columns)."""
    shared, rows, cols = [], [], []
    for i, (a, b) in enumerate(zip(yb, pb, strict=True)):
        if a > 1 and b == 1:
            rows.append(i)
        elif b > 1 and a == 1:
            cols.append(i)
        else:
            shared.append(i)
    return shared, rows, cols


def _features(y: Tensor, linear: bool, buffer: Tensor | None = None) -> Tensor:
    """``vech(y y^T)`` (upper triangle, row-major, as ``torch.triu_indices``) [and ``y``].

    Built by one product per row of the triangle into one buffer (``buffer`` when it has the
    right shape: reusing one saves a fresh multi-MB allocation's page faults per chunk): no
    gather, no concatenation.
    """
    d = y.shape[-1]
    q = d * (d + 1) // 2
    shape = y.shape[:-1] + (q + (d if linear else 0),)
    out = buffer if buffer is not None and buffer.shape == shape and buffer.dtype == y.dtype \
        else torch.empty(shape, dtype=y.dtype, device=y.device)
    o = 0
    for i in range(d):
        torch.mul(y[..., i:], y[..., i:i + 1], out=out[..., o:o + d - i])
        o += d - i
    if linear:
        out[..., q:] = y
    return out


def _pad(t: Tensor, nb: int, event: int) -> Tensor:
    return t.reshape((1,) * (nb - (t.dim() - event)) + t.shape)


def _contract(y: Tensor, p: Tensor, v: Tensor | None = None) -> Tensor:
    r""":math:`y^T P y` [:math:`+ y^T v`] over broadcast batch dims, as GEMMs.

    The batch dims along which only ``y`` varies (data points) become matrix rows and those
    along which only ``p`` varies (mixture components) matrix columns, so a mixture's
    :math:`(x_n - b)^T \Lambda_k (x_n - b)` for every ``n, k`` is one ``(N, D) @ (D, K D)``
    product (and its gradient another), not ``K`` small ones or an ``(N, K, D, D)`` expansion.
    With ``v``, :math:`y^T P y + y^T v` in the same product.
    """
    ev = 2
    nb = max(y.dim() - 1, p.dim() - ev)
    y, p = _pad(y, nb, 1), _pad(p, nb, ev)
    shared, rows, cols = _layout(y.shape[:nb], p.shape[:nb])
    d = y.shape[-1]
    sh = [max(y.shape[i], p.shape[i]) for i in shared]
    r = [y.shape[i] for i in rows]
    c = [p.shape[i] for i in cols]
    ns, nr, nc = math.prod(sh), math.prod(r), math.prod(c)
    yy = y.permute(*shared, *rows, *cols, nb).expand(*sh, *r, *([1] * len(cols)), d)
    yy = yy.reshape(ns, nr, d)
    lin = None
    if v is not None:
        v = _pad(v, nb, 1)
        lin = v.permute(*shared, *cols, *rows, nb).expand(*sh, *c, *([1] * len(rows)), d)
        lin = lin.reshape(ns, nc, d)
    pp = p.permute(*shared, *cols, *rows, nb, nb + 1).expand(*sh, *c, *([1] * len(rows)), d, d)
    pp = pp.reshape(ns, nc, d, d)
    if d >= VECH_MIN_D and nc > 1:
        # quadratic features: y^T P y = <vech(y y^T), vech(P + P^T - diag P)>, one GEMM of
        # D(D+1)/2 columns instead of D^2 (half the work; the gradient is another), with
        # the linear term's y as D more columns
        iu, ju = torch.triu_indices(d, d, device=y.device)
        feats = _features(yy, lin is not None)                              # (S, R, M[+D])
        pv = pp[..., iu, ju] + pp[..., ju, iu] * (iu != ju).to(pp.dtype)    # (S, C, M)
        if lin is not None:
            pv = torch.cat([pv, lin], -1)
        out = feats @ pv.transpose(-1, -2)
        lin = None
    else:
        z = yy @ pp.permute(0, 2, 1, 3).reshape(ns, d, nc * d)      # (S, R, C*D)
        out = (z.reshape(ns, nr, nc, d) * yy.unsqueeze(2)).sum(-1)  # (S, R, C)
    if lin is not None:
        out = out + yy @ lin.transpose(-1, -2)
    out = out.reshape(tuple(sh + r + c))
    if nb == 0:
        return out
    order = shared + rows + cols
    inv = [order.index(i) for i in range(nb)]
    return out.permute(*inv)


def quad(y: Tensor, p: Tensor) -> Tensor:
    r""":math:`y^T P y` over broadcast batch dims (``y``: ``(..., D)``, ``p``: ``(..., D, D)``)."""
    return _contract(y, p)


def quad_lin(y: Tensor, p: Tensor, v: Tensor) -> Tensor:
    r""":math:`y^T P y + y^T v` over broadcast batch dims (one product; see :func:`quad`)."""
    return _contract(y, p, v)


# --------------------------------------------------------------------------- the families
def _normal(ctx: Ctx, term: TermSpec) -> Tensor:
    loc, prec = term.slots["loc"], term.slots["precision"]
    if term.joint is not None:
        return _normal_joint(ctx, term, vec=False)
    e_prec, e_logprec = _positive(ctx, prec, matrix=False)
    assert isinstance(loc, KSlot | GSlot)
    if isinstance(loc, KSlot):
        m_loc, v_loc = ctx.arr(loc.key), None
    else:
        m_loc, v_loc = _gauss_parts(ctx, loc, vec=False)
    x, v_x = _gauss_value(ctx, term.value, vec=False)
    sq = (x - m_loc).square()
    if v_loc is not None:
        sq = sq + v_loc
    if v_x is not None:
        sq = sq + v_x
    return 0.5 * (e_logprec - _LOG_2PI) - 0.5 * e_prec * sq


def _mvn(ctx: Ctx, term: TermSpec) -> Tensor:
    if term.joint is not None:
        return _normal_joint(ctx, term, vec=True)
    loc, prec = term.slots["loc"], term.slots["precision"]
    e_p, e_logdet = _positive(ctx, prec, matrix=True)
    if isinstance(loc, KSlot):
        m_loc, c_loc = ctx.arr(loc.key), None
    else:
        assert isinstance(loc, GSlot)
        m_loc, c_loc = _gauss_parts(ctx, loc, vec=True)
    x, c_x = _gauss_value(ctx, term.value, vec=True)
    d = x.shape[-1]
    out = 0.5 * (e_logdet - d * _LOG_2PI) - 0.5 * quad(x - m_loc, e_p)
    for c in (c_loc, c_x):
        if c is not None:
            out = out - 0.5 * (e_p * c).sum((-1, -2))
    return out


def _normal_joint(ctx: Ctx, term: TermSpec, *, vec: bool) -> Tensor:
    r"""A Normal/MVN term whose location and precision are one Normal-Gamma/-Wishart factor.

    With ``loc = b + a mu[idx]``, ``precision = c lambda[idx]`` (observed ``x``, ``y = x - b``):

    .. math::
        \tfrac12(D\log c + E\log|\Lambda| - D\log 2\pi)
        - \tfrac c2\big(y^T E[\Lambda] y - 2a\,y^T E[\Lambda\mu] + a^2 E[\mu^T\Lambda\mu]\big);

    for the prior of ``mu`` itself (``x = mu``, ``loc = b``) the same with the roles swapped:
    :math:`E[\mu^T\Lambda\mu] - 2b^T E[\Lambda\mu] + b^T E[\Lambda] b`.
    """
    prec = term.slots["precision"]
    assert isinstance(prec, PSlot)
    f, idx = prec.factor, prec.idx
    n1 = 1 if vec else 0
    e_lmu = ctx.stat(f, 0, n1, idx)
    e_mulmu = ctx.stat(f, 1, 0, idx)
    e_l = ctx.stat(f, 2, 2 if vec else 0, idx)
    e_log = ctx.stat(f, 3, 0, idx)
    c = ctx.arr(prec.coef)
    d = e_lmu.shape[-1] if vec else 1
    head = 0.5 * (d * torch.log(c) + e_log - d * _LOG_2PI)
    loc = term.slots["loc"]
    if isinstance(term.value, LatentValue):  # the prior of mu: x = mu, loc known
        assert isinstance(loc, KSlot)
        b = ctx.arr(loc.key)
        org = ctx.origin(f, n1, idx)
        if org is not None:  # mu = origin + mu': the prior's offset in centred coordinates
            b = b - org
        if vec:
            inner = e_mulmu - 2.0 * (b * e_lmu).sum(-1) + quad(b, e_l)
        else:
            inner = e_mulmu - 2.0 * b * e_lmu + b * b * e_l
        return head - 0.5 * c * inner
    assert isinstance(loc, GSlot)
    assert len(loc.parts) == 1
    part = loc.parts[0]
    a = ctx.arr(part.a)
    a = a[..., 0, 0] if vec else a[..., 0]
    off = ctx.arr(loc.b)
    org = ctx.origin(f, n1, part.idx)
    if org is not None:  # loc = b + a (origin + mu'): y = x - b - a origin, then the formula
        off = off + (a.unsqueeze(-1) * org if vec else a * org)
    y = ctx.arr(term.value.key) - off
    if vec:
        inner = quad_lin(y, e_l, -2.0 * a.unsqueeze(-1) * e_lmu) + a * a * e_mulmu
    else:
        inner = e_l * y * y - 2.0 * a * y * e_lmu + a * a * e_mulmu
    return head - 0.5 * c * inner


@dataclass(frozen=True)
class MixtureTerm:
    """A component-selected Normal-Wishart term evaluated for messages without autograd.

    ``logits`` is ``(K, n)``: the term for each point and component; ``features`` the
    points' ``(vech(y y^T), y)``; ``factor``, ``idx`` (``(K,)``: component -> factor element),
    ``c``, ``a`` the link's constants (see :func:`_normal_joint`).
    """

    logits: Tensor
    features: Tensor
    factor: str
    idx: Tensor
    c: float
    a: float
    d: int


def mixture_term(ctx: Ctx, term: TermSpec, buffer: Tensor | None = None) -> MixtureTerm | None:
    r"""The GMM's term :math:`E\log N(x_n|\mu_k,\Lambda_k^{-1})` for all ``n, k`` as one product.

    With :math:`y_n = x_n - b` (centred), the term is
    :math:`\phi_n^T g_k + c_k` for features :math:`\phi_n = (\mathrm{vech}(y_ny_n^T), y_n)`
    and coefficients from the Normal-Wishart moments (:func:`_normal_joint`'s formula), so
    the messages are :math:`R^T\Phi` (Bishop 2006, eqs. 10.51–10.53's statistics), one more
    product: what autograd would compute, without its graph. None when the term is not of
    this form (one component index per enumerated value, scalar constants, an offset that
    does not depend on the component, data ``(n, D)``).
    """
    if term.joint is None or term.family != "MultivariateNormal" \
            or not isinstance(term.value, ObsValue):
        return None
    prec, loc = term.slots["precision"], term.slots["loc"]
    if not isinstance(prec, PSlot) or not isinstance(loc, GSlot) or prec.idx is None:
        return None
    idx = ctx.arrays[prec.idx]
    coef = ctx.arr(prec.coef)
    a_arr = ctx.arr(loc.parts[0].a)
    off = ctx.arr(loc.b)
    x = ctx.arr(term.value.key)
    if idx.dim() != 2 or idx.shape[1] != 1 or coef.numel() != 1 or a_arr[..., 0, 0].numel() != 1 \
            or x.dim() != 2 or off.dim() != 3 or off.shape[0] != 1:
        return None
    c, a = float(coef.reshape(())), float(a_arr[..., 0, 0].reshape(()))
    org = ctx.origin(prec.factor, 1, loc.parts[0].idx)
    if org is not None:
        if org.dim() != 1:
            return None
        off = off + a * org
    y = x - off[0]
    k = idx[:, 0]
    f = prec.factor
    st = [t.detach().reshape((-1,) + t.shape[t.dim() - e:] if e else (-1,))[k]
          for t, e in zip(ctx.stats[f], (1, 0, 2, 0), strict=True)]
    e_lmu, e_mulmu, e_l, e_log = st
    d = x.shape[-1]
    iu, ju = torch.triu_indices(d, d, device=x.device)
    quad_w = e_l[:, iu, ju] * torch.where(iu == ju, 1.0, 2.0).to(e_l)    # (K, M)
    g = torch.cat([-0.5 * c * quad_w, (c * a) * e_lmu], -1)                # (K, M + D)
    const = 0.5 * (d * math.log(c) + e_log - d * _LOG_2PI) - 0.5 * c * a * a * e_mulmu
    feats = _features(y, True, buffer)                                     # (n, M + D)
    # (K, M+D) times the transposed features: the wide (K, n) product runs about twice as
    # fast as (n, M+D)(M+D, K) with its K-column output (measured for the GMM's own path)
    logits = torch.addmm(const.unsqueeze(-1), g.contiguous(), feats.T)      # (K, n)
    return MixtureTerm(logits, feats, f, k, c, a, d)


@dataclass(frozen=True)
class ChoiceTerm:
    r"""The enumerated latent's own term :math:`E_q[\log \pi_k]`, for messages without autograd.

    ``logits`` is ``(K, 1)``; its message to the Dirichlet's :math:`E\log\pi` is
    :math:`\sum_n r_{nk}` (Bishop 2006, eq. 10.58's count).
    """

    logits: Tensor
    factor: str
    element: int


def choice_term(ctx: Ctx, term: TermSpec, enum_size: int) -> ChoiceTerm | None:
    """The :class:`ChoiceTerm` of a ``Categorical(probs=pi)`` site with one Dirichlet ``pi``."""
    if term.family != "Categorical" or not isinstance(term.value, ObsValue):
        return None
    slot = term.slots["probs"]
    if not isinstance(slot, PSlot) or slot.view != "dirichlet" or slot.idx is None:
        return None
    idx = ctx.arrays[slot.idx]
    k = ctx.arr(term.value.key)
    if idx.numel() != 1 or k.numel() != enum_size or k.shape[0] != enum_size:
        return None
    e = int(idx.reshape(-1)[0])
    elog = ctx.stats[slot.factor][0].detach().reshape(-1, enum_size)[e]
    return ChoiceTerm(elog[k.reshape(-1).long()].unsqueeze(-1), slot.factor, e)


def choice_messages(term: ChoiceTerm, r: Tensor, shape: torch.Size) -> Tensor:
    """Message of a :class:`ChoiceTerm` to its Dirichlet's ``E log pi``, given ``r``."""
    out = torch.zeros(shape, dtype=r.dtype, device=r.device).reshape(-1, r.shape[0])
    out[term.element] = r.sum(1)
    return out.reshape(shape)


def mixture_messages(term: MixtureTerm, r: Tensor, shapes: tuple[torch.Size, ...]
                     ) -> tuple[Tensor, ...]:
    """Messages of a :class:`MixtureTerm` to its factor's moments, given ``r`` ``(K, n)``."""
    d, c, a = term.d, term.c, term.a
    s = r @ term.features                                # (K, M + D): R^T Phi
    nk = r.sum(1)
    q = d * (d + 1) // 2
    iu, ju = torch.triu_indices(d, d, device=r.device)
    syy = torch.zeros(r.shape[0], d, d, dtype=r.dtype, device=r.device)
    syy[:, iu, ju] = s[:, :q]
    syy[:, ju, iu] = s[:, :q]
    per_k = ((c * a) * s[:, q:], -0.5 * c * a * a * nk, -0.5 * c * syy, 0.5 * nk)
    out = []
    for g, shape in zip(per_k, shapes, strict=True):
        flat = torch.zeros((shape.numel() // max(1, g[0].numel()),) + g.shape[1:], dtype=g.dtype,
                           device=g.device)
        out.append(flat.index_add_(0, term.idx, g).reshape(shape))
    return tuple(out)


def _positive_value(ctx: Ctx, value: ObsValue | LatentValue) -> tuple[Tensor, Tensor]:
    """``(E[x], E[log x])`` of a Gamma site's value."""
    if isinstance(value, ObsValue):
        x = ctx.arr(value.key)
        return x, torch.log(x)
    s = ctx.stats[value.factor]
    if value.view == "gamma":
        return s[1], s[0]
    return s[2], s[3]  # ng precision view


def _gamma(ctx: Ctx, term: TermSpec) -> Tensor:
    alpha = ctx.arr(_known(term, "concentration"))
    e_rate, e_lograte = _positive(ctx, term.slots["rate"], matrix=False)
    ex, elogx = _positive_value(ctx, term.value)
    return (alpha * e_lograte - torch.lgamma(alpha) + (alpha - 1.0) * elogx - e_rate * ex)


def _poisson(ctx: Ctx, term: TermSpec) -> Tensor:
    x = _obs(ctx, term)
    slot = term.slots["rate"]
    e_rate, e_lograte = _positive(ctx, slot, matrix=False)
    if isinstance(slot, KSlot):
        return torch.xlogy(x, e_rate) - e_rate - torch.lgamma(x + 1.0)
    return x * e_lograte - e_rate - torch.lgamma(x + 1.0)


def _exponential(ctx: Ctx, term: TermSpec) -> Tensor:
    x = _obs(ctx, term)
    e_rate, e_lograte = _positive(ctx, term.slots["rate"], matrix=False)
    return e_lograte - e_rate * x


def _bernoulli_like(ctx: Ctx, term: TermSpec) -> Tensor:
    x = _obs(ctx, term)
    slot = term.slots["probs"]
    a, b = _probs(ctx, slot)
    fam = term.family
    const: Tensor | float
    if fam == "Bernoulli":
        success, failure, const = x, 1.0 - x, 0.0
    elif fam == "Geometric":
        success, failure, const = torch.ones_like(x), x, 0.0
    else:  # Binomial
        n = ctx.arr(_known(term, "total_count"))
        success, failure = x, n - x
        const = torch.lgamma(n + 1.0) - torch.lgamma(x + 1.0) - torch.lgamma(n - x + 1.0)
    if b is None:  # known probabilities
        return const + torch.xlogy(success, a) + torch.xlogy(failure, 1.0 - a)
    return const + success * a + failure * b


def _categorical(ctx: Ctx, term: TermSpec) -> Tensor:
    k = _obs(ctx, term).long()
    slot = term.slots["probs"]
    logp, _ = _probs(ctx, slot)
    if isinstance(slot, KSlot):
        logp = torch.log(logp)
    shape = torch.broadcast_shapes(logp.shape[:-1], k.shape)
    return logp.expand(shape + logp.shape[-1:]).gather(-1, k.expand(shape).unsqueeze(-1)).squeeze(-1)


def _multinomial(ctx: Ctx, term: TermSpec) -> Tensor:
    x = _obs(ctx, term)
    n = ctx.arr(_known(term, "total_count"))
    slot = term.slots["probs"]
    logp, _ = _probs(ctx, slot)
    const = torch.lgamma(n + 1.0) - torch.lgamma(x + 1.0).sum(-1)
    if isinstance(slot, KSlot):
        return const + torch.xlogy(x, logp).sum(-1)
    return const + (x * logp).sum(-1)


def _beta(ctx: Ctx, term: TermSpec) -> Tensor:
    a = ctx.arr(_known(term, "concentration1"))
    b = ctx.arr(_known(term, "concentration0"))
    lognorm = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
    if isinstance(term.value, ObsValue):
        x = ctx.arr(term.value.key)
        return (a - 1.0) * torch.log(x) + (b - 1.0) * torch.log1p(-x) - lognorm
    s = ctx.stats[term.value.factor]
    return (a - 1.0) * s[0] + (b - 1.0) * s[1] - lognorm


def _dirichlet(ctx: Ctx, term: TermSpec) -> Tensor:
    alpha = ctx.arr(_known(term, "concentration"))
    lognorm = torch.lgamma(alpha).sum(-1) - torch.lgamma(alpha.sum(-1))
    if isinstance(term.value, ObsValue):
        logx = torch.log(ctx.arr(term.value.key))
    else:
        logx = ctx.stats[term.value.factor][0]
    return ((alpha - 1.0) * logx).sum(-1) - lognorm


def _wishart(ctx: Ctx, term: TermSpec) -> Tensor:
    df = ctx.arr(_known(term, "df"))
    tril = ctx.arr(_known(term, "scale_tril"))
    d = tril.shape[-1]
    if isinstance(term.value, ObsValue):
        lam = ctx.arr(term.value.key)
        e_l, e_logdet = lam, torch.logdet(lam)
    else:
        s = ctx.stats[term.value.factor]
        e_l, e_logdet = (s[0], s[1]) if term.value.view == "wishart" else (s[2], s[3])
    v_inv = torch.cholesky_inverse(tril)
    return (0.5 * (df - d - 1.0) * e_logdet - 0.5 * (v_inv * e_l).sum((-1, -2))
            - log_wishart_normalizer(tril, df))


def _known(term: TermSpec, slot: str) -> str:
    s = term.slots[slot]
    assert isinstance(s, KSlot), (term.site, slot)
    return s.key


def _obs(ctx: Ctx, term: TermSpec) -> Tensor:
    assert isinstance(term.value, ObsValue), term.site
    return ctx.arr(term.value.key)


def _unit(ctx: Ctx, term: TermSpec) -> Tensor:
    return ctx.arr(_known(term, "log_factor"))


_HANDLERS: dict[str, Any] = {
    "Unit": _unit,
    "Normal": _normal, "MultivariateNormal": _mvn, "Gamma": _gamma, "Poisson": _poisson,
    "Exponential": _exponential, "Bernoulli": _bernoulli_like, "Binomial": _bernoulli_like,
    "Geometric": _bernoulli_like, "Categorical": _categorical, "Multinomial": _multinomial,
    "Beta": _beta, "Dirichlet": _dirichlet, "Wishart": _wishart,
}


def expected_log_prob(ctx: Ctx, term: TermSpec) -> Tensor:
    r""":math:`E_q[\log p(x_s|\mathrm{pa}(s))]` per batch element of the site (event summed)."""
    out = _HANDLERS[term.family](ctx, term)
    if term.event_dims:
        out = out.sum(tuple(range(-term.event_dims, 0)))
    return out
