"""Plain Pyro models for the automatic-CAVI tests, and independent CAVI references for them.

The models are written the way a user writes them (no :class:`~pyro_vi.ConjugateModel`); the
references are numpy/scipy coordinate-ascent loops with the textbook updates (Bishop 2006,
§10.1-10.2; Blei et al. 2017, §4), written here and sharing no code with the library. Every
reference starts from a stated point, runs to ``tol`` (relative ELBO change) and returns its
factors and ELBO on the library's scale: every constant kept, as Pyro's ``Trace_ELBO`` has it.

All priors are float64 tensors, so nothing depends on torch's default dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex
from scipy.special import digamma, gammaln, logsumexp

F64 = torch.float64
LOG_2PI = math.log(2.0 * math.pi)


def t64(x: Any) -> torch.Tensor:
    return torch.as_tensor(x, dtype=F64)


# ---------------------------------------------------------------------------- closed-form KLs
def kl_gamma(a: Any, b: Any, a0: Any, b0: Any) -> np.ndarray:
    """KL(Gam(a, b) || Gam(a0, b0)), rate parameterisation (elementwise)."""
    return ((a - a0) * digamma(a) - gammaln(a) + gammaln(a0) + a0 * (np.log(b) - np.log(b0))
            + a * (b0 - b) / b)


def kl_dirichlet(al: np.ndarray, al0: np.ndarray) -> np.ndarray:
    """KL(Dir(al) || Dir(al0)) over the last axis."""
    s, s0 = al.sum(-1), al0.sum(-1)
    return (gammaln(s) - gammaln(al).sum(-1) - gammaln(s0) + gammaln(al0).sum(-1)
            + ((al - al0) * (digamma(al) - digamma(s)[..., None])).sum(-1))


def kl_beta(a: Any, b: Any, a0: Any, b0: Any) -> np.ndarray:
    a, b, a0, b0 = np.broadcast_arrays(*(np.asarray(v, float) for v in (a, b, a0, b0)))
    return kl_dirichlet(np.stack([a, b], -1), np.stack([a0, b0], -1))


def kl_normal(m: Any, v: Any, m0: Any, v0: Any) -> np.ndarray:
    """KL(N(m, v) || N(m0, v0)), variances."""
    return 0.5 * (np.log(v0 / v) + (v + (m - m0) ** 2) / v0 - 1.0)


@dataclass
class RefFit:
    """A reference fit: its factors by site name, ELBO, ELBO history, and sweeps run."""

    factors: dict[str, Any]
    elbo: float
    history: list[float] = field(default_factory=list)
    n_steps: int = 0


def _converged(history: list[float], tol: float) -> bool:
    return len(history) >= 2 and abs(history[-1] - history[-2]) < tol * max(abs(history[-1]), 1.0)


# ---------------------------------------------------------------------------- mixture of Poissons
def poisson_mixture(x: torch.Tensor, n_components: int, alpha0: float = 0.5, a0: float = 2.0,
                    b0: float = 0.5) -> None:
    r"""Mixture of Poissons: :math:`\pi\sim\mathrm{Dir}(\alpha_0)`, :math:`\lambda_k\sim\mathrm{Gam}(a_0,b_0)`,
    :math:`x_n\sim\mathrm{Poi}(\lambda_{z_n})`.
    """
    weights = pyro.sample("weights", dist.Dirichlet(torch.full((n_components,), alpha0, dtype=F64)))
    with pyro.plate("components", n_components):
        rate = pyro.sample("rate", dist.Gamma(t64(a0), t64(b0)))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("x", dist.Poisson(rate[z]), obs=x)


def poisson_mixture_vindex(x: torch.Tensor, n_components: int, alpha0: float = 0.5, a0: float = 2.0,
                           b0: float = 0.5) -> None:
    """:func:`poisson_mixture` with ``Vindex`` selection, which broadcasts over particle plates."""
    weights = pyro.sample("weights", dist.Dirichlet(torch.full((n_components,), alpha0, dtype=F64)))
    with pyro.plate("components", n_components):
        rate = pyro.sample("rate", dist.Gamma(t64(a0), t64(b0)))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("x", dist.Poisson(Vindex(rate.unsqueeze(-2))[..., z]), obs=x)


def poisson_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Two clusters of counts (means 2 and 12); R: soft assignment by distance to 3 and 9."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.poisson(torch.full((30,), 2.0, dtype=F64), generator=g),
                   torch.poisson(torch.full((30,), 12.0, dtype=F64), generator=g)])
    return x, torch.softmax(torch.stack([-(x - 3) ** 2, -(x - 9) ** 2], -1) / 20, -1)


def poisson_mixture_reference(x: torch.Tensor, resp: torch.Tensor, alpha0: float = 0.5,
                              a0: float = 2.0, b0: float = 0.5, *, tol: float = 1e-14,
                              max_iter: int = 5000) -> RefFit:
    r"""CAVI for :func:`poisson_mixture` from responsibilities ``resp`` (global step first).

    :math:`\alpha_k = \alpha_0 + N_k`, :math:`a_k = a_0 + \sum_n r_{nk}x_n`,
    :math:`b_k = b_0 + N_k`; :math:`\log\rho_{nk} = E\log\pi_k + x_nE\log\lambda_k - E\lambda_k
    - \log x_n!`. With :math:`q(z)` optimal the data terms are :math:`\sum_n\log\sum_k\rho_{nk}`.
    """
    xs = x.numpy().astype(float)
    r = resp.numpy().astype(float)
    k = r.shape[1]
    lgx = gammaln(xs + 1.0)
    hist: list[float] = []
    for it in range(max_iter):  # noqa: B007 (it + 1 sweeps are reported)
        nk = r.sum(0)
        alpha, a, b = alpha0 + nk, a0 + r.T @ xs, b0 + nk
        elog_pi = digamma(alpha) - digamma(alpha.sum())
        log_rho = elog_pi + xs[:, None] * (digamma(a) - np.log(b)) - a / b - lgx[:, None]
        lse = logsumexp(log_rho, 1)
        r = np.exp(log_rho - lse[:, None])
        hist.append(float(lse.sum() - kl_dirichlet(alpha, np.full(k, alpha0))
                          - kl_gamma(a, b, a0, b0).sum()))
        if _converged(hist, tol):
            break
    return RefFit({"weights": alpha, "rate": (a, b), "z": r}, hist[-1], hist, it + 1)


# ---------------------------------------------------------------------------- latent class model
def latent_class(x: torch.Tensor, n_classes: int, alpha0: float = 1.0, a0: float = 1.0,
                 b0: float = 1.0) -> None:
    r"""Mixture of products of Bernoullis: :math:`\theta_{kd}\sim\mathrm{Beta}`,
    :math:`x_{nd}\sim\mathrm{Bern}(\theta_{z_n d})`.
    """
    weights = pyro.sample("weights", dist.Dirichlet(torch.full((n_classes,), alpha0, dtype=F64)))
    with pyro.plate("classes", n_classes, dim=-2), pyro.plate("items", x.shape[1], dim=-1):
        theta = pyro.sample("theta", dist.Beta(t64(a0), t64(b0)))
    with pyro.plate("people", x.shape[0], dim=-1):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("x", dist.Bernoulli(theta[z]).to_event(1), obs=x)


def latent_class_reference(x: torch.Tensor, resp: torch.Tensor, alpha0: float = 1.0,
                           a0: float = 1.0, b0: float = 1.0, *, tol: float = 1e-14,
                           max_iter: int = 5000) -> RefFit:
    r"""CAVI for :func:`latent_class` from ``resp`` (global step first).

    :math:`a_{kd} = a_0 + \sum_n r_{nk}x_{nd}`, :math:`b_{kd} = b_0 + \sum_n r_{nk}(1-x_{nd})`,
    :math:`\log\rho_{nk} = E\log\pi_k + \sum_d x_{nd}E\log\theta_{kd} + (1-x_{nd})E\log(1-\theta_{kd})`.
    """
    xs = x.numpy().astype(float)
    r = resp.numpy().astype(float)
    k = r.shape[1]
    hist: list[float] = []
    for it in range(max_iter):  # noqa: B007 (it + 1 sweeps are reported)
        nk = r.sum(0)
        alpha, a, b = alpha0 + nk, a0 + r.T @ xs, b0 + r.T @ (1.0 - xs)
        elog_pi = digamma(alpha) - digamma(alpha.sum())
        elog_t, elog_1mt = digamma(a) - digamma(a + b), digamma(b) - digamma(a + b)
        log_rho = elog_pi + xs @ elog_t.T + (1.0 - xs) @ elog_1mt.T
        lse = logsumexp(log_rho, 1)
        r = np.exp(log_rho - lse[:, None])
        hist.append(float(lse.sum() - kl_dirichlet(alpha, np.full(k, alpha0))
                          - kl_beta(a, b, a0, b0).sum()))
        if _converged(hist, tol):
            break
    return RefFit({"weights": alpha, "theta": (a, b), "z": r}, hist[-1], hist, it + 1)


def latent_class_nested(x: torch.Tensor, n_classes: int, alpha0: float = 1.0, a0: float = 1.0,
                        b0: float = 1.0) -> None:
    """:func:`latent_class` spelled with nested plates (people x items) instead of ``to_event``."""
    d = x.shape[1]
    weights = pyro.sample("weights", dist.Dirichlet(torch.full((n_classes,), alpha0, dtype=F64)))
    with pyro.plate("classes", n_classes, dim=-2), pyro.plate("items", d, dim=-1):
        theta = pyro.sample("theta", dist.Beta(t64(a0), t64(b0)))
    with pyro.plate("people", x.shape[0], dim=-2):
        z = pyro.sample("z", dist.Categorical(weights))  # (N, 1)
        with pyro.plate("answers", d, dim=-1):
            pyro.sample("x", dist.Bernoulli(Vindex(theta)[..., z, torch.arange(d)]), obs=x)


# ---------------------------------------------------------------------------- two children per point
def count_and_measure(counts: torch.Tensor, y: torch.Tensor, n_components: int = 2) -> None:
    r"""Each point has a count and a measurement, both selected by one :math:`z_n`:

    :math:`c_n\sim\mathrm{Poi}(\lambda_{z_n})`, :math:`y_n\sim N(\mu_{z_n}, 0.5^2)`,
    :math:`\lambda_k\sim\mathrm{Gam}(2, 0.5)`, :math:`\mu_k\sim N(0, 3^2)`, :math:`\pi\sim\mathrm{Dir}(1)`.
    """
    k = n_components
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(k, dtype=F64)))
    with pyro.plate("components", k):
        rate = pyro.sample("rate", dist.Gamma(t64(2.0), t64(0.5)))
        loc = pyro.sample("loc", dist.Normal(t64(0.0), t64(3.0)))
    with pyro.plate("data", counts.shape[0]):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("counts", dist.Poisson(rate[z]), obs=counts)
        pyro.sample("y", dist.Normal(loc[z], t64(0.5)), obs=y)


def count_and_measure_reference(counts: torch.Tensor, y: torch.Tensor, resp: torch.Tensor, *,
                                sweeps: int = 300) -> RefFit:
    r"""CAVI for :func:`count_and_measure` from ``resp`` (global step first).

    :math:`\log\rho_{nk} = E\log\pi_k + c_nE\log\lambda_k - E\lambda_k - \log c_n!
    - \tfrac12\log 2\pi\sigma^2 - ((y_n - m_k)^2 + v_k)/(2\sigma^2)`: both children's terms.
    """
    c, ys, r = counts.numpy().astype(float), y.numpy().astype(float), resp.numpy().astype(float)
    k, s2 = r.shape[1], 0.25
    hist: list[float] = []
    for _ in range(sweeps):
        nk = r.sum(0)
        alpha, a, b = 1.0 + nk, 2.0 + r.T @ c, 0.5 + nk
        prec = 1.0 / 9.0 + nk / s2
        m = (r.T @ ys / s2) / prec
        log_rho = (digamma(alpha) - digamma(alpha.sum()) + c[:, None] * (digamma(a) - np.log(b)) - a / b
                   - gammaln(c + 1.0)[:, None] - 0.5 * np.log(2 * np.pi * s2)
                   - ((ys[:, None] - m) ** 2 + 1.0 / prec) / (2 * s2))
        lse = logsumexp(log_rho, 1)
        r = np.exp(log_rho - lse[:, None])
        hist.append(float(lse.sum() - kl_dirichlet(alpha, np.ones(k)) - kl_gamma(a, b, 2.0, 0.5).sum()
                          - kl_normal(m, 1.0 / prec, 0.0, 9.0).sum()))
    return RefFit({"weights": alpha, "rate": (a, b), "loc": (m, 1.0 / prec), "z": r}, hist[-1], hist,
                  sweeps)


def count_and_measure_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two groups: (counts ~ Poi(2), y ~ N(-1, .5)) and (Poi(8), N(1.5, .5)); R: soft by y's sign."""
    g = torch.Generator().manual_seed(0)
    label = torch.arange(50) % 2
    counts = torch.poisson(torch.tensor([2.0, 8.0], dtype=F64)[label], generator=g)
    y = torch.tensor([-1.0, 1.5], dtype=F64)[label] + 0.5 * torch.randn(50, generator=g, dtype=F64)
    p = torch.sigmoid(-2.0 * y)
    return counts, y, torch.stack([p, 1.0 - p], -1)


