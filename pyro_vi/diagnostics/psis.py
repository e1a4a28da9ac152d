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

**Moments as well as** :math:`\hat k`. The weights :math:`p/q` of an *over-dispersed* guide are
bounded, so :math:`\hat k` is small even when the guide is far off (a guide 20x too wide and
8 sd off has :math:`\hat k < 0`). When :math:`\hat k < 0.7` the PSIS estimates are reliable
(Yao et al. 2018, §2.2-2.3, and the applications of their §4 compare the corrected and raw
moments), so :func:`moment_check` compares the guide's raw moments with the corrected ones,
per scalar parameter, in units of the corrected sd :math:`\hat\sigma`:

.. math::

    z_{\text{mean}} = \frac{\bar\theta_q - \hat E[\theta]}
        {\sqrt{\hat\sigma^2/\mathrm{ESS} + \sigma_q^2/S}}, \qquad
    z_{\text{sd}} = \frac{\log(\sigma_q / \hat\sigma)}
        {\sqrt{1/(2\,\mathrm{ESS}) + 1/(2S)}} .

The denominators are the Monte-Carlo standard errors of the difference: a self-normalised
importance-sampling mean has standard error :math:`\hat\sigma/\sqrt{\mathrm{ESS}}` (Kong 1992;
Vehtari et al. 2024, §3), the plain mean :math:`\sigma_q/\sqrt S`, and a Gaussian sd has
relative standard error :math:`1/\sqrt{2n}`; adding both variances ignores the (positive)
correlation of the two estimates from the same draws, which makes the error larger, i.e. the
check conservative. A parameter is flagged when :math:`|z| >` :data:`MOMENT_Z` (4: about
6e-5 two-sided per statistic under a normal error, so 1 % over ~80 statistics) *and* the
difference matters: a shift beyond :data:`MOMENT_SHIFT` corrected sds, or an sd ratio outside
:data:`MOMENT_SD_RATIO`. A flagged guide is reported as "shifted", "too wide" or "too narrow"
per parameter, and its verdict is at best ``"ok"``: its raw means and sds should not be used.

Fewer than :data:`MIN_SAMPLES` draws is a ``ValueError``: :math:`\hat k` is fitted to the
largest :math:`M = \min(S/5, 3\sqrt S)` ratios (20 of 100), and Vehtari et al. (2024, §3.2.5)
give :math:`10^{1/(1-k)}` as the smallest sample size at which PSIS estimates are reliable
for shape :math:`k`: 100 for :math:`k = 0.5`, the "good" threshold itself. With 10 draws a
tail of 2 ratios made :math:`\hat k = \infty` for the exact posterior.

VSBC (Yao et al. 2018, §3) checks the calibration of each marginal by refitting the guide on
data simulated from the prior; it needs the fitting procedure, not a fitted guide, and
costs hundreds of fits, so it is not part of this diagnostic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pyro_vi._checks import check_int
from pyro_vi.diagnostics._arviz_compat import psislw
from pyro_vi.diagnostics._draws import GuideDraws, draw_from_guide

__all__ = ["KHAT_BAD", "KHAT_GOOD", "MIN_SAMPLES", "MOMENT_SD_RATIO", "MOMENT_SHIFT", "MOMENT_Z",
           "MomentFlag", "PSISResult", "check_psis_samples", "khat_verdict", "moment_check",
           "psis_diagnostic", "psis_from_draws"]

#: Below this :math:`\hat k` the approximation is good (Yao et al. 2018, §2.3).
KHAT_GOOD = 0.5
#: At or above this :math:`\hat k` the approximation should not be trusted.
KHAT_BAD = 0.7

#: Range (nats) of the log ratios below which they count as constant: the weights are then
#: uniform to 1e-4 and a Pareto fit would only see round-off (an exact guide).
_CONSTANT = 1e-4

#: Fewest draws PSIS accepts: :math:`10^{1/(1-0.5)}` (Vehtari et al. 2024, §3.2.5).
MIN_SAMPLES = 100
#: |z| beyond which a raw and a PSIS-corrected moment differ by more than Monte-Carlo error.
MOMENT_Z = 4.0
#: Smallest mean shift (in corrected sds) that a moment flag reports.
MOMENT_SHIFT = 0.1
#: Range of raw/corrected sd ratios that a moment flag lets pass.
MOMENT_SD_RATIO = (1 / 1.1, 1.1)


