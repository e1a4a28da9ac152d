"""The generic CAVI engine: loop rules, restarts, chunking, monotonicity guard, options.

The engine is exercised on two models: a toy conjugate model (``_toy.py``) (a Normal mean with
known precision, where the mean-field family is exact, so the ELBO must equal the log evidence)
and the Bayesian GMM of :mod:`pyro_vi.models.gmm.model`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from cavi._toy import MeanParams, NormalMean, toy_params
from torch import Tensor

from pyro_vi import (
    CAVIResult,
    ConjugateModel,
    ConvergenceWarning,
    ELBODecreaseError,
    Local,
    NumericalError,
    cavi,
    elbo_estimate,
    load_old_faithful,
)
from pyro_vi.cavi.engine import local_pass
from pyro_vi.factors import Normal
from pyro_vi.models.gmm.model import GaussianMixture


@pytest.fixture(scope="module")
def faithful() -> Tensor:
    return load_old_faithful(standardize=True)


# --------------------------------------------------------------------------- generic engine
def test_toy_model_elbo_equals_log_evidence():
    # q(mu) is the exact posterior, so the ELBO is the log evidence; marginally
    # x ~ N(m0 1, I/tau + 1 1^T / l0). Both are O(10) sums in float64: 1e-10 relative is safe.
    model = NormalMean()
    assert isinstance(model, ConjugateModel)
    x = torch.randn(12, dtype=torch.float64)
    fit = cavi(model, x)
    cov = np.eye(12) / model.tau + np.ones((12, 12)) / model.l0
    log_z = scipy.stats.multivariate_normal(np.full(12, model.m0), cov).logpdf(x.numpy())
    assert fit.elbo == pytest.approx(log_z, rel=1e-10)
    # the first global step already reaches the optimum: the next sweep changes nothing
    assert fit.converged
    assert fit.n_steps == 1
    assert fit.history["elbo"].iloc[0] == pytest.approx(log_z, rel=1e-10)


def test_result_carries_the_contract_model_and_fitted_guide():
    # The contract's defaults give every model its Pyro program and a fitted guide, and its
    # default global ELBO (-KL to prior_params) is this toy's whole global term.
    model = NormalMean()
    x = torch.randn(5, dtype=torch.float64)
    fit = cavi(model, x)
    assert fit.model == model.model
    assert fit.guide.params is fit.params
    est = elbo_estimate(fit.model, fit.guide, x, num_particles=200)
    # q is the exact posterior: zero-variance estimator, equal to the bound up to round-off
    assert est.mean == pytest.approx(fit.elbo, rel=1e-9)


def test_model_must_implement_the_contract():
    with pytest.raises(TypeError, match="ConjugateModel"):
        cavi(object(), torch.randn(5, dtype=torch.float64))
    with pytest.raises(TypeError, match="ConjugateModel"):
        local_pass(object(), torch.randn(5, dtype=torch.float64), None, chunk_size=0)


class _Tuples(NormalMean):
    """A global step that breaks the params rule: a tuple, not a frozen dataclass."""

    def global_step(self, stats: tuple, params: Any) -> Any:
        return tuple(vars(super().global_step(stats, params).loc).values())


def test_params_must_be_a_frozen_dataclass_of_factors():
    with pytest.raises(TypeError, match="frozen dataclass"):
        cavi(_Tuples(), torch.randn(5, dtype=torch.float64))


class _Chunky(NormalMean):
    def __init__(self, per_point: int) -> None:
        super().__init__()
        self.per_point = per_point
        self.calls: list[int] = []

    def local_bytes_per_point(self, data: Tensor) -> int:
        return self.per_point

    def local_step(self, data: Tensor, params: MeanParams) -> Local:
        self.calls.append(int(data.shape[0]))
        return super().local_step(data, params)


@pytest.mark.parametrize("chunk_size", [1, 7, 99, 100, 1000])
def test_local_pass_is_additive_over_chunks(chunk_size):
    model = NormalMean()
    x = torch.randn(100, dtype=torch.float64)
    params = toy_params(0.3, 4.0)
    whole = local_pass(model, x, params, chunk_size=0)
    parts = local_pass(model, x, params, chunk_size=chunk_size)
    # sums of <= 100 O(1) terms in a different order: round-off ~1e-14 relative
    for a, b in zip(whole.stats, parts.stats, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    torch.testing.assert_close(whole.elbo, parts.elbo, rtol=1e-12, atol=0)


def test_automatic_chunk_size_from_memory_estimate():
    # 64 MiB / 2**30 bytes per point rounds to 0 rows, so the floor of 1024 rows applies:
    # 2500 points run as chunks of 1024, 1024, 452.
    model = _Chunky(per_point=2**30)
    x = torch.randn(2500, dtype=torch.float64)
    params = toy_params(0.0, 1.0)
    local_pass(model, x, params, chunk_size=None)
    assert model.calls == [1024, 1024, 452]
    small = _Chunky(per_point=8)  # 64 MiB / 8 B: the whole set fits in one chunk
    local_pass(small, x, params, chunk_size=None)
    assert small.calls == [2500]
    # a model without the estimate is never chunked
    assert local_pass(NormalMean(), x, params, chunk_size=None).stats[0] == 2500


class _Pairs(NormalMean):
    """local_step on (x, w) tuples: chunking must split both members alike."""

    def local_step(self, data: tuple[Tensor, Tensor], params: Any) -> Local:
        x, w = data
        return Local(((w[:, None] * x).sum(0), w.sum()), (w * x.square().sum(-1)).sum())


def test_local_pass_splits_tuple_data_consistently():
    x = torch.randn(30, 2, dtype=torch.float64)
    w = torch.rand(30, dtype=torch.float64)
    whole = local_pass(_Pairs(), (x, w), None, chunk_size=0)
    parts = local_pass(_Pairs(), (x, w), None, chunk_size=4)
    for a, b in zip(whole.stats, parts.stats, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(whole.elbo, parts.elbo, rtol=1e-12, atol=0)


def test_local_pass_refuses_to_chunk_unknown_data():
    with pytest.raises(TypeError, match="chunk_size=0"):
        local_pass(_Pairs(), [1.0, 2.0], None, chunk_size=1)


# ------------------------------------------------------------------------------ loop rules
def test_result_record_and_history(faithful):
    fit = cavi(GaussianMixture(3), faithful, seed=1)
    assert isinstance(fit, CAVIResult)
    h = fit.history
    assert isinstance(h, pd.DataFrame)
    assert list(h.columns) == ["step", "elbo", "seconds"]
    assert h["step"].tolist() == list(range(fit.n_steps + 1))
    assert h["seconds"].is_monotonic_increasing
    assert h["elbo"].iloc[-1] == fit.elbo
    assert fit.converged
    # the loop stopped at the first relative change <= tol (default 1e-8), not before
    change = h["elbo"].diff().abs().iloc[1:] / h["elbo"].abs().iloc[1:].clip(lower=1.0)
    assert change.iloc[-1] <= 1e-8
    assert (change.iloc[:-1] > 1e-8).all()
    # the reported ELBO is the bound at the returned params (recomputed independently of the
    # loop; the same float64 operations, so equal to round-off)
    assert fit.cavi_model.elbo(faithful, fit.params) == pytest.approx(fit.elbo, rel=1e-12)


def test_tol_zero_runs_max_iter_and_warns(faithful):
    with pytest.warns(ConvergenceWarning, match="max_iter=4"):
        fit = cavi(GaussianMixture(3), faithful, max_iter=4, tol=0.0)
    assert not fit.converged
    assert fit.n_steps == 4
    assert len(fit.history) == 5


def test_no_warning_when_warn_false(faithful):
    # pytest turns every warning into an error (pyproject filterwarnings), so this proves silence
    fit = cavi(GaussianMixture(3), faithful, max_iter=2, tol=0.0, warn=False)
    assert not fit.converged


def test_large_tol_stops_after_one_sweep(faithful):
    fit = cavi(GaussianMixture(3), faithful, tol=1.0)
    assert fit.converged
    assert fit.n_steps == 1


def test_progress_bar_runs_and_does_not_change_the_fit(faithful, capsys):
    quiet = cavi(GaussianMixture(2), faithful, max_iter=30, progress=False, warn=False)
    loud = cavi(GaussianMixture(2), faithful, max_iter=30, progress=True, warn=False)
    assert "CAVI 1/1" in capsys.readouterr().err
    assert loud.history["elbo"].tolist() == quiet.history["elbo"].tolist()


def test_chunked_fit_equals_unchunked_fit(faithful):
    # The local step is a sum over points, so chunks of 7 rows only reorder float64 additions:
    # 1e-10 relative on ELBOs of size ~400 and on the parameters is far above that round-off.
    a = cavi(GaussianMixture(4), faithful, chunk_size=0, max_iter=60, warn=False)
    b = cavi(GaussianMixture(4), faithful, chunk_size=7, max_iter=60, warn=False)
    assert a.n_steps == b.n_steps
    np.testing.assert_allclose(b.history["elbo"], a.history["elbo"], rtol=1e-10)
    for name in ("loc", "precision_scale", "scale_tril", "df"):
        torch.testing.assert_close(getattr(b.params.components, name),
                                   getattr(a.params.components, name), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.params.weights.concentration, a.params.weights.concentration,
                               rtol=1e-10, atol=0)


def test_n_init_keeps_the_best_and_restarts_use_consecutive_seeds(faithful):
    fit = cavi(GaussianMixture(5), faithful, n_init=4, seed=10, max_iter=40, warn=False)
    assert len(fit.runs) == 4
    elbos = [r.elbo for r in fit.runs]
    assert fit.elbo == max(elbos)
    best = fit.runs[int(np.argmax(elbos))]
    assert best.params is fit.params
    assert best.history is fit.history
    # restart i is the single run with seed + i: the same ELBO trajectory bit for bit
    for i, run in enumerate(fit.runs):
        alone = cavi(GaussianMixture(5), faithful, seed=10 + i, max_iter=40, warn=False)
        assert alone.history["elbo"].tolist() == run.history["elbo"].tolist()
    # restarts differ (else n_init would be pointless)
    assert len({r.history["elbo"].iloc[0] for r in fit.runs}) == 4


def test_same_seed_same_history_and_seed_none_runs(faithful):
    for init in ("kmeans++", "random"):
        a = cavi(GaussianMixture(3, init=init), faithful, seed=3, max_iter=25, warn=False)
        b = cavi(GaussianMixture(3, init=init), faithful, seed=3, max_iter=25, warn=False)
        assert a.history["elbo"].tolist() == b.history["elbo"].tolist()
    c = cavi(GaussianMixture(3), faithful, seed=None, max_iter=25, warn=False)
    assert np.isfinite(c.elbo)


# ------------------------------------------------------------------------ safety guards
class _BrokenGlobal(GaussianMixture):
    """Shifts every mean by 10 (standardized units) in the global step of sweep ``bad``."""

    def __init__(self, *args: Any, bad: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bad = bad
        self.calls = [0]  # shared by the copies that prepare() makes

    def global_step(self, stats, params):
        new = super().global_step(stats, params)
        sweep = self.calls[0]  # call 0 is the initial step, call i belongs to sweep i
        self.calls[0] += 1
        if sweep == self.bad:
            new.components.loc = new.components.loc + 10.0
        return new


def test_broken_global_step_raises_elbo_decrease_naming_the_iteration(faithful):
    with pytest.raises(ELBODecreaseError, match="CAVI iteration 3: the ELBO decreased"):
        cavi(_BrokenGlobal(3, bad=3), faithful, max_iter=50, warn=False)


def test_monotone_rtol_is_the_allowance(faithful):
    # the same bug passes when the allowance is absurdly loose: the check is the only guard
    fit = cavi(_BrokenGlobal(3, bad=3), faithful, max_iter=5, monotone_rtol=1e6, warn=False)
    assert fit.history["elbo"].diff().iloc[3] < 0


class _NudgedMean(NormalMean):
    """Sweep ``bad``'s global step moves the exact q(mu)'s mean by ``delta``.

    The toy's ELBO is exactly quadratic in q's mean with curvature -l (l = l0 + tau N, the
    posterior precision, which the nudge leaves alone), so the nudge lowers the bound by
    exactly l delta^2 / 2 nats; the next sweep restores the optimum.
    """

    def __init__(self, *, bad: int, drop: float, n: int) -> None:
        super().__init__()
        self.bad, self.sweep = bad, [0]
        self.delta = math.sqrt(2.0 * drop / (self.l0 + self.tau * n))

    def global_step(self, stats: tuple, params: Any) -> MeanParams:
        new = super().global_step(stats, params)
        sweep, self.sweep[0] = self.sweep[0], self.sweep[0] + 1  # call 0: the initial step
        if sweep != self.bad:
            return new
        return MeanParams(Normal(new.loc.loc + self.delta, precision=new.loc.precision))


def test_an_elbo_decrease_far_below_one_nat_is_caught():
    # A wrong update that costs only 1e-3 nats (of |ELBO| ~ 20) is still a wrong update:
    # 1e-3 is 5e4 x the default allowance (1e-9 relative, ~2e-8 nats here) and far above the
    # round-off of O(1) float64 data (data_roundoff ~ 1e-14 nats), so the guard must fire.
    x = torch.randn(12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = _NudgedMean(bad=2, drop=1e-3, n=12)
    with pytest.raises(ELBODecreaseError,
                       match=r"CAVI iteration 2: the ELBO decreased .* \(by 0\.001\)"):
        cavi(model, x, max_iter=4, tol=0.0, warn=False)
    # The same nudge under monotone_rtol = 1e-3 (0.02 nats here) passes, and the history shows
    # the exact designed drop: the check, not the model, is what raised.
    fit = cavi(_NudgedMean(bad=2, drop=1e-3, n=12), x, max_iter=4, tol=0.0, warn=False,
               monotone_rtol=1e-3)
    drop = fit.history["elbo"].iloc[1] - fit.history["elbo"].iloc[2]
    assert drop == pytest.approx(1e-3, rel=1e-6)  # float64 difference of O(20) values


def test_an_elbo_decrease_within_round_off_is_not_an_error():
    # A drop of 1e-11 relative (2e-10 nats) sits a factor 100 inside the 1e-9 allowance and
    # ~1e4 x above float64's eps on the ELBO, so it is a real (designed) but allowed decrease.
    x = torch.randn(12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scale = abs(cavi(NormalMean(), x).elbo)
    fit = cavi(_NudgedMean(bad=2, drop=1e-11 * scale, n=12), x, max_iter=4, tol=0.0,
               warn=False)
    elbo = fit.history["elbo"]
    assert 0.0 < elbo.iloc[1] - elbo.iloc[2] <= 2e-11 * scale
    assert elbo.iloc[3] == pytest.approx(elbo.iloc[1], rel=1e-14)  # sweep 3 restores it


class _NaNLocal(GaussianMixture):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = [0]

    def local_step(self, data, params):
        out = super().local_step(data, params)
        self.calls[0] += 1
        if self.calls[0] == 3:  # the local step of sweep 2
            return Local(out.stats, out.elbo * float("nan"))
        return out


def test_nan_elbo_raises_numerical_error_naming_the_iteration(faithful):
    with pytest.raises(NumericalError, match="CAVI iteration 2: the ELBO is nan"):
        cavi(_NaNLocal(3), faithful, chunk_size=0, max_iter=10, warn=False)


class _NaNStats(_NaNLocal):
    """Sweep 2's local step returns a NaN statistic (N_k) with a finite ELBO."""

    def local_step(self, data, params):
        out = GaussianMixture.local_step(self, data, params)
        self.calls[0] += 1
        if self.calls[0] == 3:
            nk = out.stats[0].clone()
            nk[1] = float("nan")
            return Local((nk, *out.stats[1:]), out.elbo)
        return out


