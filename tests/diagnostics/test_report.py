"""diagnose: the ELBO flatness test's false-alarm rate and power on simulated traces, the
verdict on good and bad fits, the report's lines and figures, and the ``pyro-vi diagnose``
command on the built-in logistic regression and Old Faithful GMM.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from _trust_models import (
    FakeResult,
    exact_guide,
    normal_data,
    normal_model,
    normal_posterior,
    param_guide,
)

from pyro_vi import Diagnosis, diagnose
from pyro_vi.cli.diagnose import main
from pyro_vi.cli.main import main as cli_main
from pyro_vi.diagnostics.report import elbo_flatness


def test_flatness_of_a_ramp_and_a_constant():
    ramp = elbo_flatness([-10.0 + 0.5 * t for t in range(50)], window=20)
    assert not ramp.flat
    assert ramp.trend == pytest.approx(0.5 * 19)
    assert ramp.noise == pytest.approx(0.0, abs=1e-9)
    assert elbo_flatness([-3.0] * 50).flat


def test_converged_cavi_like_trace_is_flat():
    # geometric convergence, as CAVI's: the default window (a fifth) sees only the tail
    elbo = [-100.0 - 10.0 * 0.5**t for t in range(31)]
    trend = elbo_flatness(elbo)
    assert trend.window == 6
    assert trend.flat


def test_white_noise_false_alarm_rate_and_trend_power():
    rng = np.random.default_rng(0)
    w = 200
    t = np.arange(w) - (w - 1) / 2
    se_trend = np.sqrt(12 / w**3) * (w - 1)  # SE of slope*(w-1) for unit white noise
    alarms = misses = 0
    for _ in range(20):
        noise = rng.normal(size=w)
        alarms += not elbo_flatness(-1000.0 + noise, window=w, rtol=0.0).flat
        drift = noise + 7 * se_trend * t / (w - 1)  # a true trend of 7 standard errors
        misses += elbo_flatness(-1000.0 + drift, window=w, rtol=0.0).flat
    # White noise is called "not flat" w.p. ~0.3 % (3 SE, t with 198 dof): P(>= 2 of 20)
    # = 1.7e-3. A 7-SE trend is missed only if its estimate falls 4 SE short: P(any of 20)
    # < 1e-3.
    assert alarms <= 1
    assert misses == 0


@pytest.mark.parametrize(("values", "kwargs", "match"), [
    ([1.0, 2.0], {}, "at least 3"), ([1.0, np.nan, 2.0, 3.0], {}, "NaN"),
    ([1.0] * 10, {"window": 2}, "window"), ([1.0] * 10, {"window": 4.0}, "window")])
def test_flatness_input_errors(values, kwargs, match):
    error = TypeError if isinstance(kwargs.get("window"), float) else ValueError  # kind vs range
    with pytest.raises(error, match=match):
        elbo_flatness(values, **kwargs)


def _exact_params(y):
    mean, sd = normal_posterior(y)
    return {"loc": mean.clone(), "scale": torch.full((2,), sd, dtype=torch.float64)}


def test_good_fit_is_trusted_and_writes_figures(tmp_path, capsys):
    y = normal_data()
    history = pd.DataFrame({"elbo": -40.0 - 5.0 * 0.5 ** np.arange(40)})
    fit = FakeResult(param_guide, normal_model, _exact_params(y), history=history)
    d = diagnose(fit, y, out_dir=tmp_path, num_samples=500)
    assert isinstance(d, Diagnosis)
    assert d.verdict == "trust"
    assert d.psis.verdict == "good"
    assert d.elbo.flat
    out = capsys.readouterr().out
    assert out.strip() == d.text == str(d)
    for line in ("verdict:    TRUST", "converged:  yes", "ELBO trace: flat", "PSIS k-hat: -inf"):
        assert line in out
    assert {p.name for p in d.figures} == {"elbo_trace.png", "psis_log_ratios.png"}
    assert all(p.stat().st_size > 1000 for p in d.figures)


def test_a_result_without_data_arguments_is_diagnosed_on_its_own_data():
    y = normal_data()
    fit = FakeResult(param_guide, normal_model, _exact_params(y), data=(y,))
    d = diagnose(fit, num_samples=300, verbose=False)
    assert d.text.startswith("pyro-vi diagnose: SVI fit")  # the label is the result's method
    assert d.psis.verdict == "good"
    assert d.text == fit.diagnose(num_samples=300, verbose=False).text


def test_unconverged_rising_fit_is_not_trusted():
    y = normal_data()
    history = pd.DataFrame({"elbo": -100.0 + np.arange(60.0)})
    fit = FakeResult(param_guide, normal_model, _exact_params(y), history=history,
                     converged=False)
    d = diagnose(fit, y, num_samples=300, verbose=False)
    assert d.verdict == "do not trust"
    assert "converged:  NO" in d.text
    assert "NOT flat" in d.text


def test_guide_missing_posterior_mass_is_not_trusted():
    y = normal_data()
    mean, sd = normal_posterior(y)

    def narrow(y):  # 4 sds off and 0.4x as wide: across 100 seeds of 1000 draws k-hat >= 1.04
        with pyro.plate("dim", 2):
            pyro.sample("mu", dist.Normal(mean + 4 * sd, 0.4 * sd))

    d = diagnose((normal_model, narrow), y, num_samples=1000, verbose=False)
    assert d.psis.verdict == "bad"
    assert d.verdict == "do not trust"
    assert "converged:  unknown" in d.text


def test_nuts_comparison_is_reported(tmp_path):
    y = normal_data()
    d = diagnose((normal_model, exact_guide), y, nuts=True, out_dir=tmp_path, num_samples=300,
                 nuts_options={"num_samples": 150, "warmup_steps": 100}, verbose=False)
    assert d.comparison is not None
    assert "vs NUTS (worst parameters):" in d.text
    assert (tmp_path / "vi_vs_nuts.png") in d.figures
    # exact guide: 150 NUTS draws leave |std diff| < 0.5 and sd ratio in [2/3, 3/2] (>= 4 SE)
    assert d.verdict == "trust"


def test_fit_must_be_a_result_or_a_pair():
    with pytest.raises(TypeError, match="fit"):
        diagnose(normal_model, normal_data())
    with pytest.raises(TypeError, match="fit"):
        diagnose((normal_model,), normal_data())


def test_cli_logistic(tmp_path, capsys):
    assert main(["--model", "logistic", "--n", "50", "--steps", "30", "--num-samples", "200",
                 "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "pyro-vi diagnose: SVI fit" in out
    assert "PSIS k-hat:" in out
    assert (tmp_path / "psis_log_ratios.png").exists()


def test_cli_gmm_through_the_dispatcher(tmp_path, capsys):
    assert cli_main(["diagnose", "--model", "gmm", "--num-samples", "300",
                     "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "pyro-vi diagnose: CAVI fit" in out
    assert "converged:  yes" in out
    assert (tmp_path / "elbo_trace.png").exists()


@pytest.mark.slow
def test_cli_gmm_with_nuts(tmp_path, capsys):
    assert main(["--model", "gmm", "--nuts", "--nuts-samples", "100", "--nuts-warmup", "100",
                 "--num-samples", "500", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "vs NUTS (worst parameters):" in out
    assert (tmp_path / "vi_vs_nuts.png").exists()


@pytest.mark.parametrize("argv", [["--num-samples", "0"], ["--seed", "-1"], ["--steps", "2.5"]])
def test_cli_rejects_bad_counts_before_fitting(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_converged_but_not_flat_is_explained_in_the_report():
    # A CAVI-like trace: a plateau, a late jump of 5 nats, then converged (last gains ~0). The
    # flag says "converged", the last fifth of the trace holds the jump: the report says why
    # they differ. When they agree there is no note.
    y = normal_data()
    plateau = -50.0 - 5.0 * 0.5 ** np.arange(36)
    jump = -45.0 - 1e-9 * 0.5 ** np.arange(4)  # in the default window (a fifth: 8 of 40)
    history = pd.DataFrame({"elbo": np.concatenate([plateau, jump])})
    fit = FakeResult(param_guide, normal_model, _exact_params(y), history=history, converged=True)
    d = diagnose(fit, y, num_samples=300, verbose=False)
    assert "converged:  yes" in d.text
    assert "ELBO trace: NOT flat" in d.text
    note = next(line for line in d.text.splitlines() if line.strip().startswith("note:"))
    assert "stopping rule" in note
    assert "late jump" in note
    assert f"last {d.elbo.window}" in note
    assert d.verdict == "use with care"
    flat = FakeResult(param_guide, normal_model, _exact_params(y), converged=False,
                      history=pd.DataFrame({"elbo": np.full(40, -45.0)}))
    d = diagnose(flat, y, num_samples=300, verbose=False)
    assert "converged:  NO" in d.text
    assert "ELBO trace: flat" in d.text
    assert "not met within its budget" in d.text
    agree = FakeResult(param_guide, normal_model, _exact_params(y),
                       history=pd.DataFrame({"elbo": np.full(40, -45.0)}))
    assert "note:" not in diagnose(agree, y, num_samples=300, verbose=False).text