# ---------------------------------------------------------------------------- mean-field 1-D GMM
def normal_mixture_1d(x: torch.Tensor, n_components: int = 2) -> None:
    r"""1-D mixture with Bishop's Normal-Gamma prior per component (m0 = 0, lam0 = 1, a0 = 2, b0 = 1)."""
    k = n_components
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(k, dtype=F64)))
    with pyro.plate("components", k):
        tau = pyro.sample("tau", dist.Gamma(t64(2.0), t64(1.0)))
        mu = pyro.sample("mu", dist.Normal(t64(0.0), tau.rsqrt()))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("x", dist.Normal(mu[z], tau[z].rsqrt()), obs=x)


def normal_mixture_1d_mean_field_reference(x: torch.Tensor, resp: torch.Tensor, *,
                                           sweeps: int = 400) -> RefFit:
    r"""CAVI with :math:`q(\pi)\prod_k q(\mu_k)q(\tau_k)\prod_n q(z_n)` (``joint=False``) from ``resp``.

    Per sweep, from :math:`E\tau_k` (the prior mean 2 before the first): Bishop's §10.1.3 updates
    weighted by :math:`r_{nk}`,

    .. math::
        q(\mu_k) = N\big(\tfrac{\sum_n r_{nk}x_n}{1 + N_k}, ((1 + N_k)E\tau_k)^{-1}\big),\quad
        q(\tau_k) = \mathrm{Gam}\big(2 + \tfrac{N_k + 1}{2}, 1 + \tfrac12(E\mu_k^2
            + \textstyle\sum_n r_{nk}E(x_n - \mu_k)^2)\big),

    then :math:`\log\rho_{nk} = E\log\pi_k + \tfrac12(E\log\tau_k - \log 2\pi)
    - \tfrac12E\tau_kE(x_n-\mu_k)^2`.
    """
    xs, r = x.numpy().astype(float), resp.numpy().astype(float)
    k = r.shape[1]
    e_tau = np.full(k, 2.0)
    hist: list[float] = []
    for _ in range(sweeps):
        nk, sx = r.sum(0), r.T @ xs
        alpha = 1.0 + nk
        m, prec = sx / (1.0 + nk), (1.0 + nk) * e_tau
        v = 1.0 / prec
        e_sq = (xs[:, None] - m) ** 2 + v  # E(x_n - mu_k)^2
        a, b = 2.0 + 0.5 * (nk + 1.0), 1.0 + 0.5 * (m**2 + v + (r * e_sq).sum(0))
        e_tau, e_log_tau = a / b, digamma(a) - np.log(b)
        log_rho = (digamma(alpha) - digamma(alpha.sum()) + 0.5 * (e_log_tau - LOG_2PI)
                   - 0.5 * e_tau * e_sq)
        lse = logsumexp(log_rho, 1)
        r = np.exp(log_rho - lse[:, None])
        prior_mu = 0.5 * (e_log_tau - LOG_2PI) - 0.5 * e_tau * (m**2 + v)
        entropy_mu = 0.5 * (1.0 + LOG_2PI + np.log(v))
        hist.append(float(lse.sum() + (prior_mu + entropy_mu).sum() - kl_gamma(a, b, 2.0, 1.0).sum()
                          - kl_dirichlet(alpha, np.ones(k))))
    return RefFit({"weights": alpha, "mu": (m, v), "tau": (a, b), "z": r}, hist[-1], hist, sweeps)


