r"""One plain-text trust report for a variational fit (the ``pyro-vi diagnose`` command is :mod:`pyro_vi.cli.diagnose`).

:func:`diagnose` answers, in a few lines a statistician reads:

1. **Converged?** The fit's own flag (CAVI's tolerance, SVI's windowed rule).
2. **Is the ELBO trace flat?** Over the last ``window`` values of the history, the least-squares
   slope times the window length (the trend in nats) is compared with three standard errors
   and with ``rtol``·|ELBO|: the trace is flat when the trend is within either (noise or
   round-off), :func:`elbo_flatness`.
3. **Pareto** :math:`\hat k` (Yao et al. 2018) and what it means, :func:`pyro_vi.psis_diagnostic`.
4. Optionally, **the worst parameters against NUTS**, :func:`pyro_vi.compare_to_mcmc`.

The two first checks ask different questions and can disagree: the flag is the fit's own
stopping rule (CAVI: the last sweep's relative gain below ``tol``; SVI: consecutive window
means within their noise or ``tol``), judged step by step as the fit ran, while flatness looks
back at the last ``window`` values as a whole. A late jump of a CAVI trace (a plateau, then a
sweep that finds a better optimum, then convergence) passes the first and fails the second; a
trace creeping by less than its noise passes the second while a strict ``tol`` still fails the
first. The report then says so in a ``note:`` line (:func:`disagreement`).

The overall verdict is "do not trust" when :math:`\hat k \ge 0.7`, or when the fit neither
converged nor has a flat ELBO trace; "use with care" when only one of convergence and
flatness fails, when :math:`0.5 \le \hat k < 0.7`, when the guide's raw means or sds differ
from the PSIS-corrected ones beyond Monte-Carlo error (an over-dispersed guide, whose bounded
weights give a small :math:`\hat k`; :func:`pyro_vi.diagnostics.psis.moment_check`), or
when NUTS disagrees (some :math:`|\text{std. mean diff}| > 0.5` or sd ratio outside
[2/3, 3/2]); "trust" otherwise.

A mixture fitted by CAVI (a conjugate model whose ``label_alignment()`` is not None, like
the GMM) has its NUTS draws aligned to the guide's labels by Hungarian matching before the
comparison (:func:`pyro_vi.diagnostics.nuts.match_components`), unless ``nuts_options``
passes its own ``align``; the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pyro_vi._checks import check_bool, check_callable, check_int
from pyro_vi._io import save_figure
from pyro_vi.diagnostics.nuts import MCMCComparison, align_from_spec, compare_to_mcmc, label_alignment
from pyro_vi.diagnostics.psis import PSISResult, check_psis_samples, psis_diagnostic

if TYPE_CHECKING:
    from pyro_vi.results import FitResult

__all__ = ["Diagnosis", "ElboTrend", "diagnose", "disagreement", "elbo_flatness"]

#: NUTS disagreement thresholds used in the overall verdict.
MAX_STD_MEAN_DIFF = 0.5
SD_RATIO_RANGE = (2 / 3, 3 / 2)


@dataclass(frozen=True)
class ElboTrend:
    """Result of :func:`elbo_flatness` over the last ``window`` ELBO values."""

    flat: bool
    trend: float
    noise: float
    window: int


def elbo_flatness(elbo: Sequence[float], *, window: int | None = None,
                  rtol: float = 1e-4) -> ElboTrend:
    r"""Test whether the ELBO trace is flat over its last ``window`` values.

    Fits :math:`\mathrm{ELBO}_t \approx a + b t` by least squares over the window; the trend is
    :math:`b (w - 1)` nats and its noise :math:`3\,\mathrm{se}(b) (w - 1)`. Flat means
    :math:`|b|(w-1) \le \max(3\,\mathrm{se}(b)(w-1),\ \mathrm{rtol}\cdot\max(1, |\bar{E}|))`:
    no trend distinguishable from the SVI noise (a trace of pure white noise is called "not
    flat" with probability about 0.3 %), or one smaller than round-off for CAVI.
    The default window is a fifth of the trace, between 3 and 100 values (the tail of a short
    CAVI trace; the last 100 steps of an SVI run).

    Examples
    --------
    >>> elbo_flatness([-10.0 + 0.5 * t for t in range(40)]).flat
    False
    >>> elbo_flatness([-10.0] * 40).flat
    True
    """
    values = np.asarray(elbo, dtype=np.float64)
    if values.ndim != 1 or values.size < 3:
        raise ValueError(f"elbo needs at least 3 values, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("elbo holds NaN or inf")
    w = (check_int("window", window, minimum=3) if window is not None
         else min(100, max(3, values.size // 5)))
    y = values[-w:]
    w = y.size
    t = np.arange(w, dtype=np.float64) - (w - 1) / 2
    slope = float((t * (y - y.mean())).sum() / (t**2).sum())
    resid = y - y.mean() - slope * t
    se = math.sqrt(float((resid**2).sum()) / max(w - 2, 1) / float((t**2).sum()))
    trend, noise = slope * (w - 1), 3 * se * (w - 1)
    flat = abs(trend) <= max(noise, rtol * max(1.0, abs(float(y.mean()))))
    return ElboTrend(flat, trend, noise, w)


@dataclass(frozen=True)
class Diagnosis:
    """Result of :func:`diagnose`; ``str(diagnosis)`` is the plain-text report."""

    verdict: str
    converged: bool | None
    elbo: ElboTrend | None
    psis: PSISResult
    comparison: MCMCComparison | None
    figures: tuple[Path, ...]
    text: str

    def __str__(self) -> str:
        return self.text


def _verdict(converged: bool | None, trend: ElboTrend | None, psis: PSISResult,
             comparison: MCMCComparison | None) -> str:
    not_flat = trend is not None and not trend.flat
    if psis.verdict == "bad" or (converged is False and not_flat):
        return "do not trust"
    care = psis.verdict == "ok" or not_flat or converged is False
    if comparison is not None:
        t = comparison.table
        lo, hi = SD_RATIO_RANGE
        care |= bool((t["std_mean_diff"].abs() > MAX_STD_MEAN_DIFF).any()
                     or ((t["sd_ratio"] < lo) | (t["sd_ratio"] > hi)).any())
    return "use with care" if care else "trust"


def _plot_elbo(history: Sequence[float], trend: ElboTrend, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(np.arange(1, len(history) + 1), history, lw=1)
    ax.axvspan(len(history) - trend.window + 1, len(history), color="0.85",
               label=f"last {trend.window}: {'flat' if trend.flat else 'not flat'}")
    ax.set_xlabel("iteration / step")
    ax.set_ylabel("ELBO (nats)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def _plot_psis(psis: PSISResult, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ratios = psis.log_ratios[np.isfinite(psis.log_ratios)]
    ax.hist(ratios - ratios.max(), bins=60, color="0.4")
    ax.set_xlabel(r"$\log p(x,\theta) - \log q(\theta)$ (minus its max)")
    ax.set_ylabel("draws")
    ax.set_title(f"PSIS k-hat = {psis.khat:.2f} ({psis.verdict}), ESS {psis.ess:.0f}",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def _unpack(fit: FitResult | tuple[Any, Any],
            model: Callable[..., Any] | None) -> tuple[Any, Any, Any, FitResult | None]:
    """Return (model, guide, store params, result-or-None) from a fit result or a pair."""
    if isinstance(fit, tuple):
        if len(fit) != 2:
            raise TypeError("fit must be a fit result or a (model, guide) pair of callables")
        return check_callable("fit[0], the model,", fit[0]), check_callable("fit[1], the guide,", fit[1]), None, None
    try:
        guide, params, pyro_model = fit.guide, fit.store_params, fit.model
    except AttributeError:
        raise TypeError(f"fit must be a FitResult or a (model, guide) pair, got {type(fit).__name__}") from None
    return pyro_model if model is None else model, guide, params, fit


def disagreement(converged: bool | None, trend: ElboTrend | None) -> str | None:
    """Why the convergence flag and the flatness test disagree, or None when they agree.

    Examples
    --------
    >>> disagreement(True, ElboTrend(flat=True, trend=0.0, noise=0.1, window=20)) is None
    True
    >>> print(disagreement(True, ElboTrend(flat=False, trend=3.0, noise=0.1, window=20)))
    ... # doctest: +ELLIPSIS
    'converged' is the fit's own stopping rule, ...
    """
    if converged is None or trend is None or converged == trend.flat:
        return None
    if converged:
        return ("'converged' is the fit's own stopping rule, met at its last steps (CAVI: the "
                "last sweep's gain below tol; SVI: the last windows within noise or tol); "
                f"'NOT flat' looks back at the last {trend.window} values, over which the ELBO "
                f"still moved {trend.trend:+.3g} nats (beyond ±{trend.noise:.2g}): a late jump "
                "or a slow drift that the rule let pass. Run longer or tighten tol before "
                "trusting the optimum.")
    return ("'converged: NO' means the fit's own rule was not met within its budget; 'flat' "
            f"means the last {trend.window} values show no trend beyond their noise "
            f"(±{trend.noise:.2g} nats): the rule's tol is stricter than the Monte-Carlo noise "
            "allows, or the budget ended just as the trace settled. More steps would tell.")


def _report(fit: FitResult | None, converged: bool | None, trend: ElboTrend | None, psis: PSISResult,
            comparison: MCMCComparison | None, verdict: str, figures: Sequence[Path],
            aligned: str | None = None) -> str:
    name = fit.method if fit is not None else "guide"
    lines = [f"pyro-vi diagnose: {name} fit", f"  verdict:    {verdict.upper()}"]
    if converged is None:
        lines.append("  converged:  unknown (no fit result given)")
    else:
        lines.append(f"  converged:  {'yes' if converged else 'NO'}")
    if trend is not None:
        lines.append(f"  ELBO trace: {'flat' if trend.flat else 'NOT flat'} over its last "
                     f"{trend.window} values (trend {trend.trend:+.3g} nats, noise "
                     f"±{trend.noise:.2g})")
    note = disagreement(converged, trend)
    if note is not None:
        lines.append(f"  note:       {note}")
    lines.append(f"  PSIS k-hat: {psis.khat:.2f} ({psis.verdict}) - {psis.message} "
                 f"[{psis.num_samples} draws]")
    if comparison is not None:
        lines.append("  vs NUTS (worst parameters):")
        if aligned is not None:
            lines.append(f"    (labels: {aligned})")
        for _, r in comparison.worst(3).iterrows():
            lines.append(f"    {r['param']:<22} mean {r['vi_mean']:+.3g} vs {r['nuts_mean']:+.3g}"
                         f" (std diff {r['std_mean_diff']:+.2f}), sd {r['vi_sd']:.3g} vs "
                         f"{r['nuts_sd']:.3g} (ratio {r['sd_ratio']:.2f})")
    if figures:
        lines.append("  figures:    " + ", ".join(str(f) for f in figures))
    return "\n".join(lines)


def diagnose(fit: FitResult | tuple[Any, Any], *args: Any, model: Callable[..., Any] | None = None, nuts: bool = False,
             out_dir: str | Path | None = None, num_samples: int = 4000, seed: int = 0,
             window: int | None = None, nuts_options: dict[str, Any] | None = None,
             verbose: bool = True, **kwargs: Any) -> Diagnosis:
    r"""Print and return a short plain-text verdict on a variational fit.

    Parameters
    ----------
    fit : FitResult or (model, guide)
        A fit result (:class:`~pyro_vi.CAVIResult`, :class:`~pyro_vi.SVIResult`), or a
        ``(model, guide)`` pair of Pyro callables.
    *args, **kwargs
        The model's data arguments; for a fit result they default to its ``data``.
    model : callable, optional
        A Pyro model to use instead of the result's ``model``.
    nuts : bool
        Also run :func:`pyro_vi.compare_to_mcmc` (slow: minutes for a GMM).
    out_dir : path, optional
        Where figures go (``elbo_trace.png``, ``psis_log_ratios.png``, ``vi_vs_nuts.png``);
        ``None`` writes none.
    num_samples : int
        Guide draws for PSIS, at least 100 (:data:`pyro_vi.diagnostics.psis.MIN_SAMPLES`).
    seed : int
        Seed for the draws and NUTS.
    window : int, optional
        ELBO window for :func:`elbo_flatness`.
    nuts_options : dict, optional
        Extra keywords for :func:`pyro_vi.compare_to_mcmc` (``num_samples``, ``align``, ...);
        a mixture's labels are aligned by default (see the module docstring).
    verbose : bool
        Print the report.

    Returns
    -------
    Diagnosis

    .. warning::
       Each check can miss a bad fit: a flat ELBO can sit at a poor local optimum, a small
       :math:`\hat k` judges the joint fit, not every marginal, and NUTS is a reference only
       if it mixed. Read them together.

    References
    ----------
    Yao, Vehtari, Simpson & Gelman (2018), "Yes, but did it work?: Evaluating variational
    inference", ICML.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch
    >>> def model(y):
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> def guide(y):
    ...     pyro.sample("mu", dist.Normal(y / 2, 0.5 ** 0.5))
    >>> d = diagnose((model, guide), torch.tensor(1.0), num_samples=500, verbose=False)
    >>> d.verdict, d.psis.verdict
    ('trust', 'good')
    """
    pyro_model, guide, params, result = _unpack(fit, model)
    nuts = bool(check_bool("nuts", nuts))
    verbose = bool(check_bool("verbose", verbose))
    num_samples = check_psis_samples(num_samples)
    if result is not None and not args and not kwargs:
        args = result.data
    out = None if out_dir is None else Path(out_dir)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    converged = None if result is None else bool(result.converged)
    elbo = None if result is None else [float(v) for v in result.history["elbo"]]
    trend = elbo_flatness(elbo, window=window) if elbo is not None and len(elbo) >= 3 else None
    psis = psis_diagnostic(pyro_model, guide, *args, num_samples=num_samples, seed=seed,
                           params=params, **kwargs)
    figures: list[Path] = []
    comparison = None
    aligned = None
    if nuts:
        opts = dict(nuts_options or {})
        spec = label_alignment(result)
        if spec is not None and "align" not in opts:
            opts["align"] = align_from_spec(spec)
            aligned = (f"NUTS components aligned to the guide's by Hungarian matching on "
                       f"{spec.by!r} (label switching)")
        if out is not None:
            opts.setdefault("plot", out / "vi_vs_nuts.png")
        comparison = compare_to_mcmc(pyro_model, guide, *args, seed=seed, params=params,
                                     **opts, **kwargs)
    if out is not None:
        if trend is not None and elbo is not None:
            figures.append(_plot_elbo(elbo, trend, out / "elbo_trace.png"))
        figures.append(_plot_psis(psis, out / "psis_log_ratios.png"))
    if comparison is not None and comparison.figure_path is not None:
        figures.append(comparison.figure_path)
    verdict = _verdict(converged, trend, psis, comparison)
    text = _report(result, converged, trend, psis, comparison, verdict, figures, aligned)
    if verbose:
        print(text)
    return Diagnosis(verdict, converged, trend, psis, comparison, tuple(figures), text)
