"""Normal and multivariate Normal factors: q(μ), q(θ_j) and q(w) of Gaussian models."""

from __future__ import annotations

import copy
import math

import torch
import torch.distributions as td
from torch import Tensor

from pyro_vi.factors.base import ExpFamFactor
from pyro_vi.linalg import cholesky

__all__ = ["MultivariateNormal", "Normal"]

_LOG_2PI = math.log(2.0 * math.pi)


class Normal(ExpFamFactor):
    r"""Univariate Normal factor :math:`q(\mu) = N(\mu\,|\,m, \lambda^{-1})`, by **precision**.

    :math:`\eta = (\lambda m, -\lambda/2)`, :math:`T = (\mu, \mu^2)`,
    :math:`A = \tfrac12\lambda m^2 - \tfrac12\log\lambda`,
    :math:`\log h = -\tfrac12\log 2\pi` (Bishop 2006, eq. 2.220 ff.), with moments
    :math:`E[\mu] = m`, :math:`E[\mu^2] = m^2 + 1/\lambda`.

    Elementwise over its batch. Unlike :class:`torch.distributions.Normal`, the second
    parameter is the precision, so it is keyword-only.

    Parameters
    ----------
    loc : Tensor
        :math:`m`.
    precision : Tensor, keyword-only
        :math:`\lambda > 0`; broadcast with ``loc``.

    Examples
    --------
    >>> import torch
    >>> one = torch.tensor(1.0, dtype=torch.float64)
    >>> q = Normal(one, precision=4 * one)
    >>> q.expected_stats()
    (tensor(1., dtype=torch.float64), tensor(1.2500, dtype=torch.float64))
    """

    event_dims = (0, 0)

    def __init__(self, loc: Tensor, *, precision: Tensor) -> None:
        self.loc, self.precision = torch.broadcast_tensors(loc, precision)

    @property
    def batch_shape(self) -> torch.Size:
        """Shape of the batch of independent factors."""
        return self.loc.shape

    @property
    def location(self) -> Tensor:
        """The location :math:`m` (see :meth:`ExpFamFactor.shifted`)."""
        return self.loc

    def shifted(self, c: Tensor) -> Normal:
        """The law of the location plus ``c`` (other parameters unchanged)."""
        out = copy.copy(self)
        out.loc = self.loc + c
        return out

    @property
    def natural_params(self) -> tuple[Tensor, ...]:
        """Natural parameters, aligned with :meth:`expected_stats`."""
        return (self.precision * self.loc, -0.5 * self.precision)

    @classmethod
    def from_natural(cls, *eta: Tensor) -> Normal:
        """Build the factor back from its natural parameters."""
        precision = -2.0 * eta[1]
        return cls(eta[0] / precision, precision=precision)

    def mean(self) -> Tensor:
        r""":math:`E[\mu] = m`."""
        return self.loc

    def variance(self) -> Tensor:
        r""":math:`\mathrm{Var}[\mu] = 1/\lambda`."""
        return 1.0 / self.precision

    def stddev(self) -> Tensor:
        r""":math:`\lambda^{-1/2}`."""
        return self.precision.rsqrt()

    def second_moment(self) -> Tensor:
        r""":math:`E[\mu^2] = m^2 + 1/\lambda`."""
        return self.loc**2 + 1.0 / self.precision

    def expected_stats(self) -> tuple[Tensor, ...]:
        """Moments :math:`E_q[T]`, aligned with :attr:`natural_params`."""
        return (self.loc, self.second_moment())

    def log_normalizer(self) -> Tensor:
        r"""Log-normalizer :math:`A(\eta)`, shape ``batch_shape``."""
        return 0.5 * self.precision * self.loc**2 - 0.5 * torch.log(self.precision)

    def expected_log_base_measure(self) -> Tensor:
        """E_q[log h], shape ``batch_shape``."""
        return torch.full_like(self.loc, -0.5 * _LOG_2PI)

    def entropy(self) -> Tensor:
        r""":math:`H = \tfrac12(1 + \log 2\pi - \log\lambda)`, free of the location.

        The natural-parameter form :math:`A - \langle\eta, E[T]\rangle` cancels
        :math:`\lambda m^2` terms: at :math:`|m| \gg \lambda^{-1/2}` it loses every digit.
        """
        return 0.5 * (1.0 + _LOG_2PI) - 0.5 * torch.log(self.precision)

    def kl(self, prior: ExpFamFactor) -> Tensor:
        r"""Centred closed form (Bishop 2006, eq. 1.113 for two Normals; no cancellation).

        .. math::
            \mathrm{KL}(q\|p) = \tfrac12\Big(\frac{\lambda_p}{\lambda_q} - 1
                + \log\frac{\lambda_q}{\lambda_p} + \lambda_p (m_q - m_p)^2\Big)
        """
        self._check_same_family(prior)
        assert isinstance(prior, Normal)
        ratio = prior.precision / self.precision
        return 0.5 * (ratio - 1.0 - torch.log(ratio)
                      + prior.precision * (self.loc - prior.loc).square())

    def to_distribution(self) -> td.Normal:
        """Return the same law as a :class:`torch.distributions.Normal` (loc, scale)."""
        return td.Normal(self.loc, self.precision.rsqrt())