# ---------------------------------------------------------------------------- LDA
def lda(words: torch.Tensor, doc: torch.Tensor, n_docs: int, n_topics: int, vocab: int) -> None:
    r"""Latent Dirichlet allocation, one token per row (Blei, Ng & Jordan 2003):

    :math:`\theta_d\sim\mathrm{Dir}(0.5)`, :math:`\phi_k\sim\mathrm{Dir}(0.2)`,
    :math:`z_n\sim\mathrm{Cat}(\theta_{d_n})`, :math:`w_n\sim\mathrm{Cat}(\phi_{z_n})`.
    """
    with pyro.plate("docs", n_docs):
        theta = pyro.sample("theta", dist.Dirichlet(torch.full((n_topics,), 0.5, dtype=F64)))
    with pyro.plate("topics", n_topics):
        phi = pyro.sample("phi", dist.Dirichlet(torch.full((vocab,), 0.2, dtype=F64)))
    with pyro.plate("tokens", words.shape[0]):
        z = pyro.sample("z", dist.Categorical(Vindex(theta.unsqueeze(-3))[..., doc, :]))
        pyro.sample("w", dist.Categorical(Vindex(phi.unsqueeze(-3))[..., z, :]), obs=words)


def lda_reference(words: torch.Tensor, doc: torch.Tensor, n_docs: int, vocab: int,
                  resp: torch.Tensor, *, sweeps: int = 300) -> RefFit:
    r"""Mean-field CAVI for :func:`lda` from ``resp`` (Blei et al. 2003, eqs. 6-7):

    :math:`q(\theta_d) = \mathrm{Dir}(0.5 + \sum_{n\in d} r_n)`,
    :math:`q(\phi_k) = \mathrm{Dir}(0.2 + \sum_n r_{nk}e_{w_n})`,
    :math:`\log\rho_{nk} = E\log\theta_{d_nk} + E\log\phi_{kw_n}`.
    """
    w, d, r = words.numpy(), doc.numpy(), resp.numpy().astype(float)
    onehot_d, onehot_w = np.eye(n_docs)[d], np.eye(vocab)[w]
    hist: list[float] = []
    for _ in range(sweeps):
        a_theta = 0.5 + onehot_d.T @ r                 # (D, K)
        a_phi = 0.2 + r.T @ onehot_w                   # (K, V)
        elog_theta = digamma(a_theta) - digamma(a_theta.sum(-1, keepdims=True))
        elog_phi = digamma(a_phi) - digamma(a_phi.sum(-1, keepdims=True))
        log_rho = elog_theta[d] + elog_phi[:, w].T
        lse = logsumexp(log_rho, 1)
        r = np.exp(log_rho - lse[:, None])
        hist.append(float(lse.sum() - kl_dirichlet(a_theta, np.full_like(a_theta, 0.5)).sum()
                          - kl_dirichlet(a_phi, np.full_like(a_phi, 0.2)).sum()))
    return RefFit({"theta": a_theta, "phi": a_phi, "z": r}, hist[-1], hist, sweeps)


def lda_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """6 documents x 15 tokens over 8 words from 2 topics (words 0-3 vs 4-7); R: by word half."""
    g = torch.Generator().manual_seed(0)
    doc = torch.arange(90) // 15
    topic_of_doc = torch.tensor([0.9, 0.8, 0.2, 0.1, 0.5, 0.7], dtype=F64)[doc]
    first = torch.bernoulli(topic_of_doc, generator=g).bool()
    words = torch.where(first, torch.randint(0, 4, (90,), generator=g), torch.randint(4, 8, (90,), generator=g))
    p = torch.where(words < 4, 0.8, 0.2).to(F64)
    return words, doc, torch.stack([p, 1.0 - p], -1)


