"""Smoke tests of every benchmark script (``--quick``), the ``pyro-vi bench`` dispatcher, and the
GMM benchmark's scikit-learn adapter (the claim that sklearn, started where CAVI starts, follows
the same path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vi import load_old_faithful
from pyro_vi.cli import bench
from pyro_vi.cli import main as cli
from pyro_vi.models.gmm.model import GaussianMixture

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p for p in BENCH_DIR.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_quick_run_writes_results(script, tmp_path):
    readme = BENCH_DIR / "README.md"
    before = readme.read_text() if readme.exists() else None
    module = bench.load_script(script)
    assert (module.main(["--quick", "--out", str(tmp_path)]) or 0) == 0
    files = {p.suffix: p for p in tmp_path.iterdir()}
    for suffix in (".csv", ".md", ".png"):
        assert suffix in files, f"{script.name} wrote no {suffix} file into --out"
    for p in tmp_path.iterdir():
        assert p.stat().st_size > 0, f"{p.name} is empty"
    # a quick run into another folder must not rewrite the README's results tables
    assert (readme.read_text() if readme.exists() else None) == before


def test_every_script_is_reachable_through_pyro_vi_bench():
    unregistered = {p.name for p in SCRIPTS} - set(bench.SCRIPTS.values())
    assert not unregistered, f"add {sorted(unregistered)} to pyro_vi.cli.bench.SCRIPTS"


# ------------------------------------------------------------------------------------- dispatch
@pytest.fixture
def fake_benchmarks(tmp_path):
    """A benchmarks folder whose cavi_vs_svi.py records the argv it is given."""
    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "cavi_vs_svi.py").write_text(
        "from pathlib import Path\n"
        "def main(argv):\n"
        "    Path(__file__).with_name('argv.txt').write_text(' '.join(argv))\n"
        "    return 3 if '--fail' in argv else 0\n")
    return folder


def test_dispatch_forwards_arguments(fake_benchmarks):
    rc = bench.main(["gmm", "--quick", "--benchmarks-dir", str(fake_benchmarks), "--out", "X"])
    assert rc == 0
    assert (fake_benchmarks / "argv.txt").read_text() == "--quick --out X"
    assert bench.main(["gmm", "--fail", "--benchmarks-dir", str(fake_benchmarks)]) == 3


def test_dispatch_through_cli_and_env_var(fake_benchmarks, monkeypatch):
    monkeypatch.setenv(bench.ENV_VAR, str(fake_benchmarks))
    assert cli.main(["bench", "gmm", "--quick"]) == 0
    assert (fake_benchmarks / "argv.txt").read_text() == "--quick"


def test_dispatch_errors(fake_benchmarks, tmp_path, capsys, monkeypatch):
    assert bench.main(["nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    # a registered name whose script is not in the folder
    assert bench.main(["scaling", "--benchmarks-dir", str(fake_benchmarks)]) == 2
    assert "scaling.py" in capsys.readouterr().err
    # an explicit folder that does not exist is an error, not a reason to look elsewhere
    assert bench.main(["gmm", "--benchmarks-dir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setenv(bench.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=bench.ENV_VAR):
        bench.find_benchmarks_dir()
    assert bench.main([]) == 2
    assert bench.main(["--help"]) == 0
    assert "cavi_vs_svi.py" in capsys.readouterr().out


def test_find_benchmarks_dir_defaults_to_the_checkout(monkeypatch):
    monkeypatch.delenv(bench.ENV_VAR, raising=False)
    assert bench.find_benchmarks_dir() == BENCH_DIR


# ----------------------------------------------------------------------------- sklearn adapter
def test_sklearn_follows_cavi_from_the_same_start():
    """Same priors, same start: sklearn's iterates are CAVI's (Bishop's updates both), so the analytic
    ELBO at sklearn's parameters equals CAVI's at every iteration. The only difference is
    sklearn's ``nk + 10·eps`` guard, ~1e-15 relative, so rtol 1e-9 cannot fail by round-off but
    catches any error in the parameter conversion (a factor ν in W, a transposed Cholesky)."""
    pytest.importorskip("sklearn")
    mod = bench.load_script(BENCH_DIR / "cavi_vs_svi.py")
    x = load_old_faithful(standardize=True)
    gmm = GaussianMixture(3, weight_concentration=0.05).resolve(x)
    budget = mod.Budget(seeds=(1,), cavi_iter=15, cavi_tol=0.0, svi_steps={"*": 1})
    cavi_run = mod.run_cavi(gmm, x, 1, budget)
    sk_run = mod.run_sklearn(gmm, x, 1, max_iter=15, tol=0.0)
    assert len(cavi_run.elbo) == len(sk_run.elbo) == 16
    np.testing.assert_allclose(sk_run.elbo, cavi_run.elbo, rtol=1e-9)
    # the converted factors themselves agree, not only their ELBO
    torch.testing.assert_close(sk_run.params.components.scale_tril, cavi_run.params.components.scale_tril,
                               rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(sk_run.params.weights.concentration, cavi_run.params.weights.concentration,
                               rtol=1e-9, atol=1e-9)


def test_first_reach_uses_the_relative_tolerance():
    mod = bench.load_script(BENCH_DIR / "cavi_vs_svi.py")
    run = mod.Run("m", np.arange(4), np.array([0.0, 1.0, 2.0, 3.0]), np.array([-200.0, -110.0, -100.05, -100.0]),
                  params=None)
    assert mod.first_reach(run, -100.0) == (2.0, 2.0)  # -100.05 is within 0.1 % of -100
    assert np.isnan(mod.first_reach(run, -50.0)[0])


def test_starts_time_to_sklearns_elbo_charges_each_start_its_share_of_the_overhead():
    import pandas as pd

    mod = bench.load_script(BENCH_DIR / "gmm_starts.py")
    runs = [pd.DataFrame({"seconds": [0.0, 1.0, 2.0], "elbo": [-9.0, -5.0, -4.0]}),
            pd.DataFrame({"seconds": [0.0, 1.0], "elbo": [-8.0, -3.0]})]
    # 3 s of sweeps in a 5 s fit: 1 s of overhead before each start
    traj = mod.start_trajectory(runs, 5.0)
    assert traj == [(1.0, -9.0), (2.0, -5.0), (3.0, -4.0), (4.0, -8.0), (5.0, -3.0)]
    assert mod.time_to(traj, -4.0) == 3.0
    assert mod.time_to(traj, -4.0 - 1e-10) == 3.0  # a tie within 1e-9 relative
    assert mod.time_to(traj, -3.5) == 5.0
    assert mod.time_to(traj, -1.0) == float("inf")
    # a move search after the starts: 1.5 s of it in a 6.5 s fit leaves the same overhead; a
    # rejected move keeps the best so far, an accepted one raises it
    moves = pd.DataFrame({"move": ["a", "b"], "elbo": [-3.5, -2.0], "accepted": [False, True],
                          "sweeps": [3, 4], "seconds": [0.5, 1.5]})
    traj = mod.start_trajectory(runs, 6.5, moves=moves)
    assert traj[-2:] == [(5.5, -3.0), (6.5, -2.0)]
    assert mod.time_to(traj, -2.5) == 6.5


def test_the_gpu_comparison_runs_end_to_end_as_a_dry_run_on_the_cpu():
    """``scaling.py --device cuda`` only runs where a GPU is lent, for minutes: its whole code path
    (matmul peak, both modes on both sides, the same-start ELBO check) runs here with the CPU in
    the device's place. Both sides are then the same deterministic computation at one thread, so
    their ELBOs must agree exactly; the timings only have to be positive and finite."""
    mod = bench.load_script(BENCH_DIR / "scaling.py")
    df, info = mod.time_cuda(3000, 4, 3, sweeps=1, device="cpu", matmul_size=64, elbo_sweeps=3)
    assert list(df["mode"]) == ["float64", "float32"]
    assert info["device_name"] == "cpu"
    assert info["matmul_tflops_float64"] > 0
    for col in ("device_s", "cpu_s", "speedup_over_cpu", "tflops_floor", "fraction_of_matmul"):
        assert np.isfinite(df[col]).all(), col
        assert (df[col] > 0).all(), col
    assert (df["elbo_rel_diff"] == 0.0).all()
