r"""Single-factor conjugate pairs: Beta–Bernoulli, Gamma–Poisson, Dirichlet–Categorical.

Beta–Bernoulli also takes Binomial data, Dirichlet–Categorical also Multinomial counts.

Each model has one global latent :math:`\theta` with a conjugate prior and i.i.d. observations.
The guide is one factor of the prior's family, so its optimum *is* the exact posterior
(Bishop 2006, §2.1–2.2; Gelman et al. 2013, §2.4, §2.6) and the ELBO at the optimum equals the
exact log evidence :math:`\log p(x)`. CAVI reaches it in one sweep.

Every model accepts its data as a tensor (or a tuple of tensors) along the data dimension, so
:func:`pyro_vi.cavi.engine` can chunk it; the analytic ELBO includes the base measures
(:math:`\log\binom{n}{k}`, :math:`-\log x!`, multinomial coefficients) so it is on the same scale
as Pyro's ``Trace_ELBO``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from pyro_vi.cavi.engine import Local
from pyro_vi.cavi.model import ConjugateModelBase, as_vector, check_positive
from pyro_vi.factors import Beta, Dirichlet, ExpFamFactor, Gamma

__all__ = ["BetaBernoulli", "BetaParams", "DirichletCategorical", "DirichletParams",
           "GammaParams", "GammaPoisson"]


@dataclass(frozen=True)
class BetaParams:
    r""":math:`q(p) = \mathrm{Beta}(a_N, b_N)`."""

    prob: Beta


@dataclass(frozen=True)
class GammaParams:
    r""":math:`q(\lambda) = \mathrm{Gam}(a_N, b_N)`."""

    rate: Gamma


@dataclass(frozen=True)
class DirichletParams:
    r""":math:`q(\pi) = \mathrm{Dir}(\alpha_N)`."""

    probs: Dirichlet


class _SingleFactor(ConjugateModelBase):
    """CAVI protocol of a one-factor conjugate model; subclasses give prior, stats, likelihood."""

    dtype: torch.dtype
    device: torch.device | str | None

    def _t(self, v: Any) -> Tensor:
        return torch.as_tensor(v, dtype=self.dtype, device=self.device)

    def prior(self) -> Any:  # pragma: no cover - abstract
        """Return the prior as a params record of the guide's family."""
        raise NotImplementedError

    def _stats(self, data: Any) -> tuple[Tensor, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _loglik(self, data: Any, params: Any) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _factor(self, params: Any) -> ExpFamFactor:
        return next(iter(vars(params).values()))

    def init_stats(self, data: Any, *, init: Any, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Return the data's sufficient statistics (no local factors; ``init`` is unused)."""
        return self._stats(data)

    def local_step(self, data: Any, params: Any) -> Local:
        r"""Sufficient statistics and the expected log-likelihood :math:`E_q[\log p(x|\theta)]`."""
        return Local(self._stats(data), self._loglik(data, params))

    def global_elbo(self, params: Any) -> Tensor:
        r""":math:`-\mathrm{KL}(q(\theta)\,\|\,p(\theta))`."""
        return -self._factor(params).kl(self._factor(self.prior()))

    def guide_params(self, *data: Any) -> Any:
        """``pyro.param`` sites named ``"{name}.{field}"``, initialised at the prior."""
        prior = self._factor(self.prior())
        fields = {k: pyro.param(f"{self.name}.{k}", lambda v=v: v.clone(),  # type: ignore[misc]
                                constraint=constraints.positive)
                  for k, v in vars(prior).items()}
        return type(self.prior())(type(prior)(**fields))

    name = "conjugate"


class BetaBernoulli(_SingleFactor):
    r"""Beta–Bernoulli/Binomial: :math:`p \sim \mathrm{Beta}(a_0, b_0)`, Bernoulli or Binomial data.

    Data: ``y`` of 0s and 1s (Bernoulli), or a tuple ``(successes, trials)`` of whole numbers
    with ``0 <= successes <= trials`` (Binomial). Exact posterior (Bishop 2006, eq. 2.18):

    .. math:: q(p) = \mathrm{Beta}\big(a_0 + \textstyle\sum_n k_n,\; b_0 + \sum_n (n_n - k_n)\big).

    Parameters
    ----------
    alpha, beta : float, keyword-only
        :math:`a_0, b_0 > 0`.

    Examples
    --------
    >>> import torch
    >>> from pyro_vi import cavi
    >>> fit = cavi(BetaBernoulli(alpha=1.0, beta=1.0), torch.tensor([1.0, 1.0, 0.0]))
    >>> fit.params.prob.mean()  # (1 + 2) / (2 + 3)
    tensor(0.6000, dtype=torch.float64)
    """

    name = "beta_bernoulli"

    def __init__(self, *, alpha: float = 1.0, beta: float = 1.0,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None):
        self.alpha = check_positive("alpha", alpha)
        self.beta = check_positive("beta", beta)
        self.dtype, self.device = dtype, device

    def prior(self) -> BetaParams:
        r""":math:`p(p) = \mathrm{Beta}(a_0, b_0)`."""
        return BetaParams(Beta(self._t(self.alpha), self._t(self.beta)))

    def prepare(self, data: Any) -> tuple[BetaBernoulli, tuple[Tensor, Tensor]]:
        """Canonical data ``(successes, trials)``; ValueError for non-binary ``y``, k > n, n < 0."""
        kw = dict(dtype=self.dtype, device=self.device, integer=True)
        if isinstance(data, tuple | list):
            if len(data) != 2:
                raise ValueError("data must be y or a tuple (successes, trials)")
            k = as_vector(data[0], "successes", **kw)  # type: ignore[arg-type]
            n = as_vector(data[1], "trials", **kw)  # type: ignore[arg-type]
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

    def _stats(self, data: tuple[Tensor, Tensor]) -> tuple[Tensor, ...]:
        k, n = data
        return (k.sum(), (n - k).sum())

    def global_step(self, stats: tuple[Tensor, ...], params: Any) -> BetaParams:
        r"""Set :math:`a_N = a_0 + \sum_n k_n`, :math:`b_N = b_0 + \sum_n (n_n - k_n)` (exact)."""
        return BetaParams(Beta(self.alpha + stats[0], self.beta + stats[1]))

    def _loglik(self, data: tuple[Tensor, Tensor], params: BetaParams) -> Tensor:
        k, n = data
        e_log_p, e_log_1mp = params.prob.expected_stats()
        log_binom = torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
        return log_binom.sum() + k.sum() * e_log_p + (n - k).sum() * e_log_1mp

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


class GammaPoisson(_SingleFactor):
    r"""Gamma–Poisson: :math:`\lambda \sim \mathrm{Gam}(a_0, b_0)`, :math:`x_n\sim\mathrm{Poi}`.

    Data: counts ``x`` (whole numbers >= 0). Exact posterior (Gelman et al. 2013, §2.6):

    .. math:: q(\lambda) = \mathrm{Gam}\big(a_0 + \textstyle\sum_n x_n,\; b_0 + N\big).

    Parameters
    ----------
    shape, rate : float, keyword-only
        :math:`a_0, b_0 > 0`.

    Examples
    --------
    >>> import torch
    >>> from pyro_vi import cavi
    >>> cavi(GammaPoisson(shape=1.0, rate=1.0), torch.tensor([2, 0, 4])).params.rate.mean()
    tensor(1.7500, dtype=torch.float64)
    """

    name = "gamma_poisson"

    def __init__(self, *, shape: float = 1.0, rate: float = 1.0,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None):
        self.shape = check_positive("shape", shape)
        self.rate = check_positive("rate", rate)
        self.dtype, self.device = dtype, device

    def prior(self) -> GammaParams:
        r""":math:`p(\lambda) = \mathrm{Gam}(a_0, b_0)`."""
        return GammaParams(Gamma(self._t(self.shape), self._t(self.rate)))

    def prepare(self, data: Any) -> tuple[GammaPoisson, Tensor]:
        """Validate counts ``x``: 1-D, whole numbers, >= 0 (ValueError naming ``x`` otherwise)."""
        x = as_vector(data, "x", dtype=self.dtype, device=self.device, integer=True)
        if (x < 0).any():
            raise ValueError(f"x must hold counts >= 0, got {float(x.min())} at index "
                             f"{int((x < 0).nonzero()[0])}")
        return self, x

    def _stats(self, data: Tensor) -> tuple[Tensor, ...]:
        return (data.sum(), torch.tensor(float(data.shape[0]), dtype=data.dtype,
                                         device=data.device))

    def global_step(self, stats: tuple[Tensor, ...], params: Any) -> GammaParams:
        r""":math:`a_N = a_0 + \sum_n x_n`, :math:`b_N = b_0 + N`."""
        return GammaParams(Gamma(self.shape + stats[0], self.rate + stats[1]))

    def _loglik(self, data: Tensor, params: GammaParams) -> Tensor:
        q = params.rate
        return (data.sum() * q.expected_log() - data.shape[0] * q.mean()
                - torch.lgamma(data + 1).sum())

    def model(self, x: Tensor) -> None:
        """Pyro model: ``rate`` ~ Gamma, ``obs`` ~ Poisson(rate)."""
        lam = pyro.sample("rate", dist.Gamma(self._t(self.shape), self._t(self.rate)))
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("obs", dist.Poisson(lam), obs=x)

    def sample_guide(self, params: GammaParams, *data: Any) -> dict[str, Tensor]:
        r"""Sample ``rate`` from :math:`q(\lambda)`."""
        return {"rate": pyro.sample("rate", dist.Gamma(params.rate.shape, params.rate.rate))}


class DirichletCategorical(_SingleFactor):
    r"""Dirichlet–Categorical / Multinomial: :math:`\pi \sim \mathrm{Dir}(\alpha_0)`.

    Data: labels ``y`` in ``{0, ..., K-1}`` (Categorical), or an ``(N, K)`` array of counts
    (row :math:`n` a Multinomial draw with total :math:`\sum_k c_{nk}`). Exact posterior
    (Bishop 2006, eq. 2.41): :math:`q(\pi) = \mathrm{Dir}(\alpha_0 + \sum_n c_n)`.

    Parameters
    ----------
    concentration : float or sequence of float
        :math:`\alpha_0 > 0`: one value per category, or a scalar with ``n_categories``.
    n_categories : int, keyword-only
        :math:`K`, needed when ``concentration`` is a scalar.

    Examples
    --------
    >>> import torch
    >>> from pyro_vi import cavi
    >>> m = DirichletCategorical(1.0, n_categories=3)
    >>> cavi(m, torch.tensor([0, 2, 2])).params.probs.mean()
    tensor([0.3333, 0.1667, 0.5000], dtype=torch.float64)
    """

    name = "dirichlet_categorical"

    def __init__(self, concentration: Any, *, n_categories: int | None = None,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None):
        self.dtype, self.device = dtype, device
        if isinstance(concentration, int | float) and not isinstance(concentration, bool):
            if isinstance(n_categories, bool) or not isinstance(n_categories, int) \
                    or n_categories < 2:
                raise ValueError("n_categories must be an int >= 2 when concentration is a "
                                 f"scalar, got {n_categories!r}")
            concentration = [check_positive("concentration", concentration)] * n_categories
        conc = as_vector(concentration, "concentration", dtype=dtype, device=device)
        if (conc <= 0).any() or conc.shape[0] < 2:
            raise ValueError("concentration must hold >= 2 numbers, all > 0")
        self.concentration = conc

    @property
    def n_categories(self) -> int:
        """:math:`K`."""
        return self.concentration.shape[0]

    def prior(self) -> DirichletParams:
        r""":math:`p(\pi) = \mathrm{Dir}(\alpha_0)`."""
        return DirichletParams(Dirichlet(self.concentration))

    def prepare(self, data: Any) -> tuple[DirichletCategorical, Tensor]:
        """Canonical ``(N, K)`` counts from labels or counts (ValueError naming ``y``)."""
        k = self.n_categories
        t = data if isinstance(data, Tensor) else torch.as_tensor(data)
        if t.dim() == 2:
            c = t.to(self.dtype)
            if c.shape[1] != k or c.shape[0] == 0:
                raise ValueError(f"counts y must have shape (N, {k}), got {tuple(c.shape)}")
            if not torch.isfinite(c).all() or (c < 0).any() or (c != torch.round(c)).any():
                raise ValueError("counts y must be finite whole numbers >= 0")
            return self, c.to(device=self.device)
        y = as_vector(t, "y", dtype=self.dtype, device=self.device, integer=True)
        if (y < 0).any() or (y >= k).any():
            raise ValueError(f"labels y must lie in 0..{k - 1}")
        return self, torch.nn.functional.one_hot(y.long(), k).to(self.dtype)

    def _stats(self, data: Tensor) -> tuple[Tensor, ...]:
        return (data.sum(0),)

    def global_step(self, stats: tuple[Tensor, ...], params: Any) -> DirichletParams:
        r""":math:`\alpha_N = \alpha_0 + \sum_n c_n` (Bishop eq. 2.41)."""
        return DirichletParams(Dirichlet(self.concentration + stats[0]))

    def _loglik(self, data: Tensor, params: DirichletParams) -> Tensor:
        log_coef = torch.lgamma(data.sum(-1) + 1) - torch.lgamma(data + 1).sum(-1)
        return log_coef.sum() + (data.sum(0) * params.probs.expected_log()).sum()

    def model(self, y: Tensor) -> None:
        """Pyro model: ``probs`` ~ Dirichlet, ``obs`` ~ Categorical(probs) or Multinomial.

        For counts whose row totals differ (torch's Multinomial needs one total) the
        likelihood enters as ``pyro.factor("obs", ...)`` with the exact multinomial log-pmf.
        """
        pi = pyro.sample("probs", dist.Dirichlet(self.concentration))
        with pyro.plate("data", y.shape[0], dim=-1):
            if y.dim() == 1:
                pyro.sample("obs", dist.Categorical(pi), obs=y)
                return
            totals = y.sum(-1)
            if bool((totals == totals[0]).all()):
                pyro.sample("obs", dist.Multinomial(int(totals[0]), pi), obs=y)
            else:
                log_coef = torch.lgamma(totals + 1) - torch.lgamma(y + 1).sum(-1)
                pyro.factor("obs", log_coef + (y * torch.log(pi)).sum(-1))

    def sample_guide(self, params: DirichletParams, *data: Any) -> dict[str, Tensor]:
        r"""Sample ``probs`` from :math:`q(\pi)`."""
        return {"probs": pyro.sample("probs", dist.Dirichlet(params.probs.concentration))}
