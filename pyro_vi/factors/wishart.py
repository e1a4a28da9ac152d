"""Wishart and Normal-Wishart factors: q(Λ) and q(μ, Λ) of a full-covariance component."""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Iterator
from typing import Any

import pyro.distributions as dist
import torch
import torch.distributions as td
from torch import Tensor

from pyro_vi.factors.base import ExpFamFactor
from pyro_vi.linalg import inverse_cholesky

__all__ = ["BartlettWishart", "NormalWishart", "Wishart", "expected_logdet",
           "log_wishart_normalizer", "muted_wishart_warning"]


class BartlettWishart(dist.Wishart):
    """:class:`pyro.distributions.Wishart` without torch's spurious resampling warning.

    ``torch.distributions.Wishart.rsample`` (torch <= 2.13) tests ``support.check(sample)``
    (True for a *valid* sample) as if it flagged singular ones, so every batched draw warns
    "Singular sample detected" and is redrawn (pytorch/pytorch#122021). The Bartlett draw
    (Bartlett 1933; Smith & Hocking 1972) is exact, so it is returned as is.
    """

    def rsample(self, sample_shape: Any = (), max_try_correction: Any = None) -> Tensor:
        """An exact Bartlett draw, never redrawn."""
        return self._bartlett_sampling(torch.Size(sample_shape))


