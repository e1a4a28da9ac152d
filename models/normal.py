r"""A Normal with unknown mean and precision (Bishop 2006, §10.1.3), as CAVI model and Pyro pair.

Model (Bishop eqs. 10.21–10.23):

.. math::
    \tau \sim \mathrm{Gam}(a_0, b_0),\quad
    \mu \mid \tau \sim N(\mu_0, (\lambda_0\tau)^{-1}),\quad
    x_n \mid \mu, \tau \sim N(\mu, \tau^{-1}),\ n = 1..N.

Mean-field guide :math:`q(\mu)q(\tau)` (Normal, Gamma). The exact posterior is Normal-Gamma,
so the factorisation is an approximation: it drops the posterior coupling of :math:`\mu` and
:math:`\tau` and underestimates :math:`\mathrm{Var}(\mu)` (Bishop 2006, §10.1.2–10.1.3).

Pyro sites: ``precision`` (:math:`\tau`), ``loc`` (:math:`\mu`), ``obs`` in plate ``data``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from pyro_vi._checks import as_vector, check_finite, check_positive, check_spread
from pyro_vi.cavi.model import ConjugateModel, Local, Stats, data_roundoff
from pyro_vi.distributed.collectives import Comm
from pyro_vi.factors import Gamma, Normal

__all__ = ["NormalParams", "UnivariateNormal"]

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class NormalParams:
    r"""Factors :math:`q(\mu) = N(m_N, \lambda_N^{-1})`, :math:`q(\tau) = \mathrm{Gam}(a_N,b_N)`."""

    loc: Normal
    precision: Gamma


class UnivariateNormal(ConjugateModel[Tensor, NormalParams, Stats]):
    r"""Normal with unknown mean :math:`\mu` and precision :math:`\tau`, Normal-Gamma prior.

    Parameters
    ----------
    mean_prior : float, keyword-only
        :math:`\mu_0`.
    mean_precision : float
        :math:`\lambda_0 > 0`, the prior's weight in pseudo-observations.
    precision_concentration, precision_rate : float
        :math:`a_0, b_0 > 0` of the Gamma prior on :math:`\tau` (torch's names).
    dtype, device
        Where the fit runs (float64 on the CPU by default).

    Examples
    --------
    >>> import torch
    >>> from pyro_vi import cavi
    >>> x = torch.tensor([0.9, 1.1, 1.3, 0.7], dtype=torch.float64)
    >>> fit = cavi(UnivariateNormal(), x)
    >>> round(float(fit.params.loc.mean()), 6)  # (λ0 μ0 + Σx) / (λ0 + N) = 4 / 5
    0.8
    """

    name = "normal"

    def __init__(self, *, mean_prior: float = 0.0, mean_precision: float = 1.0,
                 precision_concentration: float = 1.0, precision_rate: float = 1.0,
                 dtype: Any = torch.float64, device: Any = None) -> None:
        super().__init__(dtype=dtype, device=device)
        self.mean_prior = check_finite("mean_prior", mean_prior)
        self.mean_precision = check_positive("mean_precision", mean_precision)
        self.precision_concentration = check_positive("precision_concentration",
                                                      precision_concentration)
        self.precision_rate = check_positive("precision_rate", precision_rate)
        #: The point the statistics are centred on: the prior mean until :meth:`prepare` sets
        #: it to the data mean, so raw-unit data (an offset of 1e9 spreads) keep their digits.
        self.origin = self.mean_prior

    def prior_params(self) -> NormalParams:
        r"""The prior as factors: :math:`p(\tau) = \mathrm{Gam}(a_0, b_0)` and one for :math:`\mu`.

        For :math:`\mu` it is :math:`N(\mu_0, (\lambda_0 E_p[\tau])^{-1})` (its conditional prior at the prior mean of
        :math:`\tau`; :meth:`global_elbo` uses the exact conditional).
        """
        e_tau = self.precision_concentration / self.precision_rate
        return NormalParams(Normal(self._t(self.mean_prior),
                                   precision=self._t(self.mean_precision * e_tau)),
                            Gamma(self._t(self.precision_concentration),
                                  self._t(self.precision_rate)))

    # -------------------------------------------------------------------- CAVI methods
    def prepare(self, data: Any) -> tuple[UnivariateNormal, Tensor]:
        r"""Validate ``data`` (a finite, non-empty 1-D float array ``x``); centre on its mean.

        Returns a copy whose :attr:`origin` is the data mean: the statistics are sums of
        :math:`x_n - \bar x`, so no sum of squares of raw values has to cancel.
        """
        x = as_vector(data, "x", dtype=self.dtype, device=self.device)
        check_spread("x", x)
        new = copy.copy(self)
        new.origin = float(x.mean())
        return new, x

    def prepare_shard(self, data: Any, *, comm: Comm) -> tuple[UnivariateNormal, Tensor]:
        """:meth:`prepare` for one rank's rows; :attr:`origin` is the mean of all ranks' rows."""
        new, x = self.prepare(data)
        total, count = comm.sum((x.sum(), x.new_tensor(float(x.shape[0]))))
        new.origin = float(total / count)
        return new, x

    def _stats(self, x: Tensor) -> Stats:
        r""":math:`(N, \sum_n (x_n-c), \sum_n (x_n-c)^2)`, centred on :math:`c` = :attr:`origin`."""
        xc = x - self.origin
        return (torch.tensor(float(x.shape[0]), dtype=x.dtype, device=x.device), xc.sum(),
                xc.square().sum())

    def init_stats(self, data: Tensor, *, generator: torch.Generator) -> Stats:
        """Return the data's sufficient statistics (there are no local factors)."""
        return self._stats(data)

    def local_step(self, data: Tensor, params: NormalParams) -> Local:
        r"""Statistics and :math:`E_q[\log p(x\mid\mu,\tau)]` (Bishop 2006, eq. 10.28's terms).

        .. math::
            \sum_n E_q[\log N(x_n|\mu,\tau^{-1})] = \tfrac{N}{2}(E[\log\tau] - \log 2\pi)
                - \tfrac{E[\tau]}{2}\sum_n \big((x_n - m_N)^2 + \lambda_N^{-1}\big)
        """
        q_mu, q_tau = params.loc, params.precision
        n = data.shape[0]
        sq = (data - q_mu.loc).square().sum() + n * q_mu.variance()
        elbo = 0.5 * n * (q_tau.expected_log() - _LOG_2PI) - 0.5 * q_tau.mean() * sq
        return Local(self._stats(data), elbo)

    def elbo_roundoff(self, data: Tensor) -> float | None:
        """The contract's estimate for the data centred on :attr:`origin`, as the statistics are."""
        return data_roundoff(data - self.origin)

    def global_step(self, stats: Stats, params: NormalParams | None) -> NormalParams:
        r"""One sweep: :math:`q(\mu)` given the previous :math:`E[\tau]`, then :math:`q(\tau)`.

        Bishop (2006), eqs. 10.26–10.27 and 10.29–10.30:

        .. math::
            m_N = \frac{\lambda_0\mu_0 + N\bar x}{\lambda_0 + N},\quad
            \lambda_N = (\lambda_0 + N) E[\tau],\quad
            a_N = a_0 + \frac{N+1}{2},\\
            b_N = b_0 + \tfrac12 E_\mu\Big[\sum_n (x_n-\mu)^2 + \lambda_0(\mu-\mu_0)^2\Big].

        With ``params=None`` (the first sweep) :math:`E[\tau]` is the prior mean :math:`a_0/b_0`.
        """
        n, s1, s2 = stats
        e_tau = (params.precision.mean() if params is not None
                 else self._t(self.precision_concentration / self.precision_rate))
        lam0 = self.mean_precision
        c = self.origin
        prior_off = self.mean_prior - c  # μ0 - c
        d = (lam0 * prior_off + s1) / (lam0 + n)  # m_N - c
        q_mu = Normal(c + d, precision=(lam0 + n) * e_tau)
        v = q_mu.variance()
        expected_sq = (s2 - 2.0 * d * s1 + n * (d * d + v)
                       + lam0 * ((d - prior_off) ** 2 + v))
        conc = self.precision_concentration + 0.5 * (n + 1.0)
        rate = self.precision_rate + 0.5 * expected_sq
        return NormalParams(q_mu, Gamma(conc * torch.ones_like(rate), rate))

    def global_elbo(self, params: NormalParams) -> Tensor:
        r""":math:`E_q[\log p(\mu|\tau)] + H[q(\mu)] - \mathrm{KL}(q(\tau)\|p(\tau))`.

        Not the contract's default (a sum of KLs): the prior of :math:`\mu` depends on
        :math:`\tau`, so its term is the expected conditional log-density.

        .. math::
            E_q[\log p(\mu|\tau)] = \tfrac12(\log\lambda_0 + E[\log\tau] - \log 2\pi)
                - \tfrac{\lambda_0 E[\tau]}{2}\big((m_N-\mu_0)^2 + \lambda_N^{-1}\big)
        """
        q_mu, q_tau = params.loc, params.precision
        lam0 = self.mean_precision
        e_log_p_mu = (0.5 * (math.log(lam0) + q_tau.expected_log() - _LOG_2PI)
                      - 0.5 * lam0 * q_tau.mean() * ((q_mu.loc - self.mean_prior) ** 2
                                                     + q_mu.variance()))
        return e_log_p_mu + q_mu.entropy() - q_tau.kl(self.prior_params().precision)

    # ----------------------------------------------------------------------------- Pyro
    def model(self, x: Tensor) -> None:
        """Run the generative model as plain Pyro code; ``x`` is ``(N,)`` observed data."""
        tau = pyro.sample("precision", dist.Gamma(self._t(self.precision_concentration),
                                                  self._t(self.precision_rate)))
        mu = pyro.sample("loc", dist.Normal(self._t(self.mean_prior),
                                            (self.mean_precision * tau).rsqrt()))
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("obs", dist.Normal(mu, tau.rsqrt()), obs=x)

    def sample_guide(self, params: NormalParams, *data: Any) -> dict[str, Tensor]:
        r"""Sample ``precision`` and ``loc`` independently from :math:`q(\tau)q(\mu)`."""
        q_mu, q_tau = params.loc, params.precision
        tau = pyro.sample("precision", dist.Gamma(q_tau.concentration, q_tau.rate))
        mu = pyro.sample("loc", dist.Normal(q_mu.loc, q_mu.precision.rsqrt()))
        return {"precision": tau, "loc": mu}

    def guide_params(self, *data: Any) -> NormalParams:
        """Sites ``normal.loc``, ``.loc_precision``, ``.concentration``, ``.rate``, at the prior."""
        n, pos, prior = self.name, constraints.positive, self.prior_params()
        loc = pyro.param(f"{n}.loc", prior.loc.loc.clone)
        prec = pyro.param(f"{n}.loc_precision", prior.loc.precision.clone, constraint=pos)
        conc = pyro.param(f"{n}.concentration", prior.precision.concentration.clone,
                          constraint=pos)
        rate = pyro.param(f"{n}.rate", prior.precision.rate.clone, constraint=pos)
        return NormalParams(Normal(loc, precision=prec), Gamma(conc, rate))
