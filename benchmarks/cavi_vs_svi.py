"""CAVI vs SVI vs scikit-learn on the Bayesian Gaussian mixture: ELBO, time to optimum, fit quality.

Methods (same priors, same k-means++ start for a given seed):

* ``CAVI`` — :func:`pyro_vi.cavi.engine`;
* ``CAVI float32`` — the same with ``compute_dtype=torch.float32`` (the local step's GEMMs in
  float32, sums in float64), tol 1e-7 relative: the float32 GEMMs resolve the ELBO to ~1e-7;
* ``SVI enum`` — ``TraceEnum_ELBO`` with ``gmm.guide_enum`` (z summed out);
* ``SVI trace`` — ``Trace_ELBO`` with the mean-field ``gmm.guide_optimal_z`` (q(z) at its
  closed-form optimum given the current globals);
* ``SVI trace-free`` — ``Trace_ELBO`` with the mean-field ``gmm.guide`` (free q(z) parameters,
  score-function gradients for z);
* ``sklearn`` — ``BayesianGaussianMixture(weight_concentration_prior_type="dirichlet_distribution",
  reg_covar=0)`` started from the same responsibilities; its loop (E-step, M-step, lower bound)
  is replayed step by step so that its parameters can be scored after every iteration.

Every method is scored by the same analytic ELBO (Bishop 2006, eq. 10.70 with the optimal q(z)),
:meth:`GaussianMixture.elbo`, at its global parameters; the scoring time is excluded from the clock.
"Time to 0.1 %" is the first time a method's ELBO is within 0.1 % of the best ELBO any method
found *for that data set and seed*.

Run ``python -m benchmarks.cavi_vs_svi`` (or ``pyro-vi bench gmm``); ``--quick`` is a smoke test.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from pyro_vi import cavi, load_old_faithful
from pyro_vi.cavi.kmeans import initial_responsibilities
from pyro_vi.factors import Dirichlet, NormalWishart
from pyro_vi.linalg import inverse_cholesky
from pyro_vi.models.gmm.model import GaussianMixture, GMMParams, replace_model
from pyro_vi.models.gmm.svi import SVI_DEFAULTS, fit_gmm_svi

from ._common import (
    add_common_args,
    limit_threads,
    machine_info,
    machine_line,
    markdown_table,
    median_range,
    should_update_readme,
    stem,
    update_readme,
    write_results,
)

NAME = "cavi_vs_svi"
REL_TOL = 1e-3  #: "within 0.1 % of the best ELBO"
WEIGHT_CONCENTRATION = 0.01  #: α0: a sparse Dirichlet, so surplus components can empty out
METHODS = ("CAVI", "CAVI float32", "CAVI x10", "sklearn", "SVI enum", "SVI trace", "SVI trace-free")
FLOAT32_TOL = 1e-7  #: CAVI float32's relative tol: its ELBO is resolved to ~1e-7, not to float64's 1e-9
RESTARTS = 10  #: restarts of the "CAVI x10" method
SVI_METHODS = ("enum", "trace", "trace-free")
#: Adam step sizes (ClippedAdam, decayed geometrically to a tenth over the run): fit_gmm_svi's
#: defaults. For trace-free, 0.005 was the best of 0.001, 0.005, 0.02, 0.05 (0.05 and 0.02 drift
#: *away* from the start: Old Faithful -486 -> -573, iris -528 -> -617 in 600 steps).
SVI_LR = {m: SVI_DEFAULTS[m]["lr"] for m in SVI_METHODS}


@dataclass(frozen=True)
class DataSet:
    """A train/test split with (optional) true labels of the training rows."""

    name: str
    x_train: torch.Tensor
    x_test: torch.Tensor
    labels: np.ndarray | None
    k_fit: int


@dataclass(frozen=True)
class Budget:
    """Iteration/step budgets of one run of the benchmark."""

    seeds: tuple[int, ...]
    cavi_iter: int = 1000
    cavi_tol: float = 1e-9
    sklearn_tol: float = 1e-7
    svi_steps: dict[str, int] = field(default_factory=dict)  # data set -> steps (default key "*")
    eval_every: int = 25

    def steps(self, data: str) -> int:
        """SVI steps on data set ``data``."""
        return self.svi_steps.get(data, self.svi_steps["*"])


@dataclass(frozen=True)
class Run:
    """One method on one data set and seed: its ELBO trace and fitted parameters."""

    method: str
    steps: np.ndarray
    seconds: np.ndarray
    elbo: np.ndarray
    params: GMMParams
    note: str = ""


# ------------------------------------------------------------------------------------------- data
def synthetic(n: int, k: int, d: int, *, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` draws of a ``k``-component Gaussian mixture in ``d`` dimensions, and their labels.

    Component means are at least ``separation`` apart (rejection sampling); covariances are random
    with eigenvalues between about 0.25 and 1, so ``separation`` is in units of a component's sd.
    """
    g = np.random.default_rng(seed)
    means = [g.uniform(-1, 1, d) * separation * k]
    while len(means) < k:
        cand = g.uniform(-1, 1, d) * separation * k
        if min(np.linalg.norm(cand - m) for m in means) >= separation:
            means.append(cand)
    rot = np.linalg.qr(g.normal(size=(k, d, d)))[0]
    chol = rot * np.sqrt(g.uniform(0.25, 1.0, size=(k, 1, d)))  # cov_k = R diag(s) R^T
    weights = g.dirichlet(np.full(k, 5.0))
    labels = g.choice(k, size=n, p=weights)
    x = np.stack(means)[labels] + np.einsum("nij,nj->ni", chol[labels], g.normal(size=(n, d)))
    return x, labels


