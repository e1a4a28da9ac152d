"""Starts that find the best optimum: best-of-10 CAVI (k-means++ or k-means starts) vs scikit-learn.

Five data sets, each standardised (zero mean, unit variance per column): the bundled Old
Faithful (2 clusters by convention, no labels: no ARI), iris (3), wine (3), breast cancer (2)
from :mod:`sklearn.datasets` (bundled with scikit-learn), and a penguins-sized synthetic set
(N=340, D=4, 3 classes of 150/70/120 points with correlated covariances, seeded). Each is
fitted with K = 2× its true count of classes and 10 starts by

* ``cavi(GaussianMixture(K, init="kmeans++"), n_init=10)``: k-means++ seeding, hard assignments;
* ``cavi(GaussianMixture(K, init="kmeans"), n_init=10)``: k-means++ seeding then Lloyd's k-means;
* ``cavi(GaussianMixture(K, init="kmeans++"), n_init=10, screen_tol=1e-5)``: every start to a
  relative change of 1e-5, then the 3 best carried on to ``tol`` (screened restarts);
* the same with ``moves=10`` (split and merge moves of the best fit,
  :mod:`pyro_vi.models.gmm.moves`), at ``screen_tol=1e-5`` and at ``1e-4`` (the moves run to
  the same ``screen_tol``);
* ``BayesianGaussianMixture(K, n_init=10)`` with its default start (k-means run to convergence),
  ``weight_concentration_prior_type="dirichlet_distribution"`` (our q(π) is a Dirichlet),
  ``max_iter=500`` (CAVI's default) and its default ``tol=1e-3`` (absolute, its own rule).

Every other prior is both libraries' default (they agree: data mean and covariance, β0 = 1,
ν0 = D, α0 = 1/K). All three are scored by our analytic ELBO: sklearn's fitted q through
:func:`pyro_vi.models.gmm.estimator.from_sklearn` (``lower_bound_`` is our ELBO at sklearn's
parameters). ARI is to the true classes, from the hard assignments. Seconds are the wall-clock of
the whole 10-start fit, one thread, the three methods interleaved (the order rotates every
repeat); ``--repeats`` master seeds give the median [range].

Run ``python -m benchmarks.gmm_starts`` (or ``pyro-vi bench gmm-starts``); ``--quick`` is a
smoke test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from pyro_vi import GaussianMixture, cavi, load_old_faithful

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

NAME = "gmm_starts"
METHODS = ("CAVI kmeans++", "CAVI kmeans", "CAVI kmeans++ screened", "CAVI kmeans++ screened + moves",
           "CAVI kmeans++ screened 1e-4 + moves", "sklearn")
SCREEN_TOL = 1e-5  #: the screened methods' ``screen_tol`` (the "1e-4" one: 1e-4)
MOVES = 10  #: the "+ moves" methods' ``moves``
SK_MAX_ITER = 500


@dataclass(frozen=True)
class DataSet:
    """A standardised data set, its true classes (None: unlabelled) and their count."""

    name: str
    x: np.ndarray
    labels: np.ndarray | None
    n_classes: int


def _standardize(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / x.std(0)


def penguins_like(*, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """340 points, D=4, three classes of 150/70/120 with correlated Gaussian clusters (seeded)."""
    rng = np.random.default_rng(seed)
    sizes = (150, 70, 120)
    means = 2.0 * rng.standard_normal((3, 4))
    xs, ys = [], []
    for c, n in enumerate(sizes):
        a = 0.6 * rng.standard_normal((4, 4)) + 0.5 * np.eye(4)
        xs.append(means[c] + rng.standard_normal((n, 4)) @ a.T)
        ys.append(np.full(n, c))
    return np.concatenate(xs), np.concatenate(ys)


def load_datasets(*, quick: bool) -> list[DataSet]:
    """The five data sets of the module docstring (quick: Old Faithful and the synthetic set)."""
    from sklearn.datasets import load_breast_cancer, load_iris, load_wine

    x, y = penguins_like()
    sets = [DataSet("old faithful", load_old_faithful(standardize=True).numpy(), None, 2),
            DataSet("penguins-like synthetic", _standardize(x), y, 3)]
    if not quick:
        for name, loader, classes in (("iris", load_iris, 3), ("wine", load_wine, 3),
                                      ("breast cancer", load_breast_cancer, 2)):
            bunch = loader()
            sets.append(DataSet(name, _standardize(np.asarray(bunch.data, dtype=np.float64)), bunch.target, classes))
    return sets


def fit_once(method: str, data: DataSet, *, n_init: int, seed: int) -> dict[str, Any]:
    """One 10-start fit: our analytic ELBO of the best start, ARI to the classes, wall seconds."""
    from sklearn.metrics import adjusted_rand_score
    from sklearn.mixture import BayesianGaussianMixture

    from pyro_vi.models.gmm.estimator import from_sklearn

    k = 2 * data.n_classes
    t0 = time.perf_counter()
    if method == "sklearn":
        bgm = BayesianGaussianMixture(n_components=k, n_init=n_init, max_iter=SK_MAX_ITER, random_state=seed,
                                      weight_concentration_prior_type="dirichlet_distribution")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a start hitting max_iter warns; its ELBO is still scored
            bgm.fit(data.x)
        seconds = time.perf_counter() - t0
        elbo = float(from_sklearn(bgm, data.x).lower_bound_)
        pred = bgm.predict(data.x)
    else:
        x = torch.as_tensor(data.x, dtype=torch.float64)
        init = method.split()[1]
        screen = None if "screened" not in method else 1e-4 if "1e-4" in method else SCREEN_TOL
        fit = cavi(GaussianMixture(k, init=init), x, n_init=n_init, seed=seed, warn=False, screen_tol=screen,
                   moves=MOVES if method.endswith("+ moves") else 0)
        seconds = time.perf_counter() - t0
        elbo = float(fit.elbo)
        pred = fit.cavi_model.responsibilities(x, fit.params).argmax(-1).numpy()
        trajectory = start_trajectory([r.history for r in fit.runs], seconds, moves=fit.moves)
    ari = float("nan") if data.labels is None else float(adjusted_rand_score(data.labels, pred))
    out: dict[str, Any] = {"elbo": elbo, "ari": ari, "seconds": seconds}
    if method != "sklearn":
        out["trajectory"] = trajectory
    return out


def start_trajectory(histories: Sequence[pd.DataFrame], seconds: float,
                     moves: pd.DataFrame | None = None) -> list[tuple[float, float]]:
    """(wall seconds since the fit began, ELBO) after every sweep of every start, the starts in order.

    Each start's own clock (its history) begins at its first global step; what the fit spent
    outside the starts' sweeps and moves (preparing the data, each start's k-means++ or Lloyd
    seeding, building the result) is shared equally among the starts and charged before each
    one. The move search (``fit.moves``) follows the starts: after each move run, the ELBO of
    the best fit so far.
    """
    searched = 0.0 if moves is None or not len(moves) else float(moves.seconds.iloc[-1])
    swept = sum(float(h.seconds.iloc[-1]) for h in histories) + searched
    overhead = max(0.0, seconds - swept) / max(1, len(histories))
    points, base = [], 0.0
    for h in histories:
        base += overhead
        points += [(base + float(t), float(e)) for t, e in zip(h.seconds, h.elbo, strict=True)]
        base += float(h.seconds.iloc[-1])
    if moves is not None:
        best = max(e for _, e in points)
        for t, e, ok in zip(moves.seconds, moves.elbo, moves.accepted, strict=True):
            best = max(best, float(e)) if ok else best
            points.append((base + float(t), best))
    return points


def time_to(trajectory: Sequence[tuple[float, float]], target: float) -> float:
    """Seconds until the fit first reaches ``target`` (within 1e-9 relative, a tie), or inf if it never does."""
    for t, e in trajectory:
        if e >= target - 1e-9 * abs(target):
            return t
    return float("inf")


def run(sets: Sequence[DataSet], *, n_init: int, repeats: int) -> pd.DataFrame:
    rows = []
    for data in sets:
        for rep in range(repeats):
            order = METHODS[rep % len(METHODS):] + METHODS[:rep % len(METHODS)]  # rotate who goes first
            results = {method: fit_once(method, data, n_init=n_init, seed=rep) for method in order}
            target = results["sklearn"]["elbo"]
            for method in METHODS:
                res = dict(results[method])
                trajectory = res.pop("trajectory", None)
                # time to sklearn's best ELBO of the same seed (sklearn: its whole fit)
                res["seconds_to_sklearn"] = res["seconds"] if trajectory is None else time_to(trajectory, target)
                rows.append({"data": data.name, "N": data.x.shape[0], "D": data.x.shape[1],
                             "K": 2 * data.n_classes, "method": method, "seed": rep, "n_init": n_init, **res})
                print(f"  {data.name} seed {rep}: {method}: ELBO {res['elbo']:.2f}, ARI {res['ari']:.2f}, "
                      f"{res['seconds']:.3g} s, to sklearn's ELBO {res['seconds_to_sklearn']:.3g} s", flush=True)
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per data set and method: ELBO, gap to the best of any run, wins over sklearn, ARI, seconds."""
    out = []
    for name, part in df.groupby("data", sort=False):
        best = part.elbo.max()
        sk = part[part.method == "sklearn"].set_index("seed")
        for method in METHODS:
            m = part[part.method == method].set_index("seed")
            gap = 100 * (best - m.elbo) / abs(best)
            row = {"data": name, "K": int(m.K.iloc[0]), "method": method,
                   "best ELBO": median_range(m.elbo, "{:.1f}"), "gap to best %": median_range(gap, "{:.2g}"),
                   "ARI": median_range(m.ari, "{:.2f}"), "seconds": median_range(m.seconds, "{:.3g}")}
            if method != "sklearn":
                # ties within 1e-9 relative count as reaching sklearn's optimum (the same optimum, round-off apart)
                wins = (m.elbo >= sk.elbo - 1e-9 * sk.elbo.abs()).sum()
                row["ELBO ≥ sklearn"] = f"{wins}/{len(m)}"
                row["time / sklearn"] = median_range(m.seconds / sk.seconds, "{:.2f}")
                # the seconds until this fit first reached sklearn's best ELBO (inf: never)
                row["time to sklearn's ELBO / sklearn"] = _time_cell(m.seconds_to_sklearn / sk.seconds)
            else:
                row["ELBO ≥ sklearn"] = row["time / sklearn"] = row["time to sklearn's ELBO / sklearn"] = "—"
            out.append(row)
    return pd.DataFrame(out)