# ---------------------------------------------------------------------------- z in arithmetic
def shifted_by_label(y: torch.Tensor) -> None:
    r""":math:`\mu\sim N(0,3^2)`, :math:`z_n\sim\mathrm{Cat}(\tfrac12,\tfrac12)`, :math:`y_n\sim N(\mu + 2z_n, 1)`:
    a local discrete latent entering a loc arithmetically (not by selecting a component).
    """
    mu = pyro.sample("mu", dist.Normal(t64(0.0), t64(3.0)))
    with pyro.plate("data", y.shape[0]):
        z = pyro.sample("z", dist.Categorical(torch.full((2,), 0.5, dtype=F64)))
        pyro.sample("y", dist.Normal(mu + 2.0 * z, t64(1.0)), obs=y)


def shifted_by_label_reference(y: torch.Tensor, resp: torch.Tensor, *, sweeps: int = 200) -> RefFit:
    r"""CAVI for :func:`shifted_by_label` from ``resp``: :math:`q(\mu) = N(\tfrac{\sum_n(y_n - 2E z_n)}{1/9 + N},
    (1/9 + N)^{-1})`, :math:`\log\rho_{nk} = \log\tfrac12 - \tfrac12\log 2\pi - \tfrac12((y_n - m - 2k)^2 + v)`.
    """
    ys, r = y.numpy().astype(float), resp.numpy().astype(float)
    hist: list[float] = []
    for _ in range(sweeps):
        prec = 1.0 / 9.0 + ys.shape[0]
        m, v = (ys - 2.0 * r[:, 1]).sum() / prec, 1.0 / prec
        shift = 2.0 * np.arange(2.0)
        log_rho = np.log(0.5) - 0.5 * LOG_2PI - 0.5 * ((ys[:, None] - m - shift) ** 2 + v)
        lse = logsumexp(log_rho, 1)
        r = np.exp(log_rho - lse[:, None])
        hist.append(float(lse.sum() - kl_normal(m, v, 0.0, 9.0)))
    return RefFit({"mu": (m, v), "z": r}, hist[-1], hist, sweeps)


# ---------------------------------------------------------------------------- mixture of regressions
def mixture_of_regressions(x: torch.Tensor, y: torch.Tensor, n_components: int = 2,
                           noise_scale: float = 0.3, prior_scale: float = 2.0) -> None:
    r""":math:`w_k\sim N(0, s^2I)`, :math:`y_n\sim N(x_n^Tw_{z_n}, \sigma^2)`, :math:`\pi\sim\mathrm{Dir}(1)`."""
    k, d = n_components, x.shape[1]
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(k, dtype=F64)))
    with pyro.plate("components", k):
        w = pyro.sample("w", dist.MultivariateNormal(torch.zeros(d, dtype=F64),
                                                     prior_scale**2 * torch.eye(d, dtype=F64)))
    with pyro.plate("data", y.shape[0]):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("y", dist.Normal((x * Vindex(w.unsqueeze(-3))[..., z, :]).sum(-1), t64(noise_scale)),
                    obs=y)


def mixture_of_regressions_reference(x: torch.Tensor, y: torch.Tensor, resp: torch.Tensor,
                                     noise_scale: float = 0.3, prior_scale: float = 2.0, *,
                                     tol: float = 1e-14, max_iter: int = 5000) -> RefFit:
    r"""CAVI for :func:`mixture_of_regressions` from ``resp`` (global step first).

    .. math::
        \Lambda_k = s^{-2}I + \sigma^{-2}\textstyle\sum_n r_{nk}x_nx_n^T,\quad
        m_k = \Lambda_k^{-1}\sigma^{-2}\sum_n r_{nk}y_nx_n,\quad \alpha_k = 1 + N_k,\\
        \log\rho_{nk} = E\log\pi_k - \tfrac12\log 2\pi\sigma^2
            - \big((y_n - x_n^Tm_k)^2 + x_n^T\Lambda_k^{-1}x_n\big)/(2\sigma^2).
    """
    xs, ys, r = x.numpy().astype(float), y.numpy().astype(float), resp.numpy().astype(float)
    k, d = r.shape[1], xs.shape[1]
    s2, p0 = noise_scale**2, prior_scale**-2
    hist: list[float] = []
    for it in range(max_iter):  # noqa: B007 (it + 1 sweeps are reported)
        alpha = 1.0 + r.sum(0)
        prec = p0 * np.eye(d) + np.einsum("nk,ni,nj->kij", r, xs, xs) / s2
        cov = np.linalg.inv(prec)
        m = np.einsum("kij,kj->ki", cov, (r * ys[:, None]).T @ xs / s2)
        elog_pi = digamma(alpha) - digamma(alpha.sum())
        quad = np.einsum("ni,kij,nj->nk", xs, cov, xs)
        log_rho = elog_pi - 0.5 * np.log(2 * np.pi * s2) - ((ys[:, None] - xs @ m.T) ** 2 + quad) / (2 * s2)
        lse = logsumexp(log_rho, 1)
        r = np.exp(log_rho - lse[:, None])
        # KL(N(m_k, C_k) || N(0, s^2 I))
        kl_w = 0.5 * (p0 * (np.trace(cov, axis1=1, axis2=2) + (m**2).sum(1)) - d
                      - d * np.log(p0) - np.linalg.slogdet(cov)[1])
        hist.append(float(lse.sum() - kl_dirichlet(alpha, np.ones(k)) - kl_w.sum()))
        if _converged(hist, tol):
            break
    return RefFit({"weights": alpha, "w": (m, cov), "z": r}, hist[-1], hist, it + 1)


