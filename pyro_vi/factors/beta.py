"""Beta factor: q(p) of a Bernoulli or Binomial success probability."""

from __future__ import annotations

import torch
import torch.distributions as td
from torch import Tensor

from pyro_vi.factors.base import ExpFamFactor

__all__ = ["Beta"]


class Beta(ExpFamFactor):
    r"""Beta factor :math:`q(p) = \mathrm{Beta}(p\,|\,a, b)`, the ``K = 2`` Dirichlet.

    :math:`\eta = (a - 1, b - 1)`, :math:`T = (\log p, \log(1-p))`,
    :math:`A = \log\Gamma(a) + \log\Gamma(b) - \log\Gamma(a+b)` (Bishop 2006, eq. 2.13), and

    .. math:: E[\log p] = \psi(a) - \psi(a+b), \qquad E[\log(1-p)] = \psi(b) - \psi(a+b).

    Elementwise: every entry of ``concentration1``/``concentration0`` is an independent factor.
    The argument names and order are :class:`torch.distributions.Beta`'s.

    Parameters
    ----------
    concentration1 : Tensor
        :math:`a > 0` (pseudo-count of successes + 1).
    concentration0 : Tensor
        :math:`b > 0` (pseudo-count of failures + 1).

    Examples
    --------
    >>> import torch
    >>> q = Beta(torch.tensor(3.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    >>> q.mean(), round(float(q.expected_stats()[0]), 12)  # ψ(3) - ψ(4) = -1/3
    (tensor(0.7500, dtype=torch.float64), -0.333333333333)
    """

    event_dims = (0, 0)

    def __init__(self, concentration1: Tensor, concentration0: Tensor) -> None:
        self.concentration1, self.concentration0 = torch.broadcast_tensors(
            concentration1, concentration0)

    @property
    def batch_shape(self) -> torch.Size:
        """Shape of the batch of independent factors."""
        return self.concentration1.shape

    @property
    def natural_params(self) -> tuple[Tensor, ...]:
        """Natural parameters, aligned with :meth:`expected_stats`."""
        return (self.concentration1 - 1.0, self.concentration0 - 1.0)

    @classmethod
    def from_natural(cls, *eta: Tensor) -> Beta:
        """Build the factor back from its natural parameters."""
        return cls(eta[0] + 1.0, eta[1] + 1.0)

    def expected_stats(self) -> tuple[Tensor, ...]:
        """Moments :math:`E_q[T]`, aligned with :attr:`natural_params`."""
        a, b = self.concentration1, self.concentration0
        psi_ab = torch.digamma(a + b)
        return (torch.digamma(a) - psi_ab, torch.digamma(b) - psi_ab)

    def log_normalizer(self) -> Tensor:
        r"""Log-normalizer :math:`A(\eta)`, shape ``batch_shape``."""
        a, b = self.concentration1, self.concentration0
        return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)

    def expected_log_base_measure(self) -> Tensor:
        """E_q[log h], shape ``batch_shape``."""
        return torch.zeros_like(self.concentration1)

    def mean(self) -> Tensor:
        """:math:`E[p] = a / (a + b)`."""
        return self.concentration1 / (self.concentration1 + self.concentration0)

    def variance(self) -> Tensor:
        r""":math:`\mathrm{Var}[p] = ab / ((a+b)^2 (a+b+1))`."""
        a, b = self.concentration1, self.concentration0
        return a * b / ((a + b) ** 2 * (a + b + 1.0))

    def stddev(self) -> Tensor:
        r"""Standard deviation, :math:`\sqrt{\mathrm{Var}[p]}`."""
        return self.variance().sqrt()

    def to_distribution(self) -> td.Beta:
        """Return the same law as a :class:`torch.distributions.Beta`."""
        return td.Beta(self.concentration1, self.concentration0)
