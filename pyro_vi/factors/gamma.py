"""Gamma and (diagonal) Normal-Gamma factors."""

from __future__ import annotations

import copy
import math

import torch
import torch.distributions as td
from torch import Tensor

from pyro_vi.factors.base import ExpFamFactor

__all__ = ["Gamma", "NormalGamma"]


class Gamma(ExpFamFactor):
    r"""Gamma factor :math:`q(\lambda) = \mathrm{Gam}(\lambda\,|\,a, b)` (concentration, rate).

    :math:`\eta = (a - 1, -b)`, :math:`T = (\log\lambda, \lambda)`,
    :math:`A = \log\Gamma(a) - a \log b`, and (Bishop 2006, eqs. B.27, B.30)

    .. math:: E[\lambda] = a/b, \qquad E[\log\lambda] = \psi(a) - \log b .

    Elementwise: every entry of ``concentration``/``rate`` is an independent factor. The
    attributes are named as :class:`torch.distributions.Gamma` names them.

    Examples
    --------
    >>> import torch
    >>> q = Gamma(torch.tensor(2.0, dtype=torch.float64), torch.tensor(4.0, dtype=torch.float64))
    >>> q.mean()
    tensor(0.5000, dtype=torch.float64)
    """

    event_dims = (0, 0)

    def __init__(self, concentration: Tensor, rate: Tensor) -> None:
        self.concentration, self.rate = torch.broadcast_tensors(concentration, rate)

    @property
    def batch_shape(self) -> torch.Size:
        return self.concentration.shape

    @property
    def natural_params(self) -> tuple[Tensor, ...]:
        return (self.concentration - 1.0, -self.rate)

    @classmethod
    def from_natural(cls, *eta: Tensor) -> Gamma:
        return cls(eta[0] + 1.0, -eta[1])

    def mean(self) -> Tensor:
        r""":math:`E[\lambda] = a / b`."""
        return self.concentration / self.rate

    def variance(self) -> Tensor:
        r""":math:`\mathrm{Var}[\lambda] = a / b^2` (Bishop 2006, eq. B.28)."""
        return self.concentration / self.rate**2

    def stddev(self) -> Tensor:
        r""":math:`\sqrt{a} / b`."""
        return self.variance().sqrt()

    def expected_log(self) -> Tensor:
        r""":math:`E[\log\lambda] = \psi(a) - \log b`."""
        return torch.digamma(self.concentration) - torch.log(self.rate)

    def expected_stats(self) -> tuple[Tensor, ...]:
        return (self.expected_log(), self.mean())

    def log_normalizer(self) -> Tensor:
        return torch.lgamma(self.concentration) - self.concentration * torch.log(self.rate)

    def expected_log_base_measure(self) -> Tensor:
        return torch.zeros_like(self.concentration)

    def entropy(self) -> Tensor:
        r""":math:`H = a - \log b + \log\Gamma(a) + (1 - a)\psi(a)` (Bishop 2006, eq. B.31)."""
        a = self.concentration
        return a - torch.log(self.rate) + torch.lgamma(a) + (1.0 - a) * torch.digamma(a)

    def kl(self, prior: ExpFamFactor) -> Tensor:
        r"""Closed form with the rates as one ratio, so scaling both rates cancels exactly.

        .. math::
            \mathrm{KL}(q\|p) = (a - a_0)\psi(a) - \log\Gamma(a) + \log\Gamma(a_0)
                + a_0 \log\frac{b}{b_0} + a\Big(\frac{b_0}{b} - 1\Big)
        """
        self._check_same_family(prior)
        assert isinstance(prior, Gamma)
        a, a0 = self.concentration, prior.concentration
        ratio = prior.rate / self.rate
        return ((a - a0) * torch.digamma(a) - torch.lgamma(a) + torch.lgamma(a0)
                - a0 * torch.log(ratio) + a * (ratio - 1.0))

    def to_distribution(self) -> td.Gamma:
        """The same law as a :class:`torch.distributions.Gamma` (elementwise batch)."""
        return td.Gamma(self.concentration, self.rate)