class MultivariateNormal(ExpFamFactor):
    r"""Multivariate Normal factor :math:`q(w) = N(w\,|\,m, \Lambda^{-1})` in precision form.

    :math:`\eta = (\Lambda m, -\tfrac12\Lambda)`, :math:`T = (w, w w^T)`,
    :math:`A = \tfrac12 m^T\Lambda m - \tfrac12\log|\Lambda|`,
    :math:`\log h = -\tfrac{D}{2}\log 2\pi` (Bishop 2006, eqs. 2.220 ff.), with moments
    :math:`E[w] = m` and :math:`E[ww^T] = \Lambda^{-1} + m m^T`.

    Stored as the mean and the lower Cholesky factor :math:`L` of the precision
    (:math:`\Lambda = L L^T`), the form a CAVI update produces
    (e.g. Bishop 2006, eq. 10.99: :math:`S_N^{-1} = \alpha I + \beta\Phi^T\Phi`).

    Parameters
    ----------
    loc : Tensor
        :math:`m`, shape ``batch_shape + (D,)``.
    precision_tril : Tensor
        :math:`L`, shape ``batch_shape + (D, D)``, lower triangular with a positive diagonal.

    Examples
    --------
    >>> import torch
    >>> q = MultivariateNormal.from_precision(torch.zeros(2, dtype=torch.float64),
    ...                                       4 * torch.eye(2, dtype=torch.float64))
    >>> q.covariance().abs()
    tensor([[0.2500, 0.0000],
            [0.0000, 0.2500]], dtype=torch.float64)
    """

    event_dims = (1, 2)

    def __init__(self, loc: Tensor, precision_tril: Tensor) -> None:
        self.loc = loc
        self.precision_tril = precision_tril

    @classmethod
    def from_precision(cls, loc: Tensor, precision: Tensor, *,
                       where: str = "MultivariateNormal precision") -> MultivariateNormal:
        """Build from a mean and an SPD precision matrix (checked Cholesky, naming ``where``)."""
        return cls(loc, cholesky(precision, where=where))

    @property
    def dim(self) -> int:
        """Dimension :math:`D`."""
        return self.loc.shape[-1]

    @property
    def batch_shape(self) -> torch.Size:
        """Shape of the batch of independent factors."""
        return self.loc.shape[:-1]

    def precision(self) -> Tensor:
        r""":math:`\Lambda = L L^T`."""
        return self.precision_tril @ self.precision_tril.transpose(-1, -2)

    def covariance(self) -> Tensor:
        r""":math:`\Sigma = \Lambda^{-1}`."""
        return torch.cholesky_inverse(self.precision_tril)

    def quadratic_form(self, x: Tensor) -> Tensor:
        r""":math:`x^T \Sigma x = \lVert L^{-1} x \rVert^2` for rows ``x`` of shape ``(..., D)``."""
        z = torch.linalg.solve_triangular(self.precision_tril, x.unsqueeze(-1), upper=False)
        return z.squeeze(-1).square().sum(-1)

    @property
    def location(self) -> Tensor:
        """The location :math:`m` (see :meth:`ExpFamFactor.shifted`)."""
        return self.loc

    def shifted(self, c: Tensor) -> MultivariateNormal:
        """The law of the location plus ``c`` (other parameters unchanged)."""
        out = copy.copy(self)
        out.loc = self.loc + c
        return out

    @property
    def natural_params(self) -> tuple[Tensor, ...]:
        """Natural parameters, aligned with :meth:`expected_stats`."""
        prec = self.precision()
        return ((prec @ self.loc.unsqueeze(-1)).squeeze(-1), -0.5 * prec)

    @classmethod
    def from_natural(cls, *eta: Tensor) -> MultivariateNormal:
        """Build the factor back from its natural parameters."""
        tril = cholesky(-2.0 * eta[1], where="MultivariateNormal.from_natural")
        loc = torch.cholesky_solve(eta[0].unsqueeze(-1), tril).squeeze(-1)
        return cls(loc, tril)

    def mean(self) -> Tensor:
        """:math:`E[w] = m`."""
        return self.loc

    def variance(self) -> Tensor:
        r"""Marginal variances :math:`\mathrm{diag}(\Lambda^{-1})`, shape ``(..., D)``."""
        return torch.diagonal(self.covariance(), dim1=-2, dim2=-1)

    def stddev(self) -> Tensor:
        """Marginal standard deviations, shape ``(..., D)``."""
        return self.variance().sqrt()

    def second_moment(self) -> Tensor:
        r""":math:`E[w w^T] = \Sigma + m m^T`."""
        return self.covariance() + self.loc.unsqueeze(-1) * self.loc.unsqueeze(-2)

    def expected_stats(self) -> tuple[Tensor, ...]:
        """Moments :math:`E_q[T]`, aligned with :attr:`natural_params`."""
        return (self.loc, self.second_moment())

    def log_normalizer(self) -> Tensor:
        r"""Log-normalizer :math:`A(\eta)`, shape ``batch_shape``."""
        half_logdet = torch.log(torch.diagonal(self.precision_tril, dim1=-2, dim2=-1)).sum(-1)
        lt_m = (self.precision_tril.transpose(-1, -2) @ self.loc.unsqueeze(-1)).squeeze(-1)
        return 0.5 * lt_m.square().sum(-1) - half_logdet

    def expected_log_base_measure(self) -> Tensor:
        """E_q[log h], shape ``batch_shape``."""
        return torch.full(self.batch_shape, -0.5 * self.dim * _LOG_2PI,
                          dtype=self.loc.dtype, device=self.loc.device)

    def entropy(self) -> Tensor:
        r""":math:`H = \tfrac D2(1 + \log 2\pi) - \tfrac12\log|\Lambda|`, free of the location."""
        half_logdet = torch.log(torch.diagonal(self.precision_tril, dim1=-2, dim2=-1)).sum(-1)
        return 0.5 * self.dim * (1.0 + _LOG_2PI) - half_logdet

    def kl(self, prior: ExpFamFactor) -> Tensor:
        r"""Centred closed form through the Cholesky factors (no cancellation).

        .. math::
            \mathrm{KL}(q\|p) = \tfrac12\Big(\lVert L_q^{-1} L_p\rVert_F^2 - D
                + \lVert L_p^T (m_q - m_p)\rVert^2
                + 2\sum_i \log\frac{(L_q)_{ii}}{(L_p)_{ii}}\Big),

        i.e. :math:`\tfrac12(\mathrm{tr}(\Lambda_p\Sigma_q) - D + (m_q-m_p)^T\Lambda_p(m_q-m_p)
        + \log|\Lambda_q|/|\Lambda_p|)` (Bishop 2006, eq. 2.155 ff.); :math:`L_q^{-1}L_p` is
        lower triangular, so its diagonal gives the log-determinant ratio directly.
        """
        self._check_same_family(prior)
        assert isinstance(prior, MultivariateNormal)
        lq, lp = torch.broadcast_tensors(self.precision_tril, prior.precision_tril)
        ratio = torch.linalg.solve_triangular(lq, lp, upper=False)
        diff = (self.loc - prior.loc).unsqueeze(-1)
        quad = (lp.transpose(-1, -2) @ diff).squeeze(-1).square().sum(-1)
        log_ratio = torch.log(torch.diagonal(ratio, dim1=-2, dim2=-1)).sum(-1)
        return 0.5 * (ratio.square().sum((-2, -1)) - self.dim + quad) - log_ratio

    def to_distribution(self) -> td.MultivariateNormal:
        """Return the same law as a :class:`torch.distributions.MultivariateNormal`."""
        return td.MultivariateNormal(self.loc, precision_matrix=self.precision())
