r"""Pareto-smoothed importance sampling (PSIS) diagnostic for a variational fit.

Yao, Vehtari, Simpson & Gelman (2018), "Yes, but did it work?: Evaluating variational
inference", ICML, §2.2-2.3 (Algorithm 1). Draw :math:`\theta^{(s)} \sim q` and form the
importance ratios

.. math::

    \log r_s = \log p(x, \theta^{(s)}) - \log q(\theta^{(s)}),
    \qquad s = 1, \dots, S .

Fit a generalized Pareto distribution to the largest ratios; its shape estimate
:math:`\hat k` measures how heavy the right tail of :math:`r = p/q` is, i.e. how badly
:math:`q` misses mass of the posterior. The paper's reading (§2.3):

* :math:`\hat k < 0.5`: the ratios have finite variance; :math:`q` is close to the posterior.
* :math:`0.5 \le \hat k < 0.7`: PSIS converges, slowly; the fit is usable, with care.
* :math:`\hat k \ge 0.7`: the importance weights are too heavy-tailed; do not trust the fit.

The smoothing and :math:`\hat k` come from ArviZ's own PSIS (Vehtari et al. 2024, "Pareto
smoothed importance sampling", JMLR 25(72)), not from a re-implementation: ``arviz.psislw`` on
ArviZ 0.2x, ``arviz_stats.base.array_stats.psislw`` on ArviZ 1.x, through
:func:`pyro_vi.diagnostics._arviz_compat.psislw`. The two lines agree to round-off when they
fit the same tail length and within a few hundredths of :math:`\hat k` otherwise (far inside
:math:`\hat k`'s own sampling error); ``tests/diagnostics/test_psis.py`` measures it. The
smoothed, self-normalised weights :math:`\tilde w_s` give PSIS-corrected posterior moments

.. math::

    \hat E[\theta] = \sum_s \tilde w_s \theta^{(s)}, \qquad
    \widehat{\mathrm{sd}}[\theta] = \Big(\sum_s \tilde w_s (\theta^{(s)} - \hat E[\theta])^2
    \Big)^{1/2},

and the effective sample size :math:`1 / \sum_s \tilde w_s^2` (Yao et al. 2018, §2.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pyro_vi.diagnostics._arviz_compat import psislw
from pyro_vi.diagnostics._draws import GuideDraws, draw_from_guide

__all__ = ["KHAT_BAD", "KHAT_GOOD", "PSISResult", "khat_verdict", "psis_diagnostic",
           "psis_from_draws"]

#: Below this :math:`\hat k` the approximation is good (Yao et al. 2018, §2.3).
KHAT_GOOD = 0.5
#: At or above this :math:`\hat k` the approximation should not be trusted.
KHAT_BAD = 0.7

#: Range (nats) of the log ratios below which they count as constant: the weights are then
#: uniform to 1e-4 and a Pareto fit would only see round-off (an exact guide).
_CONSTANT = 1e-4


@dataclass(frozen=True)
class PSISResult:
    r"""Result of :func:`psis_diagnostic`.

    Attributes
    ----------
    khat : float
        Pareto shape estimate :math:`\hat k`; ``-inf`` when the log ratios are constant (the
        guide is the exact posterior, so the weights have no tail at all).
    verdict : str
        ``"good"``, ``"ok"`` or ``"bad"`` by the thresholds 0.5 and 0.7.
    message : str
        One sentence saying what the verdict means.
    ess : float
        PSIS effective sample size :math:`1/\sum_s \tilde w_s^2`.
    log_ratios : numpy.ndarray
        Raw :math:`\log p(x,\theta^{(s)}) - \log q(\theta^{(s)})`, shape ``(S,)``.
    log_weights : numpy.ndarray
        Pareto-smoothed, self-normalised log weights, shape ``(S,)``.
    vi_means, vi_sds : dict of str to numpy.ndarray
        Plain Monte-Carlo moments of each continuous latent site under the guide.
    corrected_means, corrected_sds : dict of str to numpy.ndarray
        PSIS-weighted moments of each continuous latent site (site shape).
    num_samples : int
        Number of draws :math:`S`.
    """

    khat: float
    verdict: str
    message: str
    ess: float
    log_ratios: np.ndarray
    log_weights: np.ndarray
    vi_means: dict[str, np.ndarray]
    vi_sds: dict[str, np.ndarray]
    corrected_means: dict[str, np.ndarray]
    corrected_sds: dict[str, np.ndarray]
    num_samples: int

    def __str__(self) -> str:
        return (f"PSIS k-hat = {self.khat:.2f} ({self.verdict}): {self.message} "
                f"[{self.num_samples} draws, PSIS ESS {self.ess:.0f}]")


def khat_verdict(khat: float) -> tuple[str, str]:
    r"""Read :math:`\hat k` with Yao et al. (2018)'s thresholds: ``(verdict, meaning)``.

    Examples
    --------
    >>> khat_verdict(0.3)[0], khat_verdict(0.6)[0], khat_verdict(0.9)[0]
    ('good', 'ok', 'bad')
    """
    if math.isnan(khat):
        raise ValueError("khat is NaN")
    if khat < KHAT_GOOD:
        return "good", ("k-hat < 0.5: the guide is close to the posterior; its means and sds "
                        "can be trusted")
    if khat < KHAT_BAD:
        return "ok", ("0.5 <= k-hat < 0.7: the guide is usable but misses some posterior "
                      "mass; prefer the PSIS-corrected moments")
    return "bad", ("k-hat >= 0.7: the importance weights are too heavy-tailed; do not trust "
                   "the guide's posterior (not even PSIS-corrected)")


def _moments(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and sd over the leading (draw) axis."""
    w = weights.reshape((-1,) + (1,) * (values.ndim - 1))
    mean = (w * values).sum(0)
    var = (w * (values - mean) ** 2).sum(0)
    return mean, np.sqrt(np.maximum(var, 0.0))


