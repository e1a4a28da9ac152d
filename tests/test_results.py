"""Saving and loading fits: FitResult.save / pyro_vi.load_result."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

from pyro_vi import GaussianMixture, cavi, fit_svi, load_old_faithful, load_result
from pyro_vi.results import FORMAT_VERSION


def _svi_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=y)


def test_cavi_round_trip_rebuilds_guide_summary_and_restarts(tmp_path):
    x = load_old_faithful(standardize=True)
    fit = cavi(GaussianMixture(3, covariance="diag"), x, n_init=2, seed=0)
    fit.save(tmp_path / "fit.pt")
    back = load_result(tmp_path / "fit.pt")
    assert type(back) is type(fit)
    assert (back.elbo, back.converged, back.n_steps) == (fit.elbo, fit.converged, fit.n_steps)
    assert back.history.equals(fit.history)
    assert back.summary().equals(fit.summary())
    assert [r.elbo for r in back.runs] == [r.elbo for r in fit.runs]
    assert torch.equal(back.data[0], x)
    # params bit for bit, and the rebuilt model gives the same analytic ELBO
    assert torch.equal(back.params.weights.concentration, fit.params.weights.concentration)
    assert torch.equal(back.params.components.rate, fit.params.components.rate)
    assert back.cavi_model.elbo(x, back.params) == fit.cavi_model.elbo(x, fit.params)
    # the rebuilt guide is a working Pyro guide with the same parameters
    pyro.set_rng_seed(1)
    a = fit.guide(x)
    pyro.set_rng_seed(1)
    b = back.guide(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_file_is_tensors_and_plain_data_with_a_version(tmp_path):
    fit = cavi(GaussianMixture(2), load_old_faithful(standardize=True), seed=0)
    fit.save(tmp_path / "fit.pt")
    blob = torch.load(tmp_path / "fit.pt", weights_only=True)  # raises if anything is pickled
    assert blob["format"] == "pyro_vi.result"
    assert blob["version"] == FORMAT_VERSION
    assert blob["kind"] == "pyro_vi.results:CAVIResult"


def test_svi_round_trip_needs_the_model_and_guide(tmp_path):
    y = 3.0 + torch.randn(40, generator=torch.Generator().manual_seed(0))
    res = fit_svi(_svi_model, AutoNormal(_svi_model), y, num_steps=200, seed=0, progress=False)
    res.save(tmp_path / "svi.pt")
    with pytest.raises(TypeError, match="model and guide"):
        load_result(tmp_path / "svi.pt")
    back = load_result(tmp_path / "svi.pt", model=_svi_model, guide=AutoNormal(_svi_model))
    assert (back.elbo, back.n_steps, back.stop_reason) == (res.elbo, res.n_steps, res.stop_reason)
    assert back.history.equals(res.history)
    assert set(back.params) == set(res.params)
    assert all(torch.equal(back.params[k], res.params[k]) for k in res.params)
    # the stored params drive the passed guide: the same posterior export as the original
    idata_a = res.to_inference_data(num_samples=50, seed=0)
    idata_b = back.to_inference_data(num_samples=50, seed=0)
    assert torch.equal(torch.as_tensor(idata_a.posterior.mu.values),
                       torch.as_tensor(idata_b.posterior.mu.values))


def test_saving_over_a_file_is_atomic_and_bad_files_are_named(tmp_path):
    fit = cavi(GaussianMixture(2), load_old_faithful(standardize=True), seed=0)
    path = tmp_path / "fit.pt"
    fit.save(path)
    before = path.read_bytes()

    # a history column that cannot be saved fails before the old file is touched
    bad = type(fit)(**{**{f: getattr(fit, f) for f in ("params", "elbo", "converged", "n_steps",
                                                        "model", "guide", "data", "cavi_model")},
                       "history": fit.history.assign(note="text")})
    with pytest.raises(TypeError, match="note"):
        bad.save(path)
    assert path.read_bytes() == before
    path.write_bytes(before[: len(before) // 3])
    with pytest.raises(ValueError, match="fit.pt"):
        load_result(path)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a pyro-vi result"):
        load_result(tmp_path / "other.pt")
    blob = {"format": "pyro_vi.result", "version": FORMAT_VERSION + 1}
    torch.save(blob, tmp_path / "new.pt")
    with pytest.raises(ValueError, match="format version"):
        load_result(tmp_path / "new.pt")
