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

Run ``python -m benchmarks.scaling`` (or ``pyro-vi bench scaling``); ``--quick`` is a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from pyro_vi import cavi
from pyro_vi.cavi.engine import DEFAULT_CHUNK_BYTES, local_pass
from pyro_vi.models.gmm.model import GaussianMixture

from ._common import (
    add_common_args,
    limit_threads,
    machine_info,
    machine_line,
    markdown_table,
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


def matmul_gflops(size: int = 1024, repeat: int = 3) -> tuple[float, float]:
    """(CPU-time, wall-clock) GFLOP/s of a float64 ``size``² matmul, best of ``repeat``."""
    a = torch.randn(size, size, dtype=torch.float64)
    a @ a
    cpu, wall = [], []
    for _ in range(repeat):
        c0, w0 = _clocks()
        a @ a
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
    """CPU seconds per sweep when the local step's temporaries are capped at each of ``sizes_mib``."""
    x = make_data(n, d, k)
    gmm = GaussianMixture(k).resolve(x)
    per_point = gmm.local_bytes_per_point(x)
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


def main(argv: Sequence[str] | None = None) -> int:
    matplotlib.use("Agg")  # an app: figures go to files
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--memory-child"]:
        n, d, k = (int(v) for v in argv[1:4])
        memory_child(n, d, k, argv[4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    args = parser.parse_args(argv)
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
        f"\n#### Chunk size of the local step (N={target[0]}, D={target[1]}, K={target[2]}; default "
        f"{DEFAULT_CHUNK_BYTES // 2**20} MiB)\n\n" + markdown_table(chunks, floatfmt="{:.3g}"))
    name = stem(NAME, args.quick)
    write_results(args.out, name, table=df, markdown=md, info=info, figures={"sweeps": plot(df)})
    if should_update_readme(args):
        update_readme(NAME, md + machine_line(info))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
