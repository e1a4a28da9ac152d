"""Cost of one CAVI sweep of the Bayesian GMM as N, K and D grow: time, memory, roofline, sklearn.

* **Sweeps:** N (D=8, K=8, full covariance), K (D=8) and D (K=8; full and diag).
* **Time per sweep:** the engine's own loop body (``global_step``, chunked ``local_pass``, ELBO),
  timed per sweep in CPU seconds of this process (``time.process_time``, with one thread by
  default) and in wall-clock seconds; medians over sweeps and rounds. On a shared machine the
  wall clock also counts the time other processes held the core, so CPU seconds are the
  primary number; both are in the CSV.
* **scikit-learn side by side:** ``BayesianGaussianMixture`` (same priors, ``reg_covar=0``,
  started from the same responsibilities), one iteration = its ``_e_step``, ``_m_step`` and
  ``_compute_lower_bound`` as in its ``fit`` loop, timed in the same rounds, alternating.
* **Roofline:** nominal FLOPs per sweep (the two GEMMs: 4·N·K·D² full, 8·N·K·D diag) per CPU
  second, next to a float64 ``torch`` matmul (1024×1024) timed in the same round.
* **Memory:** the peak resident set size (``VmHWM`` from ``/proc/self/status``, which sees torch's
  allocations — ``tracemalloc`` does not) of a fresh subprocess that builds the data and runs
  :func:`pyro_vi.cavi.engine` with default options; the high-water mark is reset after the data is built.

* **Paths** (``--sections paths``): per (N, D, K) the seconds of a sweep on the *triangular*
  path (per-component triangular product), the *feature* path (quadratic features
  vech(x xᵀ), two GEMMs per block of ~4 MiB of features), the *float32* mode (``compute_dtype=
  torch.float32``, float64 accumulation; its block products in oneDNN, :func:`pyro_vi.linalg.mm_t`)
  and *float32_mm*, the same mode with the products in ``torch.mm`` (MKL here;
  ``pyro_vi.linalg.ONEDNN_FLOAT32 = False``), with scikit-learn's iteration beside them, all at one
  thread (``torch.set_num_threads(1)`` and ``threadpoolctl.threadpool_limits(1)``), interleaved
  (the order rotates every round), as the median with the range over the pooled sweeps. The
  ratio sklearn/CAVI is taken per round (medians of the round) and reported as median [range]
  over rounds. GFLOP/s are given against the 2·N·K·D(D+1) floor of the feature path and the
  4·N·K·D² textbook count, and divided by a single-thread 1024² matmul timed in the same round:
  float64 ``torch.mm``, float32 ``torch.mm`` for float32_mm and float32 oneDNN for float32.
  ``GaussianMixture`` has no public option choosing the
  full-covariance path, so the benchmark forces one on a copy of the model (:func:`forced`,
  checked by counting calls of the feature-path local step). A same-start check gives the ELBO of each
  path after 10 sweeps.
* **Crossover** (``--sections crossover``): triangular vs feature path, full covariance, float64,
  1 thread, over D in 8..64 and K in 4, 8, 16 at N=5e4, both paths alternating in one process;
  the D × K table of CPU-time ratios is what the default (``prefers_features``) is read from.
* **Memory** (``--sections memory``): the fresh-process peak above at N=1e6, D=32, K=16 for full
  and diag covariance alone (the sweeps section measures it too, among much else).
* **Threads** (``--threads N`` with N > 1): at the target size, wall-clock seconds per sweep at
  1 and N threads for the float64, float32 and float32_mm modes and for sklearn (N BLAS threads),
  interleaved; the speed-up is per round, median [range]. The load average before and after is
  in the machine JSON (``load_avg_start``/``load_avg_end``).
* **CUDA** (``--device cuda``): the float64 feature path and the float32 mode at N=1e6, D=32,
  K=16 on the GPU (synchronised timing), TFLOP/s against the device's own matmul, and the
  speed-up over this machine's CPU (1 thread) in the same run. Without CUDA the script says so
  and exits 0 without writing anything.

Each section writes its own files (``scaling``, ``scaling_paths``, ``scaling_crossover``,
``scaling_memory``, ``scaling_threads``, ``scaling_cuda``) and README section. Run ``python -m
benchmarks.scaling`` (or ``pyro-vi bench scaling``); ``--sections paths`` runs only the path
comparison; ``--quick`` is a smoke test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

import pyro_vi.linalg
from pyro_vi import cavi
from pyro_vi.cavi.engine import DEFAULT_CHUNK_BYTES, local_pass
from pyro_vi.models.gmm.model import GaussianMixture, replace_model

from ._common import (
    add_common_args,
    limit_threads,
    machine_info,
    machine_line,
    markdown_table,
    median_range,
    peak_rss_bytes,
    reset_peak_rss,
    should_update_readme,
    stem,
    update_readme,
    write_results,
)
from .cavi_vs_svi import initial_resp, sklearn_estimator, sklearn_params

NAME = "scaling"
TARGET = (100_000, 32, 16)  #: (N, D, K) of the issue's targets
MEMORY = (1_000_000, 32, 16)  #: (N, D, K) of the memory check


def make_data(n: int, d: int, k: int, *, seed: int = 0, chunk: int = 65536) -> torch.Tensor:
    """``n`` points of a ``k``-cluster mixture (unit-variance clusters, means ~ N(0, 3²)), float64.

    Filled in chunks so that building it needs no temporary of the data's size.
    """
    g = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(k, d, generator=g, dtype=torch.float64)
    x = torch.empty(n, d, dtype=torch.float64)
    for i in range(0, n, chunk):
        rows = min(chunk, n - i)
        lab = torch.randint(k, (rows,), generator=g)
        x[i:i + rows] = torch.randn(rows, d, generator=g, dtype=torch.float64) + means[lab]
    return x


def nominal_flops(n: int, d: int, k: int, covariance: str) -> float:
    """FLOPs of the two GEMMs of one sweep: Mahalanobis terms and scatter statistics."""
    return 4.0 * n * k * d * d if covariance == "full" else 8.0 * n * k * d


def _clocks() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def matmul_gflops(size: int = 1024, repeat: int = 3, *,
                  dtype: torch.dtype = torch.float64, onednn: bool = False) -> tuple[float, float]:
    """(CPU-time, wall-clock) GFLOP/s of a ``size``² matmul in ``dtype``, best of ``repeat``.

    ``torch.mm``, or with ``onednn`` (float32) :func:`pyro_vi.linalg.mm_t`'s oneDNN product.
    """
    a = torch.randn(size, size, dtype=dtype)
    with float32_route(onednn):
        product = pyro_vi.linalg.mm_t_for(dtype, "cpu")
    product(a, a)
    cpu, wall = [], []
    for _ in range(repeat):
        c0, w0 = _clocks()
        product(a, a)
        c1, w1 = _clocks()
        cpu.append(c1 - c0)
        wall.append(w1 - w0)
    flops = 2.0 * size**3
    return flops / max(min(cpu), 1e-9) / 1e9, flops / min(wall) / 1e9


def cavi_sweeps(gmm: GaussianMixture, x: torch.Tensor, sweeps: int, *,
                chunk_size: int | None = None) -> list[tuple[float, float]]:
    """(CPU s, wall s) of each of ``sweeps`` CAVI sweeps, exactly the loop body of :func:`pyro_vi.cavi.engine`."""
    model, data = gmm.prepare(x)
    stats = model.init_stats(data, generator=torch.Generator().manual_seed(0))
    params = model.global_step(stats, None)
    local = local_pass(model, data, params, chunk_size=None)
    out = []
    for _ in range(sweeps):
        c0, w0 = _clocks()
        params = model.global_step(local.stats, params)
        local = local_pass(model, data, params, chunk_size=chunk_size)
        float(local.elbo + model.global_elbo(params))
        c1, w1 = _clocks()
        out.append((c1 - c0, w1 - w0))
    return out


def sklearn_sweeps(gmm: GaussianMixture, x: torch.Tensor, sweeps: int) -> list[tuple[float, float]]:
    """(CPU s, wall s) of each of ``sweeps`` iterations of sklearn's fit loop from the same start."""
    est = sklearn_estimator(gmm.resolve(x))
    X = x.numpy()
    est._check_parameters(X)
    est._initialize(X, initial_resp(x, gmm.n_components, 0).numpy())
    out = []
    for _ in range(sweeps):
        c0, w0 = _clocks()
        log_prob_norm, log_resp = est._e_step(X)
        est._m_step(X, log_resp)
        est._compute_lower_bound(log_resp, log_prob_norm)
        c1, w1 = _clocks()
        out.append((c1 - c0, w1 - w0))
    return out


