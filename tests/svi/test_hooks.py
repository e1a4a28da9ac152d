"""The loop's hooks: num_epochs, periodic evaluation (history columns, stopping rule, clock,
RNG, resume) and the init/step/run split of SVIRun."""

from __future__ import annotations

import math
import time

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal
from torch.utils.data import DataLoader, TensorDataset

from pyro_vi import fit_svi
from pyro_vi.svi import SVIRun
from pyro_vi.svi.checkpoint import load_checkpoint
from pyro_vi.svi.stopping import DEFAULT_NUM_STEPS, step_budget


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)


def data(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * 1.5 + 2.0


def mb_model(xb, idx, n_total):
    mu = pyro.sample("mu", dist.Normal(1.0, 3.0))
    with pyro.plate("data", size=n_total, subsample=idx):
        pyro.sample("x", dist.Normal(mu, 1.5), obs=xb)


def full_model(x):
    mu = pyro.sample("mu", dist.Normal(1.0, 3.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.5), obs=x)


def delta_guide(x):
    pyro.sample("mu", dist.Delta(pyro.param("m", lambda: torch.tensor(-3.0))))


def loader(x):
    return DataLoader(TensorDataset(x, torch.arange(len(x))), batch_size=5, shuffle=True)


# ----------------------------------------------------------------------------- epochs


def test_num_epochs_runs_whole_passes_and_labels_them():
    x = data()
    fit = fit_svi(mb_model, AutoNormal(mb_model), len(x), batches=loader(x), num_epochs=3,
                  seed=0, progress=False)
    assert fit.n_steps == 12  # 3 passes over 4 batches
    assert fit.stop_reason == "max_steps"
    assert list(fit.history.columns) == ["step", "epoch", "loss", "elbo", "seconds"]
    assert fit.history["epoch"].tolist() == [1] * 4 + [2] * 4 + [3] * 4
    pyro.clear_param_store()
    same = fit_svi(mb_model, AutoNormal(mb_model), len(x), batches=loader(x), num_steps=12,
                   seed=0, progress=False)
    assert same.history.drop(columns="seconds").equals(fit.history.drop(columns="seconds"))


def test_the_window_rule_can_end_an_epoch_budget_early():
    x = data()
    batches = [(x[i:i + 5], torch.arange(i, i + 5)) for i in range(0, 20, 5)]
    fit = fit_svi(mb_model, lambda *a: delta_guide(a[0]), 20, batches=batches,
                  optim=pyro.optim.Adam({"lr": 0.1}), num_epochs=500, tol=1e-3, window=8,
                  progress=False)
    assert fit.stop_reason == "converged"
    assert fit.n_steps < 2000


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"num_epochs": 2, "num_steps": 8}, ValueError, "not both"),
    ({"num_epochs": 2}, ValueError, "needs batches"),
    ({"num_epochs": 0, "batches": [1]}, ValueError, "num_epochs"),
    ({"num_epochs": 1.5, "batches": [1]}, TypeError, "num_epochs"),
    ({"num_epochs": True, "batches": [1]}, TypeError, "num_epochs"),
])
def test_bad_budgets_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        step_budget(num_steps=kwargs.get("num_steps"), num_epochs=kwargs.get("num_epochs"),
                    batches=kwargs.get("batches"))


def test_num_epochs_needs_sized_batches_and_the_default_budget_stays():
    class Unsized:
        def __iter__(self):
            yield from [1, 2]

    with pytest.raises(TypeError, match="len"):
        fit_svi(full_model, delta_guide, data(), batches=Unsized(), num_epochs=1, progress=False)
    assert step_budget(num_steps=None, num_epochs=None, batches=None) == DEFAULT_NUM_STEPS == 5000
    assert step_budget(num_steps=7, num_epochs=None, batches=[1, 2]) == 7


# ------------------------------------------------------------------------- evaluation


def noisy_metric(state):
    # draws from the global RNG on purpose: the hook must hide that from the run
    store = pyro.get_param_store()
    m = store["m"].item() if "m" in store else math.nan  # created by the guide in step 1
    return {"m": m + 0.0 * torch.randn(()).item(), "n": float(state.step)}


def test_evaluation_adds_history_columns_nan_between_evaluations():
    x = data()
    fit = fit_svi(full_model, delta_guide, x, num_steps=10, evaluate=(4, noisy_metric),
                  seed=0, progress=False)
    h = fit.history
    assert list(h.columns) == ["step", "loss", "elbo", "seconds", "m", "n"]
    assert h["n"].notna().tolist() == [s in (4, 8, 10) for s in range(1, 11)]  # and the last
    assert h.loc[h["n"].notna(), "n"].tolist() == [4.0, 8.0, 10.0]
    assert math.isnan(fit.initial_evaluation["m"])
    assert fit.initial_evaluation["n"] == 0.0
    ev = fit.evaluations
    assert ev["step"].tolist() == [0, 4, 8, 10]
    assert list(ev.columns) == ["step", "seconds", "m", "n"]
    assert ev["m"].iloc[-1] == fit.params["m"].item()