def test_nan_statistics_with_a_finite_elbo_raise_numerical_error_naming_the_statistic(faithful):
    # The ELBO alone cannot see this: it is finite, and only the next global step would turn
    # the NaN N_k into NaN parameters. The engine must stop at the sweep that made it.
    model = _NaNStats(3)
    with pytest.raises(NumericalError, match="CAVI iteration 2: sufficient statistic 0 is not finite"):
        cavi(model, faithful, chunk_size=0, max_iter=10, warn=False)
    assert model.calls[0] == 3  # stopped right there, before another local step


class _NoPrepare(GaussianMixture):
    def prepare(self, data):
        raise AssertionError("options must be checked before the data are touched")


# The wrong kind of value is a TypeError, the right kind out of range a ValueError (_checks.py).
@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"max_iter": 0}, ValueError, "max_iter"),
        ({"max_iter": -3}, ValueError, "max_iter"),
        ({"max_iter": 2.5}, TypeError, "max_iter"),
        ({"max_iter": True}, TypeError, "max_iter"),
        ({"tol": -1e-3}, ValueError, "tol"),
        ({"tol": float("nan")}, ValueError, "tol"),
        ({"tol": float("inf")}, ValueError, "tol"),
        ({"tol": "1e-3"}, TypeError, "tol"),
        ({"tol": True}, TypeError, "tol"),
        ({"n_init": 0}, ValueError, "n_init"),
        ({"n_init": 1.0}, TypeError, "n_init"),
        ({"chunk_size": -1}, ValueError, "chunk_size"),
        ({"chunk_size": 7.0}, TypeError, "chunk_size"),
        ({"monotone_rtol": -1e-9}, ValueError, "monotone_rtol"),
        ({"monotone_rtol": float("nan")}, ValueError, "monotone_rtol"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"warn": 1}, TypeError, "warn"),
    ],
)
def test_bad_options_raise_before_any_work(faithful, options, error, match):
    with pytest.raises(error, match=match):
        cavi(_NoPrepare(2), faithful, **options)


