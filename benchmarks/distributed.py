r"""Distributed fits: 1 vs 2 processes (one thread each), and a cost model out to 256 ranks.

**CAVI.** A GMM (default N=1e6, D=16, K=8, full covariance, float64) fitted by
``cavi(..., distributed=True)`` for a fixed number of sweeps on P = 1 and P = 2 processes,
launched by ``torchrun --standalone`` exactly as a user would (gloo on loopback, one intra-op
thread per process). Each rank builds only its own rows (seeded blocks). Reported: the median
seconds per sweep, the speed-up, and the share of a sweep spent in :meth:`Comm.sum
<pyro_vi.distributed.Comm.sum>` (its vote and its all-reduce, waiting for the slower rank
included). Each rank also times bare ``all_reduce`` calls of the sweep's buffer
(:math:`K(1 + D + D^2) + 1` numbers) and of an 8 MiB buffer: the latency :math:`\alpha` and
bandwidth :math:`\beta` of the link.

**Cost model.** One sweep on P ranks costs :math:`T(P) = T_c(1)/P + t_{ar}(P)` with two
all-reduces per sweep (the error vote, one number, and the statistics, :math:`m` numbers).
For a ring (gloo): :math:`t_{ar} = 2(P-1)\alpha + 2\frac{P-1}{P}\frac{8m}{\beta}`
(Thakur, Rabenseifner & Gropp 2005); for NCCL's tree at small messages:
:math:`2\lceil\log_2 P\rceil\alpha + 2\frac{8m}{\beta}`. It is checked against the P=2
measurement, then extrapolated to P = 8…256 with N fixed, for gloo on this machine's loopback
(measured :math:`\alpha, \beta`), gloo over 10 GbE and NCCL over 100 Gb/s InfiniBand
(assumed: :math:`\alpha` = 50 µs / 10 µs, :math:`\beta` = 1.25 / 12.5 GB/s). Scaling stops
where the all-reduce costs as much as the compute (50 % parallel efficiency).

**SVI.** ``fit_svi(..., distributed=True)`` on the VAE with scikit-learn's digits (1438 training
images), a global batch of 128 split over the ranks: steps per second, 1 vs 2 processes.

The machine is shared: its load average before and after each launch is recorded with the
results. ``--quick``: N=2e4, D=4, K=3, 3 sweeps, 4 SVI steps, 20 timed all-reduces (a smoke
test: two launches of a few seconds, mostly interpreter start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from pyro_vi._io import write_text

from ._common import (
    BENCH_DIR,
    add_common_args,
    machine_info,
    markdown_table,
    median_range,
    should_update_readme,
    stem,
    update_readme,
    write_results,
)

NAME = "distributed"
WORKER = "PYRO_VI_BENCH_DISTRIBUTED"  # the job of a torchrun rank, as JSON
BLOCK = 65536  # rows per seeded block of the synthetic data
LINKS = {  # name -> (alpha seconds, beta bytes/s, topology); None: this machine's measurement
    "gloo, loopback (measured)": (None, None, "ring"),
    "gloo, 10 GbE (assumed)": (50e-6, 1.25e9, "ring"),
    "NCCL, 100 Gb/s IB (assumed)": (10e-6, 12.5e9, "tree"),
}


# ------------------------------------------------------------------------------ on each rank
def _rows(start: int, stop: int, d: int, k: int) -> torch.Tensor:
    """Rows [start, stop) of the synthetic mixture: block b drawn from seed b (any P alike)."""
    parts = []
    centres = torch.randn(k, d, generator=torch.Generator().manual_seed(10**6), dtype=torch.float64)
    for b in range(start // BLOCK, (stop - 1) // BLOCK + 1):
        g = torch.Generator().manual_seed(b)
        z = torch.randint(k, (BLOCK,), generator=g)
        block = 3.0 * centres[z] + torch.randn(BLOCK, d, generator=g, dtype=torch.float64)
        lo, hi = max(start, b * BLOCK) - b * BLOCK, min(stop, (b + 1) * BLOCK) - b * BLOCK
        parts.append(block[lo:hi])
    return torch.cat(parts)


def _allreduce_seconds(numel: int, repeat: int) -> float:
    import torch.distributed as dist

    buf = torch.zeros(numel, dtype=torch.float64)
    dist.barrier()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        dist.all_reduce(buf)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cavi_rank(n: int, d: int, k: int, sweeps: int, repeat: int) -> dict[str, Any]:
    import torch.distributed as dist

    from pyro_vi import cavi
    from pyro_vi.distributed import shard_bounds
    from pyro_vi.distributed.collectives import Comm
    from pyro_vi.models.gmm.model import GaussianMixture

    start, stop = shard_bounds(n)
    x = _rows(start, stop, d, k)
    m = k * (1 + d + d * d) + 1  # a sweep's statistics and ELBO share
    sweep_sums: list[float] = []
    plain = Comm.sum

    def timed(self: Comm, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        t0 = time.perf_counter()
        try:
            return plain(self, tensors)
        finally:
            if sum(t.numel() for t in tensors) == m:  # the sweep's one sum (vote included)
                sweep_sums.append(time.perf_counter() - t0)

    dist.barrier()
    Comm.sum = timed  # type: ignore[method-assign]
    cpu0 = time.process_time()
    try:
        fit = cavi(GaussianMixture(k, init="random"), x, seed=0, max_iter=sweeps, tol=0.0,
                   warn=False, distributed=True)
    finally:
        Comm.sum = plain  # type: ignore[method-assign]
    # this process's CPU seconds per pass over its rows (the start's pass, sweep 0, the sweeps):
    # what the work costs it, whatever else competes for the cores
    cpu = (time.process_time() - cpu0) / (sweeps + 2)
    secs = fit.history["seconds"].to_numpy()
    per_sweep = [float(b - a) for a, b in zip(secs[:-1], secs[1:], strict=True)]
    return {"rows": stop - start, "sweep_seconds": statistics.median(per_sweep),
            "sum_seconds": statistics.median(sweep_sums), "cpu_seconds": cpu,
            "small": _allreduce_seconds(m, repeat), "big": _allreduce_seconds(2**20, max(3, repeat // 20)),
            "elbo": fit.elbo}


def _svi_rank(steps: int, batch: int) -> dict[str, Any]:
    import pyro
    import torch.distributed as dist

    from pyro_vi import fit_svi
    from pyro_vi.data.images import load_digits
    from pyro_vi.distributed import shard
    from pyro_vi.models.vae.model import VAE, VAEConfig

    x = load_digits().x_train
    n, world = x.shape[0], dist.get_world_size()
    pyro.clear_param_store()
    vae = VAE(VAEConfig(input_dim=64, latent_dim=8, hidden=(128,)))
    batches = vae.batches(shard(x), batch_size=batch // world, seed=dist.get_rank())
    fit = fit_svi(vae.model, vae.guide, batches=batches, num_steps=steps, tol=0.0, seed=0,
                  progress=False, optim=pyro.optim.Adam({"lr": 1e-3}), num_data=n,
                  distributed=True)
    secs = fit.history["seconds"].to_numpy()
    warm = max(1, min(5, steps // 2))  # steps after the first few (allocator, caches)
    return {"steps_per_second": (steps - warm) / float(secs[-1] - secs[warm - 1]),
            "loss": float(fit.history["loss"].iloc[-1])}


def _worker(job: dict[str, Any]) -> int:
    import torch.distributed as dist

    from pyro_vi.distributed import init_from_env

    args = argparse.Namespace(**job)
    torch.set_num_threads(1)
    rank, world = init_from_env(timeout=600)
    try:
        out = {"world": world, "cavi": _cavi_rank(args.n, args.d, args.k, args.sweeps, args.repeat)}
        out["svi"] = _svi_rank(args.svi_steps, args.svi_batch)
    finally:
        dist.destroy_process_group()
    write_text(Path(args.result_dir) / f"rank{rank}.json", json.dumps(out))
    return 0


# -------------------------------------------------------------------------------- the driver
def _launch(nproc: int, args: argparse.Namespace) -> tuple[list[dict[str, Any]], float, float]:
    """``torchrun --standalone --nproc_per_node=nproc -m benchmarks.distributed --worker``."""
    with tempfile.TemporaryDirectory() as folder:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", f"{BENCH_DIR.name}.{NAME}"]
        # the sizes travel in the environment: torchrun's parser would take --n for --nnodes
        job = {"result_dir": folder, **{k: getattr(args, k) for k in
                                        ("n", "d", "k", "sweeps", "svi_steps", "svi_batch",
                                         "repeat")}}
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", WORKER: json.dumps(job)}
        before = os.getloadavg()[0]
        proc = subprocess.run(cmd, cwd=BENCH_DIR.parent, env=env, capture_output=True,
                              text=True, timeout=3600)
        after = os.getloadavg()[0]
        if proc.returncode:
            raise RuntimeError(f"torchrun with {nproc} processes failed:\n{proc.stderr[-3000:]}")
        ranks = [json.loads((Path(folder) / f"rank{r}.json").read_text()) for r in range(nproc)]
    return ranks, before, after


def _allreduce_model(p: Any, m: int, alpha: float, beta: float, topology: str) -> Any:
    """Seconds of one sweep's two all-reduces (the vote: 1 number; the statistics: m numbers)."""
    import numpy as np

    p = np.asarray(p, dtype=float)
    if topology == "ring":
        one = lambda size: 2 * (p - 1) * alpha + 2 * (p - 1) / p * 8 * size / beta  # noqa: E731
    else:
        one = lambda size: 2 * np.ceil(np.log2(p)) * alpha + 2 * 8 * size / beta  # noqa: E731
    return np.where(p > 1, one(1) + one(m), 0.0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (see the module docstring); under ``_launch`` one torchrun rank."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--sweeps", type=int, default=10)
    parser.add_argument("--svi-steps", type=int, default=200)
    parser.add_argument("--svi-batch", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=200, help="bare all-reduces timed per size")
    parser.add_argument("--repeats", type=int, default=3, help="launches per process count")
    if WORKER in os.environ and argv is None:  # one torchrun rank (see _launch)
        return _worker(json.loads(os.environ[WORKER]))
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.d, args.k, args.sweeps, args.svi_steps, args.repeat = 20_000, 4, 3, 3, 4, 20
        args.repeats = 1
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    # launches interleaved (1, 2, 1, 2, ...): a change of the machine's load hits both alike
    raw = []
    for repeat in range(args.repeats):
        for p in (1, 2):
            ranks, before, after = _launch(p, args)
            c = ranks[0]["cavi"]
            raw.append({"repeat": repeat, "processes": p, "rows_per_rank": c["rows"],
                        "sweep_s": max(r["cavi"]["sweep_seconds"] for r in ranks),
                        "sum_s": max(r["cavi"]["sum_seconds"] for r in ranks),
                        "cpu_s": max(r["cavi"]["cpu_seconds"] for r in ranks),
                        "allreduce_s": c["small"], "allreduce_8MiB_s": c["big"],
                        "elbo": c["elbo"], "svi_steps_per_s": ranks[0]["svi"]["steps_per_second"],
                        "load_before": before, "load_after": after})
    runs = pd.DataFrame(raw)
    pairs = runs.pivot(index="repeat", columns="processes", values="sweep_s")
    spread = median_range(list(pairs[1] / pairs[2]), "{:.2f}")
    table = runs.drop(columns="repeat").groupby("processes", as_index=False).median()
    table["rows_per_rank"] = table.rows_per_rank.astype(int)
    table["comm_share"] = table.sum_s / table.sweep_s
    t1, t2 = table.sweep_s.iloc[0], table.sweep_s.iloc[1]
    m = args.k * (1 + args.d + args.d**2) + 1
    # at P=2 a ring all-reduce is 2 hops: t(small) = 2 alpha; t(8 MiB) - t(small) = 8 MiB / beta
    small, big = float(table.allreduce_s.iloc[1]), float(table.allreduce_8MiB_s.iloc[1])
    alpha2 = small / 2
    beta2 = 8 * 2**20 / max(big - small, 1e-9)
    measured_ar = float(_allreduce_model(2, m, alpha2, beta2, "ring"))
    predicted2 = t1 / 2 + measured_ar
    table["speedup"] = t1 / table.sweep_s
    table["cpu_speedup"] = table.cpu_s.iloc[0] / table.cpu_s
    table["model_sweep_s"] = [t1, predicted2]

    ps = np.array([1, 2, 8, 16, 32, 64, 128, 256])
    model_rows, stops = [], {}
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for link, (alpha, beta, topo) in LINKS.items():
        a, b = (alpha2, beta2) if alpha is None else (alpha, beta)
        ar = _allreduce_model(ps, m, a, b, topo)
        total = t1 / ps + ar
        over = ps[ar >= t1 / ps]
        stops[link] = int(over[0]) if len(over) else None
        for p, tt, aa in zip(ps, total, ar, strict=True):
            model_rows.append({"link": link, "ranks": int(p), "sweep_s": float(tt),
                               "allreduce_s": float(aa), "speedup": float(t1 / tt),
                               "efficiency": float(t1 / tt / p)})
        ax.loglog(ps, total, marker=".", label=link)
    ax.loglog([1, 2], [t1, t2], "ks", label="measured (this machine)")
    ax.loglog(ps, t1 / ps, "k:", lw=0.8, label="compute only, T(1)/P")
    ax.set_xlabel("ranks P")
    ax.set_ylabel("seconds per sweep")
    ax.set_title(f"GMM N={args.n:.0e}, D={args.d}, K={args.k}: cost model")
    ax.legend(fontsize=7)
    model = pd.DataFrame(model_rows)

    info = machine_info(dtype="float64", device="cpu", threads=1)
    info["load_avg_before_after"] = [[r["load_before"], r["load_after"]] for r in raw]
    shown = table[["processes", "rows_per_rank", "sweep_s", "speedup", "cpu_s", "cpu_speedup",
                   "sum_s", "comm_share",
                   "allreduce_s", "model_sweep_s", "svi_steps_per_s", "load_before",
                   "load_after"]]
    picked = model[model.ranks.isin([8, 32, 128, 256])].pivot(index="ranks", columns="link",
                                                              values="efficiency")
    stop_text = "; ".join(f"{k}: {'beyond 256' if v is None else f'P = {v}'}"
                          for k, v in stops.items())
    md = (f"GMM N={args.n:g}, D={args.d}, K={args.k} (full covariance, float64), "
          f"{args.sweeps} sweeps of `cavi(..., distributed=True)`, launched by `torchrun "
          f"--standalone`, one thread per process, gloo on loopback; VAE on digits: "
          f"`fit_svi(..., distributed=True)`, global batch {args.svi_batch}.\n\n"
          + markdown_table(shown)
          + f"\nMedians of {args.repeats} interleaved launches per row. Speed-up at 2 "
            f"processes: **{t1 / t2:.2f}x** in wall-clock time (per launch pair: {spread}), "
            f"{table.cpu_speedup.iloc[1]:.2f}x in the CPU seconds a process spends per pass over "
            f"its rows (`cpu_s`, whatever else the cores run). The sweep's `Comm.sum` (its vote "
            f"and its all-reduce of {m} numbers, waiting for the slower rank included) takes "
            f"{table.sum_s.iloc[1] * 1e3:.3g} ms, {100 * table.comm_share.iloc[1]:.2f} % of a "
            f"sweep; a bare all-reduce of that buffer {small * 1e6:.0f} µs, of 8 MiB "
            f"{big * 1e3:.3g} ms (so alpha = {alpha2 * 1e6:.0f} µs per hop, beta = "
            f"{beta2 / 1e9:.2f} GB/s on loopback). The cost model predicts {predicted2:.4g} s "
            f"per sweep at P=2 (T(1)/2 + {measured_ar * 1e6:.0f} µs); measured {t2:.4g} s "
            f"(measured/model {t2 / predicted2:.2f}).\n\n"
            f"Extrapolated parallel efficiency, N fixed (m = K(1+D+D²)+1 = {m} numbers, "
            f"{8 * m / 1024:.1f} KiB per sweep):\n\n"
          + markdown_table(picked.reset_index(), floatfmt="{:.2f}")
          + f"\nScaling stops (the first P of the grid where the all-reduce costs at least the "
            f"compute, i.e. efficiency <= 50 %) at: {stop_text}. "
            f"The load average (2 cores, shared with other jobs) is in the table: a second "
            f"process competes with whatever else runs.\n")
    write_results(args.out, stem(NAME, args.quick), table=pd.concat(
        [runs.assign(kind="measured"), model.assign(kind="model")], ignore_index=True),
        markdown=md, info=info, figures={"cost_model": fig})
    plt.close(fig)
    print(md)
    if should_update_readme(args):
        from ._common import machine_line

        update_readme(NAME, md + machine_line(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