def regression_mixture_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """80 points, two regression lines in 2-D inputs; R: the true labels, softened to 0.9/0.1."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 2, generator=g, dtype=F64)
    label = torch.arange(80) % 2
    w = torch.tensor([[2.0, -1.0], [-2.0, 1.0]], dtype=F64)
    y = (x * w[label]).sum(-1) + 0.3 * torch.randn(80, generator=g, dtype=F64)
    r = torch.stack([(label == 0).to(F64), (label == 1).to(F64)], -1) * 0.8 + 0.1
    return x, y, r


# ---------------------------------------------------------------------------- PPCA / factor analysis
def ppca(x: torch.Tensor, latent_dim: int, a0: float = 2.0, b0: float = 1.0,
         weight_scale: float = 1.0) -> None:
    r"""Bayesian PPCA: :math:`w_d\sim N(0,s^2I_L)`, :math:`z_n\sim N(0,I_L)`, :math:`\tau\sim\mathrm{Gam}`,
    :math:`x_{nd}\sim N(w_d^Tz_n, \tau^{-1})` — the loc is bilinear in ``w`` and ``z``.
    """
    n, d = x.shape
    tau = pyro.sample("tau", dist.Gamma(t64(a0), t64(b0)))
    features = pyro.plate("features", d, dim=-1)
    with features:
        w = pyro.sample("w", dist.Normal(torch.zeros(latent_dim, dtype=F64), weight_scale).to_event(1))
    with pyro.plate("data", n, dim=-2):
        z = pyro.sample("z", dist.Normal(torch.zeros(latent_dim, dtype=F64), 1.0).to_event(1))
        with features:
            pyro.sample("x", dist.Normal((z * w).sum(-1), tau.rsqrt()), obs=x)


def ppca_reference(x: torch.Tensor, latent_dim: int, a0: float = 2.0, b0: float = 1.0,
                   weight_scale: float = 1.0, *, start_w: np.ndarray, tol: float = 1e-14,
                   max_iter: int = 20000) -> RefFit:
    r"""Mean-field CAVI :math:`q(W)q(Z)q(\tau)` for :func:`ppca`, from :math:`E[W]` = ``start_w``.

    Each sweep, in this order (Bishop 2006, eq. 10.9 for each factor):

    .. math::
        S = (I + E\tau\,\textstyle\sum_d E[w_dw_d^T])^{-1},\ m_n = S\,E\tau\,E[W]^Tx_n;\quad
        V = (s^{-2}I + E\tau\sum_n E[z_nz_n^T])^{-1},\ \mu_d = V\,E\tau\sum_n x_{nd}m_n;\\
        a = a_0 + ND/2,\ b = b_0 + \tfrac12\textstyle\sum_{nd}E[(x_{nd}-w_d^Tz_n)^2].

    The start has :math:`q(w_d) = N(\text{start}_d, 0)`, :math:`E\tau = a_0/b_0`.
    """
    xs = x.numpy().astype(float)
    n, d = xs.shape
    ell = latent_dim
    eye = np.eye(ell)
    mu, v = np.array(start_w, float), np.zeros((ell, ell))
    e_tau = a0 / b0
    hist: list[float] = []
    for it in range(max_iter):  # noqa: B007 (it + 1 sweeps are reported)
        eww = d * v + mu.T @ mu  # sum_d E[w_d w_d^T]
        s = np.linalg.inv(eye + e_tau * eww)
        m = (e_tau * xs @ mu) @ s  # rows m_n = S E[tau] sum_d mu_d x_nd (S symmetric)
        ezz = n * s + m.T @ m
        v = np.linalg.inv(eye / weight_scale**2 + e_tau * ezz)
        mu = (e_tau * xs.T @ m) @ v
        eww = d * v + mu.T @ mu
        sq = (xs**2).sum() - 2.0 * np.sum(xs * (m @ mu.T)) + np.trace(eww @ ezz)
        a, b = a0 + 0.5 * n * d, b0 + 0.5 * sq
        e_tau, e_log_tau = a / b, digamma(a) - np.log(b)
        lik = 0.5 * n * d * (e_log_tau - LOG_2PI) - 0.5 * e_tau * sq
        # E log N(z|0,I) + H[q(z)] for all n, and the same for w with prior N(0, s^2 I)
        z_terms = (-0.5 * n * ell * LOG_2PI - 0.5 * np.trace(ezz)
                   + n * (0.5 * ell * (1.0 + LOG_2PI) + 0.5 * np.linalg.slogdet(s)[1]))
        w_terms = (-0.5 * d * ell * (LOG_2PI + 2.0 * math.log(weight_scale))
                   - 0.5 * np.trace(eww) / weight_scale**2
                   + d * (0.5 * ell * (1.0 + LOG_2PI) + 0.5 * np.linalg.slogdet(v)[1]))
        hist.append(float(lik + z_terms + w_terms - kl_gamma(a, b, a0, b0)))
        if _converged(hist, tol):
            break
    return RefFit({"w": (mu, v), "z": (m, s), "tau": (a, b)}, hist[-1], hist, it + 1)


def ppca_data() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    w = 1.5 * torch.randn(5, 2, generator=g, dtype=F64)
    z = torch.randn(40, 2, generator=g, dtype=F64)
    return z @ w.T + torch.randn(40, 5, generator=g, dtype=F64)


def ppca_invariants(w_mean: np.ndarray, w_cov: np.ndarray, z_mean: np.ndarray,
                    z_cov: np.ndarray) -> dict[str, np.ndarray]:
    r"""Quantities of a PPCA fit that a rotation :math:`w_d\to Rw_d, z_n\to Rz_n` leaves alone.

    The model and the mean-field family are rotation invariant (isotropic priors, full
    covariance within each event), so fixed points come in rotation orbits; these compare them:
    :math:`E[Z]E[W]^T` (N, D), :math:`E[W]E[W]^T + \sum_d\mathrm{tr}V_d` per pair, and the
    spectra of the shared covariances. ``w_cov``/``z_cov``: (L, L) or one per row.
    """
    w_cov = np.broadcast_to(w_cov, (w_mean.shape[0],) + w_cov.shape[-2:])
    z_cov = np.broadcast_to(z_cov, (z_mean.shape[0],) + z_cov.shape[-2:])
    return {"ZW": z_mean @ w_mean.T,
            "WW": w_mean @ w_mean.T + np.diag(np.trace(w_cov, axis1=-2, axis2=-1)),
            "eig_w": np.sort(np.linalg.eigvalsh(w_cov), -1),
            "eig_z": np.sort(np.linalg.eigvalsh(z_cov), -1)}


# ---------------------------------------------------------------------------- two-level hierarchy
def two_level(y: torch.Tensor, group: torch.Tensor, n_groups: int, m0: float = 0.0,
              s0: float = 10.0, a_tau: float = 2.0, b_tau: float = 2.0, a_lam: float = 2.0,
              b_lam: float = 1.0) -> None:
    r"""Groups with latent means and latent precisions:

    :math:`\mu\sim N(m_0,s_0^2)`, :math:`\tau\sim\mathrm{Gam}`, :math:`\theta_j\sim N(\mu,\tau^{-1})`,
    :math:`\lambda_j\sim\mathrm{Gam}(a_\lambda,b_\lambda)`, :math:`y_i\sim N(\theta_{g_i},\lambda_{g_i}^{-1})`.
    """
    mu = pyro.sample("mu", dist.Normal(t64(m0), t64(s0)))
    tau = pyro.sample("tau", dist.Gamma(t64(a_tau), t64(b_tau)))
    with pyro.plate("groups", n_groups):
        theta = pyro.sample("theta", dist.Normal(mu, tau.rsqrt()))
        lam = pyro.sample("lam", dist.Gamma(t64(a_lam), t64(b_lam)))
    with pyro.plate("obs", y.shape[0]):
        pyro.sample("y", dist.Normal(theta[..., group], lam[..., group].rsqrt()), obs=y)


def two_level_reference(y: torch.Tensor, group: torch.Tensor, n_groups: int, m0: float = 0.0,
                        s0: float = 10.0, a_tau: float = 2.0, b_tau: float = 2.0,
                        a_lam: float = 2.0, b_lam: float = 1.0, *, start_theta: np.ndarray,
                        tol: float = 1e-14, max_iter: int = 20000) -> RefFit:
    r"""Mean-field CAVI :math:`q(\mu)q(\tau)\prod_j q(\theta_j)q(\lambda_j)` for :func:`two_level`.

    Start: :math:`q(\theta_j) = N(\text{start}_j, 0)`; each sweep updates, in order,

    .. math::
        q(\lambda_j) = \mathrm{Gam}(a_\lambda + n_j/2, b_\lambda + \tfrac12\textstyle\sum_{i\in j}E(y_i-\theta_j)^2),\
        q(\mu) = N\big(\tfrac{m_0s_0^{-2} + E\tau\sum_j E\theta_j}{s_0^{-2} + JE\tau}, (s_0^{-2}+JE\tau)^{-1}\big),\\
        q(\tau) = \mathrm{Gam}(a_\tau + J/2, b_\tau + \tfrac12\textstyle\sum_jE(\theta_j-\mu)^2),\
        q(\theta_j) = N\big(\tfrac{E\tau E\mu + E\lambda_j\sum_{i\in j}y_i}{E\tau + n_jE\lambda_j},
            (E\tau + n_jE\lambda_j)^{-1}\big).
    """
    ys, g = y.numpy().astype(float), group.numpy()
    j = n_groups
    nj = np.bincount(g, minlength=j).astype(float)
    sy = np.bincount(g, weights=ys, minlength=j)
    syy = np.bincount(g, weights=ys**2, minlength=j)
    mt, vt = np.array(start_theta, float), np.zeros(j)
    e_tau = a_tau / b_tau  # q(mu) of the first sweep uses the prior mean of tau
    hist: list[float] = []
    for it in range(max_iter):  # noqa: B007 (it + 1 sweeps are reported)
        e_sq = syy - 2.0 * mt * sy + nj * (mt**2 + vt)  # sum_{i in j} E(y_i - theta_j)^2
        al, bl = a_lam + 0.5 * nj, b_lam + 0.5 * e_sq
        e_lam, e_log_lam = al / bl, digamma(al) - np.log(bl)
        pm = s0**-2 + j * e_tau
        mm = (m0 * s0**-2 + e_tau * mt.sum()) / pm
        at, bt = a_tau + 0.5 * j, b_tau + 0.5 * ((mt - mm) ** 2 + vt + 1.0 / pm).sum()
        e_tau, e_log_tau = at / bt, digamma(at) - np.log(bt)
        pt = e_tau + nj * e_lam
        mt, vt = (e_tau * mm + e_lam * sy) / pt, 1.0 / pt
        e_sq = syy - 2.0 * mt * sy + nj * (mt**2 + vt)
        lik = (0.5 * nj * (e_log_lam - LOG_2PI)).sum() - 0.5 * (e_lam * e_sq).sum()
        e_th = (0.5 * (e_log_tau - LOG_2PI) - 0.5 * e_tau * ((mt - mm) ** 2 + vt + 1.0 / pm)).sum()
        h_th = (0.5 * (1.0 + LOG_2PI + np.log(vt))).sum()
        hist.append(float(lik + e_th + h_th - kl_normal(mm, 1.0 / pm, m0, s0**2)
                          - kl_gamma(at, bt, a_tau, b_tau) - kl_gamma(al, bl, a_lam, b_lam).sum()))
        if _converged(hist, tol):
            break
    return RefFit({"mu": (mm, 1.0 / pm), "tau": (at, bt), "theta": (mt, vt), "lam": (al, bl)},
                  hist[-1], hist, it + 1)


# ---------------------------------------------------------------------------- a prior-only precision
def prior_only_precision(x: torch.Tensor) -> None:
    r""":math:`\tau\sim\mathrm{Gam}(2,1)`, :math:`\mu\mid\tau\sim N(0,(2\tau)^{-1})`, :math:`x_n\sim N(\mu, 0.5^2)`.

    :math:`\mu`'s prior precision scales with :math:`\tau` but its use (the data) does not share
    it, so ``joint=True`` must *not* fuse them: q(mu)q(tau) is the right family.
    """
    tau = pyro.sample("tau", dist.Gamma(t64(2.0), t64(1.0)))
    mu = pyro.sample("mu", dist.Normal(t64(0.0), (2.0 * tau).rsqrt()))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu, t64(0.5)), obs=x)


def prior_only_precision_reference(x: torch.Tensor, *, sweeps: int = 200) -> RefFit:
    r"""Mean-field CAVI for :func:`prior_only_precision`, from :math:`E\tau = 2` (the prior mean).

    .. math::
        q(\mu) = N\big(\tfrac{\sum x/\sigma^2}{2E\tau + N/\sigma^2}, (2E\tau + N/\sigma^2)^{-1}\big),\quad
        q(\tau) = \mathrm{Gam}\big(2 + \tfrac12, 1 + \tfrac12\cdot 2E[\mu^2]\big).
    """
    xs = x.numpy().astype(float)
    n, s2, e_tau = xs.shape[0], 0.25, 2.0
    hist: list[float] = []
    for _ in range(sweeps):
        prec = 2.0 * e_tau + n / s2
        m = (xs.sum() / s2) / prec
        a, b = 2.5, 1.0 + (m**2 + 1.0 / prec)
        e_tau, e_log_tau = a / b, digamma(a) - np.log(b)
        lik = -0.5 * n * (LOG_2PI + np.log(s2)) - ((xs - m) ** 2 + 1.0 / prec).sum() / (2 * s2)
        prior_mu = 0.5 * (np.log(2.0) + e_log_tau - LOG_2PI) - e_tau * (m**2 + 1.0 / prec)
        entropy = 0.5 * (1.0 + LOG_2PI - np.log(prec))
        hist.append(float(lik + prior_mu + entropy - kl_gamma(a, b, 2.0, 1.0)))
    return RefFit({"mu": (m, 1.0 / prec), "tau": (a, b)}, hist[-1], hist, sweeps)


# ---------------------------------------------------------------------------- Gamma hierarchy
def gamma_hierarchy(y: torch.Tensor, exposure: torch.Tensor, group: torch.Tensor, n_groups: int) -> None:
    r"""Hierarchical Gamma-Poisson: :math:`\beta\sim\mathrm{Gam}(3,2)`, :math:`\lambda_j\sim\mathrm{Gam}(2,\beta)`,
    :math:`y_n\sim\mathrm{Poi}(\lambda_{g_n}h_n)`: a Gamma *rate* with known concentration.
    """
    beta = pyro.sample("beta", dist.Gamma(t64(3.0), t64(2.0)))
    with pyro.plate("groups", n_groups):
        lam = pyro.sample("lam", dist.Gamma(t64(2.0), beta))
    with pyro.plate("obs", y.shape[0]):
        pyro.sample("y", dist.Poisson(lam[..., group] * exposure), obs=y)


def gamma_hierarchy_reference(y: torch.Tensor, exposure: torch.Tensor, group: torch.Tensor,
                              n_groups: int, *, sweeps: int = 200) -> RefFit:
    r"""Mean-field CAVI :math:`q(\beta)\prod_j q(\lambda_j)` from :math:`E\beta = 3/2` (prior mean).

    .. math::
        q(\lambda_j) = \mathrm{Gam}(2 + C_j, E\beta + H_j),\quad
        q(\beta) = \mathrm{Gam}(3 + 2J, 2 + \textstyle\sum_j E\lambda_j)

    with :math:`C_j, H_j` the group's counts and exposures.
    """
    ys, h, g = y.numpy().astype(float), exposure.numpy().astype(float), group.numpy()
    j = n_groups
    c_j, h_j = np.bincount(g, weights=ys, minlength=j), np.bincount(g, weights=h, minlength=j)
    base = float(np.sum(ys * np.log(h) - gammaln(ys + 1.0)))
    e_beta = 1.5
    hist: list[float] = []
    for _ in range(sweeps):
        a, b = 2.0 + c_j, e_beta + h_j
        e_lam, e_log_lam = a / b, digamma(a) - np.log(b)
        ab, bb = 3.0 + 2.0 * j, 2.0 + e_lam.sum()
        e_beta, e_log_beta = ab / bb, digamma(ab) - np.log(bb)
        lik = base + np.sum(c_j * e_log_lam - h_j * e_lam)
        prior_lam = np.sum(2.0 * e_log_beta - gammaln(2.0) + e_log_lam - e_beta * e_lam)
        entropy = np.sum(a - np.log(b) + gammaln(a) + (1.0 - a) * digamma(a))
        hist.append(float(lik + prior_lam + entropy - kl_gamma(ab, bb, 3.0, 2.0)))
    return RefFit({"lam": (a, b), "beta": (ab, bb)}, hist[-1], hist, sweeps)


# ---------------------------------------------------------------------------- Gaussian mixtures
@dataclass(frozen=True)
class GMMPrior:
    """Explicit priors of a user's GMM (GaussianMixture's names)."""

    weight_concentration: float
    mean_prior: torch.Tensor
    mean_precision: float
    covariance_prior: torch.Tensor  # W0^-1
    degrees_of_freedom: float

    def gaussian_mixture_kwargs(self) -> dict[str, Any]:
        return dict(weight_concentration=self.weight_concentration, mean_prior=self.mean_prior,
                    mean_precision=self.mean_precision, covariance_prior=self.covariance_prior,
                    degrees_of_freedom=self.degrees_of_freedom)


def user_gmm(x: torch.Tensor, prior: GMMPrior, n_components: int = 2) -> None:
    """A Bayesian GMM as a user writes it: precision_matrix forms and plain ``loc[z]`` indexing."""
    k = n_components
    weights = pyro.sample("weights", dist.Dirichlet(torch.full((k,), prior.weight_concentration,
                                                               dtype=F64)))
    with pyro.plate("components", k):
        # Wishart(df, precision_matrix=P) has scale matrix P^-1 = W0 and mean df * W0
        prec = pyro.sample("prec", dist.Wishart(t64(prior.degrees_of_freedom),
                                                precision_matrix=prior.covariance_prior))
        loc = pyro.sample("loc", dist.MultivariateNormal(prior.mean_prior,
                                                         precision_matrix=prior.mean_precision * prec))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("x", dist.MultivariateNormal(loc[z], precision_matrix=prec[z]), obs=x)


def user_gmm_vindex(x: torch.Tensor, prior: GMMPrior, n_components: int = 2) -> None:
    """The same mixture with ``Vindex`` selection, which broadcasts over particle plates."""
    k = n_components
    weights = pyro.sample("weights", dist.Dirichlet(torch.full((k,), prior.weight_concentration,
                                                               dtype=F64)))
    with pyro.plate("components", k):
        prec = pyro.sample("prec", dist.Wishart(t64(prior.degrees_of_freedom),
                                                precision_matrix=prior.covariance_prior))
        loc = pyro.sample("loc", dist.MultivariateNormal(prior.mean_prior,
                                                         precision_matrix=prior.mean_precision * prec))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Categorical(weights))
        # loc (..., K, D) gets a data dim (..., 1, K, D), so z (..., N) selects along K
        pyro.sample("x", dist.MultivariateNormal(Vindex(loc.unsqueeze(-3))[..., z, :],
                                                 precision_matrix=Vindex(prec.unsqueeze(-4))[..., z, :, :]),
                    obs=x)


def user_gmm_diag(x: torch.Tensor, prior: GMMPrior, n_components: int = 2) -> None:
    """Diagonal GMM as a user writes it: Gamma precisions per dimension, Normal(...).to_event(1)."""
    k, d = n_components, x.shape[1]
    var0 = torch.diagonal(prior.covariance_prior) if prior.covariance_prior.dim() == 2 \
        else prior.covariance_prior
    weights = pyro.sample("weights", dist.Dirichlet(torch.full((k,), prior.weight_concentration,
                                                               dtype=F64)))
    with pyro.plate("components", k):
        prec = pyro.sample("prec", dist.Gamma(torch.full((d,), 0.5 * prior.degrees_of_freedom,
                                                         dtype=F64), 0.5 * var0).to_event(1))
        loc = pyro.sample("loc", dist.Normal(prior.mean_prior,
                                             (prior.mean_precision * prec).rsqrt()).to_event(1))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("x", dist.Normal(loc[z], prec[z].rsqrt()).to_event(1), obs=x)


def faithful_prior(x: torch.Tensor, covariance: str = "full") -> GMMPrior:
    """GaussianMixture's data-derived defaults, written out (alpha0 = 1/K, m0 = mean, nu0 = D)."""
    d = x.shape[1]
    cov = torch.cov(x.T)
    return GMMPrior(0.5, x.mean(0), 1.0, cov if covariance == "full" else torch.diagonal(cov).clone(),
                    float(d))