def test_numpy_scalars_are_accepted(faithful):
    fit = cavi(GaussianMixture(np.int64(2)), faithful, max_iter=np.int64(5), tol=np.float64(0.0),
               seed=np.int64(1), warn=False)
    assert fit.n_steps == 5


@pytest.mark.parametrize(
    ("init", "match"),
    [
        ("k-means", "init must be 'kmeans\\+\\+', .*'random'"),
        (torch.full((272, 3), 0.5, dtype=torch.float64), "init responsibilities must be"),
        (torch.full((271, 2), 0.5, dtype=torch.float64), "init responsibilities must be"),
        (torch.full((272, 2), 0.4, dtype=torch.float64), "init responsibilities must be"),
        (torch.tensor([[1.5, -0.5]] * 272, dtype=torch.float64), "init responsibilities must be"),
    ],
)
def test_bad_init_raises_before_the_first_sweep(faithful, init, match):
    with pytest.raises(ValueError, match=match):
        cavi(GaussianMixture(2, init=init), faithful)


def test_init_of_another_type_is_a_type_error():
    with pytest.raises(TypeError, match="init must be a method name or a Tensor"):
        GaussianMixture(2, init=np.full((272, 2), 0.5))


def test_float32_fit_is_not_mistaken_for_an_elbo_decrease(faithful):
    # A float32 ELBO carries ~1e-6 relative round-off (its KL terms are differences of
    # lgamma's of size ~1e3), so near convergence it wobbles by ~1e-4 nats although the same
    # params evaluated in float64 still increase. The allowance scales with the dtype's eps.
    gmm = GaussianMixture(6, weight_concentration=1e-3, dtype=torch.float32)
    for seed in range(3):
        fit32 = cavi(gmm, faithful, seed=seed, tol=1e-6)
        assert fit32.converged
        assert fit32.params.weights.concentration.dtype == torch.float32
        fit64 = cavi(GaussianMixture(6, weight_concentration=1e-3), faithful, seed=seed)
        # same optimum; float32 evaluation plus an earlier stop: agree to ~1e-6 relative
        assert fit32.elbo == pytest.approx(fit64.elbo, rel=1e-5)


