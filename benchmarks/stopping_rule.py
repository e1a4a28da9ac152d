"""Does fit_svi's default stopping rule fire, and what does stopping cost? Five models, seeds.

For each model and seed, three runs of :func:`pyro_vi.fit_svi` from a fresh param store:

1. the default noise-aware rule (``rule="noise"``, ``window=100``, ``patience=3``, ``z=2``,
   ``tol=1e-4``) with a budget of ``--budget`` steps: does it stop, and at which step;
2. the same seed run 4x as long as (1) with the rule off (``tol=0``): the reference;
3. the earlier rule (``rule="relative"``, same options) with the same budget, for comparison.

"gap" is the ELBO of the 4x longer run minus the ELBO of the stopped run, both estimated with
``--particles`` Trace_ELBO particles on common random numbers (the same seed for both
estimates, so most of the Monte-Carlo error cancels in the difference); for the GMM both are
the analytic ELBO of :func:`~pyro_vi.models.gmm.svi.fit_gmm_svi`. A positive gap is what
stopping early lost. The models:

* ``normal-mean``: N(mu | 1, 3^2), 20 draws of N(mu, 1.5^2), AutoNormal (conjugate);
* ``eight-schools``: :class:`pyro_vi.HierarchicalNormal` (centred; Gamma(2, 50) prior on the
  group precision) on the bundled Rubin (1981) data, AutoNormal (conditionally conjugate);
* ``hier-logistic``: hierarchical logistic regression, 8 groups x 25 rows, 2 features,
  group intercepts N(mu, sigma^2), AutoNormal (not conjugate; the issue's model);
* ``linreg``: :class:`pyro_vi.BayesianLinearRegression` (known precisions) on 100 x 5
  synthetic rows, AutoNormal (conjugate);
* ``gmm``: :func:`~pyro_vi.models.gmm.svi.fit_gmm_svi` (``enum``, its defaults: lr 0.1 with
  decay, 8 particles) on standardised Old Faithful, K = 2.

Run ``python -m benchmarks.stopping_rule`` (full) or ``--quick`` (smoke test).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_vi import BayesianLinearRegression, GaussianMixture, HierarchicalNormal, fit_svi
from pyro_vi.data.bundled import load_eight_schools, load_old_faithful
from pyro_vi.models.gmm.svi import fit_gmm_svi

from ._common import (
    add_common_args,
    limit_threads,
    machine_info,
    markdown_table,
    should_update_readme,
    stem,
    update_readme,
    write_results,
)

NAME = "stopping_rule"


def normal_mean(x: torch.Tensor) -> None:
    mu = pyro.sample("mu", dist.Normal(x.new_tensor(1.0), 3.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.5), obs=x)


def hier_logistic(x: torch.Tensor, group: torch.Tensor, y: torch.Tensor) -> None:
    mu = pyro.sample("mu", dist.Normal(x.new_tensor(0.0), 2.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(x.new_tensor(1.0)))
    with pyro.plate("groups", 8):
        alpha = pyro.sample("alpha", dist.Normal(mu, sigma))
    beta = pyro.sample("beta", dist.Normal(x.new_zeros(2), 2.0).to_event(1))
    with pyro.plate("data", len(y)):
        logits = alpha[..., group] + torch.einsum("nf,...f->...n", x, beta)
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


@dataclass(frozen=True)
class Case:
    """One model: its Pyro callable, data, optimizer and how to score a finished fit."""

    name: str
    model: Callable[..., Any] | None
    data: tuple[Any, ...]
    lr: float


def cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, generator=g, dtype=torch.float64) * 1.5 + 2.0
    schools = HierarchicalNormal(mean_prior=0.0, mean_scale=5.0, precision_concentration=2.0,
                                 precision_rate=50.0)
    group = torch.arange(8).repeat_interleave(25)
    xl = torch.randn(200, 2, generator=g, dtype=torch.float64)
    alpha = 0.5 + 0.8 * torch.randn(8, generator=g, dtype=torch.float64)
    logits = alpha[group] + xl @ torch.tensor([1.0, -0.7], dtype=torch.float64)
    yl = torch.bernoulli(torch.sigmoid(logits), generator=g)
    xr = torch.randn(100, 5, generator=g, dtype=torch.float64)
    yr = xr @ torch.linspace(-1, 1, 5, dtype=torch.float64) + 0.5 * torch.randn(
        100, generator=g, dtype=torch.float64)
    linreg = BayesianLinearRegression(ard=False, weight_precision=1.0, noise_precision=4.0)
    return [Case("normal-mean", normal_mean, (x,), 0.05),
            Case("eight-schools", schools.model, load_eight_schools(), 0.05),
            Case("hier-logistic", hier_logistic, (xl, group, yl), 0.05),
            Case("linreg", linreg.model, (xr, yr), 0.05),
            Case("gmm", None, (load_old_faithful(standardize=True),), 0.1)]


def precise_elbo(case: Case, guide: Any, particles: int) -> float:
    """ELBO of the guide now in the param store, ``particles`` draws, a fixed seed."""
    pyro.set_rng_seed(12345)
    with torch.no_grad():
        loss = Trace_ELBO(num_particles=particles).loss(case.model, guide, *case.data)
    return -float(loss)


def one_fit(case: Case, *, seed: int, num_steps: int, particles: int, **rule: Any) -> tuple[Any, float]:
    """(result, its precise ELBO) of one run from a fresh param store."""
    pyro.clear_param_store()
    if case.model is None:
        fit = fit_gmm_svi(GaussianMixture(2), *case.data, num_steps=num_steps, seed=seed,
                          eval_every=max(1, num_steps // 20), **rule)
        return fit, float(fit.elbo)
    guide = AutoNormal(case.model)
    fit = fit_svi(case.model, guide, *case.data, num_steps=num_steps, seed=seed, progress=False,
                  optim=pyro.optim.Adam({"lr": case.lr}), **rule)  # type: ignore[attr-defined]
    return fit, precise_elbo(case, guide, particles)


def run(case: Case, *, seeds: int, budget: int, particles: int, window: int) -> list[dict[str, Any]]:
    rows = []
    for seed in range(seeds):
        fit, elbo = one_fit(case, seed=seed, num_steps=budget, particles=particles, window=window)
        _, long_elbo = one_fit(case, seed=seed, num_steps=4 * fit.n_steps, particles=particles,
                               window=window, tol=0.0)
        old, _ = one_fit(case, seed=seed, num_steps=budget, particles=particles, window=window,
                         rule="relative")
        rows.append({"model": case.name, "seed": seed, "stop_reason": fit.stop_reason,
                     "stop_step": fit.n_steps, "elbo_stopped": elbo, "elbo_4x": long_elbo,
                     "gap_nats": long_elbo - elbo, "old_rule_stop_reason": old.stop_reason,
                     "old_rule_stop_step": old.n_steps})
    return rows


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    out = []
    for name, g in table.groupby("model", sort=False):
        stopped = g[g.stop_reason == "converged"]
        old = g[g.old_rule_stop_reason == "converged"]
        out.append({
            "model": name, "seeds": len(g),
            "stopped (noise rule)": f"{len(stopped)}/{len(g)}",
            "median stop step": float(stopped.stop_step.median()) if len(stopped) else math.nan,
            "stop step range": (f"{stopped.stop_step.min()}-{stopped.stop_step.max()}"
                                if len(stopped) else "-"),
            "median gap to 4x run (nats)": float(g.gap_nats.median()),
            "max gap (nats)": float(g.gap_nats.max()),
            "stopped (relative rule)": f"{len(old)}/{len(g)}",
            "relative rule median step": float(g.old_rule_stop_step.median()),
        })
    return pd.DataFrame(out)


def figure(table: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    names = list(dict.fromkeys(table.model))
    for i, name in enumerate(names):
        g = table[table.model == name]
        ax.scatter(g.stop_step, g.gap_nats, label=name, s=18, marker="os^vD"[i % 5])
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set(xscale="log", xlabel="stop step (noise rule)",
           ylabel="ELBO(4x run) - ELBO(stopped), nats")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    matplotlib.use("Agg")  # an app: figures go to files
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--seeds", type=int, default=None, help="seeds per model (default 5; quick 1)")
    parser.add_argument("--budget", type=int, default=None,
                        help="step budget of the stopping runs (default 5000; quick 60)")
    parser.add_argument("--particles", type=int, default=None,
                        help="Trace_ELBO particles scoring a fit (default 1000; quick 5)")
    args = parser.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 5)
    budget = args.budget or (60 if args.quick else 5000)
    particles = args.particles or (5 if args.quick else 1000)
    window = 5 if args.quick else 100
    torch.set_default_dtype(torch.float64)
    rows: list[dict[str, Any]] = []
    with limit_threads(args.threads):
        for case in cases():
            rows += run(case, seeds=seeds, budget=budget, particles=particles, window=window)
        info = machine_info(dtype="float64", device="cpu", threads=args.threads)
    table = pd.DataFrame(rows)
    summary = summarise(table)
    md = (f"### Stopping rule: {seeds} seeds per model, budget {budget} steps, window {window}"
          "\n\n" + markdown_table(summary)
          + f"\n\nGap: ELBO of a run 4x as long as the stopped one (rule off) minus the stopped"
          f" run's ELBO ({particles}-particle Trace_ELBO, common random numbers; the GMM's is"
          " analytic). Per-seed rows are in `results/stopping_rule.csv`.\n")
    write_results(args.out, stem(NAME, args.quick), table=table, markdown=md, info=info,
                  figures={"gap": figure(table)})
    if should_update_readme(args):
        update_readme(NAME, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
