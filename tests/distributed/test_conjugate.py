"""Distributed CAVI and stochastic VI on 2 and 3 gloo ranks against single-process fits.

One spawn per world size runs every case (``_workers.conjugate_suite``); each test reads its
part. Every fit is deterministic given its seed and data, so the bands below are round-off
bands (failure budget 0), except the stochastic-VI ones, whose measured values are stated.
"""

from __future__ import annotations

import functools
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as tdist
from distributed import _runs
from distributed import _workers as w

from pyro_vi import cavi
from pyro_vi.cavi.engine import param_tensors
from pyro_vi.distributed import free_port
from pyro_vi.models.gmm.model import GaussianMixture

EQUAL = sorted(w.equality_cases()) + sorted(w.derived_cases())


@pytest.fixture(scope="module", params=[2, 3], ids=["2-ranks", "3-ranks"])
def suite(request):
    return request.param, _runs.suite(request.param)


@functools.cache
def _single(name: str) -> dict:
    if name in w.derived_cases():
        model, data, opts = w.derived_cases()[name]
        return w.summary(cavi(model, data, max_iter=w.SWEEPS, tol=0.0, warn=False, **opts))
    model, data = w.equality_cases()[name]
    return w.summary(cavi(model, data, max_iter=w.SWEEPS, tol=0.0, warn=False))