def test_result_exports_to_arviz_with_one_chain_per_restart():
    from pyro_vi import GaussianMixture, load_old_faithful

    x = load_old_faithful(standardize=True)
    fit = cavi(GaussianMixture(2), x, n_init=3, seed=0)
    assert fit.data is not None
    idata = fit.to_inference_data(num_samples=20, restarts=True)
    assert idata.posterior.sizes["chain"] == 3
    assert idata.posterior.sizes["draw"] == 20
    assert "obs" in idata.log_likelihood
    single = fit.to_inference_data(num_samples=20)
    assert single.posterior.sizes["chain"] == 1
    # the fit's ELBO history, final ELBO, method and convergence flag travel along
    stats = single.sample_stats
    assert float(stats.final_elbo[0]) == pytest.approx(fit.elbo, rel=1e-12)
    assert stats.elbo.shape == (1, len(fit.history))
    assert bool(stats.converged[0]) is fit.converged
    assert stats.attrs["inference_method"] == "CAVI"


def _iris() -> Tensor:
    from sklearn.datasets import load_iris

    x = load_iris().data
    return torch.tensor((x - x.mean(0)) / x.std(0))


def test_screened_restarts_carry_the_best_on_along_its_own_path():
    # screen_tol runs every start to 1e-5, then continues the SCREEN_KEEP best to tol. The
    # continuation is the same coordinate ascent, so when the start a full run of every start
    # finds best is among them (it is here: iris, K=6, 10 starts, seed 0), the result is that
    # run bit for bit, and every other start's trajectory is a prefix of its full run's.
    # Deterministic.
    x = _iris()
    plain = cavi(GaussianMixture(6), x, n_init=10, seed=0, warn=False)
    screened = cavi(GaussianMixture(6), x, n_init=10, seed=0, warn=False, screen_tol=1e-5)
    assert screened.history["elbo"].tolist() == plain.history["elbo"].tolist()
    assert screened.history["step"].tolist() == plain.history["step"].tolist()
    assert screened.elbo == plain.elbo
    assert screened.n_steps == plain.n_steps
    assert screened.converged
    torch.testing.assert_close(screened.params.components.loc, plain.params.components.loc, rtol=0, atol=0)
    carried = 0
    for a, b in zip(screened.runs, plain.runs, strict=True):
        e = a.history["elbo"].tolist()
        assert e == b.history["elbo"].tolist()[:len(e)]
        carried += len(e) == len(b.history)
    assert carried >= 3  # the three carried on, and any start that had converged at the screen
    assert sum(r.n_steps for r in screened.runs) < 0.8 * sum(r.n_steps for r in plain.runs)
    assert screened.history["seconds"].is_monotonic_increasing


