"""VAE on 8x8 digits: fit_svi's throughput against a bare Pyro loop, JIT, and test quality.

1. Throughput (images/second) of ``fit_svi(batches=...)`` and of a hand-written
   ``for x in batches: svi.step(x)`` loop on the same architecture, data and batches,
   interleaved block by block (order alternating), medians and their ratio from one run.
2. The same bare loop with ``JitTrace_ELBO`` instead of ``Trace_ELBO`` (speed-up, if it works).
3. Quality after a fixed epoch budget: test ELBO and the importance-weighted log-likelihood
   (k = 5000, Burda et al. 2016) for a VAE trained with the ELBO and one trained with IWAE.

Run: ``python -m benchmarks.vae_throughput`` (full, a few minutes on one core) or ``--quick``.
Writes ``vae_throughput[_quick].{csv,md,png}`` into ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pyro
import pyro.optim
import torch
from matplotlib.figure import Figure
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO

from pyro_vi.data.images import load_digits
from pyro_vi.models.vae.evaluate import elbo_per_image, iw_log_likelihood
from pyro_vi.models.vae.model import VAE, VAEConfig
from pyro_vi.models.vae.train import fit_vae
from pyro_vi.svi.runner import fit_svi

HIDDEN = (256, 128)


def machine_info(device: str) -> dict[str, object]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {"python": platform.python_version(), "torch": torch.__version__,
            "pyro": pyro.__version__, "platform": platform.platform(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": device, "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def _vae(name: str, latent_dim: int, device: str) -> VAE:
    return VAE(VAEConfig(input_dim=64, latent_dim=latent_dim, hidden=HIDDEN, seed=0,
                         device=device), name=name)


def _runner_bare(vae: VAE, batches, elbo) -> Callable[[int], tuple[float, float]]:
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
    n = batches.num_data

    def run(num_epochs: int) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(num_epochs):
            for (xb,) in batches:
                svi.step(xb, num_data=n)
        seconds = (time.perf_counter() - t0, time.process_time() - c0)
        for p in vae.parameters():  # hygiene outside the timing: no stale grads in the store
            p.grad = None
        return seconds

    return run


def _runner_fit_svi(vae: VAE, batches) -> Callable[[int], tuple[float, float]]:
    optim = pyro.optim.Adam({"lr": 1e-3})  # reused across blocks: Adam state carries over
    elbo = Trace_ELBO()
    n = batches.num_data

    def run(num_epochs: int) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        fit_svi(vae.model, vae.guide, elbo=elbo, optim=optim, batches=batches,
                num_steps=num_epochs * len(batches), tol=0.0, progress=False, num_data=n)
        seconds = (time.perf_counter() - t0, time.process_time() - c0)
        for p in vae.parameters():
            p.grad = None
        return seconds

    return run


def interleaved(runners: dict[str, Callable[[int], tuple[float, float]]], *, blocks: int,
                epochs_per_block: int, images_per_epoch: int) -> pd.DataFrame:
    """Time each runner for ``blocks`` blocks, alternating the order; images/s per block.

    Both wall-clock and process CPU time are kept: on a shared machine the CPU time (one
    torch thread) is far less disturbed by other processes than the wall clock.
    """
    for run in runners.values():  # warm-up (allocations, JIT compilation): not timed
        run(1)
    rows = []
    names = list(runners)
    for b in range(blocks):
        order = names if b % 2 == 0 else names[::-1]
        for name in order:
            wall, cpu = runners[name](epochs_per_block)
            images = epochs_per_block * images_per_epoch
            rows.append({"block": b, "runner": name, "wall_seconds": wall, "cpu_seconds": cpu,
                         "images_per_second": images / wall,
                         "images_per_cpu_second": images / cpu})
    return pd.DataFrame(rows)


def _median(frame: pd.DataFrame, runner: str, col: str = "images_per_second") -> float:
    return float(frame.loc[frame.runner == runner, col].median())


def _pair_ratio(frame: pd.DataFrame, a: str, b: str,
                col: str = "images_per_second") -> tuple[float, float, float]:
    """Median over blocks of the throughput ratio a/b, with a bootstrap 95% interval."""
    wide = frame.pivot(index="block", columns="runner", values=col)
    ratios = (wide[a] / wide[b]).to_numpy()
    rng = np.random.default_rng(0)
    boot = np.median(rng.choice(ratios, size=(2000, len(ratios))), axis=1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return float(statistics.median(ratios)), float(lo), float(hi)


def quality(data, *, elbo: str, k: int, epochs: int, eval_k: int, elbo_particles: int,
            latent_dim: int, device: str) -> tuple[dict[str, object], pd.DataFrame]:
    pyro.clear_param_store()
    vae = VAE(VAEConfig(input_dim=64, latent_dim=latent_dim, hidden=HIDDEN, seed=0,
                        device=device), name=f"quality_{elbo}")
    t0 = time.perf_counter()
    fit = fit_vae(vae, data.x_train, x_test=data.x_test, epochs=epochs, batch_size=100,
                  elbo=elbo, num_particles=k, lr=1e-3, seed=0, progress=False)
    train_s = time.perf_counter() - t0
    x_test = vae.prepare(data.x_test)
    t0 = time.perf_counter()
    e = elbo_per_image(vae, x_test, num_particles=elbo_particles, seed=1)
    iw = iw_log_likelihood(vae, x_test, k=eval_k, seed=2)
    eval_s = time.perf_counter() - t0
    row = {"objective": f"{elbo} (k={k})", "epochs": epochs, "test_elbo": e.value,
           "test_elbo_se": e.mc_stderr, "elbo_particles": elbo_particles,
           "test_iw_ll": iw.value, "test_iw_ll_se": iw.mc_stderr,
           "eval_k": eval_k, "gap": iw.value - e.value, "train_seconds": train_s,
           "eval_seconds": eval_s}
    return row, fit.curves.assign(objective=row["objective"])


def _markdown(frame: pd.DataFrame) -> str:
    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |",
             "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in frame.itertuples(False)]
    return "\n".join(lines) + "\n"


def plot(timings: pd.DataFrame, curves: pd.DataFrame, path: Path) -> None:
    fig = Figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for name, grp in timings.groupby("runner", sort=False):
        ax1.plot(grp["block"], grp["images_per_cpu_second"], marker="o", label=name)
    ax1.set_xlabel("block (interleaved)")
    ax1.set_ylabel("images per CPU second")
    ax1.set_title("Training throughput, digits, batch 100")
    ax1.legend()
    ax1.grid(alpha=0.3)
    for name, grp in curves.groupby("objective", sort=False):
        line, = ax2.plot(grp["epoch"], grp["train_elbo"], label=f"{name} train")
        ax2.plot(grp["epoch"], grp["test_elbo"], ls="--", color=line.get_color(),
                 label=f"{name} test ELBO")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("nats per image")
    ax2.set_title("Train objective and test ELBO")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    matplotlib.use("Agg")  # an app: figures go to files
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets (smoke test, < 30 s)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--latent-dim", type=int, default=2)
    args = p.parse_args(argv)
    quick = args.quick
    torch.set_num_threads(args.threads)
    blocks, per_block = (3, 1) if quick else (20, 4)
    epochs, eval_k, elbo_particles, iwae_k = (2, 20, 20, 5) if quick else (200, 5000, 1000, 5)
    data = load_digits(seed=0)
    pyro.clear_param_store()

    def batches_for(vae: VAE):
        return vae.batches(data.x_train, batch_size=100, seed=0, drop_last=True)

    bare_vae, ours_vae = _vae("bare", args.latent_dim, args.device), _vae("ours", args.latent_dim,
                                                                         args.device)
    bare_b, ours_b = batches_for(bare_vae), batches_for(ours_vae)
    per_epoch = len(bare_b) * 100
    timings = interleaved({"fit_svi": _runner_fit_svi(ours_vae, ours_b),
                           "bare SVI loop": _runner_bare(bare_vae, bare_b, Trace_ELBO())},
                          blocks=blocks, epochs_per_block=per_block, images_per_epoch=per_epoch)
    rows = []
    for col, unit in (("images_per_cpu_second", "CPU"), ("images_per_second", "wall")):
        ours = _median(timings, "fit_svi", col)
        bare = _median(timings, "bare SVI loop", col)
        ratio, lo, hi = _pair_ratio(timings, "fit_svi", "bare SVI loop", col)
        rows += [(f"throughput fit_svi (images per {unit} second, median)", ours, "", ""),
                 (f"throughput bare SVI loop (images per {unit} second, median)", bare, "", ""),
                 (f"ratio fit_svi / bare, {unit} time (median of block pairs)", ratio, lo, hi)]
    jit_status = "ok"
    try:
        pyro.clear_param_store()
        jv, tv = _vae("jit", args.latent_dim, args.device), _vae("eager", args.latent_dim,
                                                                 args.device)
        jt = interleaved({"JitTrace_ELBO": _runner_bare(jv, batches_for(jv), JitTrace_ELBO(
                              max_plate_nesting=1, ignore_jit_warnings=True)),
                          "Trace_ELBO": _runner_bare(tv, batches_for(tv), Trace_ELBO(
                              max_plate_nesting=1))},
                         blocks=max(2, blocks // 3), epochs_per_block=per_block,
                         images_per_epoch=per_epoch)
        speedup, lo, hi = _pair_ratio(jt, "JitTrace_ELBO", "Trace_ELBO", "images_per_cpu_second")
        rows += [("throughput bare loop, JitTrace_ELBO (images per CPU second)",
                  _median(jt, "JitTrace_ELBO", "images_per_cpu_second"), "", ""),
                 ("throughput bare loop, Trace_ELBO (images per CPU second)",
                  _median(jt, "Trace_ELBO", "images_per_cpu_second"), "", ""),
                 ("JIT speed-up, CPU time (median of block pairs)", speedup, lo, hi)]
        timings = pd.concat([timings, jt.assign(block=jt.block)], ignore_index=True)
    except Exception as err:  # noqa: BLE001 - report, do not hide, a JIT failure
        jit_status = f"failed: {type(err).__name__}: {err}"
        rows.append(("JIT speed-up", float("nan"), "", ""))
    results, curves = [], []
    for elbo, k in (("trace", 1), ("iwae", iwae_k)):
        row, c = quality(data, elbo=elbo, k=k, epochs=epochs, eval_k=eval_k,
                         elbo_particles=elbo_particles, latent_dim=args.latent_dim,
                         device=args.device)
        results.append(row)
        curves.append(c)
    quality_df = pd.DataFrame(results)
    summary = pd.DataFrame(rows, columns=["measurement", "value", "ci95_low", "ci95_high"])
    info = machine_info(args.device)
    info.update({"jit": jit_status, "blocks": blocks, "epochs_per_block": per_block,
                 "images_per_epoch": per_epoch, "quick": quick,
                 "architecture": f"64-{'-'.join(map(str, HIDDEN))}-{args.latent_dim}"})
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / ("vae_throughput_quick" if quick else "vae_throughput")
    summary.to_csv(f"{stem}.csv", index=False)
    quality_df.to_csv(f"{stem}_quality.csv", index=False)
    timings.to_csv(f"{stem}_timings.csv", index=False)
    md = ["# VAE throughput and quality (digits)", "",
          "Goal: ratio fit_svi / bare >= 0.97. Ratios are medians over interleaved blocks of "
          "the per-block ratio, with a bootstrap 95% interval.", "", _markdown(summary), "",
          f"## Test quality after {epochs} epochs (batch 100, Adam lr 1e-3)", "",
          _markdown(quality_df), "", "## Machine", "", "```", json.dumps(info, indent=1), "```"]
    Path(f"{stem}.md").write_text("\n".join(md) + "\n")
    plot(timings, pd.concat(curves), Path(f"{stem}.png"))
    print("\n".join(md))
    print(f"wrote {stem}.csv, {stem}_quality.csv, {stem}_timings.csv, {stem}.md, {stem}.png",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