def _close(ours: dict, ref: dict) -> None:
    # Same start and sweeps; only the order of the sums differs: relative round-off ~1e-15.
    assert ours["n_steps"] == ref["n_steps"]
    assert ours["elbo"] == pytest.approx(ref["elbo"], rel=1e-10, abs=0)
    np.testing.assert_allclose(ours["history"], ref["history"], rtol=1e-10, atol=0)
    for a, b in zip(ours["params"], ref["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-8 * max(1.0, float(np.abs(b).max())))


def _cases(results: list[dict]) -> list[str]:
    return [k for k, v in results[0].items() if isinstance(v, dict) and "elbo" in v]


def test_every_rank_ends_bitwise_identical(suite):
    _, results = suite
    for case in _cases(results):
        first = results[0][case]
        for other in results[1:]:
            assert other[case]["elbo"] == first["elbo"], case
            assert np.array_equal(other[case]["history"], first["history"]), case
            for a, b in zip(other[case]["params"], first["params"], strict=True):
                assert np.array_equal(a, b), case


@pytest.mark.parametrize("case", EQUAL)
def test_equals_the_single_process_fit_on_the_concatenated_rows(suite, case):
    _, results = suite
    _close(results[0][case], _single(case))


def test_uneven_shards_equal_the_single_process_fit(suite):
    world, results = suite
    cut = results[0]["uneven_cut"]
    assert cut[1] - cut[0] == 10
    assert cut[-1] == w.N_GMM
    assert len(cut) == world + 1
    _close(results[0]["gmm_uneven"], _single("gmm_full"))


def test_a_rank_without_rows_is_refused_on_every_rank():
    results = _runs.suite(3)
    for rank, res in enumerate(results):
        for case, where in (("zero_rows", "cavi"), ("zero_rows_svi_cavi", "svi_cavi")):
            kind, message = res[case]
            assert kind == "ValueError", rank
            assert message.startswith(f"{where}(distributed=True): rank(s) [1] of 3 hold no "
                                      "rows (rows per rank: [150, 0, 151])")


@pytest.mark.parametrize(("case", "kind", "text"), [
    ("nan_shard", "ValueError", "x holds NaN or inf (first at row 3)"),
    ("local_step_error", "NumericalError", "injected failure in the local step"),
])
def test_an_error_on_one_rank_is_raised_on_every_rank(suite, case, kind, text):
    world, results = suite
    for rank, res in enumerate(results):
        got_kind, message = res[case]
        assert got_kind == kind
        # rank 1 raises its own error; the others the same class, saying where it came from
        assert message == (text if rank == 1 else f"rank 1 of {world}: {text}")


def test_a_prepare_shard_that_keeps_data_choices_local_is_caught(suite):
    _, results = suite
    for res in results:
        kind, message = res["forgotten_override"]
        assert kind == "RuntimeError"
        assert "first global parameters of LocalOriginNormal" in message
        assert "differ across ranks" in message


def test_the_group_is_usable_after_the_errors(suite):
    _, results = suite
    ref = cavi(w.GammaPoisson(), w.counts()).elbo
    for res in results:
        assert res["after_errors"] == pytest.approx(ref, rel=1e-12)


@pytest.fixture(scope="module")
def one_rank():
    """The seeded subsample starts in a group of one, in this process."""
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                             world_size=1, timeout=timedelta(seconds=60))
    try:
        gmm = cavi(GaussianMixture(3), w.mixture(), seed=0, max_iter=w.SWEEPS, tol=0.0,
                   warn=False, distributed=True)
        derived = cavi(w.pyro_poisson_mixture, w.mixed_counts(), seed=0, max_iter=w.SWEEPS,
                       tol=0.0, warn=False, distributed=True)
        restarts = cavi(GaussianMixture(3), w.mixture(), seed=0, n_init=3, distributed=True)
    finally:
        tdist.destroy_process_group()
    return {"gmm_kmeanspp": w.summary(gmm), "derived_mixture_kmeanspp": w.summary(derived),
            "gmm_restarts": w.summary(restarts),
            "gmm_restart_elbos": [run.elbo for run in restarts.runs]}


@pytest.mark.parametrize("case", ["gmm_kmeanspp", "derived_mixture_kmeanspp"])
def test_the_random_start_does_not_depend_on_the_number_of_ranks(suite, one_rank, case):
    # the GMM's own override and the engine's default (a derived mixture: its k-means++
    # start is found random by the probe) both draw from the seeded subsample of all rows
    _, results = suite
    _close(results[0][case], one_rank[case])


def test_the_one_rank_start_is_a_kmeanspp_start_on_all_rows(one_rank):
    # N = 301 <= SUBSAMPLE_ROWS: the subsample is every row, so the start is the GMM's own
    # k-means++ on x (scaled by N/|S| = 1) and its statistics are those of the
    # responsibilities at those parameters: the single-process fit from those
    # responsibilities is the same run.
    x = w.mixture()
    model, data = GaussianMixture(3).prepare(x)
    start = model.global_step(model.init_stats(data, generator=torch.Generator().manual_seed(0)),
                              None)
    ref = cavi(GaussianMixture(3, init=model.responsibilities(data, start)), x,
               max_iter=w.SWEEPS, tol=0.0, warn=False)
    _close(one_rank["gmm_kmeanspp"], w.summary(ref))


@functools.cache
def _batch(name: str) -> float:
    if name == "gmm":
        return cavi(GaussianMixture(3), w.mixture(6000, seed=7), seed=0).elbo
    return cavi(w.HierarchicalNormal(mean_prior=0.0, mean_scale=10.0, precision_concentration=1.0,
                                     precision_rate=1.0), w.groups(2000, seed=8)).elbo


def test_stochastic_vi_ends_within_half_a_percent_of_batch_cavi(suite):
    _, results = suite
    gmm, hier = results[0]["svi_cavi_gmm"], results[0]["svi_cavi_hier"]
    # Measured (seed 0; 2 / 3 ranks): GMM (Lloyd start on the first minibatches, 3 epochs)
    # 1.1e-5 / 6.0e-4 relative below batch CAVI; hierarchical (5 epochs) 7.3e-4 / 7.6e-4. The
    # issue's band is 0.5 %, 7x the worst. With the k-means++ start, 3 ranks ended in another
    # optimum 2 % short, as seed 3 does single-process (test_stochastic): a start problem, not a
    # reduction one. Deterministic given the seed: failure budget 0. CAVI's optimum is the
    # maximum, so the gap is >= 0.
    for fit, ref in ((gmm, _batch("gmm")), (hier, _batch("hier"))):
        assert 0.0 <= ref - fit["elbo"] <= 5e-3 * abs(ref)



def test_restarts_and_convergence_match_one_process(suite, one_rank):
    # n_init=3 with the default tol: every restart's start is the seeded subsample start, and
    # the stopping decisions follow the bitwise-equal ELBO; one process (a group of one) must
    # take the same restarts, sweeps and best run.
    _, results = suite
    _close(results[0]["gmm_restarts"], one_rank["gmm_restarts"])
    assert results[0]["gmm_restart_elbos"] == pytest.approx(one_rank["gmm_restart_elbos"],
                                                            rel=1e-10)


def test_the_monotonicity_guard_fires_alike_on_every_rank(suite):
    _, results = suite
    messages = {res["wrong_update"] for res in results}
    assert len(messages) == 1  # decided from the same ELBO: no vote needed, no rank prefix
    kind, message = messages.pop()
    assert kind == "ELBODecreaseError"
    assert "CAVI iteration 2: the ELBO decreased" in message


def test_stochastic_vi_with_whole_shards_is_the_full_batch_step(suite):
    # every rank's minibatch is its whole shard: the global batch is N, the scale N/|B| is 1,
    # and each step equals a single-process step with batch_size=N (a rank dividing by its
    # own batch would scale by P)
    _, results = suite
    ref = w.svi_cavi(w.GammaPoisson(), w.counts(), batch_size=10**6, max_steps=5, seed=0)
    ours = results[0]["svi_cavi_full_batch"]
    assert ours["elbo"] == pytest.approx(ref.elbo, rel=1e-12)
    for a, b in zip(ours["params"], param_tensors(ref.params), strict=True):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-12)
