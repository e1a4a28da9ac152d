r"""Hierarchical normal model with known observation sds (eight-schools form), by CAVI.

Model (Gelman et al. 2013, §5.5, with a Gamma prior on the group-level *precision*):

.. math::
    \mu \sim N(m_0, s_0^2),\quad \tau \sim \mathrm{Gam}(a_0, b_0),\quad
    \theta_j \mid \mu, \tau \sim N(\mu, \tau^{-1}),\quad
    y_j \mid \theta_j \sim N(\theta_j, \sigma_j^2),\ j = 1..J,

with :math:`\sigma_j` known. Mean-field guide :math:`q(\mu)q(\tau)\prod_j q(\theta_j)`: the
:math:`\theta_j` are the *local* factors (one per group, set in the local step, so
:func:`pyro_vi.svi_cavi` can subsample groups), :math:`\mu, \tau` the global ones.

.. warning::
    The posterior of :math:`(\mu, \tau, \theta)` is strongly coupled (the funnel between
    :math:`\tau` and the spread of :math:`\theta`); mean-field breaks that coupling and is
    overconfident: its sds of :math:`\mu` and :math:`\theta_j` are smaller than the exact
    ones (Blei et al. 2017, §5; Yao et al. 2018 use eight schools as the failure case).

Pyro sites: ``mu``, ``tau``, ``theta`` and ``obs`` in plate ``groups``.
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

__all__ = ["HierarchicalNormal", "HierarchicalParams"]

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class HierarchicalParams:
    r"""Global factors :math:`q(\mu) = N(m_\mu, \lambda_\mu^{-1})` and :math:`q(\tau)` (Gamma)."""

    mean: Normal
    precision: Gamma


class HierarchicalNormal(ConjugateModel[tuple[Tensor, Tensor], HierarchicalParams, Stats]):
    r"""Normal means :math:`\theta_j` with learned group mean :math:`\mu`, precision :math:`\tau`.

    Data: a tuple ``(y, sigma)`` of two ``(J,)`` arrays, ``sigma > 0`` the known sds.

    Parameters
    ----------
    mean_prior, mean_scale : float, keyword-only
        :math:`m_0` and :math:`s_0 > 0` of the prior on :math:`\mu`.
    precision_concentration, precision_rate : float
        :math:`a_0, b_0 > 0` of the Gamma prior on :math:`\tau` (torch's names).
    dtype, device
        Where the fit runs (float64 on the CPU by default).

    Examples
    --------
    >>> import torch
    >>> from pyro_vi import cavi
    >>> y = torch.tensor([28.0, 8, -3, 7, -1, 1, 18, 12])
    >>> sigma = torch.tensor([15.0, 10, 16, 11, 9, 11, 10, 18])
    >>> m = HierarchicalNormal(mean_prior=0.0, mean_scale=5.0, precision_concentration=2.0,
    ...                        precision_rate=50.0)
    >>> fit = cavi(m, (y, sigma))
    >>> round(float(fit.params.mean.mean()), 2)
    4.32
    """

    name = "hierarchical"

    def __init__(self, *, mean_prior: float, mean_scale: float, precision_concentration: float,
                 precision_rate: float, dtype: Any = torch.float64, device: Any = None) -> None:
        super().__init__(dtype=dtype, device=device)
        self.mean_prior = check_finite("mean_prior", mean_prior)
        self.mean_scale = check_positive("mean_scale", mean_scale)
        self.precision_concentration = check_positive("precision_concentration",
                                                      precision_concentration)
        self.precision_rate = check_positive("precision_rate", precision_rate)
        #: The point the statistics are centred on: the prior mean until :meth:`prepare` sets
        #: it to the mean of ``y``, so raw-unit data keep their digits.
        self.origin = self.mean_prior

    def prior_params(self) -> HierarchicalParams:
        r"""The priors :math:`N(m_0, s_0^2)` and :math:`\mathrm{Gam}(a_0, b_0)` as factors.

        Both are fixed, so the contract's default :meth:`global_elbo`,
        :math:`-\mathrm{KL}(q(\mu)\|p(\mu)) - \mathrm{KL}(q(\tau)\|p(\tau))`, is this model's.
        """
        return HierarchicalParams(
            Normal(self._t(self.mean_prior), precision=self._t(self.mean_scale**-2)),
            Gamma(self._t(self.precision_concentration), self._t(self.precision_rate)))

    # -------------------------------------------------------------------- CAVI methods
    def prepare(self, data: Any) -> tuple[HierarchicalNormal, tuple[Tensor, Tensor]]:
        """Validate ``(y, sigma)``: finite ``(J,)`` arrays of one length, ``sigma > 0``."""
        if not isinstance(data, tuple | list) or len(data) != 2:
            raise TypeError("data must be a tuple (y, sigma)")
        y = as_vector(data[0], "y", dtype=self.dtype, device=self.device)
        sigma = as_vector(data[1], "sigma", dtype=self.dtype, device=self.device)
        if y.shape != sigma.shape:
            raise ValueError(f"y and sigma differ in length: {y.shape[0]} vs {sigma.shape[0]}")
        if (sigma <= 0).any():
            raise ValueError("sigma must be > 0 (known observation sds)")
        check_spread("y", y)
        check_spread("sigma", sigma, centre=False)
        new = copy.copy(self)
        new.origin = float(y.mean())
        return new, (y, sigma)

    def prepare_shard(self, data: Any, *, comm: Comm) -> tuple[HierarchicalNormal, tuple[Tensor, Tensor]]:
        """:meth:`prepare` for one rank's rows; :attr:`origin` is the mean of all ranks' rows."""
        new, prepared = self.prepare(data)
        y = prepared[0]
        total, count = comm.sum((y.sum(), y.new_tensor(float(y.shape[0]))))
        new.origin = float(total / count)
        return new, prepared

    def local_factors(self, data: tuple[Tensor, Tensor], params: HierarchicalParams) -> Normal:
        r"""Optimal :math:`q(\theta_j)`, batch ``(J,)`` (Bishop 2006, eq. 10.9 for this model).

        .. math::
            \lambda_j = \sigma_j^{-2} + E[\tau],\qquad
            m_j = \big(y_j\sigma_j^{-2} + E[\tau]E[\mu]\big)/\lambda_j
        """
        y, sigma = data
        e_tau = params.precision.mean()
        prec = sigma**-2 + e_tau
        return Normal((y * sigma**-2 + e_tau * params.mean.mean()) / prec, precision=prec)

    def _stats(self, q_theta: Normal) -> Stats:
        r""":math:`(J, \sum_j E[\theta_j - c], \sum_j E[(\theta_j - c)^2])`, :math:`c` = :attr:`origin`.

        Centred, so no sum of squares of raw values has to cancel in the global step.
        """
        m = q_theta.loc - self.origin
        j = torch.tensor(float(m.shape[0]), dtype=m.dtype, device=m.device)
        return (j, m.sum(), (m.square() + q_theta.variance()).sum())

    def init_stats(self, data: tuple[Tensor, Tensor], *, generator: torch.Generator) -> Stats:
        r"""Return statistics of :math:`q(\theta_j) = N(y_j, \sigma_j^2)` (a deterministic start)."""
        y, sigma = data
        return self._stats(Normal(y, precision=sigma**-2))

    def local_step(self, data: tuple[Tensor, Tensor], params: HierarchicalParams) -> Local:
        r"""Optimal :math:`q(\theta_j)`, their statistics and their share of the ELBO.

        .. math::
            \sum_j E[\log N(y_j|\theta_j,\sigma_j^2)] + E[\log N(\theta_j|\mu,\tau^{-1})]
                + H[q(\theta_j)]
        """
        y, sigma = data
        q = self.local_factors(data, params)
        q_mu, q_tau = params.mean, params.precision
        lik = -0.5 * (_LOG_2PI + 2.0 * torch.log(sigma)) - ((y - q.loc) ** 2 + q.variance()) / (
            2.0 * sigma**2)
        e_sq = (q.loc - q_mu.loc) ** 2 + q.variance() + q_mu.variance()  # E[(θ_j - μ)^2]
        prior = 0.5 * (q_tau.expected_log() - _LOG_2PI) - 0.5 * q_tau.mean() * e_sq
        return Local(self._stats(q), (lik + prior + q.entropy()).sum())

    def elbo_roundoff(self, data: tuple[Tensor, Tensor]) -> float | None:
        """The contract's estimate for the data centred on :attr:`origin`, as the statistics are."""
        return data_roundoff((data[0] - self.origin, data[1]))

    def global_step(self, stats: Stats, params: HierarchicalParams | None) -> HierarchicalParams:
        r"""One sweep: :math:`q(\mu)` given the previous :math:`E[\tau]`, then :math:`q(\tau)`.

        .. math::
            \lambda_\mu = s_0^{-2} + J E[\tau],\quad
            m_\mu = \big(m_0 s_0^{-2} + E[\tau]\textstyle\sum_j E[\theta_j]\big)/\lambda_\mu,\\
            a = a_0 + \tfrac J2,\quad
            b = b_0 + \tfrac12\textstyle\sum_j E[(\theta_j - \mu)^2].

        With ``params=None`` :math:`E[\tau]` starts at the prior mean :math:`a_0/b_0`.
        """
        j, s1, s2 = stats
        a0, b0 = self.precision_concentration, self.precision_rate
        m0, s0 = self.mean_prior, self.mean_scale
        e_tau = params.precision.mean() if params is not None else self._t(a0 / b0)
        c = self.origin
        prec = s0**-2 + j * e_tau
        mc = ((m0 - c) * s0**-2 + e_tau * s1) / prec  # m_mu - c (statistics centred on c)
        q_mu = Normal(c + mc, precision=prec)
        rate = b0 + 0.5 * (s2 - 2.0 * mc * s1 + j * (mc * mc + q_mu.variance()))
        return HierarchicalParams(q_mu, Gamma(a0 + 0.5 * j * torch.ones_like(rate), rate))

    def summary_sites(self, params: HierarchicalParams, *data: Any) -> dict[str, Any]:
        r"""``mu``, ``tau`` and ``theta``: :math:`q(\theta_j)` is the local optimum for ``data``."""
        return {"mu": params.mean, "tau": params.precision,
                "theta": self.local_factors(self.prepare(data)[1], params)}

    # ----------------------------------------------------------------------------- Pyro
    def model(self, y: Tensor, sigma: Tensor) -> None:
        """Run the generative model as plain Pyro code (centred parameterisation)."""
        mu = pyro.sample("mu", dist.Normal(self._t(self.mean_prior), self._t(self.mean_scale)))
        tau = pyro.sample("tau", dist.Gamma(self._t(self.precision_concentration),
                                            self._t(self.precision_rate)))
        with pyro.plate("groups", y.shape[0], dim=-1):
            theta = pyro.sample("theta", dist.Normal(mu, tau.rsqrt()))
            pyro.sample("obs", dist.Normal(theta, sigma), obs=y)

    def sample_guide(self, params: HierarchicalParams, *data: Any,
                     local: Normal | None = None) -> dict[str, Tensor]:
        """Sample ``mu``, ``tau``, ``theta`` (``local``: q(θ), default: optimal given params)."""
        y, sigma = self.prepare(data)[1]
        q = self.local_factors((y, sigma), params) if local is None else local
        mu = pyro.sample("mu", dist.Normal(params.mean.loc, params.mean.precision.rsqrt()))
        tau = pyro.sample("tau", dist.Gamma(params.precision.concentration, params.precision.rate))
        with pyro.plate("groups", y.shape[0], dim=-1):
            theta = pyro.sample("theta", dist.Normal(q.loc, q.precision.rsqrt()))
        return {"mu": mu, "tau": tau, "theta": theta}

    def guide_params(self, *data: Any) -> HierarchicalParams:
        """Global ``pyro.param`` sites ``hierarchical.*``, initialised at the prior."""
        n, pos, prior = self.name, constraints.positive, self.prior_params()
        loc = pyro.param(f"{n}.mu_loc", prior.mean.loc.clone)
        prec = pyro.param(f"{n}.mu_precision", prior.mean.precision.clone, constraint=pos)
        conc = pyro.param(f"{n}.tau_concentration", prior.precision.concentration.clone,
                          constraint=pos)
        rate = pyro.param(f"{n}.tau_rate", prior.precision.rate.clone, constraint=pos)
        return HierarchicalParams(Normal(loc, precision=prec), Gamma(conc, rate))

    def guide(self, *data: Any) -> dict[str, Tensor]:
        """Run the trainable guide: global sites plus ``hierarchical.theta_loc/_precision``."""
        y, sigma = self.prepare(data)[1]
        params = self.guide_params(y, sigma)
        theta_loc = pyro.param(f"{self.name}.theta_loc", lambda: y.clone())
        theta_prec = pyro.param(f"{self.name}.theta_precision", lambda: sigma**-2,
                                constraint=constraints.positive)
        return self.sample_guide(params, y, sigma,
                                 local=Normal(theta_loc, precision=theta_prec))
