"""The GMM's fast local-step paths (issue 16): quadratic features, float32 compute, k-means start."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_iris, load_wine

from pyro_vi import cavi, load_old_faithful
from pyro_vi.cavi.engine import local_pass
from pyro_vi.cavi.kmeans import initial_labels, lloyd
from pyro_vi.models.gmm.model import VECH_MAX_D_BY_K, GaussianMixture, prefers_features, replace_model


def _mixture(n: int, d: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(k, d, generator=g, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + means[torch.randint(k, (n,), generator=g)]


def _on_path(gmm: GaussianMixture, path: str) -> GaussianMixture:
    new = replace_model(gmm)
    new._path = path
    return new


@pytest.mark.parametrize(("d", "k", "covariance"), [(2, 3, "full"), (9, 4, "full"), (32, 16, "full"),
                                                     (5, 3, "diag"), (32, 16, "diag")])
def test_feature_path_matches_triangular_path_after_ten_sweeps(d, k, covariance):
    # Same start, same answer: the two paths are the same sums in another order, so after 10
    # sweeps the ELBOs agree to round-off. Measured: <= 5e-16 relative over these cases; 1e-12
    # leaves 2000x room while a wrong coefficient (a factor 2 on the off-diagonals) moves it ~1e-2.
    x = _mixture(3000, d, k, seed=d)
    gmm = GaussianMixture(k, covariance=covariance)
    old = cavi(_on_path(gmm, "triangular"), x, max_iter=10, tol=0.0, seed=0, warn=False)
    new = cavi(_on_path(gmm, "features"), x, max_iter=10, tol=0.0, seed=0, warn=False)
    assert new.elbo == pytest.approx(old.elbo, rel=1e-12)
    for a, b in zip(old.params.components.loc, new.params.components.loc, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_feature_path_statistics_equal_triangular_ones_per_chunk():
    # one local pass, chunked into blocks that do not divide N: the statistics are sums
    x = _mixture(2100, 6, 3, seed=4)
    gmm, data = GaussianMixture(3).prepare(x)
    params = gmm.global_step(gmm.init_stats(data, generator=torch.Generator().manual_seed(1)), None)
    a = local_pass(_on_path(gmm, "triangular"), data, params, chunk_size=0)
    b = local_pass(_on_path(gmm, "features"), data, params, chunk_size=1000)
    for s, t in zip(a.stats, b.stats, strict=True):
        torch.testing.assert_close(s, t, rtol=1e-11, atol=1e-10)
    assert float(b.elbo) == pytest.approx(float(a.elbo), rel=1e-13)


@pytest.mark.parametrize(("d", "k", "features"), [
    # the measured crossover table in model.py (triangular/features CPU time, N=5e4): each row
    # of VECH_MAX_D_BY_K at its edge, and the cells the benchmark measured on either side of it
    (2, 1, True), (8, 4, True), (24, 4, True), (25, 4, False), (32, 4, False), (48, 4, False), (64, 7, False),
    (16, 8, True), (48, 8, True), (64, 8, True), (65, 8, False),
    (8, 16, True), (32, 16, True), (64, 16, True), (72, 16, False), (32, 64, True), (65, 64, False),
])
def test_default_path_follows_dimension_and_components(d, k, features):
    assert prefers_features(d, k) is features
    assert GaussianMixture(k)._use_features(d) is features
    assert GaussianMixture(k, covariance="diag")._use_features(d)  # diag: always the features
    assert GaussianMixture(k, compute_dtype=torch.float32)._use_features(d)  # float32 runs there


def test_crossover_table_is_ordered():
    # rows by decreasing K, each allowing at least the D of the rows below it: the rule is
    # monotone (more components never move a D back to the triangular path)
    ks = [k for k, _ in VECH_MAX_D_BY_K]
    ds = [d for _, d in VECH_MAX_D_BY_K]
    assert ks == sorted(ks, reverse=True)
    assert ks[-1] == 1
    assert ds == sorted(ds, reverse=True)


def _datasets():
    wine = load_wine().data
    return {"old_faithful": (load_old_faithful(standardize=True), 6),
            "iris": (torch.tensor(load_iris().data), 3),
            "wine": (torch.tensor((wine - wine.mean(0)) / wine.std(0)), 3),
            "synthetic_1e5": (_mixture(100_000, 4, 3, seed=7), 3),
            # the target shape's features (Q + D = 560 per point), 11 blocks, the last one short
            "synthetic_d32_k16": (_mixture(20_000, 32, 16, seed=8), 16)}


@pytest.mark.parametrize("route", ["onednn", "torch"])
@pytest.mark.parametrize("name", ["old_faithful", "iris", "wine", "synthetic_1e5", "synthetic_d32_k16"])
def test_float32_compute_reaches_the_float64_elbo(name, route, monkeypatch):
    # From the same start, float32 GEMMs with float64 accumulation reach the float64 fit's ELBO
    # to 1e-6 relative, with the block products in oneDNN (the default where it is usable) and
    # in torch.mm. Measured: 2e-9..4e-8 relative on these sets (the float32 error of each
    # point's log-normaliser averages out over points); 1e-6 leaves >= 25x room.
    import pyro_vi.linalg

    if route == "onednn" and not pyro_vi.linalg.onednn_float32():
        pytest.skip("this build of torch has no usable oneDNN float32 matmul")
    import pyro_vi.models.gmm.model as gmm_model

    monkeypatch.setattr(pyro_vi.linalg, "ONEDNN_FLOAT32", route == "onednn")
    monkeypatch.setattr(gmm_model, "ONEDNN_MIN_MACS", 0)  # oneDNN for small products too
    x, k = _datasets()[name]
    iters = 30 if name.startswith("synthetic") else 200
    ref = cavi(GaussianMixture(k), x, max_iter=iters, tol=1e-9, seed=0, warn=False)
    low = cavi(GaussianMixture(k, compute_dtype=torch.float32), x, max_iter=iters, tol=1e-9,
               seed=0, warn=False)
    assert low.elbo == pytest.approx(ref.elbo, rel=1e-6)
    assert low.params.components.loc.dtype == torch.float64


def test_float32_allowance_is_stated_by_compute_eps():
    assert GaussianMixture(2).compute_eps() == torch.finfo(torch.float64).eps
    assert GaussianMixture(2, compute_dtype=torch.float32).compute_eps() == torch.finfo(torch.float32).eps


def test_compute_dtype_is_checked():
    with pytest.raises(ValueError, match="compute_dtype"):
        GaussianMixture(2, compute_dtype=torch.float16)


def test_lloyd_matches_sklearn_kmeans_from_the_same_centers():
    # Lloyd's fixed point from the same seeds is unique given the iteration: sklearn's KMeans
    # (algorithm="lloyd", tol=0) run from our k-means++ centers must give the same labels.
    x = torch.tensor(load_iris().data)
    centers0 = x[[0, 60, 120, 30]]
    labels, centers = lloyd(x, centers0, tol=0.0)
    km = KMeans(4, init=centers0.numpy(), n_init=1, algorithm="lloyd", tol=0.0).fit(x.numpy())
    np.testing.assert_array_equal(labels.numpy(), km.labels_)
    np.testing.assert_allclose(centers.numpy(), km.cluster_centers_, rtol=1e-10)


def test_kmeans_labels_are_translation_free_and_chunked():
    # offset 1e8 spreads: seeding and Lloyd on x - offset give the labels of the centred data
    x = _mixture(5000, 3, 4, seed=3)
    a = initial_labels(x, 4, method="kmeans", generator=torch.Generator().manual_seed(2))
    shift = torch.full((3,), 1e8, dtype=torch.float64)
    b = initial_labels(x + shift, 4, method="kmeans", generator=torch.Generator().manual_seed(2),
                       offset=shift)
    assert torch.equal(a, b)


def test_kmeans_init_is_seeded_and_starts_cavi():
    x = torch.tensor(load_iris().data)
    a = cavi(GaussianMixture(3, init="kmeans"), x, seed=3, max_iter=5, tol=0.0, warn=False)
    b = cavi(GaussianMixture(3, init="kmeans"), x, seed=3, max_iter=5, tol=0.0, warn=False)
    assert a.elbo == b.elbo


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_local_step_and_moments_make_no_copy_of_the_data(covariance):
    # The memory goal needs every temporary of the GMM's own passes to be O(block): the
    # priors' moments, the start's statistics, the round-off estimate and the local step (feature
    # path, D=32, K=16). torch's profiler records each allocation; the largest must stay below half
    # the data (20 MB here; a block is BLOCK_BYTES = 4 MiB, a centred or dtype copy 20 MB).
    from torch.profiler import ProfilerActivity, profile

    from pyro_vi.models.gmm.model import _moments

    g = torch.Generator().manual_seed(0)
    x = torch.randn(80_000, 32, dtype=torch.float64, generator=g)
    labels = torch.randint(16, (80_000,), generator=g)
    gmm = GaussianMixture(16, covariance=covariance).resolve(x)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _moments(x, x.mean(0), covariance, scatter=True)
        params = gmm.global_step(gmm._label_stats(x, labels), None)
        gmm.elbo_roundoff(x)
        local_pass(gmm, x, params, chunk_size=None)
    largest = max(e.cpu_memory_usage for e in prof.events())
    assert 0 < largest < x.numel() * x.element_size() / 2


def test_elbo_roundoff_equals_the_contracts_estimate_of_the_centred_data():
    # elbo_roundoff is data_roundoff(x - m0) computed from block sums: same number to round-off
    from pyro_vi.cavi.model import data_roundoff

    x = _mixture(5000, 4, 3, seed=5) + 1e4
    for gmm in (GaussianMixture(3), GaussianMixture(3, mean_prior=[0.0, 1.0, 2.0, 3.0]),
                GaussianMixture(3, compute_dtype=torch.float32)):
        gmm = gmm.resolve(x)
        ref = data_roundoff((x - gmm.hyperparams.mean_prior).to(gmm.compute_dtype))
        assert gmm.elbo_roundoff(x) == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("d", [1, 2, 3, 4, 7, 8, 32, 33])
def test_pair_index_lists_every_unordered_pair_once(d):
    # the cyclic-diagonal order must be a permutation of the upper triangle, diagonal first
    from pyro_vi.models.gmm.model import pair_index

    i, j = pair_index(d)
    pairs = sorted(zip(torch.minimum(i, j).tolist(), torch.maximum(i, j).tolist(), strict=True))
    iu = torch.triu_indices(d, d)
    assert pairs == sorted(zip(iu[0].tolist(), iu[1].tolist(), strict=True))
    assert torch.equal(i[:d], j[:d])  # shift 0: the squares
    assert (i[d:] != j[d:]).all()


@pytest.mark.parametrize(("d", "diag"), [(1, False), (2, False), (5, False), (6, True), (32, False)])
def test_features_are_the_centred_products_in_pair_order(d, diag):
    # against products written out per pair, on raw-unit data (offset 1e6): the block is centred
    # in float64 first, so the features equal those of the centred data to round-off
    from pyro_vi.models.gmm.model import _features, feature_buffer, pair_index

    g = torch.Generator().manual_seed(d)
    x = 1e6 + torch.randn(37, d, dtype=torch.float64, generator=g)
    m0 = torch.full((d,), 1e6, dtype=torch.float64)
    phi = _features(x, m0, diag, feature_buffer(d, diag, 37, torch.float64, "cpu"))
    xc = x - m0
    i, j = (torch.arange(d), torch.arange(d)) if diag else pair_index(d)
    want = torch.cat([xc[:, i] * xc[:, j], xc], 1).T
    torch.testing.assert_close(phi, want, rtol=1e-15, atol=0.0)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_float32_mode_reads_its_centred_copy_only_for_the_prepared_data(covariance):
    # prepare keeps one float32 (x - m0)^T; a sweep over that very tensor reads it, any other
    # tensor (here an equal clone) is centred block by block. Both round x - m0 once from
    # float64, so the statistics are bitwise equal; the copy goes when the data go.
    import gc

    x = _mixture(5000, 7, 3, seed=11)
    gmm, data = GaussianMixture(3, covariance=covariance, compute_dtype=torch.float32).prepare(x)
    assert gmm._centred_copy(data, torch.float32) is not None
    assert gmm._centred_copy(data.clone(), torch.float32) is None
    params = gmm.global_step(gmm.init_stats(data, generator=torch.Generator().manual_seed(0)), None)
    a = gmm.local_step(data, params)
    b = gmm.local_step(data.clone(), params)
    for s, t in zip(a.stats, b.stats, strict=True):
        assert torch.equal(s, t)
    assert torch.equal(a.elbo, b.elbo)
    del a, b, data, x
    gc.collect()
    assert gmm._centred == {}  # the weak reference died with the data, and the copy with it


def test_float32_centred_copy_goes_with_the_model_while_the_data_live():
    # fits repeated on the same data each prepare a copy; nothing but the model holds it, so it
    # is freed with the model (before, the data's finaliser kept every copy until the data went:
    # 12 fits on N=1e6, D=32 grew the process by ~120 MB a fit, measured here)
    import weakref

    x = _mixture(5000, 7, 3, seed=13)
    copies = []
    for _ in range(3):
        gmm, data = GaussianMixture(3, compute_dtype=torch.float32).prepare(x)
        copies.append(weakref.ref(gmm._centred["copy"]))
        del gmm, data
    assert all(ref() is None for ref in copies)  # freed at once (no reference cycle either)


def test_cpu_passes_run_the_compiled_block_loop():
    # the CPU's block loop is torch.jit.script(block_pass) in this torch (it would fall back to
    # the plain function only where TorchScript cannot compile it); other devices run it plain
    import os

    from pyro_vi.models.gmm import blocks

    if os.environ.get("PYTORCH_JIT") == "0":
        pytest.skip("PYTORCH_JIT=0 turns torch.jit.script into the identity")
    assert isinstance(blocks.runner(torch.device("cpu")), torch.jit.ScriptFunction)
    assert blocks.runner(torch.device("cuda")) is blocks.block_pass
    assert blocks.runner(torch.device("meta")) is blocks.block_pass


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("covariance", "compute_dtype", "onednn"),
                         [("full", None, False), ("full", torch.float32, False), ("full", torch.float32, True),
                          ("diag", None, False), ("diag", torch.float32, True)])
def test_compiled_block_loop_is_bitwise_the_plain_one(covariance, compute_dtype, onednn, threads, monkeypatch):
    # One source, two runners: the compiled loop runs the plain one's kernels in the same order,
    # so every sum is bitwise equal -- for the optimal responsibilities (three calls: the first
    # ones profile the compiled graph, the later run its optimised plan), the k-means labels and
    # given responsibilities, on both float32 product routes, at 1 and 2 block workers (64 KiB
    # blocks: 15 to 28 of them), with and without the float32 mode's centred copy (prepare's
    # data, and a new tensor).
    import pyro_vi.linalg
    import pyro_vi.models.gmm.model as gmm_model
    from pyro_vi.models.gmm import blocks

    if onednn and not pyro_vi.linalg.onednn_float32():
        pytest.skip("this build of torch has no usable oneDNN float32 matmul")
    monkeypatch.setattr(pyro_vi.linalg, "ONEDNN_FLOAT32", onednn)
    monkeypatch.setattr(gmm_model, "BLOCK_BYTES", 64 * 1024)
    x = _mixture(7000, 7, 3, seed=11) + 1e4
    gmm, data = GaussianMixture(3, covariance=covariance, compute_dtype=compute_dtype,
                                init="kmeans").prepare(x)
    params = gmm.global_step(gmm.init_stats(data, generator=torch.Generator().manual_seed(0)), None)
    r = torch.softmax(gmm.log_rho(data, params), -1)
    labels = r.argmax(-1)

    def results() -> list[torch.Tensor]:
        optimal = [gmm.local_step(d, params) for d in (data, data, data, data.clone())]
        out = [t for local in optimal for t in (*local.stats, local.elbo)]
        return out + [*gmm._label_stats(data, labels), *gmm._resp_stats(data, r)]

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        assert gmm_model.block_workers(data, 15) == threads
        monkeypatch.setattr(blocks, "SCRIPTED", False)
        plain = results()
        monkeypatch.setattr(blocks, "SCRIPTED", True)
        compiled = results()
    finally:
        torch.set_num_threads(before)
    assert len(plain) == len(compiled) == 22
    for a, b in zip(plain, compiled, strict=True):
        assert a.dtype == b.dtype == torch.float64
        assert torch.equal(a, b)


@pytest.mark.parametrize(("covariance", "compute_dtype"), [("full", torch.float64), ("full", torch.float32),
                                                          ("diag", torch.float64)])
def test_block_workers_are_deterministic_and_agree_with_one_thread(covariance, compute_dtype):
    # At 2 torch threads the blocks are shared by 2 workers (block_workers) whose sums are
    # added in worker order: two passes are bitwise equal, and they equal the 1-thread pass up
    # to the order of the sums (measured <= 1e-15 relative in float64, ~1e-7 in float32, the
    # float32 GEMMs' own round-off; tolerances 1e-12 / 1e-5). The caller's thread count is kept.
    from pyro_vi.models.gmm.model import block_rows, block_workers

    x = _mixture(20_000, 12, 4, seed=5)
    gmm, data = GaussianMixture(4, covariance=covariance, compute_dtype=compute_dtype).prepare(x)
    params = gmm.global_step(gmm.init_stats(data, generator=torch.Generator().manual_seed(0)), None)
    assert 20_000 > 2 * block_rows(12 * 13 // 2 + 12, 8)  # several blocks per worker
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gmm.local_step(data, params)
        torch.set_num_threads(2)
        assert block_workers(data, 10) == 2
        a, b = gmm.local_step(data, params), gmm.local_step(data, params)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    tol = 1e-12 if compute_dtype == torch.float64 else 1e-5
    for s, t, u in zip(a.stats, b.stats, one.stats, strict=True):
        assert torch.equal(s, t)
        torch.testing.assert_close(s, u, rtol=tol, atol=tol * float(u.abs().max()))
    assert torch.equal(a.elbo, b.elbo)
    assert float(a.elbo) == pytest.approx(float(one.elbo), rel=tol)



@pytest.mark.parametrize("compute_dtype", [None, torch.float32])
def test_block_workers_run_in_a_forked_child(compute_dtype):
    # the parent's pool has no threads in a child forked after a 2-thread pass: the child makes
    # its own (without the at-fork reset it would wait for ever on the parent's); float32 runs
    # its products in oneDNN where torch has it, in the child too
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    x = _mixture(20_000, 12, 4, seed=6)
    gmm, data = GaussianMixture(4, compute_dtype=compute_dtype).prepare(x)
    params = gmm.global_step(gmm.init_stats(data, generator=torch.Generator().manual_seed(0)), None)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        want = float(gmm.local_step(data, params).elbo)
        ctx = mp.get_context("fork")
        with ctx.Pool(1) as pool:
            got = pool.apply_async(_child_pass, (gmm, data, params)).get(timeout=60)
    finally:
        torch.set_num_threads(before)
    assert got == want


def _child_pass(gmm, data, params):
    torch.set_num_threads(2)
    return float(gmm.local_step(data, params).elbo)


def test_the_written_out_global_elbo_matches_the_sum_of_factor_kls():
    # GaussianMixture.global_elbo (full covariance) writes the Dirichlet and Normal-Wishart KLs
    # out with the prior's terms cached; the contract's default sums each factor's own kl().
    # Same closed forms in another order: measured <= 3e-16 relative; 1e-13 leaves room while
    # a dropped term (log Gamma_D(nu0/2) is ~100 nats here) moves it by far more. After a
    # few sweeps and after a move to a fresh start, so the cache is hit and refilled.
    from pyro_vi.cavi.model import ConjugateModel

    x = _mixture(400, 5, 3, seed=3)
    for k in (3, 7):
        fit = cavi(GaussianMixture(k), x, max_iter=4, tol=0.0, seed=1, warn=False)
        gmm = fit.cavi_model
        fresh = gmm.global_step(gmm.init_stats(x, generator=torch.Generator().manual_seed(5)), None)
        for params in (fit.params, fresh):
            got = float(gmm.global_elbo(params))
            want = float(ConjugateModel.global_elbo(gmm, params))
            assert got == pytest.approx(want, rel=1e-13)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_float32_block_products_go_to_onednn_and_agree_with_torch(covariance, monkeypatch):
    # the route is taken (its products counted by torch's profiler, which sees the operator
    # from plain and compiled block loops alike) and gives the statistics torch.mm gives, to
    # float32 round-off: both sum the same float32 products in another order, 2e-7 relative per
    # block sum measured here; 1e-5 is a 50x margin, a wrong layout would be O(1)
    import pyro_vi.linalg

    if not pyro_vi.linalg.onednn_float32():
        pytest.skip("this build of torch has no usable oneDNN float32 matmul")
    x = _mixture(9000, 12, 5, seed=3)
    gmm, data = GaussianMixture(5, covariance=covariance, compute_dtype=torch.float32).prepare(x)
    params = gmm.global_step(gmm.init_stats(data, generator=torch.Generator().manual_seed(2)), None)
    fast, calls = _counting_onednn(lambda: local_pass(gmm, data, params, chunk_size=None))
    assert calls == 2 * -(-9000 // _block_rows(gmm, 12))  # two products per block
    monkeypatch.setattr(pyro_vi.linalg, "ONEDNN_FLOAT32", False)
    slow, calls = _counting_onednn(lambda: local_pass(gmm, data, params, chunk_size=None))
    assert calls == 0
    for a, b in zip(fast.stats, slow.stats, strict=True):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
    assert float(fast.elbo) == pytest.approx(float(slow.elbo), rel=1e-6)


def _counting_onednn(run):
    """``run()`` and how many oneDNN matmuls (``mkldnn::_linear_pointwise``) it made."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = run()
    return out, sum(e.count for e in prof.key_averages() if e.key == "mkldnn::_linear_pointwise")


