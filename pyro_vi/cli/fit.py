"""A bundled example fitted across N local processes (``pyro-vi fit --nproc 2``).

Fits the Bayesian GMM of the demo (Old Faithful, standardized; or the rows of a ``.npy``
file given with ``--data``, each process memory-mapping only its own rows) by
``cavi(..., distributed=True)`` on ``--nproc`` processes joined in a gloo group on
127.0.0.1, one thread each. It prints each rank's rows and result, whether the ranks agree
bitwise, and, with ``--check`` (the default for the bundled data), the largest difference from
a single-process fit on all rows. Several machines: launch the script of the README's
``torchrun`` line instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pyro_vi._io import check_writable, write_csv
from pyro_vi.cavi.engine import cavi, param_tensors
from pyro_vi.data.bundled import load_old_faithful
from pyro_vi.distributed import SpawnError, load_shard, shard, spawn
from pyro_vi.models.gmm.model import GaussianMixture

__all__ = ["main", "rank_fit", "run_fit"]


def _data(path: str | None) -> torch.Tensor:
    return load_old_faithful(standardize=True) if path is None else \
        torch.from_numpy(np.load(path, allow_pickle=False)).to(torch.float64)


def rank_fit(path: str | None, components: int, seed: int, max_iter: int) -> dict[str, Any]:
    """One rank's part (run by :func:`pyro_vi.distributed.spawn`): its rows, its fit."""
    x = shard(_data(None)) if path is None else load_shard(path, dtype=torch.float64)
    t0 = time.perf_counter()
    fit = cavi(GaussianMixture(components, weight_concentration=1e-3), x, seed=seed,
               max_iter=max_iter, warn=False, distributed=True)
    return {"rows": int(x.shape[0]), "elbo": fit.elbo, "n_steps": fit.n_steps,
            "converged": fit.converged, "seconds": time.perf_counter() - t0,
            "params": [t.numpy().copy() for t in param_tensors(fit.params)]}


def run_fit(*, nproc: int, path: str | None = None, components: int = 6, seed: int = 0,
            max_iter: int = 500, check: bool = True) -> pd.DataFrame:
    """Fit on ``nproc`` processes; one row per rank, plus the single-process fit if ``check``."""
    ranks = spawn(rank_fit, nproc, path, components, seed, max_iter, timeout=600)
    first = ranks[0]["params"]
    table = pd.DataFrame([{"rank": str(r), "rows": res["rows"], "elbo": res["elbo"],
                           "sweeps": res["n_steps"], "converged": res["converged"],
                           "seconds": res["seconds"],
                           "bitwise_equal_to_rank_0": all(np.array_equal(a, b) for a, b in
                                                          zip(res["params"], first, strict=True))}
                          for r, res in enumerate(ranks)])
    if check:
        x = _data(path)
        t0 = time.perf_counter()
        # the same seeded start: k-means++ on a subsample of all rows (pyro_vi.distributed)
        ref = _single(x, components, seed, max_iter)
        diff = max(float(np.abs(a - b.numpy()).max()) for a, b in
                   zip(first, param_tensors(ref.params), strict=True))
        table["max_param_diff_vs_single"] = diff
        table.loc[len(table)] = {"rank": "single", "rows": int(x.shape[0]), "elbo": ref.elbo,
                                 "sweeps": ref.n_steps, "converged": ref.converged,
                                 "seconds": time.perf_counter() - t0,
                                 "bitwise_equal_to_rank_0": False,
                                 "max_param_diff_vs_single": 0.0}
    return table


def _single(x: torch.Tensor, components: int, seed: int, max_iter: int) -> Any:
    """The single-process fit from the start a distributed fit takes (a group of one)."""
    import torch.distributed as dist

    from pyro_vi.distributed import free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1)
    try:
        return cavi(GaussianMixture(components, weight_concentration=1e-3), x, seed=seed,
                    max_iter=max_iter, warn=False, distributed=True)
    finally:
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point of ``pyro-vi fit``."""
    from pyro_vi.cli.main import HelpFormatter, count, plain

    parser = argparse.ArgumentParser(prog="pyro-vi fit", description=plain(__doc__.splitlines()[0]),
                                     formatter_class=HelpFormatter)
    parser.add_argument("--nproc", type=count(1), default=2, help="local processes (ranks)")
    parser.add_argument("--data", type=str, default=None,
                        help="an (N, D) float .npy file (default: Old Faithful, standardized)")
    parser.add_argument("--components", type=count(1), default=6)
    parser.add_argument("--seed", type=count(0), default=0)
    parser.add_argument("--max-iter", type=count(1), default=500)
    parser.add_argument("--check", choices=("yes", "no"), default=None,
                        help="also fit in one process and compare (default: yes for the "
                             "bundled data, no for --data)")
    parser.add_argument("--out", type=Path, default=None, help="write the table to this CSV")
    ns = parser.parse_args(argv)
    try:  # before any process starts
        if ns.data is not None:
            arr = np.load(ns.data, mmap_mode="r", allow_pickle=False)
            if arr.ndim != 2 or arr.shape[0] < ns.nproc:
                raise ValueError(f"--data {ns.data}: need an (N, D) array with N >= --nproc, "
                                 f"got shape {arr.shape}")
        if ns.out is not None:
            check_writable(ns.out, what="--out")
    except (OSError, ValueError) as err:
        parser.error(str(err))
    check = ns.data is None if ns.check is None else ns.check == "yes"
    torch.set_num_threads(1)
    try:
        table = run_fit(nproc=ns.nproc, path=ns.data, components=ns.components, seed=ns.seed,
                        max_iter=ns.max_iter, check=check)
    except SpawnError as err:
        print(f"pyro-vi fit: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 140, "display.precision", 12):
        print(f"cavi(GaussianMixture({ns.components}), distributed=True) on {ns.nproc} "
              f"process(es), gloo on 127.0.0.1")
        print(table.to_string(index=False))
    if ns.out is not None:
        write_csv(table, ns.out, index=False)
        print(f"\nwrote {ns.out}")
    return 0