def time_config(n: int, d: int, k: int, covariance: str, *, sweeps: int, rounds: int) -> dict[str, float]:
    """Median per-sweep times of CAVI and sklearn and the matmul rate, measured alternately."""
    x = make_data(n, d, k)
    gmm = GaussianMixture(k, covariance=covariance).resolve(x)
    cav, skl, mm = [], [], []
    for r in range(rounds):
        mm.append(matmul_gflops())
        pair = [lambda: cav.extend(cavi_sweeps(gmm, x, sweeps)), lambda: skl.extend(sklearn_sweeps(gmm, x, sweeps))]
        for run in pair if r % 2 == 0 else pair[::-1]:  # alternate which goes first
            run()
    med = statistics.median
    row = {"N": n, "D": d, "K": k, "covariance": covariance,
           "cavi_cpu_s": med(c for c, _ in cav), "cavi_wall_s": med(w for _, w in cav),
           "sklearn_cpu_s": med(c for c, _ in skl), "sklearn_wall_s": med(w for _, w in skl),
           "matmul_gflops": med(c for c, _ in mm), "matmul_wall_gflops": med(w for _, w in mm)}
    row["sklearn_over_cavi"] = row["sklearn_cpu_s"] / row["cavi_cpu_s"]
    row["gflop"] = nominal_flops(n, d, k, covariance) / 1e9
    row["cavi_gflops"] = row["gflop"] / row["cavi_cpu_s"]
    row["fraction_of_matmul"] = row["cavi_gflops"] / row["matmul_gflops"]
    return row