def _block_rows(gmm: GaussianMixture, d: int) -> int:
    from pyro_vi.models.gmm.model import block_rows, feature_width

    return block_rows(feature_width(d, gmm.covariance == "diag"), 4)


@pytest.mark.parametrize(("rows", "m"), [(37, 37), (37, 20), (37, 1)])
def test_feature_block_views_a_contiguous_buffer_as_a_contiguous_block(rows, m):
    # the unpadded buffer oneDNN reads: every block is a contiguous (feature_rows, m) matrix whose
    # features equal the padded buffer's (the same products, another layout)
    from pyro_vi.models.gmm.model import _features, feature_block, feature_buffer

    d = 6
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, d, dtype=torch.float64, generator=g)
    m0 = torch.zeros(d, dtype=torch.float64)
    packed = feature_block(feature_buffer(d, False, rows, torch.float32, "cpu", padded=False), m)
    padded = feature_block(feature_buffer(d, False, rows, torch.float32, "cpu"), m)
    assert packed.is_contiguous()
    assert packed.shape == padded.shape
    assert not padded.is_contiguous() or m == 1
    a, b = _features(x, m0, False, packed), _features(x, m0, False, padded)
    assert a.is_contiguous()
    assert torch.equal(a, b)


@pytest.mark.parametrize(("n", "blocks", "workers"), [(100_000, 54, 2), (100_000, 53, 2), (9000, 5, 1),
                                                      (7, 3, 2), (1, 1, 2), (5, 9, 4), (0, 1, 1)])
