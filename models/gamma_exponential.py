r"""Gamma–Exponential: one Gamma rate with Exponential waiting times.

:math:`\lambda \sim \mathrm{Gam}(a_0, b_0)`, :math:`x_n \sim \mathrm{Exp}(\lambda)`. The guide
is one Gamma, so its optimum *is* the exact posterior (Gelman et al. 2013, §2.7) and the ELBO
at the optimum is the exact log evidence

.. math:: \log p(x) = a_0\log b_0 - \log\Gamma(a_0) + \log\Gamma(a_N) - a_N\log b_N,
    \qquad a_N = a_0 + N,\ b_N = b_0 + \textstyle\sum_n x_n .

Pyro sites: ``rate`` and ``obs`` in plate ``data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from pyro_vi._checks import as_vector, check_positive
from pyro_vi.cavi.model import ConjugateModel, Local, Stats
from pyro_vi.factors import Gamma

__all__ = ["ExponentialRateParams", "GammaExponential"]


@dataclass(frozen=True)
class ExponentialRateParams:
    r""":math:`q(\lambda) = \mathrm{Gam}(a_N, b_N)`."""

    rate: Gamma


class GammaExponential(ConjugateModel[Tensor, ExponentialRateParams, Stats]):
    r"""Gamma–Exponential: :math:`\lambda \sim \mathrm{Gam}(a_0, b_0)`, :math:`x_n \sim \mathrm{Exp}(\lambda)`.

    Data: waiting times ``x >= 0``. Exact posterior:
    :math:`q(\lambda) = \mathrm{Gam}(a_0 + N,\; b_0 + \sum_n x_n)`.

    Parameters
    ----------
    concentration, rate : float, keyword-only
        :math:`a_0, b_0 > 0`.
    dtype, device
        Where the fit runs (float64 on the CPU by default).

    Examples
    --------
    >>> import torch
    >>> from pyro_vi import cavi
    >>> cavi(GammaExponential(), torch.tensor([0.5, 1.5])).params.rate.mean()  # (1 + 2) / (1 + 2)
    tensor(1., dtype=torch.float64)
    """

    name = "gamma_exponential"

    def __init__(self, *, concentration: float = 1.0, rate: float = 1.0,
                 dtype: Any = torch.float64, device: Any = None) -> None:
        super().__init__(dtype=dtype, device=device)
        self.concentration = check_positive("concentration", concentration)
        self.rate = check_positive("rate", rate)

    def prior_params(self) -> ExponentialRateParams:
        r""":math:`p(\lambda) = \mathrm{Gam}(a_0, b_0)`."""
        return ExponentialRateParams(Gamma(self._t(self.concentration), self._t(self.rate)))

    def prepare(self, data: Any) -> tuple[GammaExponential, Tensor]:
        """Validate waiting times ``x``: finite, 1-D, >= 0."""
        x = as_vector(data, "x", dtype=self.dtype, device=self.device)
        if (x < 0).any():
            raise ValueError("x must hold waiting times >= 0")
        return self, x

    @staticmethod
    def _stats(x: Tensor) -> Stats:
        return (torch.tensor(float(x.shape[0]), dtype=x.dtype, device=x.device), x.sum())

    def init_stats(self, data: Tensor, *, generator: torch.Generator) -> Stats:
        r"""Return :math:`(N, \sum_n x_n)` (there are no local factors)."""
        return self._stats(data)

    def local_step(self, data: Tensor, params: ExponentialRateParams) -> Local:
        r""":math:`E_q[\log p(x|\lambda)] = N E[\log\lambda] - E[\lambda]\sum_n x_n`."""
        n, sx = self._stats(data)
        return Local((n, sx), n * params.rate.expected_log() - params.rate.mean() * sx)

    def global_step(self, stats: Stats, params: ExponentialRateParams | None) -> ExponentialRateParams:
        r""":math:`a_N = a_0 + N`, :math:`b_N = b_0 + \sum_n x_n`."""
        return ExponentialRateParams(Gamma(self.concentration + stats[0], self.rate + stats[1]))

    def model(self, x: Tensor) -> None:
        """Pyro model: ``rate`` ~ Gamma, ``obs`` ~ Exponential(rate)."""
        lam = pyro.sample("rate", dist.Gamma(self._t(self.concentration), self._t(self.rate)))
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("obs", dist.Exponential(lam), obs=x)

    def sample_guide(self, params: ExponentialRateParams, *data: Any) -> dict[str, Tensor]:
        r"""Sample ``rate`` from :math:`q(\lambda)`."""
        return {"rate": pyro.sample("rate", dist.Gamma(params.rate.concentration, params.rate.rate))}

    def guide_params(self, *data: Any) -> ExponentialRateParams:
        """Sites ``gamma_exponential.concentration`` and ``.rate``, initialised at the prior."""
        prior, pos = self.prior_params().rate, constraints.positive
        a = pyro.param(f"{self.name}.concentration", prior.concentration.clone, constraint=pos)
        b = pyro.param(f"{self.name}.rate", prior.rate.clone, constraint=pos)
        return ExponentialRateParams(Gamma(a, b))