@dataclass(frozen=True)
class MomentFlag:
    """One scalar parameter whose raw guide moment differs from its PSIS-corrected one.

    ``kind`` is ``"shifted"`` (``value`` = (raw − corrected mean) / corrected sd), ``"too
    wide"`` or ``"too narrow"`` (``value`` = raw sd / corrected sd); ``z`` is the difference
    over its Monte-Carlo standard error.
    """

    param: str
    kind: str
    value: float
    z: float

    def __str__(self) -> str:
        if self.kind == "shifted":
            return f"{self.param} shifted by {self.value:+.2g} sd"
        return f"{self.param} {self.kind} (sd x{self.value:.2g})"


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
    moment_flags : tuple of MomentFlag
        Parameters whose raw guide moments differ from the PSIS-corrected ones beyond
        Monte-Carlo error (:func:`moment_check`); empty when :math:`\hat k \ge 0.7` (the
        corrected moments are then unreliable too).
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
    moment_flags: tuple[MomentFlag, ...] = ()

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
        return "good", ("k-hat < 0.5: the importance weights are light-tailed, so the "
                        "PSIS-corrected moments are reliable")
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


def _label(name: str, shape: tuple[int, ...], i: int) -> str:
    if not shape:
        return name
    return f"{name}[{', '.join(map(str, np.unravel_index(i, shape)))}]"


def moment_check(vi_means: Mapping[str, np.ndarray], vi_sds: Mapping[str, np.ndarray],
                 means: Mapping[str, np.ndarray], sds: Mapping[str, np.ndarray], *,
                 ess: float, num_samples: int) -> tuple[MomentFlag, ...]:
    r"""Scalar parameters whose raw guide moments differ from the PSIS-corrected ones.

    See the module docstring for :math:`z_{\text{mean}}`, :math:`z_{\text{sd}}` and the
    thresholds :data:`MOMENT_Z`, :data:`MOMENT_SHIFT`, :data:`MOMENT_SD_RATIO`.

    Examples
    --------
    >>> import numpy as np
    >>> flags = moment_check({"mu": np.array(5.0)}, {"mu": np.array(10.0)},
    ...                      {"mu": np.array(1.0)}, {"mu": np.array(0.5)},
    ...                      ess=300.0, num_samples=4000)
    >>> [str(f) for f in flags]
    ['mu shifted by +8 sd', 'mu too wide (sd x20)']
    """
    se_mean2 = 1.0 / ess
    se_log_sd = math.sqrt(0.5 / ess + 0.5 / num_samples)
    lo, hi = MOMENT_SD_RATIO
    flags = []
    for name, m_q in vi_means.items():
        shape = tuple(np.shape(m_q))
        mq, sq = np.ravel(m_q), np.ravel(vi_sds[name])
        mw, sw = np.ravel(means[name]), np.ravel(sds[name])
        for i in range(mq.size):
            if not (sw[i] > 0 and sq[i] > 0):
                continue  # a constant parameter: nothing to compare
            shift = (mq[i] - mw[i]) / sw[i]
            z = (mq[i] - mw[i]) / math.sqrt(sw[i] ** 2 * se_mean2 + sq[i] ** 2 / num_samples)
            label = _label(name, shape, i)
            if abs(z) > MOMENT_Z and abs(shift) > MOMENT_SHIFT:
                flags.append(MomentFlag(label, "shifted", float(shift), float(z)))
            ratio = sq[i] / sw[i]
            z_sd = math.log(ratio) / se_log_sd
            if abs(z_sd) > MOMENT_Z and not lo <= ratio <= hi:
                flags.append(MomentFlag(label, "too wide" if ratio > 1 else "too narrow",
                                        float(ratio), float(z_sd)))
    return tuple(flags)


