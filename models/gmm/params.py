"""The Bayesian GMM's records: its variational parameters and its resolved hyper-parameters."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from pyro_vi.factors import Dirichlet, NormalGamma, NormalWishart

__all__ = ["GMMHyperparams", "GMMParams"]


@dataclass(frozen=True)
class GMMHyperparams:
    r"""Concrete hyper-parameters of a :class:`~pyro_vi.models.gmm.GaussianMixture`.

    ``covariance_prior`` is :math:`W_0^{-1}` (the prior guess of a covariance, scaled by
    :math:`\nu_0`): a ``(D, D)`` SPD matrix for ``"full"``, a ``(D,)`` vector of variances for
    ``"diag"`` (then :math:`a_0 = \nu_0/2`, :math:`b_{0d} = \mathrm{cov}_d/2`). The prior as
    factors is :meth:`GaussianMixture.prior_params`.
    """

    weight_concentration: float
    mean_prior: Tensor
    mean_precision: float
    covariance_prior: Tensor
    degrees_of_freedom: float


@dataclass(frozen=True)
class GMMParams:
    """Variational parameters of the mixture's global factors.

    ``weights``: :class:`~pyro_vi.factors.Dirichlet` over K; ``components``: a
    :class:`~pyro_vi.factors.NormalWishart` with batch ``(K,)`` (full) or a
    :class:`~pyro_vi.factors.NormalGamma` with batch ``(K, D)`` (diag).
    """

    weights: Dirichlet
    components: NormalWishart | NormalGamma
