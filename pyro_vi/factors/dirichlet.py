"""Dirichlet and Categorical factors: q(π) and q(z) of a mixture."""

from __future__ import annotations

import torch
import torch.distributions as td
from torch import Tensor

from pyro_vi.factors.base import ExpFamFactor

__all__ = ["Categorical", "Dirichlet"]


class Dirichlet(ExpFamFactor):
    r"""Dirichlet factor :math:`q(\pi) = \mathrm{Dir}(\pi\,|\,\alpha)`.

    Natural parameter :math:`\eta = \alpha - 1`, sufficient statistic :math:`T = \log \pi`,
    log-normalizer :math:`A = \sum_k \log\Gamma(\alpha_k) - \log\Gamma(\hat\alpha)`, and
    (Bishop 2006, eq. 10.66)

    .. math:: E[\log \pi_k] = \psi(\alpha_k) - \psi(\hat\alpha), \quad
              \hat\alpha = \textstyle\sum_k \alpha_k .

    Parameters
    ----------
    concentration : Tensor
        :math:`\alpha`, shape ``batch_shape + (K,)``, all entries > 0.

    Examples
    --------
    >>> import torch
    >>> q = Dirichlet(torch.tensor([1.0, 1.0], dtype=torch.float64))
    >>> [round(v, 12) for v in q.expected_log().tolist()]  # ψ(1) - ψ(2) = -1
    [-1.0, -1.0]
    """

    event_dims = (1,)

    def __init__(self, concentration: Tensor) -> None:
        self.concentration = concentration

    @property
    def batch_shape(self) -> torch.Size:
        return self.concentration.shape[:-1]

    @property
    def natural_params(self) -> tuple[Tensor, ...]:
        return (self.concentration - 1.0,)

    @classmethod
    def from_natural(cls, *eta: Tensor) -> Dirichlet:
        return cls(eta[0] + 1.0)

    def expected_log(self) -> Tensor:
        r""":math:`E[\log \pi_k] = \psi(\alpha_k) - \psi(\sum_j \alpha_j)` (Bishop eq. 10.66)."""
        a = self.concentration
        return torch.digamma(a) - torch.digamma(a.sum(-1, keepdim=True))

    def expected_stats(self) -> tuple[Tensor, ...]:
        return (self.expected_log(),)

    def log_normalizer(self) -> Tensor:
        a = self.concentration
        return torch.lgamma(a).sum(-1) - torch.lgamma(a.sum(-1))

    def expected_log_base_measure(self) -> Tensor:
        return torch.zeros(self.batch_shape, dtype=self.concentration.dtype,
                           device=self.concentration.device)

    def mean(self) -> Tensor:
        r""":math:`E[\pi_k] = \alpha_k / \hat\alpha`."""
        a = self.concentration
        return a / a.sum(-1, keepdim=True)

    def variance(self) -> Tensor:
        r""":math:`\mathrm{Var}[\pi_k] = \alpha_k(\hat\alpha-\alpha_k)/(\hat\alpha^2(\hat\alpha+1))`."""
        a = self.concentration
        a0 = a.sum(-1, keepdim=True)
        return a * (a0 - a) / (a0**2 * (a0 + 1.0))

    def stddev(self) -> Tensor:
        r"""Marginal standard deviations, :math:`\sqrt{\mathrm{Var}[\pi_k]}`."""
        return self.variance().sqrt()

    def to_distribution(self) -> td.Dirichlet:
        """The same law as a :class:`torch.distributions.Dirichlet`."""
        return td.Dirichlet(self.concentration)


class Categorical(ExpFamFactor):
    r"""Categorical factor :math:`q(z) = \mathrm{Cat}(z\,|\,r)` (one-hot sufficient statistic).

    Natural parameter: the logits :math:`\eta = \log r` (up to a constant), with
    :math:`A(\eta) = \log\sum_k e^{\eta_k}` and :math:`E[T] = r = \mathrm{softmax}(\eta)`.
    In a mixture, :math:`r_{nk}` are the responsibilities of Bishop (2006, eq. 10.49).

    Parameters
    ----------
    logits : Tensor
        Unnormalised log-probabilities, shape ``batch_shape + (K,)``.

    Examples
    --------
    >>> import torch
    >>> Categorical(torch.zeros(4, dtype=torch.float64)).entropy()
    tensor(1.3863, dtype=torch.float64)
    """

    event_dims = (1,)

    def __init__(self, logits: Tensor) -> None:
        # Normalise, then clamp a -inf logit (an exact zero probability) to the most negative
        # finite float, as torch.distributions does: 0 * (-inf) would make the entropy and the
        # KL identity NaN, while 0 * finfo.min is 0.
        normed = logits - torch.logsumexp(logits, -1, keepdim=True)
        self.logits = normed.clamp_min(torch.finfo(normed.dtype).min)

    @classmethod
    def from_probs(cls, probs: Tensor) -> Categorical:
        """Build from probabilities; an exact zero stays an exact zero."""
        return cls(torch.log(probs))

    @property
    def batch_shape(self) -> torch.Size:
        return self.logits.shape[:-1]

    @property
    def probs(self) -> Tensor:
        r""":math:`r = \mathrm{softmax}(\eta)`."""
        return torch.softmax(self.logits, -1)

    @property
    def natural_params(self) -> tuple[Tensor, ...]:
        return (self.logits,)

    @classmethod
    def from_natural(cls, *eta: Tensor) -> Categorical:
        return cls(eta[0])

    def expected_stats(self) -> tuple[Tensor, ...]:
        return (self.probs,)

    def mean(self) -> Tensor:
        r""":math:`E[z] = r`, the mean of the one-hot indicator, ``batch_shape + (K,)``."""
        return self.probs

    def variance(self) -> Tensor:
        r""":math:`\mathrm{Var}[z_k] = r_k (1 - r_k)` of each indicator, ``batch_shape + (K,)``."""
        r = self.probs
        return r * (1.0 - r)

    def stddev(self) -> Tensor:
        """Square root of :meth:`variance`."""
        return self.variance().sqrt()

    def log_normalizer(self) -> Tensor:
        return torch.logsumexp(self.logits, -1)

    def expected_log_base_measure(self) -> Tensor:
        return torch.zeros(self.batch_shape, dtype=self.logits.dtype, device=self.logits.device)

    def kl(self, prior: ExpFamFactor) -> Tensor:
        r""":math:`\mathrm{KL}(q\,\|\,p) = \sum_k r_k (\log r_k - \log p_k)`.

        Computed from the normalised logits rather than the generic natural-parameter identity
        so that the conventions for exact zeros hold: :math:`0 \log 0 = 0`, and a category
        that ``prior`` rules out (probability exactly 0) but ``self`` does not gives
        :math:`+\infty`, as :func:`torch.distributions.kl_divergence` does.
        """
        self._check_same_family(prior)
        assert isinstance(prior, Categorical)
        r = self.probs
        terms = r * (self.logits - prior.logits)
        ruled_out = (prior.logits == torch.finfo(prior.logits.dtype).min) & (r > 0)
        terms = torch.where(ruled_out, torch.full_like(terms, float("inf")), terms)
        return terms.sum(-1)

    def to_distribution(self) -> td.Categorical:
        """The same law as a :class:`torch.distributions.Categorical`."""
        return td.Categorical(logits=self.logits)