def chunk_sweep(n: int, d: int, k: int, sizes_mib: Sequence[int], *, sweeps: int, rounds: int) -> pd.DataFrame:
    """CPU seconds per sweep when the local step's temporaries are capped at each of ``sizes_mib``.

    On the triangular path: the feature path works in blocks of its own whatever the chunk
    (its ``local_bytes_per_point`` is None).
    """
    x = make_data(n, d, k)
    gmm = forced(GaussianMixture(k).resolve(x), "triangular")
    per_point = gmm.local_bytes_per_point(x)
    assert per_point is not None
    times: dict[int, list[float]] = {m: [] for m in sizes_mib}
    for r in range(rounds):
        for m in sizes_mib if r % 2 == 0 else sizes_mib[::-1]:
            rows = max(1024, m * 2**20 // per_point)
            times[m] += [c for c, _ in cavi_sweeps(gmm, x, sweeps, chunk_size=rows)]
    return pd.DataFrame([{"chunk_MiB": m, "rows_per_chunk": max(1024, m * 2**20 // per_point),
                          "cavi_cpu_s": statistics.median(v)} for m, v in times.items()])


def same_solution(n: int, d: int, k: int, sweeps: int) -> dict[str, float]:
    """CAVI and sklearn from the same start: analytic ELBOs after ``sweeps`` iterations each."""
    x = make_data(n, d, k)
    gmm = GaussianMixture(k).resolve(x)
    fit = cavi(gmm, x, max_iter=sweeps, tol=0.0, seed=0, warn=False)
    est = sklearn_estimator(gmm)
    X = x.numpy()
    est._check_parameters(X)
    est._initialize(X, initial_resp(x, k, 0).numpy())
    for _ in range(sweeps):
        est._m_step(X, est._e_step(X)[1])
    sk = gmm.elbo(x, sklearn_params(est))
    return {"sweeps": sweeps, "cavi_elbo": fit.elbo, "sklearn_elbo": sk,
            "relative_difference": abs(fit.elbo - sk) / abs(fit.elbo)}


# ------------------------------------------------------------------------------------------ memory
def memory_child(n: int, d: int, k: int, covariance: str) -> None:
    """Run in a fresh process: build the data, fit, print the RSS numbers as JSON."""
    def rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    torch.set_num_threads(1)
    baseline = rss()
    x = make_data(n, d, k)
    with_data = rss()
    was_reset = reset_peak_rss()
    t0 = time.process_time()
    cavi(GaussianMixture(k, covariance=covariance), x, max_iter=2, tol=0.0, seed=0, warn=False)
    print(json.dumps({"baseline": baseline, "with_data": with_data, "peak": peak_rss_bytes(),
                      "data": x.numel() * x.element_size(), "hwm_reset": was_reset,
                      "cpu_s": time.process_time() - t0}))


def measure_memory(n: int, d: int, k: int, covariance: str) -> dict[str, float]:
    """Peak RSS of :func:`pyro_vi.cavi.engine` (init + 2 sweeps) on N×D data, in a fresh subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # `python -m benchmarks.scaling` from the checkout root: the package's relative imports resolve
    cmd = [sys.executable, "-m", f"{__package__}.{Path(__file__).stem}", "--memory-child", str(n), str(d), str(k),
           covariance]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False,
                         cwd=Path(__file__).resolve().parents[1])
    if res.returncode != 0:
        raise RuntimeError(f"memory subprocess for N={n}, D={d}, K={k} failed:\n{res.stderr[-2000:]}")
    m = json.loads(res.stdout.strip().splitlines()[-1])
    mb = 2.0**20
    return {"peak_rss_mb": m["peak"] / mb, "baseline_rss_mb": m["baseline"] / mb, "data_mb": m["data"] / mb,
            "peak_over_data": (m["peak"] - m["baseline"]) / m["data"], "hwm_reset": m["hwm_reset"]}


# ------------------------------------------------------------------------------------------ report
def growth_exponent(df: pd.DataFrame, col: str) -> float:
    """Least-squares slope of log(time) on log(N)."""
    return float(np.polyfit(np.log(df.N.astype(float)), np.log(df[col].astype(float)), 1)[0])


def exponent_text(nsweep: pd.DataFrame) -> str:
    """The fitted growth exponents in N, over the whole sweep and over N >= 1e4 (less overhead)."""
    big = nsweep[nsweep.N >= 1e4]
    tail = f" (N ≥ 1e4 only: CAVI {growth_exponent(big, 'cavi_cpu_s'):.2f})" if len(big) > 1 else ""
    return (f"**Growth exponent in N** (N = {nsweep.N.min():.0e}..{nsweep.N.max():.0e}, D=8, K=8, slope of "
            f"log time on log N): CAVI {growth_exponent(nsweep, 'cavi_cpu_s'):.2f}, sklearn "
            f"{growth_exponent(nsweep, 'sklearn_cpu_s'):.2f}{tail}.\n")


def plot(df: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(16, 3.8))
    panels = [("N", "N", "full"), ("K", "K", "full"), ("D", "D", "full"), ("D", "D", "diag")]
    for i, (sweep, var, cov) in enumerate(panels):
        ax = fig.add_subplot(1, 5, i + 1)
        t = df[(df.sweep == sweep) & (df.covariance == cov)].sort_values(var)
        ax.plot(t[var], t.cavi_cpu_s, "o-", label="pyro-vi CAVI")
        ax.plot(t[var], t.sklearn_cpu_s, "s--", label="sklearn")
        fixed = {"N": "D=8, K=8", "K": f"N={t.N.iloc[0]:.0e}, D=8", "D": f"N={t.N.iloc[0]:.0e}, K=8"}[sweep]
        ax.set(xscale="log", yscale="log", xlabel=var, title=f"{cov}: {fixed}")
        if var != "N":
            ax.set_xscale("log", base=2)
            ax.set_xticks(t[var].tolist(), [str(v) for v in t[var]])
        ax.xaxis.set_minor_formatter(NullFormatter())
        span = t[["cavi_cpu_s", "sklearn_cpu_s"]].to_numpy()
        if span.max() / span.min() > 10:  # major ticks suffice; within one decade keep the minor labels
            ax.yaxis.set_minor_formatter(NullFormatter())
        if i == 0:
            ax.set_ylabel("CPU seconds per sweep")
            ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 5, 5)
    full = df[df.covariance == "full"]
    ax.scatter(full.gflop, full.fraction_of_matmul, c="C0", s=14)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set(xscale="log", xlabel="nominal GFLOP per sweep", ylabel="achieved / matmul GFLOP/s",
           title="roofline (full covariance)", ylim=(0, max(1.1, float(full.fraction_of_matmul.max()) * 1.1)))
    fig.tight_layout()
    return fig


def report(df: pd.DataFrame, same: dict[str, float], mem: dict[str, float], threads: int) -> str:
    cols = ["N", "D", "K", "covariance", "cavi_cpu_s", "sklearn_cpu_s", "sklearn_over_cavi", "cavi_wall_s",
            "sklearn_wall_s", "gflop", "cavi_gflops", "matmul_gflops", "fraction_of_matmul", "peak_rss_mb",
            "peak_over_data"]
    nsweep = df[df.sweep == "N"]
    t = df[df.sweep == "target"].iloc[0]
    lines = [f"Times are CPU seconds per sweep ({threads} thread(s)); wall-clock columns for reference.\n",
             f"**Target N={t.N}, D={t.D}, K={t.K} (full):** CAVI {t.cavi_cpu_s:.3g} s/sweep, sklearn "
             f"{t.sklearn_cpu_s:.3g} s/sweep: sklearn takes **{t.sklearn_over_cavi:.2f}×** CAVI's time; "
             f"{t.cavi_gflops:.1f} GFLOP/s = **{100 * t.fraction_of_matmul:.0f} %** of the "
             f"{t.matmul_gflops:.1f} GFLOP/s float64 matmul. Same solution: after {same['sweeps']} sweeps from "
             f"the same start the analytic ELBOs differ by {same['relative_difference']:.1e} (relative).\n",
             exponent_text(nsweep),
             f"**Memory at N={mem['N']}, D={mem['D']}, K={mem['K']}:** peak RSS {mem['peak_rss_mb']:.0f} MiB, of "
             f"which {mem['baseline_rss_mb']:.0f} MiB is the interpreter with torch/pyro before the data; the data "
             f"array is {mem['data_mb']:.0f} MiB, so the fit's peak above baseline is "
             f"**{mem['peak_over_data']:.2f}×** the data (VmHWM; reset after building the data: {mem['hwm_reset']}).\n"]
    for sweep in ("N", "K", "D", "target"):
        part = df[df.sweep == sweep]
        lines.append(f"\n#### Sweep over {sweep}\n\n" if sweep != "target" else "\n#### Target size\n\n")
        lines.append(markdown_table(part[[c for c in cols if c in part.columns]], floatfmt="{:.3g}"))
    return "".join(lines)


# ------------------------------------------------------------------------------------------ paths
PATHS = ("triangular", "features", "float32", "float32_mm")  #: the local-step variants compared side by side
PATH_GRID = [(50_000, d, k, "full") for k in (8, 16) for d in (16, 24, 32, 40, 48)]


def forced(gmm: GaussianMixture, path: str) -> GaussianMixture:
    """``gmm`` with its full-covariance local step forced onto ``path`` ("triangular" or "features").

    ``GaussianMixture`` chooses by ``(D, K)`` (:func:`pyro_vi.models.gmm.model.prefers_features`)
    and has no public option for it, so the benchmark sets the private ``_path`` of a copy (kept
    by ``prepare``/``resolve``, which copy the model). Any other ``path`` (``"float32"``,
    ``"default"``) leaves the model's own choice.
    """
    if path not in ("triangular", "features"):
        return gmm
    new = replace_model(gmm)
    new._path = path
    return new


@contextlib.contextmanager
def counting_features() -> Iterator[list[int]]:
    """Count the calls of the feature-path local step ``GaussianMixture._feature_step`` (proves which path ran).

    The start's statistics use the feature builder on every path, so the local step is counted.
    """
    calls = [0]
    original = GaussianMixture._feature_step

    def counted(self, *a, **kw):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return original(self, *a, **kw)

    GaussianMixture._feature_step = counted  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        GaussianMixture._feature_step = original  # type: ignore[method-assign]


def path_model(k: int, path: str, x: torch.Tensor, covariance: str = "full") -> GaussianMixture:
    """The (resolved) model of one variant: float32 GEMMs for ``"float32"`` and ``"float32_mm"``, else float64.

    Run ``"float32_mm"`` inside :func:`float32_route` (``path_route``) to get its products in ``torch.mm``.
    """
    dtype = torch.float32 if path.startswith("float32") else None
    return forced(GaussianMixture(k, covariance=covariance, compute_dtype=dtype).resolve(x), path)


@contextlib.contextmanager
def float32_route(onednn: bool) -> Iterator[None]:
    """Float32 block products in oneDNN (``onednn``) or in ``torch.mm``: :data:`pyro_vi.linalg.ONEDNN_FLOAT32`."""
    before = pyro_vi.linalg.ONEDNN_FLOAT32
    pyro_vi.linalg.ONEDNN_FLOAT32 = onednn
    try:
        yield
    finally:
        pyro_vi.linalg.ONEDNN_FLOAT32 = before


def path_route(path: str) -> contextlib.AbstractContextManager[None]:
    """The product route of a variant: ``torch.mm`` for ``"float32_mm"``, the default for the others."""
    return float32_route(False) if path == "float32_mm" else contextlib.nullcontext()


def floor_flops(n: int, d: int, k: int, covariance: str) -> float:
    """FLOPs of the feature path's two GEMMs: 2·N·K·D(D+1) (full; the issue's floor), 8·N·K·D (diag)."""
    return 2.0 * n * k * d * (d + 1) if covariance == "full" else 8.0 * n * k * d


def path_variants(covariance: str) -> tuple[str, ...]:
    """The variants that exist for a covariance type (diag has no triangular path)."""
    return PATHS if covariance == "full" else PATHS[1:]


def time_paths(n: int, d: int, k: int, covariance: str, *, sweeps: int, rounds: int) -> list[dict]:
    """One row per variant (and sklearn): CPU s per sweep, sklearn/CAVI ratio, GFLOP/s, matmul."""
    x = make_data(n, d, k)
    variants = path_variants(covariance)
    models = {p: path_model(k, p, x, covariance) for p in variants}
    names = [*variants, "sklearn"]
    cpu: dict[str, list[list[float]]] = {m: [] for m in names}
    wall: dict[str, list[list[float]]] = {m: [] for m in names}
    mm: dict[str, list[float]] = {"features": [], "float32_mm": [], "float32": []}
    for r in range(rounds):
        mm["features"].append(matmul_gflops(dtype=torch.float64)[0])
        mm["float32_mm"].append(matmul_gflops(dtype=torch.float32)[0])
        mm["float32"].append(matmul_gflops(dtype=torch.float32, onednn=True)[0])
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
            if name == "sklearn":
                res = sklearn_sweeps(models["features"], x, sweeps)
            else:
                with path_route(name):
                    res = cavi_sweeps(models[name], x, sweeps)
            cpu[name].append([c for c, _ in res])
            wall[name].append([w for _, w in res])
    med = statistics.median
    rows = []
    for name in names:
        pooled = [v for rnd in cpu[name] for v in rnd]
        ratios = [med(s) / med(c) for s, c in zip(cpu["sklearn"], cpu[name], strict=True)]
        matmul = med(mm[name if name in mm else "features"])
        t = med(pooled)
        rows.append({"N": n, "D": d, "K": k, "covariance": covariance, "path": name,
                     "cpu_s": t, "cpu_s_min": min(pooled), "cpu_s_max": max(pooled),
                     "wall_s": med(v for rnd in wall[name] for v in rnd),
                     "sklearn_over_cavi": med(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                     # sklearn does the textbook work: the feature path's floor does not apply to it
                     "gflops_floor": float("nan") if name == "sklearn" else floor_flops(n, d, k, covariance) / t / 1e9,
                     "gflops_textbook": nominal_flops(n, d, k, covariance) / t / 1e9,
                     "matmul_gflops": matmul, "rounds": rounds, "sweeps_per_round": sweeps})
        rows[-1]["floor_fraction_of_matmul"] = rows[-1]["gflops_floor"] / matmul
        rows[-1]["textbook_fraction_of_matmul"] = rows[-1]["gflops_textbook"] / matmul
    return rows


def same_start_paths(n: int, d: int, k: int, sweeps: int = 10) -> dict[str, float]:
    """ELBO after ``sweeps`` sweeps from the same start on each path; the feature calls prove the path."""
    x = make_data(n, d, k)
    out: dict[str, float] = {}
    for name in PATHS:
        with counting_features() as calls, path_route(name):
            fit = cavi(path_model(k, name, x), x, max_iter=sweeps, tol=0.0, seed=0, warn=False)
        if (calls[0] > 0) != (name != "triangular"):
            raise RuntimeError(f"forcing the {name} path failed ({calls[0]} feature-path local steps)")
        out[name] = fit.elbo
    return {"sweeps": sweeps, **{f"elbo_{p}": v for p, v in out.items()},
            "features_vs_triangular": abs(out["features"] - out["triangular"]) / abs(out["triangular"]),
            "float32_vs_float64": abs(out["float32"] - out["features"]) / abs(out["features"]),
            "float32_mm_vs_float64": abs(out["float32_mm"] - out["features"]) / abs(out["features"])}


def paths_report(df: pd.DataFrame, same: dict[str, float], target: tuple[int, int, int]) -> str:
    """The target's verdict, the crossover, and one long table (median [range] per variant)."""
    def cell(r: pd.Series) -> dict[str, object]:
        return {"N": r.N, "D": r.D, "K": r.K, "cov": r.covariance, "path": r.path,
                "s/sweep (CPU)": f"{r.cpu_s:.3g} [{r.cpu_s_min:.3g}–{r.cpu_s_max:.3g}]",
                "sklearn/CAVI": "—" if r.path == "sklearn" else
                f"{r.sklearn_over_cavi:.2f} [{r.ratio_min:.2f}–{r.ratio_max:.2f}]",
                "GFLOP/s floor": r.gflops_floor, "GFLOP/s 4NKD²": r.gflops_textbook,
                "matmul GFLOP/s": r.matmul_gflops, "floor / matmul": r.floor_fraction_of_matmul}

    n, d, k = target
    lines = ["All at 1 thread (torch and BLAS); CPU seconds per sweep, median [range] over the pooled "
             "sweeps; sklearn/CAVI per round, median [range] over rounds; `floor` = 2·N·K·D(D+1) "
             "(full) / 8·N·K·D (diag) flops; matmul is a 1024² product: float32 oneDNN for the float32 "
             "row, float32 torch.mm (MKL) for float32_mm, else float64 torch.mm.\n\n"]
    tgt = df[(df.N == n) & (df.D == d) & (df.K == k)]
    for cov in ("full", "diag"):
        part = tgt[tgt.covariance == cov].set_index("path")
        if part.empty:
            continue
        ratios = ", ".join(f"{p} **{part.loc[p, 'sklearn_over_cavi']:.2f}×** [{part.loc[p, 'ratio_min']:.2f}–"
                           f"{part.loc[p, 'ratio_max']:.2f}]" for p in part.index if p != "sklearn")
        lines.append(f"**Target N={n}, D={d}, K={k} ({cov}):** sklearn/CAVI {ratios}.\n")
    lines.append(f"**Same start, {same['sweeps']} sweeps (N={n}, D={d}, K={k}):** features vs triangular "
                 f"ELBO {same['features_vs_triangular']:.1e} relative; float32 vs float64 "
                 f"{same['float32_vs_float64']:.1e} relative (float32_mm {same['float32_mm_vs_float64']:.1e}).\n")
    full = df[(df.covariance == "full") & (df.path.isin(["triangular", "features"]))]
    cross = []
    for (nn, kk), g in full.groupby(["N", "K"]):
        piv = g.pivot_table(index="D", columns="path", values="cpu_s")
        faster = [int(dd) for dd, r in piv.iterrows() if r["features"] < r["triangular"]]
        cross.append(f"N={nn}, K={kk}: features faster at D ∈ {faster or 'none'} of {list(map(int, piv.index))}")
    if cross:
        lines.append("**Crossover (CPU s, features < triangular):** " + "; ".join(cross) + ".\n")
    lines.append("\n" + markdown_table(pd.DataFrame([cell(r) for _, r in df.iterrows()]), floatfmt="{:.3g}"))
    return "".join(lines)


# -------------------------------------------------------------------------------------- crossover
CROSSOVER_D = (8, 16, 24, 32, 40, 48, 56, 64)
CROSSOVER_K = (4, 8, 16)


def time_crossover(n: int, ds: Sequence[int], ks: Sequence[int], *, sweeps: int, rounds: int) -> pd.DataFrame:
    """Triangular vs feature path (full covariance, float64, 1 thread) over a (D, K) grid, one process.

    Per cell and round both paths run ``sweeps`` sweeps, the order alternating; the ratio
    triangular/features is taken per round (medians of the round), reported as median [range].
    """
    rows = []
    for d in ds:
        x = make_data(n, d, max(ks))
        for k in ks:
            models = {p: path_model(k, p, x) for p in ("triangular", "features")}
            cpu: dict[str, list[float]] = {p: [] for p in models}
            ratios = []
            for r in range(rounds):
                order = list(models) if r % 2 == 0 else list(models)[::-1]
                med = {}
                for p in order:
                    res = [c for c, _ in cavi_sweeps(models[p], x, sweeps)]
                    cpu[p] += res
                    med[p] = statistics.median(res)
                ratios.append(med["triangular"] / med["features"])
            default = "features" if GaussianMixture(k)._use_features(d) else "triangular"
            rows.append({"N": n, "D": d, "K": k, "triangular_s": statistics.median(cpu["triangular"]),
                         "features_s": statistics.median(cpu["features"]),
                         "tri_over_feat": statistics.median(ratios), "ratio_min": min(ratios),
                         "ratio_max": max(ratios), "default_path": default, "rounds": rounds})
            print(f"  crossover: D={d} K={k}: triangular/features {rows[-1]['tri_over_feat']:.2f} "
                  f"[{min(ratios):.2f}-{max(ratios):.2f}]", flush=True)
    return pd.DataFrame(rows)


def crossover_report(df: pd.DataFrame, load: tuple[tuple[float, ...], tuple[float, ...]]) -> str:
    """A D × K table of triangular/features CPU-time ratios (> 1: features faster) and the default."""
    n = int(df.N.iloc[0])
    table = df.pivot_table(index="D", columns="K", values="tri_over_feat")
    cells = {(r.D, r.K): f"{r.tri_over_feat:.2f} [{r.ratio_min:.2f}–{r.ratio_max:.2f}]"
             + (" **F**" if r.default_path == "features" else "") for r in df.itertuples()}
    out = pd.DataFrame([{"D": d, **{f"K={k}": cells[(d, k)] for k in table.columns}} for d in table.index])
    return (f"N={n}, full covariance, float64, 1 thread: CPU seconds per sweep of the triangular path over "
            f"the feature path, per round, median [range] over {int(df.rounds.iloc[0])} rounds (> 1: features "
            f"faster); **F** marks the cells where the default (`prefers_features`) takes the feature path. "
            f"Load average (1, 5, 15 min) before {load[0]}, after {load[1]} on {os.cpu_count()} logical "
            f"cores.\n\n" + markdown_table(out))


# ---------------------------------------------------------------------------------------- threads
def time_threads(n: int, d: int, k: int, threads: int, *, sweeps: int, rounds: int) -> pd.DataFrame:
    """Wall s per sweep at 1 and ``threads`` threads: float64 (default path), float32 (oneDNN), float32_mm, sklearn."""
    x = make_data(n, d, k)
    models = {"float64": path_model(k, "features", x), "float32": path_model(k, "float32", x),
              "float32_mm": path_model(k, "float32_mm", x)}
    modes = (*models, "sklearn")
    cells = [(m, t) for m in modes for t in (1, threads)]
    wall: dict[tuple[str, int], list[float]] = {c: [] for c in cells}
    for r in range(rounds):
        for m, t in cells[r % len(cells):] + cells[:r % len(cells)]:
            with limit_threads(t), path_route(m):
                res = (sklearn_sweeps(models["float64"], x, sweeps) if m == "sklearn"
                       else cavi_sweeps(models[m], x, sweeps))
            wall[(m, t)].append(statistics.median(w for _, w in res))
    rows = []
    for m in modes:
        one, many = wall[(m, 1)], wall[(m, threads)]
        speed = [a / b for a, b in zip(one, many, strict=True)]
        rows.append({"N": n, "D": d, "K": k, "mode": m, "threads": threads,
                     "wall_s_1": statistics.median(one), "wall_s_n": statistics.median(many),
                     "speedup": statistics.median(speed), "speedup_min": min(speed), "speedup_max": max(speed),
                     "rounds": rounds})
    return pd.DataFrame(rows)


def threads_report(df: pd.DataFrame, load: tuple[tuple[float, ...], tuple[float, ...]]) -> str:
    t = df.iloc[0]
    table = pd.DataFrame([{"mode": r.mode, "1 thread (wall s)": r.wall_s_1, f"{r.threads} threads (wall s)": r.wall_s_n,
                           "speed-up": median_range([r.speedup_min, r.speedup, r.speedup_max], "{:.2f}")}
                          for r in df.itertuples()])
    return (f"N={t.N}, D={t.D}, K={t.K} (full), wall-clock seconds per sweep (threads use the wall clock: "
            f"CPU time sums over threads); speed-up per round, median [range] over {t.rounds} rounds; sklearn "
            f"with {t.threads} BLAS threads. Load average (1, 5, 15 min) before {load[0]}, after {load[1]} on "
            f"{os.cpu_count()} logical cores: a load near the core count means the second thread shared its "
            f"core.\n\n" + markdown_table(table, floatfmt="{:.3g}"))


# ------------------------------------------------------------------------------------------- cuda
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_matmul_tflops(device: torch.device, dtype: torch.dtype, size: int = 4096, repeat: int = 5) -> float:
    """TFLOP/s of a ``size``² matmul on ``device`` (one warm-up, then ``repeat`` timed, synchronised)."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    a @ a
    _synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        a @ a
    _synchronize(device)
    return repeat * 2.0 * size**3 / (time.perf_counter() - t0) / 1e12


def device_name(device: torch.device) -> str:
    """The accelerator's name (``torch.cuda.get_device_name``), or ``"cpu"``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def time_cuda(n: int, d: int, k: int, *, sweeps: int, device: str = "cuda", matmul_size: int = 4096,
              elbo_sweeps: int = 5) -> tuple[pd.DataFrame, dict[str, float]]:
    """Seconds per sweep on ``device`` (float64 features, float32) and on this CPU (1 thread), same start.

    Each mode also runs ``elbo_sweeps`` CAVI sweeps from that start on both and reports the
    relative difference of their ELBOs (``elbo_rel_diff``): the device's answer checked against
    the CPU's in the same run. ``device="cpu"`` is a dry run of the whole script (both sides on
    the CPU, so the difference is exactly 0): the test suite runs it, so a GPU's few minutes are
    not lost to a bug in the script.
    """
    x_cpu = make_data(n, d, k)
    start = initial_resp(x_cpu, k, 0)
    dev = torch.device(device)
    peak = {str(dt).split(".")[1]: device_matmul_tflops(dev, dt, matmul_size) for dt in (torch.float64, torch.float32)}
    rows = []
    for mode in ("float64", "float32"):
        cdt = torch.float32 if mode == "float32" else None
        per, elbo = {}, {}
        for where in (dev.type, "cpu"):
            x = x_cpu.to(where)
            gmm = forced(GaussianMixture(k, init=start.to(where), device=where, compute_dtype=cdt).resolve(x),
                         "features")
            # each sweep ends in float(ELBO), a device synchronisation: its wall time is the device's
            with limit_threads(1):
                res = cavi_sweeps(gmm, x, 2 if where == "cpu" else sweeps + 1)[1:]  # first: warm-up
                elbo[where] = cavi(gmm, x, max_iter=elbo_sweeps, tol=0.0, seed=0, warn=False).elbo
            per[where] = statistics.median(w for _, w in res)
        tflops = floor_flops(n, d, k, "full") / per[dev.type] / 1e12
        rows.append({"N": n, "D": d, "K": k, "mode": mode, "device_s": per[dev.type], "cpu_s": per["cpu"],
                     "speedup_over_cpu": per["cpu"] / per[dev.type], "tflops_floor": tflops,
                     "matmul_tflops": peak[mode], "fraction_of_matmul": tflops / peak[mode],
                     "elbo_rel_diff": abs(elbo[dev.type] - elbo["cpu"]) / abs(elbo["cpu"])})
    return pd.DataFrame(rows), {"device_name": device_name(dev), **{f"matmul_tflops_{k_}": v
                                                                   for k_, v in peak.items()}}


