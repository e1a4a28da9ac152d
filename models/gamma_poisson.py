r"""Gamma–Poisson: one Gamma rate with Poisson counts (Gelman et al. 2013, §2.6).

:math:`\lambda \sim \mathrm{Gam}(a_0, b_0)`, :math:`x_n \sim \mathrm{Poi}(\lambda)`. The guide
is one Gamma, so its optimum *is* the exact posterior and the ELBO at the optimum is the exact
log evidence; CAVI reaches it in one sweep. The analytic ELBO keeps the base measure
:math:`-\log x_n!`, so it is on the scale of Pyro's ``Trace_ELBO``.

Pyro sites: ``rate`` and ``obs`` in plate ``data``.
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_vi._checks import as_vector
from pyro_vi.cavi.model import Stats
from pyro_vi.models.gamma_rate import GammaParams, GammaRateModel

__all__ = ["GammaParams", "GammaPoisson"]


class GammaPoisson(GammaRateModel):
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

    def prepare(self, data: Any) -> tuple[GammaPoisson, Tensor]:
        """Validate counts ``x``: 1-D, whole numbers, >= 0 (ValueError naming ``x`` otherwise)."""
        x = as_vector(data, "x", dtype=self.dtype, device=self.device, integer=True)
        if (x < 0).any():
            raise ValueError(f"x must hold counts >= 0, got {float(x.min())} at index "
                             f"{int((x < 0).nonzero()[0])}")
        return self, x

    def _stats(self, x: Tensor) -> Stats:
        r""":math:`(\sum_n x_n, N)`: :math:`\log p(x|\lambda) = x\log\lambda - \lambda - \log x!`."""
        return (x.sum(), torch.tensor(float(x.shape[0]), dtype=x.dtype, device=x.device))

    def _log_base_measure(self, x: Tensor) -> Tensor:
        return -torch.lgamma(x + 1).sum()

    def likelihood(self, rate: Tensor) -> dist.TorchDistribution:
        """``Poisson(rate)``."""
        return dist.Poisson(rate)