def check_psis_samples(num_samples: Any, *, name: str = "num_samples") -> int:
    """``num_samples`` as an int of at least :data:`MIN_SAMPLES` (see the module docstring).

    Examples
    --------
    >>> check_psis_samples(100)
    100
    """
    n = check_int(name, num_samples)
    if n < MIN_SAMPLES:
        raise ValueError(f"{name} must be at least {MIN_SAMPLES} for PSIS (k-hat is fitted to "
                         f"the largest ~{max(0, min(n // 5, int(3 * max(n, 0) ** 0.5)))} of "
                         f"{n} ratios; "
                         f"Vehtari et al. 2024 need >= 100 for k < 0.5), got {n}")
    return n


def _moment_message(flags: Sequence[MomentFlag]) -> str:
    shown = "; ".join(str(f) for f in flags[:4])
    more = f" and {len(flags) - 4} more" if len(flags) > 4 else ""
    return (f"the guide's moments differ from the PSIS-corrected ones beyond Monte-Carlo "
            f"error ({shown}{more}): do not use the guide's raw means and sds; use "
            "corrected_means/corrected_sds, or improve the guide")


def _flat_tail(log_ratios: np.ndarray) -> bool:
    r"""Whether the :math:`M = \lceil\min(S/5, 3\sqrt S)\rceil` largest ratios are all equal.

    PSIS fits its Pareto tail to those :math:`M` ratios (Vehtari et al. 2024, §3). When they are
    equal (a guide whose ratio :math:`p/q` takes few values, e.g. a piecewise-constant
    :math:`q`), the ratios are bounded by that value and there is no tail to smooth:
    :math:`\hat k = -\infty` and the raw self-normalised weights are used. ArviZ 0.2x then
    fits :math:`\hat k = \infty` and ArviZ 1.x raises ("All tail values are the same"), so the
    case is decided here, the same way on both lines.
    """
    s = log_ratios.shape[0]
    m = math.ceil(min(0.2 * s, 3 * math.sqrt(s)))
    top = np.sort(log_ratios)[-m:]
    return bool(np.isfinite(top).all() and top[0] == top[-1])


def psis_from_draws(draws: GuideDraws) -> PSISResult:
    r"""PSIS :math:`\hat k`, ESS, corrected moments and moment flags from draws already scored.

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
    elif _flat_tail(log_ratios):
        khat = -math.inf
        log_weights = log_ratios - np.logaddexp.reduce(log_ratios)
    else:
        log_weights, khat = psislw(log_ratios)
    weights = np.exp(log_weights - np.logaddexp.reduce(log_weights))
    ess = float(1.0 / np.sum(weights**2))
    verdict, message = khat_verdict(khat)
    uniform = np.full(s, 1.0 / s)
    vi_means, vi_sds, means, sds = {}, {}, {}, {}
    for name, value in draws.values.items():
        if draws.structure.sites[name].discrete:
            continue
        v = value.double().numpy()
        vi_means[name], vi_sds[name] = _moments(v, uniform)
        means[name], sds[name] = _moments(v, weights)
    flags: tuple[MomentFlag, ...] = ()
    if verdict != "bad":
        flags = moment_check(vi_means, vi_sds, means, sds, ess=ess, num_samples=s)
    if flags:
        verdict = "ok"
        message = f"k-hat = {khat:.2f} < 0.7, but {_moment_message(flags)}"
    elif verdict == "good":
        message = ("k-hat < 0.5 and the guide's means and sds agree with the PSIS-corrected "
                   "ones within Monte-Carlo error: the guide is close to the posterior")
    return PSISResult(khat, verdict, message, ess, log_ratios, log_weights, vi_means, vi_sds,
                      means, sds, s, flags)


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
        Draws :math:`S` from the guide, at least :data:`MIN_SAMPLES`. :math:`\hat k` is itself an estimate: with a few
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
        ``num_samples < 100`` (:data:`MIN_SAMPLES`), a guide that does not cover the model, or ratios that are all
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
    num_samples = check_psis_samples(num_samples)
    draws = draw_from_guide(model, guide, *args, num_samples=num_samples, seed=seed,
                            marginalise_local=marginalise_local, params=params, **kwargs)
    return psis_from_draws(draws)