class NormalGamma(ExpFamFactor):
    r"""Normal-Gamma factor :math:`q(\mu,\lambda) = N(\mu|m,(\beta\lambda)^{-1})\,\mathrm{Gam}(\lambda|a,b)`.

    Elementwise over its batch: a diagonal-covariance mixture component is a batch of ``D``
    independent Normal-Gamma factors, one per dimension (Bishop 2006, eq. 2.154).

    In exponential-family form, with :math:`T = (\lambda\mu, \lambda\mu^2, \lambda, \log\lambda)`:

    .. math::
        \eta = \big(\beta m,\; -\tfrac{\beta}{2},\; -b - \tfrac{\beta m^2}{2},\;
                a - \tfrac12\big), \qquad
        A = \log\Gamma(a) - a\log b - \tfrac12\log\beta, \qquad
        \log h = -\tfrac12\log 2\pi,

    and the moments :math:`E[\lambda\mu] = m\,a/b`,
    :math:`E[\lambda\mu^2] = 1/\beta + m^2 a/b`, :math:`E[\lambda] = a/b`,
    :math:`E[\log\lambda] = \psi(a) - \log b`.

    Parameters
    ----------
    loc, precision_scale, concentration, rate : Tensor
        :math:`m`, :math:`\beta > 0`, :math:`a > 0`, :math:`b > 0`; broadcast together.

    Examples
    --------
    >>> import torch
    >>> one = torch.tensor(1.0, dtype=torch.float64)
    >>> NormalGamma(0 * one, one, one, one).expected_mahalanobis(one)
    tensor(2., dtype=torch.float64)
    """

    event_dims = (0, 0, 0, 0)

    def __init__(self, loc: Tensor, precision_scale: Tensor, concentration: Tensor,
                 rate: Tensor) -> None:
        self.loc, self.precision_scale, self.concentration, self.rate = torch.broadcast_tensors(
            loc, precision_scale, concentration, rate
        )

    @property
    def batch_shape(self) -> torch.Size:
        return self.loc.shape

    @property
    def precision(self) -> Gamma:
        r"""The marginal factor :math:`q(\lambda) = \mathrm{Gam}(a, b)`."""
        return Gamma(self.concentration, self.rate)

    @property
    def location(self) -> Tensor:
        """The location :math:`m` (see :meth:`ExpFamFactor.shifted`)."""
        return self.loc

    def shifted(self, c: Tensor) -> NormalGamma:
        """The law of the location plus ``c`` (other parameters unchanged)."""
        out = copy.copy(self)
        out.loc = self.loc + c
        return out

    @property
    def natural_params(self) -> tuple[Tensor, ...]:
        m, beta, a, b = self.loc, self.precision_scale, self.concentration, self.rate
        return (beta * m, -0.5 * beta, -b - 0.5 * beta * m**2, a - 0.5)

    @classmethod
    def from_natural(cls, *eta: Tensor) -> NormalGamma:
        beta = -2.0 * eta[1]
        m = eta[0] / beta
        return cls(m, beta, eta[3] + 0.5, -eta[2] - 0.5 * beta * m**2)

    def expected_stats(self) -> tuple[Tensor, ...]:
        m, beta = self.loc, self.precision_scale
        e_lam = self.concentration / self.rate
        return (m * e_lam, 1.0 / beta + m**2 * e_lam, e_lam, self.precision.expected_log())

    def log_normalizer(self) -> Tensor:
        return (torch.lgamma(self.concentration) - self.concentration * torch.log(self.rate)
                - 0.5 * torch.log(self.precision_scale))

    def expected_log_base_measure(self) -> Tensor:
        return torch.full_like(self.loc, -0.5 * math.log(2 * math.pi))

    def expected_mahalanobis(self, x: Tensor) -> Tensor:
        r""":math:`E[\lambda (x-\mu)^2] = 1/\beta + (a/b)(x-m)^2`, broadcast over ``x``.

        The diagonal counterpart of Bishop (2006, eq. 10.64).
        """
        return 1.0 / self.precision_scale + self.concentration / self.rate * (x - self.loc) ** 2

    def entropy(self) -> Tensor:
        r""":math:`H[q(\lambda)] + \tfrac12\big(1 + \log 2\pi - \log\beta - E[\log\lambda]\big)`.

        The chain rule of entropy, :math:`H[\lambda] + E_\lambda H[\mu|\lambda]`: no
        :math:`\beta m^2` terms to cancel, unlike the natural-parameter form.
        """
        gam = self.precision
        return gam.entropy() + 0.5 * (1.0 + math.log(2 * math.pi) - torch.log(self.precision_scale)
                                      - gam.expected_log())

    def kl(self, prior: ExpFamFactor) -> Tensor:
        r"""Centred closed form: the Gammas' KL plus the expected KL of the conditional Normals.

        .. math::
            \mathrm{KL}(q\|p) = \mathrm{KL}(\mathrm{Gam}(a,b)\|\mathrm{Gam}(a_0,b_0))
                + \tfrac12\Big(\frac{\beta_0}{\beta} - 1 + \log\frac{\beta}{\beta_0}
                + \beta_0\frac{a}{b}(m - m_0)^2\Big)

        (the chain rule of KL). The natural-parameter form cancels :math:`\beta m^2 a/b` terms
        and loses every digit once :math:`|m|` is :math:`10^8` times the spread.
        """
        self._check_same_family(prior)
        assert isinstance(prior, NormalGamma)
        ratio = prior.precision_scale / self.precision_scale
        cond = 0.5 * (ratio - 1.0 - torch.log(ratio) + prior.precision_scale * self.concentration
                      / self.rate * (self.loc - prior.loc).square())
        return self.precision.kl(prior.precision) + cond

    def marginal_loc_variance(self) -> Tensor:
        r""":math:`\mathrm{Var}[\mu] = b / (\beta (a - 1))`, the variance of :math:`\mu`'s marginal.

        The marginal is a Student-t with :math:`2a` degrees of freedom, location :math:`m` and
        scale :math:`\sqrt{b / (a\beta)}` (Bishop 2006, eq. 2.159); the variance is finite for
        :math:`a > 1` and ``inf`` otherwise.
        """
        var = self.rate / (self.precision_scale * (self.concentration - 1.0))
        return torch.where(self.concentration > 1.0, var, torch.full_like(var, math.inf))

    def mean(self) -> tuple[Tensor, Tensor]:
        r"""Marginal means :math:`(E[\mu], E[\lambda]) = (m, a / b)`, each ``batch_shape``."""
        return self.loc, self.precision.mean()

    def variance(self) -> tuple[Tensor, Tensor]:
        r"""Marginal variances :math:`(\mathrm{Var}[\mu], \mathrm{Var}[\lambda])`; see :meth:`marginal_loc_variance`."""
        return self.marginal_loc_variance(), self.precision.variance()

    def stddev(self) -> tuple[Tensor, Tensor]:
        """Square roots of :meth:`variance`."""
        var_loc, var_prec = self.variance()
        return var_loc.sqrt(), var_prec.sqrt()
