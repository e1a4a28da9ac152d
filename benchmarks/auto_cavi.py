"""Automatic CAVI: the derived mixture's sweep against the hand-written one, and detection time.

1. **Sweep cost.** :class:`~pyro_vi.models.gmm.GaussianMixture` and the model derived from
   its own Pyro program (``derive(gmm.model, x)``) run one CAVI sweep (local pass + global
   step) from the same start, interleaved in each repeat; the table gives the median [range]
   of the seconds and of the per-repeat ratio derived / hand-written, and checks that both
   reach the same ELBO after the sweeps. The issue's goal: at most 1.5x at N=1e5, D=8, K=8 and
   at N=1e5, D=32, K=16.
2. **Detection time.** :func:`pyro_vi.cavi.auto.derive` on plain Pyro models (claims
   Gamma-Poisson, eight schools, ARD regression, a mixture of Poissons, a latent class model,
   PPCA, the GMM on Old Faithful): median seconds and the number of model runs it took.

Usage::

    python -m benchmarks.auto_cavi [--quick] [--out benchmarks/results] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex

from benchmarks._common import (
    add_common_args,
    limit_threads,
    machine_info,
    markdown_table,
    median_range,
    should_update_readme,
    stem,
    update_readme,
    write_results,
)
from pyro_vi import load_eight_schools, load_old_faithful
from pyro_vi._io import write_csv
from pyro_vi.cavi.auto import derive
from pyro_vi.cavi.kmeans import initial_responsibilities
from pyro_vi.cavi.model import local_pass
from pyro_vi.models.gmm.model import GaussianMixture
from pyro_vi.models.hierarchical import HierarchicalNormal
from pyro_vi.models.linreg import BayesianLinearRegression

NAME = "auto_cavi"
F64 = torch.float64


def _blobs(n: int, d: int, k: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    centres = 4.0 * torch.randn(k, d, generator=g, dtype=F64)
    return centres[torch.arange(n) % k] + torch.randn(n, d, generator=g, dtype=F64)


def sweep_rows(n: int, d: int, k: int, repeat: int) -> list[dict[str, Any]]:
    """One row per repeat: seconds per sweep of both models, interleaved, and their ELBOs."""
    x = _blobs(n, d, k)
    gmm, xp = GaussianMixture(k).prepare(x)
    resp = initial_responsibilities(xp, k, method="kmeans++",
                                    generator=torch.Generator().manual_seed(0))
    gmm = GaussianMixture(k, init=resp).prepare(x)[0]
    derived = derive(gmm.model, xp, init=resp)
    state = {"hand": gmm.global_step(gmm.init_stats(xp, generator=torch.Generator()), None),
             "derived": derived.global_step(derived.init_stats(derived.data,
                                                               generator=torch.Generator()), None)}
    models: dict[str, tuple[Any, Any]] = {"hand": (gmm, xp), "derived": (derived, derived.data)}

    def sweep(name: str) -> float:
        model, data = models[name]
        local = local_pass(model, data, state[name], chunk_size=None)
        state[name] = model.global_step(local.stats, state[name])
        return float(local.elbo + model.global_elbo(state[name]))

    rows = []
    for r in range(repeat):
        times, elbos = {}, {}
        for name in (("hand", "derived") if r % 2 == 0 else ("derived", "hand")):
            t0 = time.perf_counter()
            elbos[name] = sweep(name)
            times[name] = time.perf_counter() - t0
        rows.append({"N": n, "D": d, "K": k, "repeat": r, "hand_s": times["hand"],
                     "derived_s": times["derived"], "ratio": times["derived"] / times["hand"],
                     "hand_elbo": elbos["hand"], "derived_elbo": elbos["derived"]})
    return rows


# ------------------------------------------------------------------------- detection models
def claims_model(claims: torch.Tensor, holders: torch.Tensor, district: torch.Tensor) -> None:
    with pyro.plate("districts", 4):
        rate = pyro.sample("rate", dist.Gamma(2.0, 0.02))
    with pyro.plate("policies", len(claims)):
        pyro.sample("claims", dist.Poisson(rate[..., district] * holders), obs=claims)


def poisson_mixture(x: torch.Tensor, k: int) -> None:
    w = pyro.sample("w", dist.Dirichlet(torch.ones(k, dtype=F64)))
    with pyro.plate("components", k):
        rate = pyro.sample("rate", dist.Gamma(torch.tensor(2.0, dtype=F64), 0.5))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("x", dist.Poisson(rate[z]), obs=x)


def latent_class(x: torch.Tensor, k: int) -> None:
    w = pyro.sample("w", dist.Dirichlet(torch.ones(k, dtype=F64)))
    with pyro.plate("classes", k, dim=-1):
        p = pyro.sample("p", dist.Beta(torch.ones(x.shape[1], dtype=F64), 1.0).to_event(1))
    with pyro.plate("people", len(x), dim=-1):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("x", dist.Bernoulli(Vindex(p)[..., z, :]).to_event(1), obs=x)


def ppca(x: torch.Tensor, ell: int) -> None:
    tau = pyro.sample("tau", dist.Gamma(torch.tensor(2.0, dtype=F64), 1.0))
    features = pyro.plate("features", x.shape[1], dim=-1)
    with features:
        w = pyro.sample("w", dist.Normal(torch.zeros(ell, dtype=F64), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0], dim=-2):
        z = pyro.sample("z", dist.Normal(torch.zeros(ell, dtype=F64), 1.0).to_event(1))
        with features:
            pyro.sample("x", dist.Normal((z * w).sum(-1), tau.rsqrt()), obs=x)


def detection_cases(n: int) -> dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]:
    g = torch.Generator().manual_seed(0)
    district = torch.arange(n) % 4
    holders = torch.randint(1, 50, (n,), generator=g).to(F64)
    claims = torch.poisson(holders * 0.02 * (1 + district), generator=g)
    y, sigma = load_eight_schools()
    hier = HierarchicalNormal(mean_prior=0.0, mean_scale=10.0, precision_concentration=1.0,
                              precision_rate=10.0)
    xr = torch.randn(n, 5, generator=g, dtype=F64)
    yr = xr[:, 0] - 2 * xr[:, 1] + 0.3 * torch.randn(n, generator=g, dtype=F64)
    lin = BayesianLinearRegression()
    counts = torch.poisson(torch.tensor([2.0, 12.0], dtype=F64)[torch.arange(n) % 2], generator=g)
    items = torch.bernoulli(torch.tensor([[0.9, 0.8, 0.2, 0.1], [0.1, 0.3, 0.8, 0.9]],
                                         dtype=F64)[torch.arange(n) % 2], generator=g)
    xf = load_old_faithful(standardize=True)
    gmm, xp = GaussianMixture(3).prepare(xf)
    xs = torch.randn(n, 2, generator=g, dtype=F64) @ torch.randn(2, 6, generator=g, dtype=F64)
    return {"claims (Gamma-Poisson, 4 districts)": (claims_model, (claims, holders, district)),
            "eight schools (HierarchicalNormal.model)": (hier.model, (y, sigma)),
            "ARD regression (D=5)": (lin.model, (xr, yr)),
            "mixture of Poissons (K=2)": (poisson_mixture, (counts, 2)),
            "latent class (K=2, 4 items)": (latent_class, (items, 2)),
            "PPCA (D=6, L=2)": (ppca, (xs, 2)),
            "GMM on Old Faithful (K=3)": (gmm.model, (xp,))}


def detection_rows(n: int, repeat: int) -> list[dict[str, Any]]:
    rows = []
    for name, (model, args) in detection_cases(n).items():
        derive(model, *args)  # warm-up: first calls pay torch's lazy initialisation
        times, runs = [], 0
        for _ in range(repeat):
            t0 = time.perf_counter()
            m = derive(model, *args)
            times.append(time.perf_counter() - t0)
            runs = m.s.runs
        rows.append({"model": name, "N": len(args[0]), "seconds": statistics.median(times),
                     "min_s": min(times), "max_s": max(times), "model_runs": runs,
                     "factors": ", ".join(f"{f} ({sp.kind})" for f, sp in m.s.factors.items())})
    return rows


def figure(sweeps: pd.DataFrame, det: pd.DataFrame) -> Any:
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    labels, ratios = [], []
    for (n, d, k), grp in sweeps.groupby(["N", "D", "K"], sort=False):
        labels.append(f"N={n} D={d} K={k}")
        ratios.append(grp["ratio"].tolist())
    a.boxplot(ratios)
    a.set_xticks(range(1, len(labels) + 1), labels)
    a.axhline(1.5, ls="--", c="k", lw=0.8)
    a.set_ylabel("derived / hand-written seconds per sweep")
    a.set_title("sweep cost (goal: below the dashed line)")
    b.barh(det["model"], det["seconds"] * 1e3)
    b.set_xlabel("detection, ms (median)")
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    matplotlib.use("Agg")  # an app: figures go to files
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--repeat", type=int, default=None, help="repeats (default 7; quick 2)")
    args = parser.parse_args(argv)
    repeat = args.repeat or (2 if args.quick else 7)
    sizes = [(2000, 4, 3)] if args.quick else [(100_000, 8, 8), (100_000, 32, 16)]
    with limit_threads(args.threads):
        sweeps = pd.DataFrame([r for n, d, k in sizes for r in sweep_rows(n, d, k, repeat)])
        det = pd.DataFrame(detection_rows(200 if args.quick else 1000, repeat))
        info = machine_info(dtype="float64", device="cpu", threads=args.threads)
    summary = []
    for (n, d, k), grp in sweeps.groupby(["N", "D", "K"], sort=False):
        gap = (grp.derived_elbo - grp.hand_elbo).abs().max() / grp.hand_elbo.abs().max()
        summary.append({"N": n, "D": d, "K": k, "hand-written s/sweep": median_range(grp.hand_s),
                        "derived s/sweep": median_range(grp.derived_s),
                        "derived / hand": median_range(grp.ratio, "{:.2f}"),
                        "max rel. ELBO gap": f"{gap:.1e}"})
    det_md = det.assign(ms=[median_range([lo * 1e3, s * 1e3, hi * 1e3], "{:.0f}")
                            for lo, s, hi in zip(det.min_s, det.seconds, det.max_s, strict=True)])
    md = ("### Automatic CAVI: derived vs hand-written mixture sweep\n\n"
          + markdown_table(pd.DataFrame(summary))
          + f"\nMedian [range] over {repeat} interleaved repeats of one sweep (local pass and "
          "global step) of GaussianMixture and of the model derived from its own Pyro program, "
          "from the same k-means++ start; the ratio is taken per repeat. Both reach the same "
          "ELBO (last column).\n\n"
          "### Automatic CAVI: detection time\n\n"
          + markdown_table(det_md[["model", "N", "ms", "model_runs", "factors"]])
          + f"\nMedian [min–max] ms of `derive(model, *data)` over {repeat} calls after one "
          "warm-up, and the number of model runs the probing took.\n")
    write_results(args.out, stem(NAME, args.quick), table=sweeps, markdown=md, info=info,
                  figures={"summary": figure(sweeps, det)})
    write_csv(det, args.out / f"{stem(NAME, args.quick)}_detection.csv", index=False)
    if should_update_readme(args):
        update_readme(NAME, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
