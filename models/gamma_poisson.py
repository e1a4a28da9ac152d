r"""Gamma–Poisson: one Gamma rate with Poisson counts (Gelman et al. 2013, §2.6).

:math:`\lambda \sim \mathrm{Gam}(a_0, b_0)`, :math:`x_n \sim \mathrm{Poi}(\lambda)`. The guide
is one Gamma, so its optimum *is* the exact posterior and the ELBO at the optimum is the exact
log evidence; CAVI reaches it in one sweep. The analytic ELBO keeps the base measure
:math:`-\log x_n!`, so it is on the scale of Pyro's ``Trace_ELBO``.

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

__all__ = ["GammaParams", "GammaPoisson"]


@dataclass(frozen=True)
class GammaParams:
    r""":math:`q(\lambda) = \mathrm{Gam}(a_N, b_N)`."""

    rate: Gamma


class GammaPoisson(ConjugateModel[Tensor, GammaParams, Stats]):
    r"""Gamma–Poisson: :math:`\lambda \sim \mathrm{Gam}(a_0, b_0)`, :math:`x_n\sim\mathrm{Poi}`.

    Data: counts ``x`` (whole numbers >= 0). Exact posterior (Gelman et al. 2013, §2.6):

    .. math:: q(\lambda) = \mathrm{Gam}\big(a_0 + \textstyle\sum_n x_n,\; b_0 + N\big).

    Parameters
    ----------
    concentration, rate : float, keyword-only
        :math:`a_0, b_0 > 0` (torch's names for the Gamma's shape and rate).
    dtype, device
        Where the fit runs (float64 on the CPU by default).

    Examples
    --------
    >>> import torch
    >>> from pyro_vi import cavi
    >>> cavi(GammaPoisson(concentration=1.0, rate=1.0), torch.tensor([2, 0, 4])).params.rate.mean()
    tensor(1.7500, dtype=torch.float64)
    """

    name = "gamma_poisson"

    def __init__(self, *, concentration: float = 1.0, rate: float = 1.0,
                 dtype: Any = torch.float64, device: Any = None) -> None:
        super().__init__(dtype=dtype, device=device)
        self.concentration = check_positive("concentration", concentration)
        self.rate = check_positive("rate", rate)

    def prior_params(self) -> GammaParams:
        r""":math:`p(\lambda) = \mathrm{Gam}(a_0, b_0)`."""
        return GammaParams(Gamma(self._t(self.concentration), self._t(self.rate)))

    def prepare(self, data: Any) -> tuple[GammaPoisson, Tensor]:
        """Validate counts ``x``: 1-D, whole numbers, >= 0 (ValueError naming ``x`` otherwise)."""
        x = as_vector(data, "x", dtype=self.dtype, device=self.device, integer=True)
        if (x < 0).any():
            raise ValueError(f"x must hold counts >= 0, got {float(x.min())} at index "
                             f"{int((x < 0).nonzero()[0])}")
        return self, x

    @staticmethod
    def _stats(x: Tensor) -> Stats:
        return (x.sum(), torch.tensor(float(x.shape[0]), dtype=x.dtype, device=x.device))

    def init_stats(self, data: Tensor, *, generator: torch.Generator) -> Stats:
        """Return the data's sufficient statistics (there are no local factors)."""
        return self._stats(data)

    def local_step(self, data: Tensor, params: GammaParams) -> Local:
        r"""Statistics and :math:`E_q[\log p(x|\lambda)] = \sum_n x_n E[\log\lambda] - N E[\lambda] - \log x_n!`."""
        q = params.rate
        ell = data.sum() * q.expected_log() - data.shape[0] * q.mean() - torch.lgamma(data + 1).sum()
        return Local(self._stats(data), ell)

    def global_step(self, stats: Stats, params: GammaParams | None) -> GammaParams:
        r""":math:`a_N = a_0 + \sum_n x_n`, :math:`b_N = b_0 + N`."""
        return GammaParams(Gamma(self.concentration + stats[0], self.rate + stats[1]))

    def model(self, x: Tensor) -> None:
        """Pyro model: ``rate`` ~ Gamma, ``obs`` ~ Poisson(rate)."""
        lam = pyro.sample("rate", dist.Gamma(self._t(self.concentration), self._t(self.rate)))
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("obs", dist.Poisson(lam), obs=x)

    def sample_guide(self, params: GammaParams, *data: Any) -> dict[str, Tensor]:
        r"""Sample ``rate`` from :math:`q(\lambda)`."""
        q = params.rate
        return {"rate": pyro.sample("rate", dist.Gamma(q.concentration, q.rate))}

    def guide_params(self, *data: Any) -> GammaParams:
        """Sites ``gamma_poisson.concentration`` and ``.rate``, initialised at the prior."""
        prior, pos = self.prior_params().rate, constraints.positive
        a = pyro.param(f"{self.name}.concentration", prior.concentration.clone, constraint=pos)
        b = pyro.param(f"{self.name}.rate", prior.rate.clone, constraint=pos)
        return GammaParams(Gamma(a, b))