def write_section(args: argparse.Namespace, name: str, df: pd.DataFrame, md: str, info: dict) -> None:
    """Write ``name``'s results files and, on a full run into the default folder, its README section."""
    write_results(args.out, stem(name, args.quick), table=df, markdown=md, info=info)
    if should_update_readme(args):
        update_readme(name.replace("_", "-"), md + machine_line(info))
    print(md, flush=True)


def run_sweeps(args: argparse.Namespace) -> None:
    """The original section: sweeps over N, K and D, the target, chunk sizes and memory."""
    if args.quick:
        n_grid, k_grid, d_grid, n_fixed = [1000, 4000], [2, 4], [2, 4], 2000
        target, memory, sweeps, rounds = (2000, 8, 4), (20_000, 8, 4), 2, 1
    else:
        n_grid, k_grid, d_grid, n_fixed = [1000, 10_000, 100_000, 1_000_000], [2, 4, 8, 16, 32, 64], \
            [2, 4, 8, 16, 32, 64], 50_000
        target, memory, sweeps, rounds = TARGET, MEMORY, 3, 2
    configs = [("N", n, 8, 8, "full") for n in n_grid]
    configs += [("K", n_fixed, 8, k, "full") for k in k_grid]
    configs += [("D", n_fixed, d, 8, cov) for cov in ("full", "diag") for d in d_grid]
    configs += [("target", *target, "full")]
    t0, c0 = time.perf_counter(), time.process_time()
    rows = []
    with limit_threads(args.threads):
        time_config(1000, 4, 2, "full", sweeps=1, rounds=1)  # warm-up, not recorded
        for sweep, n, d, k, cov in configs:
            r = rounds + (1 if sweep == "target" else 0)
            row = {"sweep": sweep, **time_config(n, d, k, cov, sweeps=sweeps, rounds=r)}
            if sweep == "N" and not args.quick:  # quick: one subprocess (the memory check) is enough
                row.update(measure_memory(n, d, k, cov))
            rows.append(row)
            print(f"  {sweep}: N={n} D={d} K={k} {cov}: CAVI {row['cavi_cpu_s']:.3g} s, sklearn "
                  f"{row['sklearn_cpu_s']:.3g} s, {100 * row['fraction_of_matmul']:.0f} % of matmul", flush=True)
        same = same_solution(*target, sweeps=sweeps)
        chunks = chunk_sweep(*target, [4, 16, 64], sweeps=sweeps, rounds=rounds)
        mem = {"N": memory[0], "D": memory[1], "K": memory[2], **measure_memory(*memory, "full")}
    df = pd.DataFrame(rows)
    info = machine_info(dtype="float64", device="cpu", threads=args.threads)
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    info.update(wall_seconds=round(time.perf_counter() - t0, 1), cpu_seconds=round(time.process_time() - c0, 1),
                subprocess_cpu_seconds=round(child.ru_utime + child.ru_stime, 1))
    md = report(df, same, mem, args.threads) + (
        f"\n#### Chunk size of the triangular local step (N={target[0]}, D={target[1]}, K={target[2]}; default "
        f"{DEFAULT_CHUNK_BYTES // 2**20} MiB)\n\n" + markdown_table(chunks, floatfmt="{:.3g}"))
    name = stem(NAME, args.quick)
    write_results(args.out, name, table=df, markdown=md, info=info, figures={"sweeps": plot(df)})
    if should_update_readme(args):
        update_readme(NAME, md + machine_line(info))
    print(md)


