"""A toy conjugate model shared by the engine and stochastic-VI tests.

x_n ~ N(mu, 1/tau) with tau known and mu ~ N(m0, 1/l0): the mean-field family q(mu) = N(m, 1/l)
is exact (Bishop 2006, eq. 2.141), its statistics (n, sum x) do not depend on the params, and
its ELBO is exactly quadratic in the mean m with curvature -l (so a test can lower it by a
chosen number of nats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from pyro_vi import ConjugateModel, Local
from pyro_vi.factors import Normal


@dataclass(frozen=True)
class MeanParams:
    loc: Normal


class NormalMean(ConjugateModel[Tensor, MeanParams, tuple[Tensor, ...]]):
    """x_n ~ N(mu, 1/tau), tau known, mu ~ N(m0, 1/l0); q(mu) = N(m, 1/l) is exact (PRML 2.141)."""

    def __init__(self, m0: float = 0.5, l0: float = 2.0, tau: float = 3.0) -> None:
        super().__init__()
        self.m0, self.l0, self.tau = m0, l0, tau

    def prepare(self, data: Any) -> tuple[NormalMean, Tensor]:
        return self, torch.as_tensor(data, dtype=torch.float64)

    def init_stats(self, data: Tensor, *, generator: torch.Generator) -> tuple:
        return self.local_step(data, self.prior_params()).stats

    def local_step(self, data: Tensor, params: MeanParams) -> Local:
        m, lam = params.loc.loc, params.loc.precision
        t = self.tau
        ell = 0.5 * math.log(t / (2 * math.pi)) - 0.5 * t * ((data - m) ** 2 + 1.0 / lam)
        n = torch.tensor(float(data.shape[0]), dtype=torch.float64)
        return Local((n, data.sum()), ell.sum())

    def global_step(self, stats: tuple, params: Any) -> MeanParams:
        n, sx = stats
        lam = self.l0 + self.tau * n
        return MeanParams(Normal((self.l0 * self.m0 + self.tau * sx) / lam, precision=lam))

    def prior_params(self) -> MeanParams:
        return MeanParams(Normal(self._t(self.m0), precision=self._t(self.l0)))

    def model(self, x: Tensor) -> None:
        mu = pyro.sample("mu", dist.Normal(self._t(self.m0), self._t(self.l0**-0.5)))
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("obs", dist.Normal(mu, self.tau**-0.5), obs=x)

    def sample_guide(self, params: MeanParams, *data: Any) -> dict[str, Tensor]:
        q = params.loc
        return {"mu": pyro.sample("mu", dist.Normal(q.loc, q.precision.rsqrt()))}

    def guide_params(self, *data: Any) -> MeanParams:
        prior = self.prior_params().loc
        return MeanParams(Normal(pyro.param("toy.loc", prior.loc.clone),
                                 precision=pyro.param("toy.precision", prior.precision.clone,
                                                      constraint=constraints.positive)))


def toy_params(m: float, lam: float) -> MeanParams:
    f = torch.tensor
    return MeanParams(Normal(f(m, dtype=torch.float64), precision=f(lam, dtype=torch.float64)))
