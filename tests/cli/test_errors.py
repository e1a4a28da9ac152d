"""Every command answers a bad value with a one-line message and exit status 2, never a
traceback, and before any fitting (each case below returns in well under a second of work)."""

from __future__ import annotations

import pytest

from pyro_vi.cli.main import main


@pytest.fixture
def nan_csv(tmp_path):
    path = tmp_path / "nan.csv"
    path.write_text("a,b\n1,2\nnan,3\n4,5\n")
    return path


CASES = [
    ("diagnose", ["--data", "missing.csv"], "missing.csv"),
    ("diagnose", ["--data", "NAN"], "NaN"),
    ("diagnose", ["--components", "0"], "--components"),
    ("diagnose", ["--steps", "0"], "--steps"),
    ("diagnose", ["--num-samples", "10"], "--num-samples"),
    ("diagnose", ["--model", "logistic", "--n", "0"], "--n"),
    ("diagnose", ["--out-dir", "/proc/pyro-vi-out"], "--out-dir"),
    ("demo", ["--steps", "-1"], "--steps"),
    ("demo", ["--steps", "many"], "--steps"),
    ("demo", ["--seed", "-2"], "--seed"),
    ("demo", ["--out", "/proc/pyro-vi-demo"], "--out"),
    ("vae", ["--epochs", "0"], "--epochs"),
    ("vae", ["--batch-size", "0"], "--batch-size"),
    ("vae", ["--lr", "-1"], "--lr"),
    ("vae", ["--lr", "nan"], "--lr"),
    ("vae", ["--hidden", "3,x"], "--hidden"),
    ("vae", ["--out", "/proc/pyro-vi-vae"], "--out"),
    ("bench", ["no-such-benchmark"], "no-such-benchmark"),
    ("bench", ["gmm", "--no-such-flag", "1"], "--no-such-flag"),
]


@pytest.mark.parametrize(("command", "args", "named"), CASES,
                         ids=[f"{c}-{' '.join(a)}" for c, a, _ in CASES])
def test_bad_values_exit_2_with_a_message(command, args, named, nan_csv, capsys):
    argv = [command, *[str(nan_csv) if a == "NAN" else a for a in args]]
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.err + captured.out
    assert named in captured.err