def _info(args: argparse.Namespace, *, dtype: str, device: str, threads: int, load0: tuple[float, ...],
          t0: float) -> dict:
    info = machine_info(dtype=dtype, device=device, threads=threads)
    info.update(load_avg_start=[round(v, 2) for v in load0], load_avg_end=[round(v, 2) for v in os.getloadavg()],
                wall_seconds=round(time.perf_counter() - t0, 1))
    return info


def run_paths(args: argparse.Namespace) -> None:
    """Triangular vs feature path vs float32 vs sklearn, one thread, interleaved."""
    if args.quick:
        grid, target, sweeps, rounds = [(2000, 30, 4, "full"), (2000, 30, 4, "diag")], (2000, 30, 4), 2, 2
    else:
        grid = [(*TARGET, "full"), (*TARGET, "diag"), *PATH_GRID]
        target, sweeps, rounds = TARGET, 3, 5
    t0, load0 = time.perf_counter(), os.getloadavg()
    rows = []
    with limit_threads(1):
        for n, d, k, cov in grid:
            r = rounds if (n, d, k) == target else max(2, rounds - 2)
            part = time_paths(n, d, k, cov, sweeps=sweeps, rounds=r)
            rows += part
            print("  paths: " + ", ".join(f"{row['path']} {row['cpu_s']:.3g} s" for row in part)
                  + f" (N={n} D={d} K={k} {cov})", flush=True)
        same = same_start_paths(*target, sweeps=10)
    df = pd.DataFrame(rows)
    info = _info(args, dtype="float64 (float32: compute_dtype)", device="cpu", threads=1, load0=load0, t0=t0)
    write_section(args, f"{NAME}_paths", df, paths_report(df, same, target), info)


