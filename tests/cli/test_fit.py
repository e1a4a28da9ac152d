"""``pyro-vi fit --nproc N``: the bundled GMM by distributed CAVI on N local processes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pyro_vi.cli.main import main


def test_two_processes_agree_bitwise_and_match_one(tmp_path, capsys):
    out = tmp_path / "fit.csv"
    assert main(["fit", "--nproc", "2", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert table["rank"].astype(str).tolist() == ["0", "1", "single"]
    assert table["rows"].tolist() == [136, 136, 272]
    assert table["bitwise_equal_to_rank_0"].tolist()[:2] == [True, True]
    # the same seeded start in one process: only the sums' order differs (round-off)
    assert table["max_param_diff_vs_single"].iloc[0] < 1e-8
    assert table["elbo"].iloc[0] == pytest.approx(table["elbo"].iloc[2], rel=1e-10)
    assert "distributed=True" in capsys.readouterr().out


def test_a_npy_file_is_read_by_rows(tmp_path):
    g = np.random.default_rng(0)
    x = np.concatenate([g.normal(-3, 1, (40, 2)), g.normal(3, 1, (41, 2))])
    path = tmp_path / "x.npy"
    np.save(path, x)
    out = tmp_path / "t.csv"
    # one process (each process start costs seconds here; two ranks are tested above)
    assert main(["fit", "--nproc", "1", "--data", str(path), "--components", "2", "--check",
                 "yes", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert table["rows"].tolist() == [81, 81]
    assert table["max_param_diff_vs_single"].iloc[0] < 1e-8


@pytest.mark.parametrize(("args", "named"), [
    (["--nproc", "0"], "--nproc"),
    (["--data", "missing.npy"], "missing.npy"),
    (["--out", "/proc/pyro-vi-fit.csv"], "--out"),
])
def test_bad_values_exit_2_before_any_process_starts(args, named, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", *args])
    assert exc.value.code == 2
    assert named in capsys.readouterr().err
