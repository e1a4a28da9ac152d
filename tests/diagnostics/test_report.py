"""diagnose: the ELBO flatness test's false-alarm rate and power on simulated traces, the
verdict on good and bad fits, the report's lines and figures, and the ``pyro-vi diagnose``
command on the built-in logistic regression and Old Faithful GMM.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from _trust_models import (
    FakeResult,
    exact_guide,
    gmm_data,
    normal_data,
    normal_model,
    normal_posterior,
    param_guide,
)

from pyro_vi import Diagnosis, diagnose
from pyro_vi.cli.diagnose import main
from pyro_vi.cli.main import main as cli_main
from pyro_vi.diagnostics.nuts import MCMCComparison
from pyro_vi.diagnostics.psis import MomentFlag, PSISResult, khat_verdict
from pyro_vi.diagnostics.report import (
    MAX_STD_MEAN_DIFF,
    SD_RATIO_RANGE,
    ElboTrend,
    _verdict,
    elbo_flatness,
)


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
    # Under white Gaussian noise the slope over its residual SE is exactly t with w - 2 = 98
    # dof, so a 3-SE band calls P(|t_98| > 3) = 0.342 % of traces "not flat": 34.2 expected
    # of 10,000. Accepting 17-56 alarms fails a correct band with probability 6.3e-4 (the
    # failure budget, binomial), and rejects a 2.5-SE band (141 expected) and a 3.5-SE band
    # (7.0 expected) each with probability > 0.999; 2.75 / 3.25 SE with 0.96 / 0.58.
    rng = np.random.default_rng(0)
    w = 100
    alarms = sum(not elbo_flatness(rng.normal(size=w), window=w, rtol=0.0).flat
                 for _ in range(10_000))
    assert 17 <= alarms <= 56
    t = np.arange(w) - (w - 1) / 2
    se_trend = np.sqrt(12 / w**3) * (w - 1)  # SE of slope*(w-1) for unit white noise
    misses = 0
    for _ in range(20):
        drift = rng.normal(size=w) + 7 * se_trend * t / (w - 1)  # a trend of 7 SE
        misses += elbo_flatness(-1000.0 + drift, window=w, rtol=0.0).flat
    # a 7-SE trend is missed only if its estimate falls 4 SE short: P(any of 20) < 1e-3
    assert misses == 0


def test_short_windows_use_the_residual_degrees_of_freedom():
    # With w = 5 values the slope's t statistic has w - 2 = 3 dof: a 3-SE band calls
    # P(|t_3| > 3) = 5.77 % of white-noise traces "not flat" (231 of 4000 expected). The bounds
    # are the binomial's 1e-4 and 1 - 1e-4 quantiles (failure budget 2e-4); an SE computed
    # with w dof instead (sqrt(3/5) smaller) alarms at P(|t_3| > 2.32) = 10.3 % (412 expected),
    # far outside them.
    from scipy import stats

    rng = np.random.default_rng(1)
    n, w = 4000, 5
    p = 2 * stats.t.sf(3.0, w - 2)
    lo, hi = stats.binom.ppf([1e-4, 1 - 1e-4], n, p)
    alarms = sum(not elbo_flatness(rng.normal(size=w), window=w, rtol=0.0).flat for _ in range(n))
    assert lo <= alarms <= hi, (alarms, lo, hi)


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


# ------------------------------------------------ the verdict's rules, one by one
# Each rule is pinned in both directions with inputs just inside and just outside its
# threshold (issue 18); the rules are those of the module docstring (issue 12 §2).

def _psis(khat=0.2, flags=()):
    verdict = khat_verdict(khat)[0]
    if flags and verdict == "good":
        verdict = "ok"
    z = np.zeros(1)
    return PSISResult(khat, verdict, "", 1000.0, z, z, {}, {}, {}, {}, 1000, tuple(flags))


FLAT = ElboTrend(flat=True, trend=0.0, noise=1.0, window=20)
NOT_FLAT = ElboTrend(flat=False, trend=5.0, noise=1.0, window=20)


def _nuts(std_mean_diff=0.0, sd_ratio=1.0):
    table = pd.DataFrame({"param": ["a", "b"], "std_mean_diff": [0.1, std_mean_diff],
                          "sd_ratio": [1.0, sd_ratio]})
    return MCMCComparison(table, None, None)  # type: ignore[arg-type]


def test_all_checks_passing_is_trust():
    assert _verdict(True, FLAT, _psis(), _nuts()) == "trust"
    assert _verdict(None, None, _psis(), None) == "trust"


@pytest.mark.parametrize(("converged", "trend", "verdict"), [
    (True, FLAT, "trust"), (False, FLAT, "use with care"), (True, NOT_FLAT, "use with care"),
    (False, NOT_FLAT, "do not trust"), (None, NOT_FLAT, "use with care"),
    (False, None, "use with care")])
def test_convergence_and_flatness_rules(converged, trend, verdict):
    assert _verdict(converged, trend, _psis(), None) == verdict


@pytest.mark.parametrize(("khat", "verdict"), [
    (0.4999, "trust"), (0.5, "use with care"), (0.6999, "use with care"), (0.7, "do not trust"),
    (-math.inf, "trust"), (math.inf, "do not trust")])
def test_khat_rules(khat, verdict):
    assert _verdict(True, FLAT, _psis(khat), None) == verdict


def test_moment_flags_make_a_small_khat_use_with_care():
    flag = MomentFlag("mu", "too wide", 20.0, 66.0)
    assert _verdict(True, FLAT, _psis(-1.4, [flag]), None) == "use with care"
    assert _verdict(True, FLAT, _psis(-1.4), None) == "trust"


@pytest.mark.parametrize(("diff", "verdict"), [
    (MAX_STD_MEAN_DIFF - 0.01, "trust"), (MAX_STD_MEAN_DIFF + 0.01, "use with care"),
    (-MAX_STD_MEAN_DIFF + 0.01, "trust"), (-MAX_STD_MEAN_DIFF - 0.01, "use with care")])
def test_nuts_mean_difference_rule(diff, verdict):
    assert MAX_STD_MEAN_DIFF == 0.5
    assert _verdict(True, FLAT, _psis(), _nuts(std_mean_diff=diff)) == verdict


@pytest.mark.parametrize(("ratio", "verdict"), [
    (1.49, "trust"), (1.51, "use with care"), (0.67, "trust"), (0.66, "use with care")])
def test_nuts_sd_ratio_rule(ratio, verdict):
    assert SD_RATIO_RANGE == (2 / 3, 3 / 2)
    assert _verdict(True, FLAT, _psis(), _nuts(sd_ratio=ratio)) == verdict


def test_which_combinations_give_do_not_trust():
    # Only k-hat >= 0.7, or unconverged AND not flat. Every other pile-up of warnings
    # (k-hat 0.69, moment flags, NUTS off, one of convergence/flatness failing) is "care".
    bad_nuts = _nuts(std_mean_diff=3.0, sd_ratio=5.0)
    flag = MomentFlag("mu", "shifted", 3.0, 9.0)
    assert _verdict(False, FLAT, _psis(0.69, [flag]), bad_nuts) == "use with care"
    assert _verdict(True, NOT_FLAT, _psis(0.69, [flag]), bad_nuts) == "use with care"
    assert _verdict(True, FLAT, _psis(0.7), _nuts()) == "do not trust"
    assert _verdict(False, NOT_FLAT, _psis(0.1), _nuts()) == "do not trust"


# ------------------------------------------------ issue 12 §2 reproductions

def _issue_model(x):
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=torch.float64), 10.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


ISSUE_X = torch.tensor([0.9, 1.1, 1.3, 0.7], dtype=torch.float64)


def test_over_dispersed_guide_is_not_trusted_and_the_report_says_how_it_is_off():
    def wide(x):
        pyro.sample("mu", dist.Normal(torch.tensor(5.0, dtype=torch.float64), 10.0))

    d = diagnose((_issue_model, wide), ISSUE_X, verbose=False)
    assert d.psis.khat < 0.5  # k-hat alone cannot see it
    assert d.verdict == "use with care"
    # the posterior is N(1.0, 0.5²): raw mean 8 sd up, raw sd ~20x (19-21 over seeds)
    assert re.search(r"mu shifted by \+[78](\.\d)? sd", d.text)
    assert re.search(r"mu too wide \(sd x(19|20|21)\)", d.text)
    assert "can be trusted" not in d.text


def test_exact_posterior_with_few_draws_is_a_value_error_not_do_not_trust():
    def exact(x):
        pyro.sample("mu", dist.Normal(torch.tensor(0.9975, dtype=torch.float64), 0.4994))

    with pytest.raises(ValueError, match="num_samples must be at least 100"):
        diagnose((_issue_model, exact), ISSUE_X, num_samples=10, verbose=False)
    with pytest.raises(ValueError, match="num_samples must be at least 100"):
        diagnose((_issue_model, exact), ISSUE_X, num_samples=1, verbose=False)
    assert diagnose((_issue_model, exact), ISSUE_X, num_samples=100, verbose=False).verdict == "trust"


def test_gmm_nuts_comparison_aligns_labels_by_default():
    # A 2-component GMM on two clusters 6 apart (60 points): the guide sits in one labelling,
    # NUTS in either. With alignment every loc's |std diff| is small (measured < 0.3 with
    # 100 NUTS draws; 0.5 leaves > 2 SE of the 1/sqrt(ESS) error).
    from pyro_vi import GaussianMixture, cavi

    x = gmm_data(n=30, sep=6.0)
    fit = cavi(GaussianMixture(2), x, seed=0)
    d = fit.diagnose(nuts=True, num_samples=500, verbose=False,
                     nuts_options={"num_samples": 100, "warmup_steps": 100, "vi_samples": 500})
    assert "aligned to the guide's by Hungarian matching on 'loc'" in d.text
    table = d.comparison.table
    loc = table[table["param"].str.startswith("loc")]
    assert (loc["std_mean_diff"].abs() < 0.5).all()
    assert d.verdict == "trust"
    # Power: NUTS's own (unaligned) draws sit in the other labelling at this seed: the
    # first axis's std diffs are ~±26, which would read "use with care" (the README's -69).
    raw = d.comparison.mcmc.get_samples()["loc"].double().numpy()
    unaligned = (loc["vi_mean"].to_numpy() - raw.mean(0).reshape(-1)) / raw.std(0, ddof=1).reshape(-1)
    assert np.abs(unaligned).max() > 10
