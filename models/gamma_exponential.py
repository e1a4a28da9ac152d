r"""Gamma–Exponential: one Gamma rate with Exponential waiting times.

:math:`\lambda \sim \mathrm{Gam}(a_0, b_0)`, :math:`x_n \sim \mathrm{Exp}(\lambda)`. The guide
is one Gamma, so its optimum *is* the exact posterior (Gelman et al. 2013, §2.7) and the ELBO
at the optimum is the exact log evidence

.. math:: \log p(x) = a_0\log b_0 - \log\Gamma(a_0) + \log\Gamma(a_N) - a_N\log b_N,
    \qquad a_N = a_0 + N,\ b_N = b_0 + \textstyle\sum_n x_n .

Pyro sites: ``rate`` and ``obs`` in plate ``data``; the rest of the contract is
:class:`~pyro_vi.models.gamma_rate.GammaRateModel`'s.
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_vi._checks import as_vector
from pyro_vi.cavi.model import Stats
from pyro_vi.models.gamma_rate import GammaParams, GammaRateModel

__all__ = ["GammaExponential", "GammaParams"]


class GammaExponential(GammaRateModel):
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

    def prepare(self, data: Any) -> tuple[GammaExponential, Tensor]:
        """Validate waiting times ``x``: finite, 1-D, >= 0."""
        x = as_vector(data, "x", dtype=self.dtype, device=self.device)
        if (x < 0).any():
            raise ValueError("x must hold waiting times >= 0")
        return self, x

    def _stats(self, x: Tensor) -> Stats:
        r""":math:`(N, \sum_n x_n)`: :math:`\log p(x|\lambda) = \log\lambda - \lambda x`."""
        return (torch.tensor(float(x.shape[0]), dtype=x.dtype, device=x.device), x.sum())

    def _log_base_measure(self, x: Tensor) -> Tensor:
        return x.new_zeros(())

    def likelihood(self, rate: Tensor) -> dist.TorchDistribution:
        """``Exponential(rate)``."""
        return dist.Exponential(rate)
