r"""The exponential-family interface shared by every variational factor.

A factor is a (batched) distribution written in exponential-family form

.. math::

    q(\theta) = h(\theta) \exp\big(\langle \eta, T(\theta)\rangle - A(\eta)\big),

with natural parameters :math:`\eta`, sufficient statistics :math:`T`, log-normalizer
:math:`A` and base measure :math:`h`. Every factor exposes the same few operations, after
BayesPy's ``ExponentialFamily`` nodes (Luttinen 2016, JMLR 17(41)):

* :attr:`~ExpFamFactor.natural_params` and :meth:`~ExpFamFactor.from_natural`;
* :meth:`~ExpFamFactor.expected_stats`, the moments :math:`E_q[T(\theta)]`, aligned with the
  natural parameters;
* :meth:`~ExpFamFactor.log_normalizer` :math:`A(\eta)`;
* :meth:`~ExpFamFactor.entropy` and :meth:`~ExpFamFactor.kl`.

Because :math:`\nabla A(\eta) = E[T]`, the KL between two members of one family needs nothing
else (Wainwright & Jordan 2008, eq. 3.x; Bishop 2006, eq. 2.226):

.. math::

    \mathrm{KL}(q\,\|\,p) = A(\eta_p) - A(\eta_q) - \langle \eta_p - \eta_q, E_q[T]\rangle .

All tensors are float64 by default and live on the device of the parameters they were built
from. Every factor is batched: ``batch_shape`` is the shape of independent factors (a plate).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import Tensor

__all__ = ["ExpFamFactor", "blend"]

F = TypeVar("F", bound="ExpFamFactor")


def _inner(a: Tensor, b: Tensor, event_dim: int) -> Tensor:
    """Sum of ``a * b`` over the trailing ``event_dim`` dimensions."""
    prod = a * b
    if event_dim == 0:
        return prod
    return prod.sum(dim=tuple(range(-event_dim, 0)))


class ExpFamFactor(ABC):
    """Base class of a batched exponential-family factor.

    Subclasses set :attr:`event_dims`, the number of event dimensions of each natural
    parameter (e.g. ``(1, 0, 2, 0)`` for a Normal-Wishart: a vector, a scalar, a matrix and a
    scalar), and implement the abstract members below.
    """

    #: Event dimensions of each natural parameter, in order.
    event_dims: tuple[int, ...] = ()

    @property
    @abstractmethod
    def natural_params(self) -> tuple[Tensor, ...]:
        r"""Natural parameters :math:`\eta`, a tuple aligned with :meth:`expected_stats`."""

    @classmethod
    @abstractmethod
    def from_natural(cls: type[F], *eta: Tensor) -> F:
        """Build the factor back from its natural parameters."""

    @abstractmethod
    def expected_stats(self) -> tuple[Tensor, ...]:
        r"""Moments :math:`E_q[T(\theta)]`, aligned with :attr:`natural_params`."""

    @abstractmethod
    def log_normalizer(self) -> Tensor:
        r"""Log-normalizer :math:`A(\eta)`, of shape ``batch_shape``."""

    @abstractmethod
    def expected_log_base_measure(self) -> Tensor:
        r""":math:`E_q[\log h(\theta)]`, of shape ``batch_shape`` (often a constant)."""

    @property
    @abstractmethod
    def batch_shape(self) -> torch.Size:
        """Shape of the batch of independent factors."""

    def _inner_natural(self, eta: Sequence[Tensor], stats: Sequence[Tensor]) -> Tensor:
        total = torch.zeros((), dtype=stats[0].dtype, device=stats[0].device)
        for e, s, d in zip(eta, stats, self.event_dims, strict=True):
            total = total + _inner(e, s, d)
        return total

    def entropy(self) -> Tensor:
        r"""Differential (or Shannon) entropy.

        .. math:: H[q] = A(\eta) - \langle \eta, E_q[T] \rangle - E_q[\log h].
        """
        inner = self._inner_natural(self.natural_params, self.expected_stats())
        return self.log_normalizer() - inner - self.expected_log_base_measure()

    def expected_log_prob(self, other: ExpFamFactor) -> Tensor:
        r"""Cross term :math:`E_q[\log p(\theta)]` for ``p = other`` of the same family."""
        self._check_same_family(other)
        inner = self._inner_natural(other.natural_params, self.expected_stats())
        return inner - other.log_normalizer() + self.expected_log_base_measure()

    def kl(self, prior: ExpFamFactor) -> Tensor:
        r""":math:`\mathrm{KL}(q\,\|\,p)` to ``prior`` of the same family, shape ``batch_shape``.

        .. math::
            \mathrm{KL}(q\|p) = A(\eta_p) - A(\eta_q)
                - \langle \eta_p - \eta_q, E_q[T] \rangle .
        """
        self._check_same_family(prior)
        diff = [p - q for p, q in zip(prior.natural_params, self.natural_params, strict=True)]
        return (
            prior.log_normalizer()
            - self.log_normalizer()
            - self._inner_natural(diff, self.expected_stats())
        )

    def shifted(self: F, c: Tensor) -> F:
        r"""The law of :math:`\theta + c` for a family with a location (a copy); others raise.

        Translation is a linear map of the natural parameters, so :func:`blend` can step in
        coordinates centred on the old location, where no :math:`\beta m m^T` term cancels.
        """
        raise TypeError(f"{type(self).__name__} has no location to shift")

    @property
    def location(self) -> Tensor | None:
        """The location parameter of a family that has one (None: no location)."""
        return None

    def _check_same_family(self, other: ExpFamFactor) -> None:
        if type(other) is not type(self):
            raise TypeError(
                f"{type(self).__name__} needs a {type(self).__name__} here, "
                f"got {type(other).__name__}"
            )


def blend(old: F, new: F, rho: float) -> F:
    r"""Step in natural-parameter space: :math:`(1-\rho)\,\eta_{old} + \rho\,\eta_{new}`.

    This is the stochastic-VI update of Hoffman, Blei, Wang & Paisley (2013, eq. 25): for
    conjugate-exponential models the natural gradient of the ELBO with respect to the global
    natural parameters is :math:`\hat\eta - \eta`, so a step of size :math:`\rho` is a convex
    combination. Families with a location (:attr:`ExpFamFactor.location`) step in
    coordinates centred on ``old``'s location, which is the same convex combination (translation
    is linear in :math:`\eta`) without the cancellation of :math:`\beta m m^T` at large offsets.

    Examples
    --------
    >>> import torch
    >>> from pyro_vi.factors import Gamma
    >>> g = blend(Gamma(torch.tensor(2.0), torch.tensor(1.0)),
    ...           Gamma(torch.tensor(4.0), torch.tensor(3.0)), 0.5)
    >>> float(g.concentration), float(g.rate)
    (3.0, 2.0)
    """
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must lie in [0, 1], got {rho}")
    origin = old.location
    if origin is None:
        return _blend_natural(old, new, rho)
    # step centred on the old location: the same step, without the cancellation
    return _blend_natural(old.shifted(-origin), new.shifted(-origin), rho).shifted(origin)


def _blend_natural(old: F, new: F, rho: float) -> F:
    eta = [(1.0 - rho) * a + rho * b for a, b in zip(old.natural_params, new.natural_params,
                                                     strict=True)]
    return type(old).from_natural(*eta)
