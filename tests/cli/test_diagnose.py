"""``pyro-vi diagnose`` on the user's own model and data: ``--model package.module:function``,
``--data`` CSV/.npy files (one per model argument), ``--guide``; every bad value is a message
and exit status 2, never a traceback. (The built-in models' runs are in
tests/diagnostics/test_report.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _trust_models import normal_data

from pyro_vi.cli.diagnose import load_data, main


def _npy(path, array):
    np.save(path, array)
    return str(path)


def test_user_model_with_npy_data_and_each_autoguide(tmp_path, capsys):
    # normal_model(y) of tests/_trust_models.py, importable as "_trust_models" (pythonpath).
    y = _npy(tmp_path / "y.npy", normal_data().numpy())
    for guide in ("auto-normal", "auto-mvn"):
        assert main(["--model", "_trust_models:normal_model", "--data", y, "--guide", guide,
                     "--steps", "300", "--num-samples", "300", "--out-dir",
                     str(tmp_path / guide)]) == 0
        out = capsys.readouterr().out
        assert "pyro-vi diagnose: SVI fit" in out
        # a conjugate normal model: both autoguides hold the exact posterior, k-hat < 0.7
        # after 300 steps of Adam(0.05) from AutoNormal's init (measured: k-hat < 0.3)
        assert "(bad)" not in out


def test_csv_columns_and_npy_dtypes_are_loaded_as_documented(tmp_path):
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\n1,2\n3,4.5\n")
    assert torch.equal(load_data(str(csv)), torch.tensor([[1.0, 2.0], [3.0, 4.5]],
                                                         dtype=torch.float64))
    one = tmp_path / "y.csv"
    one.write_text("y\n0\n1\n1\n")
    assert load_data(str(one)).shape == (3,)
    groups = load_data(_npy(tmp_path / "g.npy", np.array([0, 1, 1], dtype=np.int32)))
    assert groups.dtype == torch.int64
    assert load_data(_npy(tmp_path / "f.npy", np.ones((2, 3), np.float32))).dtype == torch.float64


def test_logistic_and_gmm_read_data_files(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 2, generator=g, dtype=torch.float64)
    y = torch.bernoulli(torch.sigmoid(x @ torch.tensor([1.0, -1.0], dtype=torch.float64)),
                        generator=g)
    np.savetxt(tmp_path / "x.csv", x.numpy(), delimiter=",", header="x1,x2", comments="")
    np.savetxt(tmp_path / "y.csv", y.numpy(), delimiter=",", header="y", comments="")
    assert main(["--model", "logistic", "--data", str(tmp_path / "x.csv"), "--data",
                 str(tmp_path / "y.csv"), "--steps", "50", "--num-samples", "200",
                 "--out-dir", str(tmp_path / "l")]) == 0
    assert "SVI fit" in capsys.readouterr().out
    points = torch.cat([torch.randn(40, 2, generator=g) - 3, torch.randn(40, 2, generator=g) + 3])
    np.savetxt(tmp_path / "p.csv", points.numpy(), delimiter=",", header="a,b", comments="")
    assert main(["--model", "gmm", "--data", str(tmp_path / "p.csv"), "--num-samples", "200",
                 "--out-dir", str(tmp_path / "g")]) == 0
    assert "CAVI fit" in capsys.readouterr().out


def _bad_cases():
    return {
        "missing file": lambda t: ["--data", str(t / "nope.csv")],
        "NaN in CSV": lambda t: ["--data", _write(t / "nan.csv", "a,b\n1,2\nnan,3\n")],
        "text in CSV": lambda t: ["--data", _write(t / "txt.csv", "a,b\n1,x\n")],
        "empty CSV": lambda t: ["--data", _write(t / "empty.csv", "a,b\n")],
        "unknown suffix": lambda t: ["--data", _write(t / "x.txt", "1\n")],
        "not importable": lambda t: ["--model", "no_such_package_xyz.mod:model"],
        "no such function": lambda t: ["--model", "_trust_models:no_such_model"],
        "not callable": lambda t: ["--model", "_trust_models:PRIOR_SD"],
        "no colon": lambda t: ["--model", "mymodel"],
        "components 0": lambda t: ["--components", "0"],
        "steps 0": lambda t: ["--steps", "0"],
        "n 0": lambda t: ["--model", "logistic", "--n", "0"],
        "lr 0": lambda t: ["--model", "logistic", "--lr", "0"],
        "cavi for logistic": lambda t: ["--model", "logistic", "--guide", "cavi"],
        "autoguide for gmm": lambda t: ["--guide", "auto-normal"],
        "unknown guide": lambda t: ["--guide", "auto-delta"],
        "logistic one file": lambda t: ["--model", "logistic", "--data",
                                        _write(t / "x.csv", "a\n1\n")],
    }


def _write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("case", sorted(_bad_cases()))
def test_bad_values_give_a_message_and_exit_2(case, tmp_path, capsys):
    argv = _bad_cases()[case](tmp_path) + ["--out-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # rejected before any fit


def test_a_model_that_fails_while_fitting_is_a_message_not_a_traceback(tmp_path, capsys):
    # normal_model expects (N, 2) data; a (N, 3) file breaks its plate shapes inside Pyro
    y = _npy(tmp_path / "y3.npy", np.ones((5, 3)))
    assert main(["--model", "_trust_models:normal_model", "--data", y, "--steps", "5",
                 "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "failed" in err
    assert "Traceback" not in err