def test_block_bounds_cover_the_rows_in_equal_shares(n, blocks, workers):
    from pyro_vi.models.gmm.model import block_bounds

    bounds = block_bounds(n, blocks, workers)
    sizes = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    assert bounds[0] == 0
    assert bounds[-1] == n
    if n == 0:
        assert sizes == []
        return
    assert len(sizes) >= min(blocks, n // workers * workers or n)  # the blocks asked for, rows allowing
    if n >= workers:
        assert len(sizes) % workers == 0  # every worker the same number of blocks
    assert all(s > 0 for s in sizes)
    assert max(sizes) - min(sizes) <= 1


def test_a_prepared_float32_model_pickles_without_its_caches():
    # the centred copy is tied to one tensor of this process by a weak reference: a pickle drops
    # it (and the other caches), the copy computes the same statistics (it centres block by block,
    # rounding x - m0 once from float64 like the copy did: bitwise equal), the original keeps it
    import pickle

    x = _mixture(5000, 7, 3, seed=12)
    gmm, data = GaussianMixture(3, compute_dtype=torch.float32).prepare(x)
    params = gmm.global_step(gmm.init_stats(data, generator=torch.Generator().manual_seed(0)), None)
    want = gmm.local_step(data, params)
    back = pickle.loads(pickle.dumps(gmm))
    assert all(getattr(back, name) is None for name in GaussianMixture._CACHES)
    assert gmm._centred_copy(data, torch.float32) is not None
    assert back.hyperparams is not None
    got = back.local_step(data, params)
    for a, b in zip(want.stats, got.stats, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(want.elbo, got.elbo)


def test_small_float32_products_stay_in_torch_mm():
    # oneDNN's ~11 µs a call loses to torch.mm below ~1e6 multiply-adds a product (ONEDNN_MIN_MACS,
    # measured): Old Faithful's blocks (K=6, Q+D=5, 272 rows) stay there, the target's go to oneDNN
    import pyro_vi.linalg
    from pyro_vi.models.gmm.model import ONEDNN_MIN_MACS

    if not pyro_vi.linalg.onednn_float32():
        pytest.skip("this build of torch has no usable oneDNN float32 matmul")
    small = torch.zeros(272, 2, dtype=torch.float64)
    large = torch.zeros(20_000, 32, dtype=torch.float64)
    f32 = GaussianMixture(6, compute_dtype=torch.float32)
    assert not f32._onednn(small, torch.float32)
    assert GaussianMixture(16, compute_dtype=torch.float32)._onednn(large, torch.float32)
    assert not GaussianMixture(16)._onednn(large, torch.float64)  # float64: never
    # the rule is the product's size: K · (Q + D) · rows against the threshold, either side of it
    rows = ONEDNN_MIN_MACS // (16 * 560)
    assert GaussianMixture(16, compute_dtype=torch.float32)._onednn(large[:rows + 1], torch.float32)
    assert not GaussianMixture(16, compute_dtype=torch.float32)._onednn(large[:rows - 1], torch.float32)


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none)")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=_CUDA)])
@pytest.mark.parametrize(("covariance", "path", "compute_dtype"), [
    ("full", "triangular", None), ("full", "features", None), ("diag", "features", None),
    ("full", "features", torch.float32), ("diag", "features", torch.float32)])
def test_a_fit_on_the_device_matches_the_cpu_fit_from_the_same_start(device, covariance, path, compute_dtype):
    # The same responsibilities start both fits, so only the device's arithmetic differs: its
    # own GEMM and Cholesky kernels, their summation orders. float64 after 10 sweeps: 1e-10
    # relative (CPU paths agree to 5e-16; a wrong device kernel or a lost transfer moves the
    # ELBO by far more). float32 compute against the float64 CPU fit: 1e-6, the mode's stated
    # precision (2e-9..4e-8 measured on the CPU). On "cpu" both fits are one deterministic
    # computation at one thread and must agree exactly: that runs the test's own code in CI.
    from pyro_vi.cavi.kmeans import initial_responsibilities

    x = _mixture(20_000, 8, 4, seed=7)
    start = initial_responsibilities(x, 4, method="kmeans++", generator=torch.Generator().manual_seed(0))

    def fit(where: str, dtype: torch.dtype | None):
        gmm = GaussianMixture(4, covariance=covariance, init=start.to(where), device=where, compute_dtype=dtype)
        gmm = _on_path(gmm, path) if covariance == "full" else gmm
        return cavi(gmm, x.to(where), max_iter=10, tol=0.0, seed=0, warn=False)

    ref = fit("cpu", None)
    got = fit(device, compute_dtype)
    assert got.params.components.loc.device.type == device
    assert got.params.components.loc.dtype == torch.float64
    if device == "cpu" and compute_dtype is None:
        assert got.elbo == ref.elbo
    else:
        assert got.elbo == pytest.approx(ref.elbo, rel=1e-10 if compute_dtype is None else 1e-6)
