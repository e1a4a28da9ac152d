"""``pyro-vi vae`` end to end on digits with a tiny budget, and its argument checks."""

from __future__ import annotations

import pandas as pd
import pytest

from pyro_vi.cli import main as cli
from pyro_vi.cli.vae import main
from pyro_vi.models.vae.model import load_vae


def test_vae_command_trains_evaluates_and_writes_everything(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["vae", "--data", "digits", "--epochs", "2", "--latent-dim", "3",
                     "--hidden", "32", "--batch-size", "200", "--eval-k", "20", "--seed", "1",
                     "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    names = ["metrics.csv", "metrics.md", "curves.csv", "reconstructions.png",
             "prior_samples.png", "latent_space.png", "elbo_curves.png", "vae.pt"]
    for name in names:
        assert (out / name).is_file(), name
        assert str(out / name) in printed  # the command says where each output is
    metrics = pd.read_csv(out / "metrics.csv").set_index("metric")
    elbo = metrics.loc["test ELBO per image (nats)", "value"]
    iw = metrics.loc["test log p(x) IW estimate (nats)", "value"]
    # binary 8x8 images: log p(x) lies in (-64 log 2, 0) = (-44.4, 0) for any sane model,
    # and IW (k=20) sits above the ELBO (gap = mean KL >= 0, measured ~0.3 nats here)
    assert -44.4 < elbo < iw < 0
    curves = pd.read_csv(out / "curves.csv")
    assert list(curves["epoch"]) == [0, 1, 2]
    saved = load_vae(out / "vae.pt")
    assert saved.data == "digits"
    assert saved.split_seed == 1
    assert saved.vae.config.latent_dim == 3
    assert saved.vae.config.hidden == (32,)
    assert saved.extra["metrics"]["test ELBO per image (nats)"] == pytest.approx(elbo)


@pytest.mark.parametrize("argv", [
    ["--epochs", "0"],
    ["--latent-dim", "-2"],
    ["--data", "cifar"],
    ["--elbo", "renyi"],
    ["--hidden", "32,x"],
])
def test_bad_arguments_exit_with_usage_error(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_non_positive_learning_rate_is_refused(capsys):
    with pytest.raises(SystemExit) as stop:  # exit status 2, as for every bad value
        main(["--lr", "0"])
    assert stop.value.code == 2
    assert "--lr: must be a finite number > 0" in capsys.readouterr().err
