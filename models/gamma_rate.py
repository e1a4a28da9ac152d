r"""What the Gamma-rate models share: one Gamma rate :math:`\lambda` and a likelihood conjugate to it.

For a likelihood whose log is :math:`s_a(x)\log\lambda - s_b(x)\lambda + \log h(x)` (Poisson:
:math:`s_a = x, s_b = 1`; Exponential: :math:`s_a = 1, s_b = x`), the prior
:math:`\mathrm{Gam}(a_0, b_0)` gives the exact posterior

.. math:: q(\lambda) = \mathrm{Gam}\big(a_0 + \textstyle\sum_n s_a(x_n),\;
    b_0 + \sum_n s_b(x_n)\big)

(Gelman et al. 2013, §2.6–2.7), so the ELBO at the optimum is the exact log evidence. A model
gives its data check, its statistics :math:`(\sum s_a, \sum s_b)`, :math:`\sum\log h` and its
Pyro likelihood; everything else of the contract is here. Pyro sites: ``rate`` and ``obs`` in
plate ``data``.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from pyro_vi._checks import check_positive
from pyro_vi.cavi.model import ConjugateModel, Local, Stats
from pyro_vi.factors import Gamma

__all__ = ["GammaParams", "GammaRateModel"]


@dataclass(frozen=True)
class GammaParams:
    r""":math:`q(\lambda) = \mathrm{Gam}(a_N, b_N)`."""

    rate: Gamma


class GammaRateModel(ConjugateModel[Tensor, GammaParams, Stats]):
    r"""Base of the single-Gamma-rate models: :math:`\lambda \sim \mathrm{Gam}(a_0, b_0)`.

    Parameters
    ----------
    concentration, rate : float, keyword-only
        :math:`a_0, b_0 > 0` (torch's names for the Gamma's shape and rate).
    dtype, device
        Where the fit runs (float64 on the CPU by default).
    """

    def __init__(self, *, concentration: float = 1.0, rate: float = 1.0,
                 dtype: Any = torch.float64, device: Any = None) -> None:
        super().__init__(dtype=dtype, device=device)
        self.concentration = check_positive("concentration", concentration)
        self.rate = check_positive("rate", rate)

    @abstractmethod
    def _stats(self, x: Tensor) -> Stats:
        r""":math:`(\sum_n s_a(x_n), \sum_n s_b(x_n))`, each a scalar tensor."""

    @abstractmethod
    def _log_base_measure(self, x: Tensor) -> Tensor:
        r""":math:`\sum_n \log h(x_n)`."""

    @abstractmethod
    def likelihood(self, rate: Tensor) -> dist.TorchDistribution:
        """The Pyro distribution of one observation given the rate."""

    def prior_params(self) -> GammaParams:
        r""":math:`p(\lambda) = \mathrm{Gam}(a_0, b_0)`."""
        return GammaParams(Gamma(self._t(self.concentration), self._t(self.rate)))

    def init_stats(self, data: Tensor, *, generator: torch.Generator) -> Stats:
        """The data's statistics (there are no local factors)."""
        return self._stats(data)

    def local_step(self, data: Tensor, params: GammaParams) -> Local:
        r""":math:`E_q[\log p(x|\lambda)] = \sum s_a\,E[\log\lambda] - \sum s_b\,E[\lambda] + \sum\log h`."""
        s_a, s_b = stats = self._stats(data)
        q = params.rate
        return Local(stats, s_a * q.expected_log() - s_b * q.mean() + self._log_base_measure(data))

    def global_step(self, stats: Stats, params: GammaParams | None) -> GammaParams:
        r""":math:`a_N = a_0 + \sum s_a`, :math:`b_N = b_0 + \sum s_b`."""
        return GammaParams(Gamma(self.concentration + stats[0], self.rate + stats[1]))

    def model(self, x: Tensor) -> None:
        """Pyro model: ``rate`` ~ Gamma(a0, b0), ``obs`` ~ the likelihood, in plate ``data``."""
        lam = pyro.sample("rate", dist.Gamma(self._t(self.concentration), self._t(self.rate)))
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("obs", self.likelihood(lam), obs=x)

    def sample_guide(self, params: GammaParams, *data: Any) -> dict[str, Tensor]:
        r"""Sample ``rate`` from :math:`q(\lambda)`."""
        q = params.rate
        return {"rate": pyro.sample("rate", dist.Gamma(q.concentration, q.rate))}

    def guide_params(self, *data: Any) -> GammaParams:
        """Sites ``<name>.concentration`` and ``<name>.rate``, initialised at the prior."""
        prior, pos = self.prior_params().rate, constraints.positive
        a = pyro.param(f"{self.name}.concentration", prior.concentration.clone, constraint=pos)
        b = pyro.param(f"{self.name}.rate", prior.rate.clone, constraint=pos)
        return GammaParams(Gamma(a, b))