def faithful_start(x: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(3.0 * x[:, 0])
    return torch.stack([p, 1.0 - p], -1)


def two_level_data() -> tuple[torch.Tensor, torch.Tensor, int]:
    g = torch.Generator().manual_seed(0)
    group = torch.arange(60) % 5
    mean = torch.tensor([-2.0, 0.0, 1.0, 3.0, 5.0], dtype=F64)
    sd = torch.tensor([0.5, 1.0, 2.0, 0.7, 1.5], dtype=F64)
    return mean[group] + sd[group] * torch.randn(60, generator=g, dtype=F64), group, 5


# ---------------------------------------------------------------------------- exact models
def claims_model(claims: torch.Tensor, holders: torch.Tensor, district: torch.Tensor) -> None:
    """The issue's example, verbatim (run it under float64 default dtype)."""
    with pyro.plate("districts", 4):
        rate = pyro.sample("rate", dist.Gamma(2.0, 0.02))
    with pyro.plate("policies", len(claims)):
        pyro.sample("claims", dist.Poisson(rate[district] * holders), obs=claims)


def claims_log_evidence(claims: torch.Tensor, holders: torch.Tensor, district: torch.Tensor,
                        a0: float = 2.0, b0: float = 0.02, n_groups: int = 4) -> float:
    r"""Gamma-Poisson with exposures: per district :math:`j`,

    .. math:: \log p(c_j) = \sum_n (c_n\log h_n - \log c_n!) + a_0\log b_0 - \log\Gamma(a_0)
        + \log\Gamma(a_0 + C_j) - (a_0 + C_j)\log(b_0 + H_j).
    """
    c, h, g = claims.numpy().astype(float), holders.numpy().astype(float), district.numpy()
    cj = np.bincount(g, weights=c, minlength=n_groups)
    hj = np.bincount(g, weights=h, minlength=n_groups)
    base = np.sum(c * np.log(h) - gammaln(c + 1.0))
    return float(base + np.sum(a0 * np.log(b0) - gammaln(a0) + gammaln(a0 + cj)
                               - (a0 + cj) * np.log(b0 + hj)))


def beta_binomial_groups(successes: torch.Tensor, trials: torch.Tensor, group: torch.Tensor,
                         n_groups: int, a0: float = 2.0, b0: float = 3.0) -> None:
    """One Beta success probability per group, Binomial counts per unit."""
    with pyro.plate("groups", n_groups):
        p = pyro.sample("p", dist.Beta(t64(a0), t64(b0)))
    with pyro.plate("units", successes.shape[0]):
        pyro.sample("k", dist.Binomial(trials, probs=p[..., group]), obs=successes)


def beta_binomial_log_evidence(successes: torch.Tensor, trials: torch.Tensor, group: torch.Tensor,
                               n_groups: int, a0: float = 2.0, b0: float = 3.0) -> float:
    r""":math:`\sum_n\log\binom{n_n}{k_n} + \sum_j \log B(a_0+K_j, b_0+N_j-K_j) - \log B(a_0,b_0)`."""
    k, n, g = successes.numpy().astype(float), trials.numpy().astype(float), group.numpy()
    kj = np.bincount(g, weights=k, minlength=n_groups)
    fj = np.bincount(g, weights=n - k, minlength=n_groups)

    def log_b(a: Any, b: Any) -> Any:
        return gammaln(a) + gammaln(b) - gammaln(a + b)

    coef = np.sum(gammaln(n + 1.0) - gammaln(k + 1.0) - gammaln(n - k + 1.0))
    return float(coef + np.sum(log_b(a0 + kj, b0 + fj) - log_b(a0, b0)))


def linreg_known_noise(x: torch.Tensor, y: torch.Tensor, prior_loc: torch.Tensor,
                       prior_cov: torch.Tensor, noise_scale: float) -> None:
    """Linear regression with a full-covariance MVN prior on the weights and known noise."""
    w = pyro.sample("w", dist.MultivariateNormal(prior_loc, covariance_matrix=prior_cov))
    with pyro.plate("data", x.shape[0]):
        # (x * w).sum(-1), not x @ w: a global w drawn under a particle plate has batch (P, 1)
        pyro.sample("y", dist.Normal((x * w).sum(-1), t64(noise_scale)), obs=y)


def linreg_unknown_noise(x: torch.Tensor, y: torch.Tensor, prior_loc: torch.Tensor,
                         prior_cov: torch.Tensor, a0: float = 2.0, b0: float = 1.0) -> None:
    """The same with a Gamma noise precision: mean field q(w)q(tau), no longer exact."""
    w = pyro.sample("w", dist.MultivariateNormal(prior_loc, covariance_matrix=prior_cov))
    tau = pyro.sample("tau", dist.Gamma(t64(a0), t64(b0)))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal((x * w).sum(-1), tau.rsqrt()), obs=y)