def test_screen_tol_is_checked_and_idle_for_one_start(faithful):
    with pytest.raises(ValueError, match="screen_tol"):
        cavi(GaussianMixture(2), faithful, n_init=2, screen_tol=-1.0)
    with pytest.raises(TypeError, match="screen_tol"):
        cavi(GaussianMixture(2), faithful, n_init=2, screen_tol="1e-4")
    one = cavi(GaussianMixture(2), faithful, seed=3, warn=False)
    same = cavi(GaussianMixture(2), faithful, seed=3, warn=False, screen_tol=1e-2)
    assert same.history["elbo"].tolist() == one.history["elbo"].tolist()


def test_finite_statistics_whose_sum_overflows_are_not_called_non_finite():
    # The engine's one-reduction check falls back to an entry-by-entry check when the sum of
    # every statistic is not finite; finite entries whose sum overflows pass, a NaN does not.
    from pyro_vi.cavi.engine import _check_finite
    from pyro_vi.errors import NumericalError

    big = torch.full((3,), 1e308, dtype=torch.float64)
    _check_finite(Local((big, big), torch.tensor(1.0, dtype=torch.float64)), 0)
    with pytest.raises(NumericalError, match="sufficient statistic 1 is not finite"):
        _check_finite(Local((big, torch.tensor([float("nan")])), torch.tensor(1.0)), 3)