@contextlib.contextmanager
def muted_wishart_warning() -> Iterator[None]:
    """Mute torch's spurious "Singular sample detected" of a user's own ``dist.Wishart`` draws.

    For code that samples a model we did not write (the prior draws of a detection or an
    export); see :class:`BartlettWishart` for the torch issue.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Singular sample detected")
        yield


def _logdet_tril(tril: Tensor) -> Tensor:
    r""":math:`\log|L L^T|` from a lower Cholesky factor."""
    return 2.0 * torch.log(torch.diagonal(tril, dim1=-2, dim2=-1)).sum(-1)


def log_wishart_normalizer(scale_tril: Tensor, df: Tensor) -> Tensor:
    r"""Wishart log-normalizer :math:`-\log B(W,\nu)` (Bishop 2006, eq. B.79).

    .. math::
        -\log B(W, \nu) = \frac{\nu}{2}\log|W| + \frac{\nu D}{2}\log 2
            + \log\Gamma_D\!\left(\frac{\nu}{2}\right).

    Shapes: ``scale_tril`` is ``(..., D, D)`` (Cholesky of W), ``df`` is ``(...)``.
    """
    d = scale_tril.shape[-1]
    return (0.5 * df * _logdet_tril(scale_tril) + 0.5 * df * d * math.log(2.0)
            + torch.mvlgamma(0.5 * df, p=d))


def expected_logdet(scale_tril: Tensor, df: Tensor) -> Tensor:
    r""":math:`E[\log|\Lambda|]` under :math:`\mathcal{W}(\Lambda|W,\nu)` (Bishop 2006, eq. 10.65).

    .. math::
        E[\log|\Lambda|] = \sum_{i=1}^{D}\psi\!\left(\frac{\nu+1-i}{2}\right)
            + D\log 2 + \log|W| .
    """
    d = scale_tril.shape[-1]
    i = torch.arange(1, d + 1, dtype=df.dtype, device=df.device)
    psi = torch.digamma(0.5 * (df.unsqueeze(-1) + 1.0 - i)).sum(-1)
    return psi + d * math.log(2.0) + _logdet_tril(scale_tril)


class Wishart(ExpFamFactor):
    r"""Wishart factor :math:`q(\Lambda) = \mathcal{W}(\Lambda\,|\,W, \nu)` over precisions.

    :math:`\eta = (-\tfrac12 W^{-1}, \tfrac12(\nu - D - 1))`, :math:`T = (\Lambda, \log|\Lambda|)`,
    :math:`A = -\log B(W,\nu)` (:func:`log_wishart_normalizer`), :math:`E[\Lambda] = \nu W`
    and :math:`E[\log|\Lambda|]` from :func:`expected_logdet`.

    Parameters
    ----------
    scale_tril : Tensor
        Lower Cholesky factor of the scale matrix :math:`W`, shape ``batch_shape + (D, D)``.
    df : Tensor
        Degrees of freedom :math:`\nu > D - 1`, shape ``batch_shape``.

    Examples
    --------
    >>> import torch
    >>> q = Wishart(torch.eye(2, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64))
    >>> q.mean()
    tensor([[3., 0.],
            [0., 3.]], dtype=torch.float64)
    """

    event_dims = (2, 0)

    def __init__(self, scale_tril: Tensor, df: Tensor) -> None:
        self.scale_tril = scale_tril
        self.df = df

    @property
    def dim(self) -> int:
        """Matrix dimension :math:`D`."""
        return self.scale_tril.shape[-1]

    @property
    def batch_shape(self) -> torch.Size:
        return self.df.shape

    @property
    def scale(self) -> Tensor:
        """:math:`W = L L^T`."""
        return self.scale_tril @ self.scale_tril.transpose(-1, -2)

    @property
    def scale_inv(self) -> Tensor:
        """:math:`W^{-1}`."""
        return torch.cholesky_inverse(self.scale_tril)

    @property
    def natural_params(self) -> tuple[Tensor, ...]:
        return (-0.5 * self.scale_inv, 0.5 * (self.df - self.dim - 1.0))

    @classmethod
    def from_natural(cls, *eta: Tensor) -> Wishart:
        d = eta[0].shape[-1]
        tril = inverse_cholesky(-2.0 * eta[0], where="Wishart.from_natural")
        return cls(tril, 2.0 * eta[1] + d + 1.0)

    def mean(self) -> Tensor:
        r""":math:`E[\Lambda] = \nu W` (Bishop 2006, eq. B.80)."""
        return self.df[..., None, None] * self.scale

    def variance(self) -> Tensor:
        r""":math:`\mathrm{Var}[\Lambda_{ij}] = \nu (W_{ij}^2 + W_{ii} W_{jj})` (Anderson 2003, Thm. 7.3.3).

        Elementwise, ``batch_shape + (D, D)``.
        """
        w = self.scale
        diag = torch.diagonal(w, dim1=-2, dim2=-1)
        return self.df[..., None, None] * (w**2 + diag.unsqueeze(-1) * diag.unsqueeze(-2))

    def stddev(self) -> Tensor:
        """Square root of :meth:`variance`, elementwise."""
        return self.variance().sqrt()

    def expected_logdet(self) -> Tensor:
        r""":math:`E[\log|\Lambda|]` (Bishop 2006, eq. 10.65)."""
        return expected_logdet(self.scale_tril, self.df)

    def expected_stats(self) -> tuple[Tensor, ...]:
        return (self.mean(), self.expected_logdet())

    def log_normalizer(self) -> Tensor:
        return log_wishart_normalizer(self.scale_tril, self.df)

    def expected_log_base_measure(self) -> Tensor:
        return torch.zeros_like(self.df)

    def kl(self, prior: ExpFamFactor) -> Tensor:
        r"""Closed form through :math:`M = L_0^{-1} L` (lower triangular; :math:`W = LL^T`).

        .. math::
            \mathrm{KL}(q\|p) = \tfrac{\nu}{2}\big(\lVert M\rVert_F^2 - D\big)
                - \nu_0 \sum_i \log M_{ii} + \log\Gamma_D(\tfrac{\nu_0}{2})
                - \log\Gamma_D(\tfrac{\nu}{2}) + \tfrac{\nu - \nu_0}{2}\,\psi_D(\tfrac{\nu}{2}),

        with :math:`\lVert M\rVert_F^2 = \mathrm{tr}(W_0^{-1}W)`,
        :math:`2\sum_i\log M_{ii} = \log|W_0^{-1}W|` and :math:`\psi_D` the multivariate
        digamma. Scaling both :math:`W` and :math:`W_0` leaves :math:`M` unchanged.
        """
        self._check_same_family(prior)
        assert isinstance(prior, Wishart)
        d = self.dim
        l0, lq = torch.broadcast_tensors(prior.scale_tril, self.scale_tril)
        m = torch.linalg.solve_triangular(l0, lq, upper=False)
        nu, nu0 = self.df, prior.df
        i = torch.arange(1, d + 1, dtype=nu.dtype, device=nu.device)
        psi = torch.digamma(0.5 * (nu.unsqueeze(-1) + 1.0 - i)).sum(-1)
        log_diag = torch.log(torch.diagonal(m, dim1=-2, dim2=-1)).sum(-1)
        return (0.5 * nu * (m.square().sum((-2, -1)) - d) - nu0 * log_diag
                + torch.mvlgamma(0.5 * nu0, p=d) - torch.mvlgamma(0.5 * nu, p=d)
                + 0.5 * (nu - nu0) * psi)

    def to_distribution(self) -> td.Wishart:
        """The same law as a :class:`torch.distributions.Wishart`."""
        return td.Wishart(df=self.df, scale_tril=self.scale_tril)


class NormalWishart(ExpFamFactor):
    r"""Normal-Wishart factor :math:`q(\mu,\Lambda) = N(\mu|m,(\beta\Lambda)^{-1})\,\mathcal{W}(\Lambda|W,\nu)`.

    The conjugate prior and mean-field posterior of a full-covariance Gaussian component
    (Bishop 2006, eqs. 2.157, 10.59). With
    :math:`T = (\Lambda\mu, \mu^T\Lambda\mu, \Lambda, \log|\Lambda|)`:

    .. math::
        \eta = \big(\beta m,\; -\tfrac{\beta}{2},\;
                -\tfrac12 (W^{-1} + \beta m m^T),\; \tfrac12(\nu - D)\big),\qquad
        A = -\tfrac{D}{2}\log\beta - \log B(W,\nu),\qquad
        \log h = -\tfrac{D}{2}\log 2\pi,

    with moments :math:`E[\Lambda\mu] = \nu W m`,
    :math:`E[\mu^T\Lambda\mu] = D/\beta + \nu\, m^T W m`, :math:`E[\Lambda] = \nu W` and
    :math:`E[\log|\Lambda|]` (eq. 10.65).

    Parameters
    ----------
    loc : Tensor
        :math:`m`, shape ``batch_shape + (D,)``.
    precision_scale : Tensor
        :math:`\beta > 0`, shape ``batch_shape``.
    scale_tril : Tensor
        Cholesky factor of :math:`W`, shape ``batch_shape + (D, D)``.
    df : Tensor
        :math:`\nu > D - 1`, shape ``batch_shape``.

    Examples
    --------
    >>> import torch
    >>> eye = torch.eye(2, dtype=torch.float64)
    >>> one = torch.ones(1, dtype=torch.float64)
    >>> q = NormalWishart(torch.zeros(1, 2, dtype=torch.float64), one, eye[None], 2 * one)
    >>> q.expected_mahalanobis(torch.ones(1, 2, dtype=torch.float64))  # D/β + ν xᵀWx
    tensor([[6.]], dtype=torch.float64)
    """

    event_dims = (1, 0, 2, 0)

    def __init__(self, loc: Tensor, precision_scale: Tensor, scale_tril: Tensor, df: Tensor) -> None:
        self.loc = loc
        self.precision_scale = precision_scale
        self.scale_tril = scale_tril
        self.df = df

    @property
    def dim(self) -> int:
        """Dimension :math:`D`."""
        return self.loc.shape[-1]

    @property
    def batch_shape(self) -> torch.Size:
        return self.df.shape

    @property
    def precision(self) -> Wishart:
        r"""The marginal factor :math:`q(\Lambda) = \mathcal{W}(W, \nu)`."""
        return Wishart(self.scale_tril, self.df)

    @property
    def location(self) -> Tensor:
        """The location :math:`m` (see :meth:`ExpFamFactor.shifted`)."""
        return self.loc

    def shifted(self, c: Tensor) -> NormalWishart:
        """The law of the location plus ``c`` (other parameters unchanged)."""
        out = copy.copy(self)
        out.loc = self.loc + c
        return out

    @property
    def natural_params(self) -> tuple[Tensor, ...]:
        m, beta = self.loc, self.precision_scale
        outer = m.unsqueeze(-1) * m.unsqueeze(-2)
        return (
            beta.unsqueeze(-1) * m,
            -0.5 * beta,
            -0.5 * (self.precision.scale_inv + beta[..., None, None] * outer),
            0.5 * (self.df - self.dim),
        )

    @classmethod
    def from_natural(cls, *eta: Tensor) -> NormalWishart:
        beta = -2.0 * eta[1]
        m = eta[0] / beta.unsqueeze(-1)
        outer = m.unsqueeze(-1) * m.unsqueeze(-2)
        w_inv = -2.0 * eta[2] - beta[..., None, None] * outer
        tril = inverse_cholesky(w_inv, where="NormalWishart.from_natural")
        return cls(m, beta, tril, 2.0 * eta[3] + m.shape[-1])

    def mean(self) -> tuple[Tensor, Tensor]:
        r"""Marginal means :math:`(E[\mu], E[\Lambda]) = (m, \nu W)`: ``(batch + (D,), batch + (D, D))``."""
        return self.loc, self.precision.mean()

    def loc_covariance(self) -> Tensor:
        r"""Covariance of the marginal of :math:`\mu`, :math:`(\beta W)^{-1} / (\nu - D - 1)`.

        The marginal is a multivariate Student-t with :math:`\nu - D + 1` degrees of freedom
        and scale :math:`((\nu - D + 1)\beta W)^{-1}` (Bishop 2006, eq. B.68–B.70 with
        eq. 2.161); its covariance is finite for :math:`\nu > D + 1` and ``inf`` otherwise.
        Shape ``batch_shape + (D, D)``.
        """
        dof = self.df - self.dim - 1.0
        cov = torch.cholesky_inverse(self.scale_tril) / (self.precision_scale * dof)[..., None, None]
        return torch.where((dof > 0)[..., None, None], cov, torch.full_like(cov, math.inf))

    def variance(self) -> tuple[Tensor, Tensor]:
        r"""Marginal variances :math:`(\mathrm{Var}[\mu_d], \mathrm{Var}[\Lambda_{ij}])`; see :meth:`loc_covariance`."""
        return torch.diagonal(self.loc_covariance(), dim1=-2, dim2=-1), self.precision.variance()

    def stddev(self) -> tuple[Tensor, Tensor]:
        """Square roots of :meth:`variance`."""
        var_loc, var_prec = self.variance()
        return var_loc.sqrt(), var_prec.sqrt()

    def expected_stats(self) -> tuple[Tensor, ...]:
        w = self.precision.scale
        wm = (w @ self.loc.unsqueeze(-1)).squeeze(-1)
        nu = self.df
        return (
            nu.unsqueeze(-1) * wm,
            self.dim / self.precision_scale + nu * (self.loc * wm).sum(-1),
            nu[..., None, None] * w,
            self.precision.expected_logdet(),
        )

    def log_normalizer(self) -> Tensor:
        return (-0.5 * self.dim * torch.log(self.precision_scale)
                + log_wishart_normalizer(self.scale_tril, self.df))

    def expected_log_base_measure(self) -> Tensor:
        return torch.full_like(self.df, -0.5 * self.dim * math.log(2 * math.pi))

    def entropy(self) -> Tensor:
        r""":math:`H[q(\Lambda)] + \tfrac D2(1 + \log 2\pi - \log\beta) - \tfrac12 E[\log|\Lambda|]`.

        The chain rule of entropy: no :math:`\beta\, m^T\Lambda m` terms to cancel.
        """
        wish = self.precision
        return (wish.entropy() + 0.5 * self.dim * (1.0 + math.log(2 * math.pi)
                                                   - torch.log(self.precision_scale))
                - 0.5 * wish.expected_logdet())

    def kl(self, prior: ExpFamFactor) -> Tensor:
        r"""Centred closed form: the Wisharts' KL plus the expected KL of the conditional Normals.

        .. math::
            \mathrm{KL}(q\|p) = \mathrm{KL}(\mathcal{W}(W,\nu)\|\mathcal{W}(W_0,\nu_0))
                + \tfrac12\Big(D\frac{\beta_0}{\beta} - D + D\log\frac{\beta}{\beta_0}
                + \beta_0\,\nu\,(m - m_0)^T W (m - m_0)\Big)

        (the chain rule of KL, with :math:`E[\Lambda] = \nu W`). The natural-parameter form
        cancels :math:`\beta\,\nu\, m^T W m` terms: shifting a fitted solution by
        :math:`10^8` moved it by about 200 nats.
        """
        self._check_same_family(prior)
        assert isinstance(prior, NormalWishart)
        d = self.dim
        ratio = prior.precision_scale / self.precision_scale
        proj = (self.scale_tril.transpose(-1, -2) @ (self.loc - prior.loc).unsqueeze(-1)).squeeze(-1)
        cond = 0.5 * (d * (ratio - 1.0 - torch.log(ratio))
                      + prior.precision_scale * self.df * proj.square().sum(-1))
        return self.precision.kl(prior.precision) + cond

    def expected_mahalanobis(self, x: Tensor) -> Tensor:
        r""":math:`E[(x_n-\mu_k)^T\Lambda_k(x_n-\mu_k)] = D/\beta_k + \nu_k (x_n-m_k)^T W_k (x_n-m_k)`.

        Bishop (2006, eq. 10.64). For ``x`` of shape ``(N, D)`` it returns
        ``(N,) + batch_shape`` (``(N, K)`` for a plate of ``K`` components), with one GEMM of
        shape ``(N, D) @ (D, K·D)`` through the Cholesky factors :math:`W_k = L_k L_k^T`:
        :math:`(x-m_k)^T W_k (x-m_k) = \lVert L_k^T x - L_k^T m_k \rVert^2`, where ``K`` is
        the number of factors in the batch. Memory is ``N·K·D``; callers chunk ``x`` when that
        does not fit.
        """
        d = self.dim
        if x.dim() != 2 or x.shape[-1] != d:
            raise ValueError(f"x must have shape (N, {d}), got {tuple(x.shape)}")
        n = x.shape[0]
        batch = self.batch_shape
        k = batch.numel()
        tril = self.scale_tril.reshape(k, d, d)
        proj = (x @ tril.permute(1, 0, 2).reshape(d, k * d)).view(n, k, d)
        proj_m = (self.loc.reshape(k, 1, d) @ tril).squeeze(-2)  # (K, D)
        quad = (proj - proj_m).square_().sum(-1)
        out = d / self.precision_scale.reshape(k) + self.df.reshape(k) * quad
        return out.reshape((n, *batch))