def run_threads(args: argparse.Namespace) -> None:
    """The speed-up of ``args.threads`` threads over one at the target size."""
    n, d, k = (2000, 30, 4) if args.quick else TARGET
    t0, load0 = time.perf_counter(), os.getloadavg()
    df = time_threads(n, d, k, args.threads, sweeps=2 if args.quick else 3, rounds=2 if args.quick else 4)
    info = _info(args, dtype="float64 and float32", device="cpu", threads=args.threads, load0=load0, t0=t0)
    write_section(args, f"{NAME}_threads", df, threads_report(df, (tuple(info["load_avg_start"]),
                                                                  tuple(info["load_avg_end"]))), info)


def run_crossover(args: argparse.Namespace) -> None:
    """Where the feature path beats the triangular one, over D and K."""
    if args.quick:
        n, ds, ks, sweeps, rounds = 2000, (8, 32), (4,), 2, 2
    else:
        n, ds, ks, sweeps, rounds = 50_000, CROSSOVER_D, CROSSOVER_K, 2, 5
    t0, load0 = time.perf_counter(), os.getloadavg()
    with limit_threads(1):
        df = time_crossover(n, ds, ks, sweeps=sweeps, rounds=rounds)
    info = _info(args, dtype="float64", device="cpu", threads=1, load0=load0, t0=t0)
    write_section(args, f"{NAME}_crossover", df,
                  crossover_report(df, (tuple(info["load_avg_start"]), tuple(info["load_avg_end"]))), info)


