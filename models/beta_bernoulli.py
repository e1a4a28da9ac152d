r"""Beta–Bernoulli (and Beta–Binomial): one Beta latent with conjugate observations.

:math:`p \sim \mathrm{Beta}(a_0, b_0)`; data are 0/1 outcomes (Bernoulli) or pairs
``(successes, trials)`` (Binomial). The guide is one Beta, so its optimum *is* the exact
posterior (Bishop 2006, §2.1) and the ELBO at the optimum is the exact log evidence; CAVI
reaches it in one sweep. The analytic ELBO keeps the base measure :math:`\log\binom{n}{k}`, so
it is on the scale of Pyro's ``Trace_ELBO``.

Pyro sites: ``prob`` and ``obs`` in plate ``data``.
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
from pyro_vi.factors import Beta

__all__ = ["BetaBernoulli", "BetaParams"]


@dataclass(frozen=True)
class BetaParams:
    r""":math:`q(p) = \mathrm{Beta}(a_N, b_N)`."""

    prob: Beta


class BetaBernoulli(ConjugateModel[tuple[Tensor, Tensor], BetaParams, Stats]):
    r"""Beta–Bernoulli/Binomial: :math:`p \sim \mathrm{Beta}(a_0, b_0)`, Bernoulli or Binomial data.

    Data: ``y`` of 0s and 1s (Bernoulli), or a tuple ``(successes, trials)`` of whole numbers
    with ``0 <= successes <= trials`` (Binomial). Exact posterior (Bishop 2006, eq. 2.18):

    .. math:: q(p) = \mathrm{Beta}\big(a_0 + \textstyle\sum_n k_n,\; b_0 + \sum_n (n_n - k_n)\big).

    Parameters
    ----------
    alpha, beta : float, keyword-only
        :math:`a_0, b_0 > 0`.
    dtype, device
        Where the fit runs (float64 on the CPU by default).

    Examples
    --------
    >>> import torch
    >>> from pyro_vi import cavi
    >>> fit = cavi(BetaBernoulli(alpha=1.0, beta=1.0), torch.tensor([1.0, 1.0, 0.0]))
    >>> fit.params.prob.mean()  # (1 + 2) / (2 + 3)
    tensor(0.6000, dtype=torch.float64)
    """

    name = "beta_bernoulli"

    def __init__(self, *, alpha: float = 1.0, beta: float = 1.0, dtype: Any = torch.float64,
                 device: Any = None) -> None:
        super().__init__(dtype=dtype, device=device)
        self.alpha = check_positive("alpha", alpha)
        self.beta = check_positive("beta", beta)

    def prior_params(self) -> BetaParams:
        r""":math:`p(p) = \mathrm{Beta}(a_0, b_0)`."""
        return BetaParams(Beta(self._t(self.alpha), self._t(self.beta)))

    def prepare(self, data: Any) -> tuple[BetaBernoulli, tuple[Tensor, Tensor]]:
        """Canonical data ``(successes, trials)``; ValueError for non-binary ``y``, k > n, n < 0."""
        if isinstance(data, tuple | list):
            if len(data) != 2:
                raise ValueError("data must be y or a tuple (successes, trials)")
            k = as_vector(data[0], "successes", dtype=self.dtype, device=self.device, integer=True)
            n = as_vector(data[1], "trials", dtype=self.dtype, device=self.device, integer=True)
            if k.shape != n.shape:
                raise ValueError(f"successes and trials differ in length: {k.shape[0]} vs "
                                 f"{n.shape[0]}")
            if (n < 0).any():
                raise ValueError("trials must be >= 0")
            if (k < 0).any() or (k > n).any():
                raise ValueError("successes must lie in [0, trials]")
            return self, (k, n)
        y = as_vector(data, "y", dtype=self.dtype, device=self.device)
        if ((y != 0) & (y != 1)).any():
            raise ValueError("y must hold only 0s and 1s (Bernoulli data); pass "
                             "(successes, trials) for Binomial counts")
        return self, (y, torch.ones_like(y))

    @staticmethod
    def _stats(data: tuple[Tensor, Tensor]) -> Stats:
        k, n = data
        return (k.sum(), (n - k).sum())

    def init_stats(self, data: tuple[Tensor, Tensor], *, generator: torch.Generator) -> Stats:
        """Return the data's sufficient statistics (there are no local factors)."""
        return self._stats(data)

    def local_step(self, data: tuple[Tensor, Tensor], params: BetaParams) -> Local:
        r"""Statistics and :math:`E_q[\log p(x|p)]`, base measure :math:`\log\binom{n}{k}` included."""
        k, n = data
        e_log_p, e_log_1mp = params.prob.expected_stats()
        log_binom = torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
        ell = log_binom.sum() + k.sum() * e_log_p + (n - k).sum() * e_log_1mp
        return Local(self._stats(data), ell)

    def global_step(self, stats: Stats, params: BetaParams | None) -> BetaParams:
        r"""Set :math:`a_N = a_0 + \sum_n k_n`, :math:`b_N = b_0 + \sum_n (n_n - k_n)` (exact)."""
        return BetaParams(Beta(self.alpha + stats[0], self.beta + stats[1]))

    def model(self, y: Tensor, trials: Tensor | None = None) -> None:
        """Pyro model: ``prob`` ~ Beta, ``obs`` ~ Bernoulli(prob) (or Binomial(trials, prob))."""
        p = pyro.sample("prob", dist.Beta(self._t(self.alpha), self._t(self.beta)))
        with pyro.plate("data", y.shape[0], dim=-1):
            obs_d = dist.Bernoulli(p) if trials is None else dist.Binomial(trials, p)
            pyro.sample("obs", obs_d, obs=y)

    def sample_guide(self, params: BetaParams, *data: Any) -> dict[str, Tensor]:
        """Sample ``prob`` from :math:`q(p)`."""
        q = params.prob
        return {"prob": pyro.sample("prob", dist.Beta(q.concentration1, q.concentration0))}

    def guide_params(self, *data: Any) -> BetaParams:
        """Sites ``beta_bernoulli.concentration1/0``, initialised at the prior."""
        prior, pos = self.prior_params().prob, constraints.positive
        a = pyro.param(f"{self.name}.concentration1", prior.concentration1.clone, constraint=pos)
        b = pyro.param(f"{self.name}.concentration0", prior.concentration0.clone, constraint=pos)
        return BetaParams(Beta(a, b))