def _split(name: str, x: np.ndarray, labels: np.ndarray | None, k_true: int) -> DataSet:
    perm = np.random.default_rng(0).permutation(len(x))
    n_train = int(round(0.8 * len(x)))
    tr, te = perm[:n_train], perm[n_train:]
    t = functools.partial(torch.as_tensor, dtype=torch.float64)
    return DataSet(name, t(x[tr]), t(x[te]), None if labels is None else labels[tr], 2 * k_true)


def _standardize(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / x.std(0)


def load_datasets(*, quick: bool) -> list[DataSet]:
    """Synthetic grid, Old Faithful, iris and wine (80/20 split with a fixed seed; K fitted = 2·K_true)."""
    from sklearn.datasets import load_iris, load_wine

    grid = [(200, 2, 2)] if quick else [(500, 3, 2), (2000, 3, 2), (500, 5, 5), (2000, 5, 5)]
    sets = []
    for n, k, d in grid:
        x, y = synthetic(n, k, d, separation=4.0, seed=n + 10 * k + d)
        sets.append(_split(f"synth N={n} K={k} D={d}", x, y, k))
    sets.append(_split("old faithful", load_old_faithful(standardize=True).numpy(), None, 2))
    if not quick:
        for name, loader in (("iris", load_iris), ("wine", load_wine)):
            bunch = loader()
            sets.append(_split(name, _standardize(bunch.data), bunch.target, 3))
    return sets


# ---------------------------------------------------------------------------------------- methods
def run_cavi(gmm: GaussianMixture, x: torch.Tensor, seed: int, budget: Budget, *,
             compute_dtype: torch.dtype = torch.float64) -> Run:
    """One k-means++ start; ``compute_dtype=torch.float32`` runs the local step's GEMMs in float32."""
    name, tol = "CAVI", budget.cavi_tol
    if compute_dtype != torch.float64:
        gmm = replace_model(gmm)
        gmm.compute_dtype = compute_dtype
        name, tol = "CAVI float32", max(tol, FLOAT32_TOL)
    fit = cavi(gmm, x, seed=seed, max_iter=budget.cavi_iter, tol=tol, warn=False)
    h = fit.history
    return Run(name, h.step.to_numpy(), h.seconds.to_numpy(), h.elbo.to_numpy(), fit.params,
               "" if fit.converged else "not converged")


def run_cavi_restarts(gmm: GaussianMixture, x: torch.Tensor, seed: int, budget: Budget) -> Run:
    """Best of ``RESTARTS`` CAVI runs (seeds ``RESTARTS·seed + i``), as an anytime trace.

    The restarts run one after another; the trace is the best ELBO so far against the cumulative
    time, including each restart's k-means++ initialisation (spread evenly over the restarts).
    """
    t0 = time.perf_counter()
    fit = cavi(gmm, x, seed=RESTARTS * seed, n_init=RESTARTS, max_iter=budget.cavi_iter,
               tol=budget.cavi_tol, warn=False)
    total = time.perf_counter() - t0
    init = max(0.0, total - sum(r.history.seconds.iloc[-1] for r in fit.runs)) / RESTARTS
    steps, seconds, elbo = [], [], []
    t_off, s_off, best = 0.0, 0, -math.inf
    for i, r in enumerate(fit.runs):
        h = r.history
        t_off += init if i else 0.0
        steps.append(s_off + h.step.to_numpy())
        seconds.append(t_off + h.seconds.to_numpy())
        elbo.append(np.maximum(best, h.elbo.to_numpy()))
        t_off += float(h.seconds.iloc[-1])
        s_off += int(h.step.iloc[-1])
        best = max(best, float(h.elbo.max()))
    return Run(f"CAVI x{RESTARTS}", np.concatenate(steps), np.concatenate(seconds), np.concatenate(elbo),
               fit.params, "" if fit.converged else "not converged")


def sklearn_estimator(gmm: GaussianMixture, *, max_iter: int = 100, tol: float = 1e-3):
    """A ``BayesianGaussianMixture`` with ``gmm``'s (resolved) priors and covariance type, reg_covar=0.

    For ``"diag"`` sklearn's model is not ours (its E[log|Λ_k|] is the Wishart formula, not a sum of
    Gamma terms), so only timings are comparable there.
    """
    from sklearn.mixture import BayesianGaussianMixture

    p = gmm.hyperparams
    if p is None:
        raise ValueError("resolve the priors first: gmm = gmm.resolve(x)")
    return BayesianGaussianMixture(
        n_components=gmm.n_components, covariance_type=gmm.covariance,
        weight_concentration_prior_type="dirichlet_distribution",
        weight_concentration_prior=p.weight_concentration, mean_precision_prior=p.mean_precision,
        mean_prior=p.mean_prior.cpu().numpy(), degrees_of_freedom_prior=p.degrees_of_freedom,
        covariance_prior=p.covariance_prior.cpu().numpy(), reg_covar=0.0, max_iter=max_iter, tol=tol)


def sklearn_params(est) -> GMMParams:
    r"""Convert scikit-learn's fitted variational factors to :class:`GMMParams` (full covariance).

    sklearn stores ``covariances_`` :math:`= W_k^{-1}/\nu_k` (the inverse of
    :math:`E[\Lambda_k] = \nu_k W_k`), so :math:`W_k^{-1} = \nu_k\,` ``covariances_``.
    """
    t = functools.partial(torch.as_tensor, dtype=torch.float64)
    nu = t(est.degrees_of_freedom_)
    tril = inverse_cholesky(t(est.covariances_) * nu[:, None, None], where="sklearn covariances_")
    return GMMParams(Dirichlet(t(est.weight_concentration_)),
                     NormalWishart(t(est.means_), t(est.mean_precision_), tril, nu))


def initial_resp(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """The responsibilities :func:`pyro_vi.cavi.engine` starts from with ``seed`` (k-means++)."""
    return initial_responsibilities(x, k, method="kmeans++", generator=torch.Generator().manual_seed(seed))


def run_sklearn(gmm: GaussianMixture, x: torch.Tensor, seed: int, *, max_iter: int, tol: float,
                eval_every: int = 1) -> Run:
    """Replay sklearn's ``fit`` loop (``BaseMixture.fit_predict``) to score every iteration.

    The loop body is sklearn's: ``_e_step``, ``_m_step``, ``_compute_lower_bound`` and the
    absolute ``tol`` test on the bound's change; the start is ``_initialize`` (one M-step) at the
    k-means++ responsibilities CAVI uses, instead of sklearn's own k-means.
    """
    est = sklearn_estimator(gmm, max_iter=max_iter, tol=tol)
    X = x.cpu().numpy()
    resp = initial_resp(x, gmm.n_components, seed).numpy()
    est._check_parameters(X)
    rows: list[tuple[int, float, float]] = []
    spent = 0.0
    t0 = time.perf_counter()

    def record(it: int) -> None:
        nonlocal spent
        e0 = time.perf_counter()
        rows.append((it, e0 - t0 - spent, gmm.elbo(x, sklearn_params(est))))
        spent += time.perf_counter() - e0

    est._initialize(X, resp)
    record(0)
    lower, note = -math.inf, "not converged"
    for it in range(1, max_iter + 1):
        prev = lower
        log_prob_norm, log_resp = est._e_step(X)
        est._m_step(X, log_resp)
        lower = est._compute_lower_bound(log_resp, log_prob_norm)
        done = abs(lower - prev) < tol
        if done or it % eval_every == 0 or it == max_iter:
            record(it)
        if done:
            note = ""
            break
    steps, seconds, elbo = (np.array(c) for c in zip(*rows, strict=True))
    return Run("sklearn", steps, seconds, elbo, sklearn_params(est), note)


def run_svi(gmm: GaussianMixture, x: torch.Tensor, seed: int, method: str, *, steps: int,
            eval_every: int) -> Run:
    """:func:`pyro_vi.models.gmm.svi.fit_gmm_svi` started from the k-means++ seed ``seed``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pyro's enumeration warnings on valid code
        fit = fit_gmm_svi(gmm, x, method=method, num_steps=steps, lr=SVI_LR[method], seed=seed,
                          eval_every=eval_every, tol=0.0)
    tr = fit.evaluations
    return Run(f"SVI {method}", tr.step.to_numpy(), tr.seconds.to_numpy(), tr.analytic_elbo.to_numpy(), fit.params)


# ---------------------------------------------------------------------------------------- metrics
def first_reach(run: Run, target: float) -> tuple[float, float]:
    """(seconds, steps) at which ``run`` first came within ``REL_TOL`` of ``target``; NaN if never."""
    ok = np.nonzero(run.elbo >= target - REL_TOL * abs(target))[0]
    return (float(run.seconds[ok[0]]), float(run.steps[ok[0]])) if len(ok) else (math.nan, math.nan)


def score(run: Run, ds: DataSet, gmm: GaussianMixture, best: float) -> dict[str, object]:
    from sklearn.metrics import adjusted_rand_score

    secs, steps = first_reach(run, best)
    ari = math.nan
    if ds.labels is not None:
        ari = adjusted_rand_score(ds.labels, gmm.predict(run.params, ds.x_train).numpy())
    return {"final_elbo": float(run.elbo[-1]), "best_elbo": best,
            "gap_pct": 100 * (best - float(run.elbo[-1])) / abs(best),
            "seconds_to_target": secs, "steps_to_target": steps,
            "total_seconds": float(run.seconds[-1]), "total_steps": int(run.steps[-1]),
            "ari": ari, "test_lpd": float(gmm.log_predictive(run.params, ds.x_test).mean()),
            "n_effective": gmm.summary(run.params).n_effective, "note": run.note}


def run_all(datasets: Sequence[DataSet], budget: Budget, *, verbose: bool = True
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every method on every data set and seed: (per-run metrics, ELBO traces)."""
    rows, traces = [], []
    for ds in datasets:
        gmm = GaussianMixture(ds.k_fit, weight_concentration=WEIGHT_CONCENTRATION).resolve(ds.x_train)
        for seed in budget.seeds:
            runs = [run_cavi(gmm, ds.x_train, seed, budget),
                    run_cavi(gmm, ds.x_train, seed, budget, compute_dtype=torch.float32),
                    run_cavi_restarts(gmm, ds.x_train, seed, budget),
                    run_sklearn(gmm, ds.x_train, seed, max_iter=budget.cavi_iter, tol=budget.sklearn_tol)]
            runs += [run_svi(gmm, ds.x_train, seed, m, steps=budget.steps(ds.name), eval_every=budget.eval_every)
                     for m in SVI_METHODS]
            best = max(float(np.max(r.elbo)) for r in runs)
            for r in runs:
                rows.append({"data": ds.name, "seed": seed, "method": r.method, **score(r, ds, gmm, best)})
                traces.append(pd.DataFrame({"data": ds.name, "seed": seed, "method": r.method,
                                            "step": r.steps, "seconds": r.seconds, "elbo": r.elbo}))
            if verbose:
                print(f"  {ds.name} seed {seed}: " + ", ".join(
                    f"{r.method} {r.elbo[-1]:.2f} in {r.seconds[-1]:.2f}s" for r in runs), flush=True)
    return pd.DataFrame(rows), pd.concat(traces, ignore_index=True)


# ---------------------------------------------------------------------------------------- reports
def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per data set and method: medians [min–max] over seeds."""
    out = []
    for (data, method), g in df.groupby(["data", "method"], sort=False):
        reached = int(np.isfinite(g.seconds_to_target).sum())
        out.append({"data": data, "method": method,
                    "final ELBO": median_range(g.final_elbo, "{:.1f}"),
                    "gap to best %": median_range(g.gap_pct, "{:.2g}"),
                    "reached 0.1%": f"{reached}/{len(g)}",
                    "s to 0.1%": median_range(g.seconds_to_target),
                    "iters to 0.1%": median_range(g.steps_to_target, "{:.0f}"),
                    "total s": median_range(g.total_seconds),
                    "ARI": median_range(g.ari, "{:.2f}"),
                    "test lpd": median_range(g.test_lpd, "{:.3f}"),
                    "K eff": median_range(g.n_effective, "{:.0f}")})
    return pd.DataFrame(out)


def speedups(df: pd.DataFrame) -> pd.DataFrame:
    """CAVI's time to 0.1 % (one start, and best of the restarts) against the best SVI variant's and sklearn's.

    A method that never reached the target within its budget contributes its total time, so the
    ratio is a lower bound, marked ``>``. Seeds where the CAVI variant itself missed the target
    (stuck at a worse local optimum than another method found) are counted in "reached", not used
    in the ratio.
    """
    out = []
    for data, g in df.groupby("data", sort=False):
        piv = g.pivot(index="seed", columns="method", values="seconds_to_target")
        tot = g.pivot(index="seed", columns="method", values="total_seconds")
        svi = [m for m in piv.columns if m.startswith("SVI")]
        gap = g.pivot(index="seed", columns="method", values="gap_pct")
        # fewest misses, then fastest to the target, then closest to it
        best_svi = min(svi, key=lambda m: (piv[m].isna().sum(), piv[m].fillna(np.inf).median(), gap[m].median()))
        row: dict[str, object] = {"data": data}
        for cav, label in (("CAVI", "CAVI"), (f"CAVI x{RESTARTS}", f"x{RESTARTS}")):
            ok = piv[cav].notna()
            row[f"{label} reached"] = f"{int(ok.sum())}/{len(ok)}"
            row[f"{label} s to 0.1%"] = median_range(piv[cav][ok])
            for other, name in ((best_svi, "SVI"), ("sklearn", "sklearn")):
                if label != "CAVI" and other == "sklearn":
                    continue
                t = piv[other].fillna(tot[other])
                ratio = (t[ok] / piv[cav][ok]).median() if ok.any() else math.nan
                mark = "> " if piv[other][ok].isna().any() else ""
                row[f"{name} / {label}"] = mark + (f"{ratio:.3g}" if math.isfinite(ratio) else "—")
        t = piv[best_svi]
        row["best SVI"] = best_svi
        row["SVI reached"] = f"{int(t.notna().sum())}/{len(t)}"
        row["SVI s to 0.1% (or total)"] = median_range(t.fillna(tot[best_svi]))
        out.append(row)
    return pd.DataFrame(out)


def plot(traces: pd.DataFrame) -> Figure:
    """Relative ELBO gap to the best ELBO (per seed) against seconds, one panel per data set."""
    names = list(dict.fromkeys(traces.data))
    cols = min(4, len(names))
    rows_ = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows_))
    colors = dict(zip(METHODS, ("C0", "C4", "C9", "C2", "C1", "C3", "C7"), strict=True))
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows_, cols, i + 1)
        t = traces[traces.data == name]
        for seed, ts in t.groupby("seed"):
            best = ts.elbo.max()
            for method, tm in ts.groupby("method"):
                gap = ((best - tm.elbo) / abs(best)).clip(lower=1e-9)
                ax.plot(tm.seconds.clip(lower=1e-4), gap, color=colors[method], lw=0.9, alpha=0.6,
                        label=method if seed == t.seed.min() else None)
        ax.axhline(REL_TOL, color="k", ls="--", lw=0.8)
        ax.set(xscale="log", yscale="log", title=name, xlabel="seconds (log; scoring excluded)")
        if i % cols == 0:
            ax.set_ylabel("(best ELBO − ELBO) / |best|")
    fig.axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.suptitle("ELBO vs wall-clock time (dashed: 0.1 % of the best ELBO; one line per seed)", y=1.02)
    return fig


def settings_text(budget: Budget, datasets: Sequence[DataSet]) -> str:
    steps = ", ".join(f"{k}: {v}" for k, v in budget.svi_steps.items())
    svi = "; ".join(f"{m}: ClippedAdam lr {SVI_LR[m]} decayed geometrically to a tenth" for m in SVI_METHODS)
    return (f"Seeds {list(budget.seeds)}; K fitted = 2·K_true ({', '.join(f'{d.name}: {d.k_fit}' for d in datasets)}); "
            f"α0 = {WEIGHT_CONCENTRATION}, other priors sklearn's defaults (data mean, data covariance, "
            f"β0 = 1, ν0 = D); 80/20 train/test split. CAVI: tol {budget.cavi_tol} (relative), "
            f"≤ {budget.cavi_iter} sweeps; CAVI x{RESTARTS}: best of {RESTARTS} k-means++ starts, run one after "
            f"another. sklearn: tol {budget.sklearn_tol} (absolute, its own rule). "
            f"SVI steps ({steps}); {svi}; {SVI_DEFAULTS['enum']['num_particles']:g} vectorized particles; "
            f"analytic ELBO every {budget.eval_every} steps "
            "(evaluation time excluded).\n")


def main(argv: Sequence[str] | None = None) -> int:
    matplotlib.use("Agg")  # an app: figures go to files
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5; quick 2)")
    args = parser.parse_args(argv)
    n_seeds = args.seeds or (2 if args.quick else 5)
    budget = Budget(seeds=tuple(range(n_seeds)), cavi_iter=100 if args.quick else 1000,
                    svi_steps={"*": 10} if args.quick else {"*": 400, "old faithful": 1000, "iris": 1000},
                    eval_every=5 if args.quick else 25)
    t0, c0 = time.perf_counter(), time.process_time()
    with limit_threads(args.threads):
        datasets = load_datasets(quick=args.quick)
        # warm-up (lazy torch/pyro initialisation), not recorded
        run_all(datasets[:1], Budget(seeds=(0,), cavi_iter=3, svi_steps={"*": 2}, eval_every=2), verbose=False)
        df, traces = run_all(datasets, budget)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    info = machine_info(dtype="float64", device="cpu", threads=args.threads)
    info.update(wall_seconds=round(wall, 1), cpu_seconds=round(cpu, 1))
    md = ("### Per data set and method (median [min–max] over seeds)\n\n" + markdown_table(summary_table(df))
          + "\n### CAVI speed-up in time to 0.1 % of the best ELBO (median over seeds)\n\n"
          + markdown_table(speedups(df)) + "\n" + settings_text(budget, datasets))
    name = stem(NAME, args.quick)
    write_results(args.out, name, table=df, markdown=md, info=info, figures={"elbo": plot(traces)})
    traces.to_csv(Path(args.out) / f"{name}_traces.csv", index=False)
    if should_update_readme(args):
        update_readme(NAME, md + machine_line(info))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