def test_evaluation_takes_no_part_in_the_run():
    # Same seed with and without evaluation: bitwise equal losses and params, equal stopping
    # step (the rule sees training losses only), although the hook draws random numbers and
    # returns values far from the loss.
    x = data()
    kwargs = {"optim": pyro.optim.Adam({"lr": 0.1}), "num_steps": 2000, "tol": 1e-5,
              "window": 10, "seed": 3, "progress": False}
    plain = fit_svi(full_model, delta_guide, x, **kwargs)
    pyro.clear_param_store()
    evaluated = fit_svi(full_model, delta_guide, x, evaluate=(1, noisy_metric), **kwargs)
    assert plain.stop_reason == evaluated.stop_reason == "converged"
    assert plain.n_steps == evaluated.n_steps
    assert plain.history["loss"].equals(evaluated.history["loss"])
    assert torch.equal(plain.params["m"], evaluated.params["m"])
    assert plain.elbo == evaluated.elbo


def test_evaluation_time_is_left_out_of_the_clock():
    def slow(state):
        time.sleep(0.05)
        return {"v": 1.0}

    fit = fit_svi(full_model, delta_guide, data(), num_steps=10, evaluate=(1, slow),
                  progress=False)
    # 11 evaluations sleep 0.55 s; ten steps of this model take a few milliseconds
    assert fit.history["seconds"].iloc[-1] < 0.5


def test_evaluation_runs_without_gradients():
    seen = []
    fit_svi(full_model, delta_guide, data(), num_steps=2, progress=False,
            evaluate=(1, lambda s: seen.append(torch.is_grad_enabled()) or {}))
    assert seen == [False, False, False]


@pytest.mark.parametrize(("evaluate", "error", "match"), [
    ((0, noisy_metric), ValueError, "every"),
    ((2.5, noisy_metric), TypeError, "every"),
    ((2, 3), TypeError, "fn"),
    (noisy_metric, TypeError, "pair"),
    ((1, lambda s: [1.0]), TypeError, "mapping"),
    ((1, lambda s: {"loss": 1.0}), ValueError, "loss"),
    ((1, lambda s: {"v": "high"}), TypeError, "real number"),
])
def test_bad_evaluations_are_named(evaluate, error, match):
    with pytest.raises(error, match=match):
        fit_svi(full_model, delta_guide, data(), num_steps=3, evaluate=evaluate, progress=False)


def test_no_final_evaluation_after_ctrl_c():
    def stop(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    fit = fit_svi(full_model, delta_guide, data(), num_steps=10, callback=stop,
                  evaluate=(2, noisy_metric), progress=False)
    assert fit.interrupted
    assert fit.evaluations["step"].tolist() == [0, 2]


def test_resume_keeps_the_evaluation_rows_bitwise(tmp_path):
    x = data()

    def metric(state):
        return {"loc": pyro.param("AutoNormal.locs.mu").item() if state.step else math.nan,
                "mean_loss": sum(state.losses[-4:]) / 4 if state.step else math.nan}

    def run(path, crash_at=None, resume=False):
        def crash(step, loss):
            if step == crash_at:
                raise RuntimeError("crash")

        pyro.clear_param_store()
        return fit_svi(mb_model, AutoNormal(mb_model), len(x), batches=loader(x), seed=5,
                       num_epochs=8, checkpoint=path, checkpoint_every=6, resume=resume,
                       callback=crash, evaluate=(4, metric), progress=False)

    full = run(tmp_path / "full.pt")
    with pytest.raises(RuntimeError, match="crash"):
        run(tmp_path / "b.pt", crash_at=20)
    saved = load_checkpoint(tmp_path / "b.pt")
    assert saved["step"] == 18
    assert sorted(saved["evaluations"]) == [0, 4, 8, 12, 16]
    resumed = run(tmp_path / "b.pt", resume=True)
    assert resumed.n_steps == full.n_steps == 32
    keep = ["step", "epoch", "loss", "elbo", "loc", "mean_loss"]
    assert resumed.history[keep].equals(full.history[keep])
    assert resumed.evaluations.drop(columns="seconds").equals(
        full.evaluations.drop(columns="seconds"))
    assert math.isnan(resumed.initial_evaluation["loc"])


# ------------------------------------------------------------------------------ SVIRun


def test_svirun_init_step_run_matches_fit_svi():
    x = data()
    by_hand = SVIRun(full_model, delta_guide, x, num_steps=6, seed=2)
    state = by_hand.init()
    first = by_hand.step()
    assert state.step == 1
    assert state.losses == [first]
    fit = by_hand.run()
    pyro.clear_param_store()
    ref = fit_svi(full_model, delta_guide, x, num_steps=6, seed=2, progress=False)
    assert fit.n_steps == 6
    assert fit.history.drop(columns="seconds").equals(ref.history.drop(columns="seconds"))