def run_memory(args: argparse.Namespace) -> None:
    """Peak RSS above baseline over the data's bytes at N=1e6, D=32, K=16 (full and diag), fresh processes."""
    n, d, k = (20_000, 8, 4) if args.quick else MEMORY
    t0, load0 = time.perf_counter(), os.getloadavg()
    df = pd.DataFrame([{"N": n, "D": d, "K": k, "covariance": cov, **measure_memory(n, d, k, cov)}
                       for cov in ("full", "diag")])
    info = _info(args, dtype="float64", device="cpu", threads=1, load0=load0, t0=t0)
    lines = [f"N={n}, D={d}, K={k}, float64: `cavi(GaussianMixture(K), x, max_iter=2)` in a fresh process "
             f"(VmHWM reset after the data are built); `peak_over_data` = (peak − baseline) / data bytes, the "
             f"baseline being the interpreter with torch before the data, so the data themselves count 1.0.\n\n",
             markdown_table(df, floatfmt="{:.3g}")]
    write_section(args, f"{NAME}_memory", df, "".join(lines), info)


def run_cuda(args: argparse.Namespace) -> None:
    n, d, k = (20_000, 32, 16) if args.quick else MEMORY
    t0, load0 = time.perf_counter(), os.getloadavg()
    df, dev = time_cuda(n, d, k, sweeps=3 if args.quick else 10)
    info = {**_info(args, dtype="float64 and float32", device="cuda", threads=1, load0=load0, t0=t0), **dev}
    md = (f"N={n}, D={d}, K={k} (full, feature path), seconds per sweep on {dev['device_name']} against this "
          f"CPU at 1 thread; TFLOP/s against the 2·N·K·D(D+1) floor and the device's own 4096² matmul; "
          f"`elbo_rel_diff`: the two ELBOs after 5 sweeps from the same start.\n\n"
          + markdown_table(df, floatfmt="{:.3g}"))
    write_section(args, f"{NAME}_cuda", df, md, info)


SECTIONS = ("sweeps", "paths", "crossover", "memory", "threads")


def main(argv: Sequence[str] | None = None) -> int:
    matplotlib.use("Agg")  # an app: figures go to files
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--memory-child"]:
        n, d, k = (int(v) for v in argv[1:4])
        memory_child(n, d, k, argv[4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--sections", default="sweeps,paths,crossover",
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default sweeps,paths,crossover; "
                             "threads is added when --threads > 1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: only the GPU comparison (N=1e6, D=32, K=16); skipped without CUDA")
    args = parser.parse_args(argv)
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    if not sections <= set(SECTIONS):
        parser.error(f"--sections: unknown {sorted(sections - set(SECTIONS))}; choose from {SECTIONS}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("scaling: --device cuda skipped: torch.cuda.is_available() is False on this machine "
                  f"(torch {torch.__version__}); nothing was measured or written.", file=sys.stderr)
            return 0
        run_cuda(args)
        return 0
    if args.threads > 1:
        sections.add("threads")
    for section in SECTIONS:
        if section in sections:
            {"sweeps": run_sweeps, "paths": run_paths, "crossover": run_crossover, "memory": run_memory,
             "threads": run_threads}[section](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