def dirichlet_multinomial_groups(counts: torch.Tensor, group: torch.Tensor, n_groups: int,
                                 concentration: torch.Tensor) -> None:
    """One Dirichlet per group; each row of ``counts`` a Multinomial draw of one common total."""
    total = int(counts.sum(-1)[0])
    with pyro.plate("groups", n_groups):
        probs = pyro.sample("probs", dist.Dirichlet(concentration))
    with pyro.plate("rows", counts.shape[0]):
        pyro.sample("counts", dist.Multinomial(total, Vindex(probs)[..., group, :]), obs=counts)


def dirichlet_multinomial_log_evidence(counts: torch.Tensor, group: torch.Tensor, n_groups: int,
                                       concentration: torch.Tensor) -> float:
    r""":math:`\sum_n\log\frac{T!}{\prod_k c_{nk}!} + \sum_j \log\frac{\Gamma(A)}{\Gamma(A + T n_j)}
    \prod_k\frac{\Gamma(\alpha_k + C_{jk})}{\Gamma(\alpha_k)}`, :math:`A = \sum_k\alpha_k`."""
    c, g, al = counts.numpy().astype(float), group.numpy(), concentration.numpy().astype(float)
    cj = np.stack([c[g == j].sum(0) for j in range(n_groups)])
    coef = np.sum(gammaln(c.sum(-1) + 1.0) - gammaln(c + 1.0).sum(-1))
    return float(coef + np.sum(gammaln(al.sum()) - gammaln(al.sum() + cj.sum(-1))
                               + (gammaln(al + cj) - gammaln(al)).sum(-1)))


# ---------------------------------------------------------------------------- helpers for tests
def unwrap(d: Any) -> Any:
    """The base of a distribution wrapped in ``Independent`` (``.to_event``) layers."""
    while isinstance(d, torch.distributions.Independent):
        d = d.base_dist
    return d


def rel_err(a: Any, b: Any) -> float:
    """max |a - b| / max |b|: the error relative to the reference tensor's scale."""
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))