def _time_cell(ratios: pd.Series) -> str:
    """Median [range] of the finite ratios, and how many fits never got there."""
    never = int((~np.isfinite(ratios)).sum())
    cell = median_range(ratios, "{:.2f}")
    return cell if not never else f"{cell} ({never}/{len(ratios)} never)"


def plot(df: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(11, 3.6))
    names = list(dict.fromkeys(df.data))
    width = 0.8 / len(METHODS)
    for p, (col, label) in enumerate((("gap", "gap to the best ELBO (%)"), ("seconds", "seconds (10 starts)"))):
        ax = fig.add_subplot(1, 2, p + 1)
        for j, method in enumerate(METHODS):
            vals = []
            for name in names:
                part = df[df.data == name]
                m = part[part.method == method]
                v = 100 * (part.elbo.max() - m.elbo) / abs(part.elbo.max()) if col == "gap" else m.seconds
                vals.append(statistics.median(v))
            ax.bar(np.arange(len(names)) + (j - (len(METHODS) - 1) / 2) * width, vals, width, label=method)
        ax.set_xticks(np.arange(len(names)), names, rotation=20, fontsize=8)
        ax.set_ylabel(label)
        if p == 0:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    matplotlib.use("Agg")  # an app: figures go to files
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--repeats", type=int, default=None, help="master seeds (default 3; quick 1)")
    parser.add_argument("--n-init", type=int, default=None, help="starts per fit (default 10; quick 2)")
    args = parser.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    n_init = args.n_init if args.n_init is not None else (2 if args.quick else 10)
    if repeats < 1 or n_init < 1:
        parser.error("--repeats and --n-init must be >= 1")
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    with limit_threads(args.threads):
        df = run(load_datasets(quick=args.quick), n_init=n_init, repeats=repeats)
    info = machine_info(dtype="float64", device="cpu", threads=args.threads)
    info.update(load_avg_start=[round(v, 2) for v in load0], load_avg_end=[round(v, 2) for v in os.getloadavg()],
                wall_seconds=round(time.perf_counter() - t0, 1))
    md = (f"{n_init} starts per fit, K = 2× the true class count, {repeats} master seed(s) (median [range]); "
          "ELBO = our analytic ELBO (sklearn's fit scored through `from_sklearn`); gap = below the best ELBO "
          "any run found on that data set; ARI to the true classes (Old Faithful has none); seconds = wall "
          f"clock of the whole {n_init}-start fit, {args.threads} thread(s); time to sklearn's ELBO = wall "
          "seconds until the CAVI fit first reached the ELBO of sklearn's fit of the same seed (its starts in "
          "order, ties within 1e-9 relative; inf = never), over sklearn's whole fit.\n\n"
          + markdown_table(summary(df)))
    write_results(args.out, stem(NAME, args.quick), table=df, markdown=md, info=info, figures={"elbo": plot(df)})
    if should_update_readme(args):
        update_readme(NAME, md + machine_line(info))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
