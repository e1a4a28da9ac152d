"""Checkpoints of fit_svi: plain data loaded with weights_only=True (a crafted pickle runs
nothing), a checkpoint of another guide refused naming the param or site, unwritable targets
refused before step 1, a save failing mid-run still returning the run, truncated files named,
the file mode kept, and bitwise resume across several windows that ends by the stopping rule
(both rules) with a ``seconds`` column that continues.

Runs are deterministic given their seeds; the comparisons are bitwise (torch.equal,
Series.equals) on CPU.
"""

from __future__ import annotations

import os
import pickle
import stat

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal

from pyro_vi import fit_svi
from pyro_vi.svi.checkpoint import (
    FORMAT,
    CheckpointError,
    constraint_from_plain,
    constraint_to_plain,
    load_checkpoint,
)


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)


def model(x):
    mu = pyro.sample("mu", dist.Normal(1.0, 3.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.5), obs=x)


def two_site_model(x):
    mu = pyro.sample("mu", dist.Normal(1.0, 3.0))
    tau = pyro.sample("tau", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu + tau, 1.5), obs=x)


def vector_model(x):
    mu = pyro.sample("mu", dist.Normal(torch.ones(2), 3.0).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu.sum(-1), 1.5), obs=x)


X = torch.randn(20, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5 + 2


def run(path, *, fn=model, guide=None, resume=False, crash_at=None, **kwargs):
    def crash(step, loss):
        if step == crash_at:
            raise RuntimeError("crash")

    pyro.clear_param_store()
    options = {"num_steps": 20, "seed": 0, "checkpoint_every": 10, "progress": False, **kwargs}
    return fit_svi(fn, guide or AutoNormal(fn), X, checkpoint=path, resume=resume,
                   callback=crash, **options)


# ------------------------------------------------------------------ safe and validated loads


class WritesAFile:
    """A pickle payload that would create ``marker`` when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_crafted_checkpoint_runs_no_code(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    fit = run(path)
    state = torch.load(path, weights_only=True)
    state["optim"] = WritesAFile(marker)
    torch.save(state, path)  # a well-formed FORMAT checkpoint, but with a pickled object
    with pytest.raises(ValueError, match=r"evil\.pt.*refused"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=r"evil\.pt.*refused"):
        run(path, resume=True)
    assert not marker.exists()
    # control: unpickling the same payload without weights_only does create the file
    pickle.loads(pickle.dumps(WritesAFile(marker))).close()
    assert marker.exists()
    assert fit.n_steps == 20


def test_checkpoints_are_plain_data_with_shapes_sites_and_format(tmp_path):
    path = tmp_path / "ck.pt"
    run(path)
    raw = torch.load(path, weights_only=True)  # would raise on any pickled object
    assert raw["format"] == FORMAT
    guide_trace = pyro.poutine.trace(AutoNormal(model)).get_trace(X)
    assert raw["guide_sites"] == sorted(n for n, site in guide_trace.nodes.items()
                                        if site["type"] == "sample")  # mu, mu_unconstrained
    assert raw["param_store"]["shapes"] == {"AutoNormal.locs.mu": [[], "torch.float64"],
                                            "AutoNormal.scales.mu": [[], "torch.float64"]}
    positive = raw["param_store"]["constraints"]["AutoNormal.scales.mu"]
    # AutoNormal's scales are softplus-positive in Pyro 1.9
    assert positive == {"module": "pyro.distributions.constraints", "class": "_SoftplusPositive",
                        "fields": {"lower_bound": 0.0}}


@pytest.mark.parametrize("constraint", [
    dist.constraints.positive, dist.constraints.real, dist.constraints.interval(-1.0, 2.0),
    dist.constraints.simplex, dist.constraints.corr_cholesky,
    dist.constraints.independent(dist.constraints.positive, 1),
    dist.constraints.softplus_positive, dist.constraints.greater_than(torch.tensor(0.5)),
])
def test_constraints_round_trip_to_the_same_transform(constraint):
    back = constraint_from_plain(constraint_to_plain(constraint), where="test")
    assert type(back) is type(constraint)
    x = torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t1, t2 = dist.transforms.biject_to(constraint), dist.transforms.biject_to(back)
    assert type(t1) is type(t2)
    assert torch.equal(t1(x), t2(x))


def test_a_constraint_outside_torch_and_pyro_is_refused():
    with pytest.raises(ValueError, match="refused"):
        constraint_from_plain({"module": "os", "class": "system", "fields": {}}, where="ck")


@pytest.mark.parametrize(("fn", "guide", "match"), [
    (vector_model, None, r"param 'AutoNormal.locs.mu' has shape/dtype \[\[\]"),
    (two_site_model, None, "'AutoNormal.locs.tau', which this model/guide does not create"),
    (model, "diag", "lacks param 'AutoDiagonalNormal.loc' of this model/guide"),
])
def test_a_checkpoint_of_another_guide_is_refused_naming_the_param(tmp_path, fn, guide, match):
    # the checkpoint below is of the first run's guide; each case resumes with another one
    path = tmp_path / "ck.pt"
    run(path, fn=two_site_model if fn is two_site_model else model)
    if fn is two_site_model:  # the other way round: the checkpoint has a site this guide lacks
        fn = model
    other = AutoDiagonalNormal(fn) if guide == "diag" else None
    with pytest.raises(ValueError, match=match):
        run(path, fn=fn, guide=other, resume=True)


def test_a_checkpoint_with_other_guide_sites_is_refused_naming_the_site(tmp_path):
    path = tmp_path / "ck.pt"

    def guide_a(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("mu", dist.Normal(loc, 1.0))

    def guide_b(x):  # the same params, another site name
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("nu", dist.Normal(loc, 1.0), infer={"is_auxiliary": True})
        pyro.sample("mu", dist.Normal(loc, 1.0))

    run(path, guide=guide_a)
    with pytest.raises(ValueError, match="guide sample site 'nu' exists only in this guide"):
        run(path, guide=guide_b, resume=True)


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, "truncate"])
def test_truncated_or_garbage_files_are_named(tmp_path, content):
    path = tmp_path / "bad.pt"
    run(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if content == "truncate" else content)
    with pytest.raises(ValueError, match=r"bad\.pt.*fit_svi checkpoint"):
        run(path, resume=True)


# ----------------------------------------------------------------------- writing, and modes


def test_a_directory_or_read_only_target_is_refused_before_step_1(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        run(tmp_path)
    assert len(pyro.get_param_store()) == 0
    path = tmp_path / "ro.pt"
    path.write_bytes(b"keep")
    path.chmod(0o444)
    with pytest.raises(ValueError, match="read-only"):
        run(path)
    assert len(pyro.get_param_store()) == 0
    assert path.read_bytes() == b"keep"


def test_a_folder_where_nothing_can_be_written_is_refused_before_step_1():
    # /proc refuses new files even for root, so this holds whoever runs the suite
    with pytest.raises(ValueError, match="cannot write in '/proc'"):
        run("/proc/ck.pt")
    assert len(pyro.get_param_store()) == 0


def test_saving_keeps_the_file_mode(tmp_path):
    path = tmp_path / "ck.pt"
    path.write_bytes(b"")
    path.chmod(0o640)
    run(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    fresh = tmp_path / "new.pt"
    umask = os.umask(0o022)
    try:
        run(fresh)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644  # as open() would make it, not 0600


def test_a_save_failing_mid_run_returns_the_partial_result(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    calls = {"n": 0}
    real = torch.save

    def full_disk_on_second_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_on_second_save)
    with pytest.raises(CheckpointError, match="at step 20 failed") as info:
        run(path, num_steps=30)
    monkeypatch.undo()
    partial = info.value.result
    assert partial.n_steps == 20
    assert partial.history["step"].tolist() == list(range(1, 21))
    assert load_checkpoint(path)["step"] == 10  # the previous checkpoint is intact
    uninterrupted = run(tmp_path / "other.pt", num_steps=30)
    assert partial.history["loss"].equals(uninterrupted.history["loss"].iloc[:20])


# ------------------------------------------- resume across windows, stopping by the rule


@pytest.mark.parametrize("rule", ["noise", "relative"])
def test_resume_across_windows_stops_by_the_rule_bitwise(tmp_path, rule):
    # Windows of 10 steps, patience 3, checkpoints every 25 (never on a window boundary):
    # the run crosses several windows and stops by the rule; a crash after the second
    # checkpoint and a resume must stop at the same step with the same history and params.
    # tol=5e-3 lets the relative rule fire on this deterministic-ish 100-particle loss.
    options = {"num_steps": 3000, "window": 10, "patience": 3, "rule": rule, "tol": 5e-3,
               "checkpoint_every": 25, "optim": pyro.optim.Adam({"lr": 0.05}),
               "elbo": pyro.infer.Trace_ELBO(num_particles=100, vectorize_particles=True)}
    full = run(tmp_path / "full.pt", **options)
    assert full.stop_reason == "converged"
    assert full.n_steps > 60  # more than 6 windows
    crash_at = full.n_steps - 3
    with pytest.raises(RuntimeError, match="crash"):
        run(tmp_path / "b.pt", crash_at=crash_at, **options)
    saved = load_checkpoint(tmp_path / "b.pt")
    assert saved["step"] < crash_at
    assert saved["rule"]["count"] != 0  # mid-window
    assert saved["rule"]["previous"] is not None
    resumed = run(tmp_path / "b.pt", resume=True, **options)
    assert resumed.stop_reason == "converged"
    assert resumed.n_steps == full.n_steps
    for column in ("step", "loss", "elbo"):
        assert resumed.history[column].equals(full.history[column])
    assert all(torch.equal(full.params[k], resumed.params[k]) for k in full.params)
    # seconds continue from the checkpoint: the saved rows are kept, the new rows are later
    seconds = resumed.history["seconds"]
    k = saved["step"]
    assert seconds.iloc[:k].tolist() == saved["history"]["seconds"]
    assert seconds.iloc[k] >= seconds.iloc[k - 1]
    assert seconds.is_monotonic_increasing


def test_a_checkpoint_of_another_format_is_refused_naming_it(tmp_path):
    # an older layout (format 3 kept pickled constraints) must not be read as the current one
    from pyro_vi._io import save_tensors

    path = tmp_path / "old.pt"
    run(path)
    raw = torch.load(path, weights_only=True)
    save_tensors(path, {**raw, "format": "pyro_vi.fit_svi/3"})
    with pytest.raises(ValueError, match="fit_svi/3") as err:
        load_checkpoint(path)
    assert "old.pt" in str(err.value)