def psis_from_draws(draws: GuideDraws) -> PSISResult:
    r"""PSIS :math:`\hat k`, ESS and corrected moments from draws already scored.

    Examples
    --------
    See :func:`psis_diagnostic`.
    """
    log_ratios = draws.log_ratio.numpy().astype(np.float64)
    if not np.isfinite(log_ratios).any():
        raise ValueError("every importance ratio is zero: the guide misses the model's support")
    s = log_ratios.shape[0]
    finite = log_ratios[np.isfinite(log_ratios)]
    if finite.size == s and np.ptp(finite) <= _CONSTANT:
        khat = -math.inf
        log_weights = np.full(s, -math.log(s))
    else:
        log_weights, khat = psislw(log_ratios)
    weights = np.exp(log_weights - np.logaddexp.reduce(log_weights))
    verdict, message = khat_verdict(khat)
    uniform = np.full(s, 1.0 / s)
    vi_means, vi_sds, means, sds = {}, {}, {}, {}
    for name, value in draws.values.items():
        if draws.structure.sites[name].discrete:
            continue
        v = value.double().numpy()
        vi_means[name], vi_sds[name] = _moments(v, uniform)
        means[name], sds[name] = _moments(v, weights)
    return PSISResult(khat, verdict, message, float(1.0 / np.sum(weights**2)), log_ratios,
                      log_weights, vi_means, vi_sds, means, sds, s)


def psis_diagnostic(model: Callable[..., Any], guide: Callable[..., Any], *args: Any,
                    num_samples: int = 4000, seed: int | None = None,
                    marginalise_local: bool = True,
                    params: Mapping[str, Any] | None = None, **kwargs: Any) -> PSISResult:
    r"""Pareto :math:`\hat k` of the importance ratios :math:`p(x,\theta)/q(\theta)` of a guide.

    Parameters
    ----------
    model, guide : callable
        A Pyro model and a fitted guide, called with ``*args, **kwargs``.
    num_samples : int
        Draws :math:`S` from the guide. :math:`\hat k` is itself an estimate: with a few
        thousand draws it varies by about ±0.1-0.3 around its limit (more for heavy tails).
    seed : int, optional
        Seed for the draws; the global RNG state is restored afterwards.
    marginalise_local : bool
        Sum out local discrete latents (a GMM's ``z``) even if the guide samples them, so the
        diagnostic judges :math:`q` on the remaining (global) sites; ``False`` judges the
        joint :math:`q(\theta, z)`. Discrete sites the guide does not sample are always
        summed out.
    params : mapping, optional
        Constrained parameter values to run the guide with (a fit result's ``params``).

    Returns
    -------
    PSISResult

    Raises
    ------
    ValueError
        ``num_samples < 1``, a guide that does not cover the model, or ratios that are all
        zero.
    NumericalError
        A NaN or :math:`+\infty` in :math:`\log p` or :math:`\log q`.

    .. warning::
       :math:`\hat k` diagnoses the *joint* fit of :math:`q` over all sites it scores; a
       small :math:`\hat k` does not certify every marginal, and a large one can come from
       one badly fitted site. The ratios use the unnormalised :math:`p(x,\theta)`, so
       :math:`\hat k` is invariant to the evidence. Draws are assumed independent
       (``reff = 1``).

    References
    ----------
    Yao, Vehtari, Simpson & Gelman (2018), "Yes, but did it work?: Evaluating variational
    inference", ICML, PMLR 80:5581-5590. Vehtari, Simpson, Gelman, Yao & Gabry (2024),
    "Pareto smoothed importance sampling", JMLR 25(72):1-58.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch
    >>> def model(y):
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> def guide(y):  # the exact posterior N(y/2, 1/2): constant ratios
    ...     pyro.sample("mu", dist.Normal(y / 2, 0.5 ** 0.5))
    >>> res = psis_diagnostic(model, guide, torch.tensor(1.0), num_samples=500, seed=0)
    >>> res.verdict, round(float(res.corrected_means["mu"]), 1)
    ('good', 0.5)
    """
    draws = draw_from_guide(model, guide, *args, num_samples=num_samples, seed=seed,
                            marginalise_local=marginalise_local, params=params, **kwargs)
    return psis_from_draws(draws)
