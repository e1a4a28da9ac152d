"""The stopping rules of fit_svi: the noise-aware default on simulated traces (false stops on a
trace still descending, firing on flat noisy ones), the same rule inside fit_svi recomputed
independently with numpy, its state in checkpoints (bitwise resume stopping at the same step),
the relative rule kept behind ``rule="relative"``, and a broken model that converges anyway.

Simulated traces use unit noise and windows of w = 100 steps, so the SE of the difference of two
window means is sqrt(2 / w); rates quoted in comments were measured on 3000 traces per case
with other seeds than the tests use.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from _normal_mean import adam, data, make_guide, normal_model, posterior
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_vi import diagnose, fit_svi
from pyro_vi.svi.checkpoint import load_checkpoint
from pyro_vi.svi.stopping import (
    NoiseRule,
    WindowRule,
    make_rule,
    restore_rule,
    rule_state,
)

W, PATIENCE = 100, 3
SE_DIFF = math.sqrt(2 / W)


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)












def first_stop(trace, rule="noise"):
    r = make_rule(rule, tol=1e-4, window=W, patience=PATIENCE, z=2.0)
    return next((t + 1 for t, v in enumerate(trace) if r.update(float(v))), None)


def test_noise_rule_rarely_stops_a_trace_that_still_descends():
    # A drift of 3 SE (of the window difference) per window, 40 windows: each window passes
    # the 2-SE test w.p. Phi(-1) - Phi(-5) = 0.16, three in a row are rarer still (consecutive
    # differences share a window and are anti-correlated): measured false-stop rate 7e-4 per
    # trace. Of 100 traces, >= 2 false stops has probability < 3e-3 (the failure budget).
    rng = np.random.default_rng(10)
    steps = np.arange(4000)
    false = sum(first_stop(1000.0 - 3 * SE_DIFF / W * steps + rng.normal(size=4000)) is not None
                for _ in range(100))
    assert false <= 1


@pytest.mark.parametrize("noise", ["gaussian", "skewed"])
def test_noise_rule_fires_on_flat_noisy_traces(noise):
    # Flat traces: each window difference passes w.p. ~0.95, so three in a row come within a
    # few windows (median stop 400 steps, measured). None of 3000 traces ran past 1500 steps,
    # so a miss within 2000 has rate < 1e-3 and >= 2 misses of 100 probability < 5e-3 (the
    # rule is scale-free: the SD of 5 nats changes nothing). The relative rule (tol 1e-4 of
    # |1000| = 0.1 nats against a window-difference SD of 0.7) runs on the same traces to show
    # what the new default fixes: a window passes it w.p. ~0.11, three in a row w.p. ~1e-3,
    # so it fires in at most a few of 100 traces in 20 windows (>= 50 misses is a loose bound).
    rng = np.random.default_rng(11)

    def trace():
        if noise == "gaussian":
            return 1000.0 + 5.0 * rng.normal(size=2000)
        return 1000.0 + 5.0 * rng.standard_gamma(1.0, size=2000)  # ELBO-like right skew

    traces = [trace() for _ in range(100)]
    stops = [first_stop(t) for t in traces]
    assert sum(s is None for s in stops) <= 1
    assert all(s is None or s >= (PATIENCE + 1) * W for s in stops)  # never before 4 windows
    old = [first_stop(t, rule="relative") for t in traces]
    assert sum(s is None for s in old) >= 50


def test_deterministic_loss_uses_the_tol_clause():
    # Zero within-window variance: only the relative clause can pass, as in the old rule.
    rule = NoiseRule(tol=1e-3, window=5, patience=2, z=2.0)
    values = [10.0] * 5 + [10.001] * 5 + [10.002] * 5
    assert [rule.update(v) for v in values][-1]
    rule = NoiseRule(tol=1e-6, window=5, patience=2, z=2.0)
    assert not any(rule.update(v) for v in values)
    rule = NoiseRule(tol=0.0, window=5, patience=1, z=2.0)
    assert not any(rule.update(10.0) for _ in range(100))  # tol=0 turns the rule off


@pytest.mark.parametrize("rule", ["noise", "relative"])
def test_the_tol_clause_is_absolute_below_one_nat(rule):
    # Losses near 0: constant windows (no noise, so only the tol clause can pass) whose means
    # move by 5e-5 per window. Relative to |L| ~ 1e-3 that is a 5 % change, but the
    # denominator is floored at 1 nat, so the change is 5e-5 < tol = 1e-4 and the rule fires
    # after patience flat windows. With a floor of |L| itself (no floor) it would never fire.
    def windows(step):
        return [v for k in range(8) for v in [1e-3 + step * k] * 5]

    r = make_rule(rule, tol=1e-4, window=5, patience=2, z=2.0)
    fired = [r.update(v) for v in windows(5e-5)]
    assert fired.index(True) == 3 * 5 - 1  # windows 2 and 3 are flat against 1 and 2
    # a move of 2e-4 per window is above tol against the floor of 1: never flat
    r = make_rule(rule, tol=1e-4, window=5, patience=2, z=2.0)
    assert not any(r.update(v) for v in windows(2e-4))
    # far from 0 the change is relative: 5e-5 of 1e3 is 5e-8 relative, flat
    r = make_rule(rule, tol=1e-4, window=5, patience=2, z=2.0)
    assert [r.update(1e3 + v) for v in windows(0.05)].index(True) == 14


@pytest.mark.parametrize("rule", ["noise", "relative"])
def test_a_moving_window_resets_the_flat_streak(rule):
    # Constant windows (deterministic loss): flat, moved, flat, flat, moved, flat, flat.
    # patience=3 consecutive flat windows are never reached although 5 windows are flat; with
    # patience=2 the rule fires at the first pair of consecutive flat windows (windows 3-4).
    means = [10.0, 10.0, 11.0, 11.0, 11.0, 12.0, 12.0, 12.0]
    trace = [m for m in means for _ in range(4)]
    r = make_rule(rule, tol=1e-4, window=4, patience=3, z=2.0)
    flags = [r.update(v) for v in trace]
    assert not any(flags)
    assert r.streak == 2  # the last two windows: the streak restarted after the move
    r = make_rule(rule, tol=1e-4, window=4, patience=2, z=2.0)
    assert [r.update(v) for v in trace].index(True) == 5 * 4 - 1


def test_rule_state_round_trips_exactly():
    rng = np.random.default_rng(3)
    for rule in (NoiseRule(1e-4, 7, 2, 1.5), WindowRule(1e-4, 7, 2)):
        for v in rng.normal(size=38):
            rule.update(float(v))
        state = rule_state(rule)
        again = restore_rule(state)
        assert type(again) is type(rule)
        assert again == rule
        tail = rng.normal(size=50)
        assert [rule.update(float(v)) for v in tail] == [again.update(float(v)) for v in tail]
    assert rule_state(NoiseRule(1e-4, 7, 2))["rule"] == "noise"
    with pytest.raises(ValueError, match="rule"):
        make_rule("smooth", tol=1e-4, window=7, patience=2, z=2.0)


def test_default_rule_is_the_documented_one_and_stops_near_the_optimum():
    # 1-particle Trace_ELBO with a Normal guide started 2 SDs off: the loss is noisy (SD
    # ~1 nat), so only the standard-error clause can fire. The stop step is recomputed here
    # from the history with numpy (mean, ddof=1 variance), and the stopped guide must sit
    # near the exact posterior: over seeds 0-9 |loc - mean| < 0.2 sd and the scale within 15 %
    # at the stop (measured), the tolerances are twice that.
    x = data()
    mean, sd = posterior(x)
    window, patience, z, tol = 50, 3, 2.0, 1e-4
    fit = fit_svi(normal_model, make_guide(x), x, optim=adam(), num_steps=5000, window=window,
                  patience=patience, seed=0, progress=False)
    assert fit.stop_reason == "converged"
    assert fit.converged
    assert fit.n_steps < 5000
    assert fit.n_steps % window == 0
    losses = fit.history["loss"].to_numpy().reshape(-1, window)
    means, var = losses.mean(1), losses.var(1, ddof=1) / window
    change = np.abs(np.diff(means))
    flat = (change <= z * np.sqrt(var[1:] + var[:-1])) | (
        change / np.maximum(np.abs(means[:-1]), 1.0) < tol)
    streak = np.convolve(flat, np.ones(patience), "valid") == patience
    assert streak[-1]
    assert not streak[:-1].any()
    assert abs(fit.params["loc"].item() - mean) < 0.4 * sd
    assert fit.params["scale"].item() == pytest.approx(sd, rel=0.3)


def test_old_rule_on_the_same_fit_runs_on():
    # The same fit under rule="relative" (tol=1e-4 of ~38 nats = 0.004 nats, the window-mean
    # noise is ~0.1): it did not fire within 1500 steps for seed 0 (it does for some seeds:
    # the lr decay of ClippedAdam shrinks the noise).
    x = data()
    fit = fit_svi(normal_model, make_guide(x), x, optim=adam(), num_steps=1500, window=50,
                  rule="relative", seed=0, progress=False)
    assert fit.stop_reason == "max_steps"


def test_resume_mid_window_stops_at_the_same_step(tmp_path):
    # Checkpoints every 30 steps with windows of 50: the saved rule holds a partial window,
    # so a resume that forgot the rule's state would stop later (or earlier) than the run
    # it continues.
    x = data()

    def run(path, crash_at=None, resume=False):
        def crash(step, loss):
            if step == crash_at:
                raise RuntimeError("crash")

        pyro.clear_param_store()
        return fit_svi(normal_model, AutoNormal(normal_model), x, optim=adam(), seed=3,
                       num_steps=3000, window=50, checkpoint=path, checkpoint_every=30,
                       resume=resume, callback=crash, progress=False)

    full = run(tmp_path / "full.pt")
    assert full.stop_reason == "converged"
    crash_at = full.n_steps - 40
    with pytest.raises(RuntimeError, match="crash"):
        run(tmp_path / "b.pt", crash_at=crash_at)
    saved = load_checkpoint(tmp_path / "b.pt")["rule"]
    assert saved["rule"] == "noise"
    assert 0 < saved["count"] < 50
    assert saved["previous"] is not None
    resumed = run(tmp_path / "b.pt", resume=True)
    assert resumed.stop_reason == "converged"
    assert resumed.n_steps == full.n_steps
    assert resumed.history["loss"].equals(full.history["loss"])
    assert all(torch.equal(full.params[k], resumed.params[k]) for k in full.params)


# --------------------------------------------------- a broken model converges all the same

G = torch.Generator().manual_seed(0)
X = torch.randn(50, 3, generator=G, dtype=torch.float64)
Y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + torch.randn(
    50, generator=G, dtype=torch.float64)


def regression(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=x.dtype), 5.0).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(torch.einsum("nf,...f->...n", x, w), 1.0), obs=y)


def regression_8x(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=x.dtype), 5.0).to_event(1))
    # The bug: an (8, 1) offset (meant per group) broadcasts the mean to (8, N); Pyro ignores
    # batch dims left of max_plate_nesting, so every observation is counted 8 times.
    mean = torch.einsum("nf,...f->...n", x, w) + torch.zeros(8, 1, dtype=x.dtype)
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mean, 1.0), obs=y)


@pytest.mark.parametrize("rule", ["noise", "relative"])
def test_a_model_counting_its_likelihood_8_times_converges_but_diagnose_rejects_it(rule):
    # Both rules stop the 8x fit (its loss is ~600 nats, so even tol=1e-4 is 0.06 nats): a
    # stopping rule sees the loss, not the model. Its guide is sqrt(8) times too narrow for
    # the intended model's posterior in 3 dimensions. Against the intended model, PSIS gives
    # k-hat 0.92 / 0.89 / 0.89 with 4000 draws (seeds 0-2, measured) and the moment check flags
    # w[.] as too narrow (|z| 5-8 at 1000 draws): diagnose rejects it either way. Seeded, so
    # deterministic: the failure budget is zero.
    pyro.clear_param_store()
    fit = fit_svi(regression_8x, AutoNormal(regression_8x), X, Y, rule=rule, num_steps=4000,
                  elbo=Trace_ELBO(max_plate_nesting=1), optim=pyro.optim.Adam({"lr": 0.05}),
                  seed=0, progress=False)
    assert fit.stop_reason == "converged"
    d = diagnose(fit, model=regression, num_samples=4000, seed=0, verbose=False)
    assert d.verdict != "trust"
    narrow = [f for f in d.psis.moment_flags if f.kind == "too narrow"]
    assert d.psis.khat > 0.7 or narrow, d.psis
    assert d.verdict == "do not trust" if d.psis.khat >= 0.7 else d.verdict == "use with care"
