r"""The Bayesian Gaussian mixture of Bishop (2006, §10.2), as CAVI protocol and Pyro pair.

Model (``covariance="full"``; Bishop eqs. 10.37–10.40):

.. math::
    \pi \sim \mathrm{Dir}(\alpha_0),\quad
    \Lambda_k \sim \mathcal{W}(W_0, \nu_0),\quad
    \mu_k \mid \Lambda_k \sim N(m_0, (\beta_0\Lambda_k)^{-1}),\quad
    z_n \sim \mathrm{Cat}(\pi),\quad
    x_n \mid z_n = k \sim N(\mu_k, \Lambda_k^{-1}).

``covariance="diag"`` replaces each Wishart by ``D`` independent Gammas,
:math:`\lambda_{kd} \sim \mathrm{Gam}(\nu_0/2, 1/(2 W_{0,dd}))` — the ``D = 1`` Wishart — and
each Gaussian by a product of univariate ones, so with ``D = 1`` both models coincide.

Mean-field guide: :math:`q(\pi)\prod_k q(\mu_k, \Lambda_k)\prod_n q(z_n)`, with
Dirichlet, Normal-Wishart (or Normal-Gamma) and Categorical factors. This module holds the
priors, the closed-form CAVI updates, the analytic ELBO and the Pyro methods; the Pyro program
and the guides' ``pyro.param`` sites are plain functions in :mod:`pyro_vi.models.gmm.guides`,
the summaries in :mod:`pyro_vi.models.gmm.summary`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import math
import os
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import pandas as pd
import torch
from torch import Tensor

from pyro_vi._checks import as_matrix, check_int, check_positive, check_real, check_seed
from pyro_vi.cavi.kmeans import initial_labels, initial_responsibilities
from pyro_vi.cavi.model import (
    ConjugateModel,
    FittedGuide,
    LabelAlignment,
    Local,
    Stats,
)
from pyro_vi.cavi.summary import loc_marginal, summary_table
from pyro_vi.distributed.collectives import Comm
from pyro_vi.distributed.conjugate import subsample_start
from pyro_vi.factors import Dirichlet, NormalGamma, NormalWishart
from pyro_vi.linalg import inverse_cholesky, onednn_float32
from pyro_vi.models.gmm.blocks import feature_block, fill_features, runner
from pyro_vi.models.gmm.guides import MAX_PLATE_NESTING, mixture_program, param_sites, sample_latents
from pyro_vi.models.gmm.moves import proposals as move_proposals
from pyro_vi.models.gmm.params import GMMHyperparams, GMMParams
from pyro_vi.models.gmm.priors import covariance_from_scatter, resolve_hyperparams
from pyro_vi.models.gmm.summary import GMMSummary, log_predictive_components, summarize

__all__ = ["GMMHyperparams", "GMMParams", "GaussianMixture", "replace_model"]

_LOG_2PI = math.log(2.0 * math.pi)

#: Bytes of features per block of the quadratic-feature local step (:func:`block_rows`). Measured
#: on the transposed blocks (1 thread, N=1e5, D=32, K=16, ms per local pass, median of 5, quiet
#: machine) at 0.5 / 1 / 2 / 4 / 8 / 16 MiB: full float64 109 / 108 / 99 / 94 / 93 / 116, float32
#: 66 / 58 / 52 / 49 / 49 / 63, diag float64 18.5 / 17.1 / 16.8 / 16.7 / 17.7 / 18.0. With the
#: float32 products in oneDNN (unpadded blocks, ms per sweep, 1 / 2 threads) at 2 / 3 / 4 / 6 / 8 /
#: 12 MiB: 34.3 / 31.2 / 28.8 / 28.2 / 28.5 / 31.3 and 21.4 / 18.9 / 16.9 / 16.4 / 17.7 / 22.1.
BLOCK_BYTES = 4 * 2**20

#: Smallest block product (K · (Q+D) · rows multiply-adds) that the float32 mode sends to oneDNN.
#: oneDNN spends ~11 µs a call against ~1.5 µs for ``torch.mm``, so small products stay there.
#: Measured (1 thread, µs per product, oneDNN / torch.mm, log-rho and statistics products):
#: 8e3 MACs (K=6, Q+D=5, 272 rows) 12.1/1.4 and 11.7/2.1; 6e5 (16, 20, 2000) 17.8/15.8 and
#: 18.8/22.4; 8e5 (3, 14, 20000) 41.0/42.2 and 68.9/43.6; 1.1e6 (4, 495, 569) 28.6/50.1 and
#: 56.5/47.3; 1.8e6 (8, 44, 5000) 34.1/54.7 and 48.2/60.2; 1.7e7 (16, 560, 1872) 164/398 and 189/392.
ONEDNN_MIN_MACS = 1_000_000

#: Full covariance takes the quadratic-feature (vech) path for ``D <= max_d`` at the first
#: ``(min_k, max_d)`` row with ``K >= min_k``, else the per-component triangular product
#: (:func:`prefers_features`). Measured by ``python -m benchmarks.scaling --sections crossover``
#: (N=5e4, 1 thread, float64, one process, 5 rounds alternating; load about 1 on 2 cores), CPU
#: time triangular / features (> 1: features faster), median of rounds, on two machines, an AMD
#: EPYC (Zen 5) / an Intel Xeon (AVX-512; the compiled block loop of :mod:`.blocks`):
#:
#: ====  ===========  ===========  ===========
#:  D    K=4          K=8          K=16
#: ====  ===========  ===========  ===========
#:  8    5.85 / 2.66  3.29 / 4.01  3.39 / 4.38
#:  16   1.80 / 1.52  2.42 / 2.24  2.58 / 3.06
#:  24   1.56 / 1.05  1.76 / 1.66  2.44 / 2.40
#:  32   1.20 / 0.76  1.59 / 1.29  2.14 / 2.02
#:  40   1.06 / 0.66  1.57 / 1.14  1.75 / 1.72
#:  48   0.92 / 0.61  1.17 / 1.05  1.61 / 1.55
#:  56   0.90 / 0.55  1.30 / 1.00  1.85 / 1.89
#:  64   0.89 / 0.52  1.40 / 1.44  1.74 / 3.24
#: ====  ===========  ===========  ===========
#:
#: At K=4 the crossover lies at D ~ 40 on the AMD machine and at D ~ 24 on the Intel one; the
#: rule takes the features up to D = 24, where both machines gain (at D = 32 the AMD machine
#: would gain 1.20x and the Intel one lose 1/0.76 = 1.32x). From K=8 the features win or tie
#: at every D measured, up to 64, on both. Above D=64 (unmeasured) the triangular path is kept.
VECH_MAX_D_BY_K: tuple[tuple[int, int], ...] = ((8, 64), (1, 24))


def prefers_features(d: int, k: int) -> bool:
    """Whether the full-covariance local step is faster on the quadratic-feature path (:data:`VECH_MAX_D_BY_K`)."""
    return any(d <= max_d for min_k, max_d in VECH_MAX_D_BY_K if k >= min_k)


def pair_index(d: int, device: Any = None) -> tuple[Tensor, Tensor]:
    r"""Rows ``i`` and columns ``j`` of the ``D(D+1)/2`` products :math:`x'_i x'_j` of the features, in order.

    The products are taken by cyclic diagonals: shift :math:`s = 0, 1, \dots, \lceil D/2\rceil - 1`
    gives the ``D`` pairs :math:`(i, (i + s) \bmod D)`, and for even ``D`` the shift ``D/2`` its
    first ``D/2`` (the rest repeat them). Each unordered pair appears once; ``i == j`` only at
    ``s = 0``. This order lets :func:`_features` build the whole triangle in one broadcast product.
    The tensors are cached per ``(d, device)`` (every sweep asks for them): do not write to them.
    """
    return _pair_index(d, str(torch.device("cpu") if device is None else torch.device(device)))


@functools.lru_cache(maxsize=32)
def _pair_index(d: int, device: str) -> tuple[Tensor, Tensor]:
    full = (d + 1) // 2
    i = torch.arange(d, device=device).repeat(full)
    j = (i + torch.arange(full, device=device).repeat_interleave(d)) % d
    if d % 2 == 0:
        h = torch.arange(d // 2, device=device)
        i, j = torch.cat([i, h]), torch.cat([j, h + d // 2])
    return i, j


@functools.lru_cache(maxsize=32)
def _pair_maps(d: int, device: str, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Flat indices, quadratic-form weights and the inverse map of :func:`pair_index`'s pairs.

    Their flat index in a ``(D, D)`` matrix, their weight in a quadratic form (1 on the
    diagonal, 2 off it, in ``dtype``), and for each of the ``D·D`` entries the pair it holds
    (the symmetric matrix as one gather). Cached: do not write to them.
    """
    i, j = _pair_index(d, device)
    flat = i * d + j
    weight = torch.where(i == j, 1.0, 2.0).to(dtype)
    back = torch.empty(d * d, dtype=torch.long, device=device)
    pairs = torch.arange(i.shape[0], device=device)
    back[flat] = pairs
    back[j * d + i] = pairs
    return flat, weight, back


def feature_width(d: int, diag: bool) -> int:
    """Features per point: ``Q + D`` with :math:`Q = D(D+1)/2` (full), ``2D`` (diag)."""
    return 2 * d if diag else d * (d + 1) // 2 + d


def feature_rows(d: int, diag: bool) -> int:
    """Rows of the :func:`_features` buffer: the ``Q + D`` features and a second copy of ``x'`` (full only)."""
    return feature_width(d, diag) + (0 if diag else d)


def feature_buffer(d: int, diag: bool, rows: int, dtype: torch.dtype, device: Any, *,
                   padded: bool = True) -> Tensor:
    """An empty :func:`_features` buffer for blocks of up to ``rows`` points, ``(feature_rows, rows)``.

    Full covariance, ``padded``: its rows are padded by 16 to 32 elements, so that their stride
    is never a multiple of 4 KiB: MKL's GEMMs read the features down the columns, and 4 KiB
    strides alias in the L1 cache (float32, 2048 rows: 0.029 s against 0.021 s per pass of the
    first GEMM, measured here). Not ``padded``: one contiguous block, which :func:`feature_block`
    views as a contiguous ``(feature_rows, m)`` matrix for any block of ``m`` rows, the layout
    oneDNN's products need (:func:`pyro_vi.linalg.mm_t`; a padded one costs them a copy).
    Diag: the transpose of a ``(rows, 2D)`` buffer, a point's ``2D`` features contiguous; they
    are too few for the products to gain from running along the points, and centring in the
    data's own layout is 1.8 ms per sweep cheaper at N=1e5, D=32.
    """
    if diag:
        return torch.empty(rows, 2 * d, dtype=dtype, device=device).T
    if not padded:
        return torch.empty(feature_rows(d, diag), rows, dtype=dtype, device=device)
    stride = -(-rows // 16) * 16 + 16
    return torch.empty(feature_rows(d, diag), stride, dtype=dtype, device=device)[:, :rows]


def _features(x: Tensor, m0: Tensor, diag: bool, out: Tensor,
              centred: Tensor | None = None) -> Tensor:
    r"""Quadratic features of ``x`` ``(n, D)`` in ``out``, ``(Q + D, n)``.

    See :func:`pyro_vi.models.gmm.blocks.fill_features`; ``out`` is a :func:`feature_buffer` for
    at least ``n`` points.
    """
    return fill_features(feature_block(out, x.shape[0]), x, m0, centred, diag)


class _Kept(dict):  # type: ignore[type-arg]
    """A dict that can be weakly referenced: the float32 mode's centred copy and what it was made from."""

    __slots__ = ("__weakref__",)


#: Lowest exponent passed to ``exp`` in the softmax: above the dtype's smallest normal number
#: (exp(-80) = 1.8e-35 > 1.2e-38 in float32; exp(-700) > 2.2e-308 in float64), so no denormal is
#: ever computed; a responsibility that small changes no statistic at the dtype's precision.
_EXP_FLOOR = {torch.float32: -80.0, torch.float64: -700.0, torch.float16: -10.0,
              torch.bfloat16: -80.0}


def block_rows(width: int, element_size: int) -> int:
    """Rows per block of the feature path: about :data:`BLOCK_BYTES` of features, 256..16384 rows.

    The same with any number of threads: threads share the blocks (:func:`block_workers`), each
    running one block at a time on one core.
    """
    return max(256, min(16384, BLOCK_BYTES // max(1, width * element_size)))


def block_bounds(n: int, blocks: int, workers: int) -> list[int]:
    """Row bounds of the feature path's blocks: at least ``blocks`` of them, a multiple of ``workers``, equal to a row.

    Block ``j`` holds rows ``bounds[j]:bounds[j + 1]``; worker ``w`` takes blocks ``w, w + T, ...``,
    so every worker has the same number of blocks and the same rows to one block's row (a short
    last block left one worker a block's part less: 0.3 ms of a 14 ms pass at 2 threads, N=1e5,
    D=32, K=16, measured here). Never more blocks than rows (with fewer rows than workers, one
    row a block), and no block for no rows.
    """
    if n == 0:
        return [0]
    count = -(-max(1, blocks) // workers) * workers
    count = min(count, n // workers * workers) if n >= workers else n
    return [n * j // count for j in range(count + 1)]


def block_workers(data: Tensor, blocks: int) -> int:
    """How many threads run the feature path's blocks: torch's thread count on the CPU, else 1.

    On the CPU each of ``torch.get_num_threads()`` workers runs every ``T``-th block with torch at
    one thread (:func:`single_threaded`), and their sums are added in worker order, so a fit is
    deterministic for a given thread count. Splitting the blocks scales better than splitting
    each GEMM: the skinny ``(K, Q+D)`` products gain only 1.5x from MKL's own 2 threads in
    float32 (measured here: local pass at N=1e5, D=32, K=16, 2 cores: torch 2 threads 1.50x,
    2 block workers 1.98x; float64 1.72x and 1.93x; float32 in oneDNN, sweep at 2 threads:
    17.9 ms with oneDNN's own threads, 15.3 ms with 2 block workers, 27.5 ms at one). The
    workers' loop is compiled (:mod:`pyro_vi.models.gmm.blocks`) and runs without the GIL, which
    a plain Python loop hands back and forth at every torch call (sweep speed-up at 2 threads,
    N=1e5, D=32, K=16, Intel Xeon: plain loop 1.57x float32 and 1.73x float64, compiled 2.13x
    and 2.07x). CUDA runs the blocks in order (one stream).
    """
    if data.device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), blocks))


F = TypeVar("F", bound=Callable[..., Any])


def _one_thread(method: F) -> F:
    """Run ``method`` (a sweep's small ``(K, D, D)`` work) at one torch thread.

    Between two block passes the global step and KLs gain nothing from threads, and their
    batched products and Cholesky factors, run at several, leave OpenMP's idle threads spinning
    into the next pass's block workers: N=1e5, D=32, K=16, 2 threads, sweep speed-up 1.68x
    (float64) and 1.53x (float32) with them threaded, 1.87x and 1.79x at one (measured here).
    """
    @functools.wraps(method)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if torch.get_num_threads() == 1:
            return method(*args, **kwargs)
        with single_threaded():
            return method(*args, **kwargs)

    return cast(F, wrapped)


_POOLS: dict[int, ThreadPoolExecutor] = {}
# a forked child has the pools but none of their threads: it starts its own
os.register_at_fork(after_in_child=_POOLS.clear)


def _pool(workers: int) -> ThreadPoolExecutor:
    """One lasting pool per worker count: new threads each pass cost MKL its per-thread set-up."""
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="pyro-vi-blocks")
    return _POOLS[workers]


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """One torch (and MKL) thread inside the block, the calling thread's count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _moments(x: Tensor, mean: Tensor, covariance: str, *, scatter: bool,
             rows: int = 8192) -> tuple[Tensor, Tensor | None, float]:
    r"""``mean``, the centred scatter and :math:`\max_{n,j}|x_{nj} - \bar x_j|`, in blocks of ``rows``.

    The scatter is :math:`\sum_n (x_n - \bar x)(x_n - \bar x)^T` (``"diag"``: its diagonal),
    or None when ``scatter=False``. Two-pass and centred like
    :func:`~pyro_vi.models.gmm.priors.default_covariance`, but block by block: no ``(N, D)``
    temporary (at N=1e6, D=32 a centred copy alone is the size of the data).
    """
    s = None
    if scatter:
        d = x.shape[1]
        s = torch.zeros((d,) if covariance == "diag" else (d, d), dtype=x.dtype, device=x.device)
    big = 0.0
    for i in range(0, x.shape[0], rows):
        dev = x[i:i + rows] - mean
        big = max(big, float(dev.abs().amax()))
        if s is not None:
            s += dev.square().sum(0) if covariance == "diag" else dev.T @ dev
    return mean, s, big


def _check_spread(x: Tensor, big: float) -> None:
    """:func:`~pyro_vi._checks.check_spread` of ``x`` given its largest deviation ``big`` (from :func:`_moments`).

    The same test and messages; the library check builds two ``(N, D)`` temporaries.
    """
    info = torch.finfo(x.dtype)
    n = max(1, x.shape[0])
    if not math.isfinite(big) or big > math.sqrt(info.max / n):
        raise ValueError(
            f"x is too large for {x.dtype}: its deviations from the mean reach {big:.3g}, so their "
            f"squares (summed over {n} rows) overflow; rescale x (e.g. divide by its standard "
            "deviation) and transform the fit back")
    if 0.0 < big < math.sqrt(info.tiny) / info.eps:
        raise ValueError(
            f"x is too small for {x.dtype}: its deviations from the mean are at most {big:.3g}, so "
            "their squares underflow; rescale x (e.g. divide by its standard deviation)")


class GaussianMixture(ConjugateModel[Tensor, GMMParams, Stats]):
    r"""Bayesian Gaussian mixture with a mean-field guide, fitted by CAVI or SVI.

    Parameters
    ----------
    n_components : int
        K >= 1.
    covariance : {"full", "diag"}, keyword-only
        Normal-Wishart or per-dimension Normal-Gamma components.
    init : {"kmeans++", "kmeans", "random"} or Tensor
        How CAVI starts: seeded k-means++ seeding with hard assignments, k-means++ seeding then
        Lloyd's k-means to convergence (scikit-learn's default start), uniform random soft
        assignments, or an explicit ``(N, K)`` tensor of responsibilities (the seed is the
        engine's ``seed``; a tensor start ignores it). Restarts alone leave mixtures with
        more components than clusters at poor optima; ``cavi(gmm, x, n_init=10,
        screen_tol=1e-4, moves=10)`` adds split and merge moves of the best fit
        (:meth:`proposals`), which reached scikit-learn's best ELBO on five data sets in 15 of
        15 fits in less of its time (``benchmarks/gmm_starts.py``).
    weight_concentration : float, optional
        :math:`\alpha_0 > 0`. Default ``1/K``.
    mean_prior : array (D,), optional
        :math:`m_0`. Default: the data mean.
    mean_precision : float
        :math:`\beta_0 > 0`. Default 1.
    covariance_prior : array (D, D) or (D,), optional
        :math:`W_0^{-1}`. Default: the empirical covariance of the data when it is positive
        definite, else the diagonal of variances with zeros replaced by 1 ("diag": the
        variances).
    degrees_of_freedom : float, optional
        :math:`\nu_0 > D - 1`. Default ``D``.
    dtype, device
        Where the fit runs (float64 on the CPU by default).
    compute_dtype : torch.dtype, optional, keyword-only
        Precision of the local step's GEMMs (default: ``dtype``). ``torch.float32`` runs the
        quadratic-feature products on one float32 copy of the centred data, ``(D, N)``, that
        :meth:`prepare` makes once (``N·D·4`` bytes, half the float64 data, held while the data
        live), sums each block's statistics and log-normalisers in float32 and accumulates them
        over blocks in ``dtype``; global steps, KLs and the ELBO stay in ``dtype``. On the CPU
        the two block products go to oneDNN's float32 matmul where torch has it
        (:func:`pyro_vi.linalg.mm_t`; ``pyro_vi.linalg.ONEDNN_FLOAT32 = False`` keeps them in
        ``torch.mm``): at N=1e5, D=32, K=16 on an AMD EPYC (Zen 5), one thread, a sweep took
        27 ms against 51 ms in ``torch.mm`` (MKL, which runs AVX2 kernels there); on an Intel
        Xeon, where MKL runs AVX-512, the two tie (61.7 and 62.2 ms).

    .. note::
        On the CPU with ``torch.get_num_threads() = T > 1``, the feature path's blocks are
        shared by ``T`` block workers, each at one torch thread (:func:`block_workers`) and
        each running the compiled block loop of :mod:`pyro_vi.models.gmm.blocks` without the
        GIL, and the global step and KLs run at one thread; a fit is deterministic for a given
        ``T``, and differs from a 1-thread fit by the order of its sums only.

    .. warning::
        ``compute_dtype=torch.float32`` loses precision: each point's log-responsibility
        carries a relative error of about ``1e-7`` times its Mahalanobis term, so the ELBO
        and the statistics agree with a float64 fit to about ``1e-6`` relative (tested on Old
        Faithful, iris, wine and N=1e5 synthetic data), not to round-off; ``tol`` below
        ``1e-6`` may then stop on noise, and the engine's monotonicity allowance is
        ``1000 · eps(float32) ≈ 1.2e-4`` relative (:meth:`compute_eps`). Data far from its
        mean relative to its spread lose digits first (the data are centred on the prior mean
        in ``dtype`` before conversion, which removes a common offset).

    These defaults are scikit-learn's ``BayesianGaussianMixture`` defaults.

    Examples
    --------
    >>> from pyro_vi import cavi, load_old_faithful
    >>> gmm = GaussianMixture(6, weight_concentration=1e-3)
    >>> fit = cavi(gmm, load_old_faithful(standardize=True), seed=0, max_iter=1000)
    >>> fit.cavi_model.summary(fit.params).n_effective
    2
    """

    name = "gmm"
    max_plate_nesting = MAX_PLATE_NESTING

    def __init__(
        self,
        n_components: int,
        *,
        covariance: str = "full",
        init: str | Tensor = "kmeans++",
        weight_concentration: float | None = None,
        mean_prior: Any = None,
        mean_precision: float = 1.0,
        covariance_prior: Any = None,
        degrees_of_freedom: float | None = None,
        dtype: Any = torch.float64,
        device: Any = None,
        compute_dtype: Any = None,
    ) -> None:
        super().__init__(dtype=dtype, device=device)
        if compute_dtype is not None and compute_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"compute_dtype must be torch.float32 or torch.float64, got {compute_dtype!r}")
        #: Precision of the local step's GEMMs.
        self.compute_dtype: torch.dtype = self.dtype if compute_dtype is None else compute_dtype
        #: Local-step path for full covariance: None chooses by D and K (:func:`prefers_features`).
        self._path: str | None = None
        #: The mixed-precision mode's centred copy of the prepared data (:meth:`_keep_centred_copy`).
        self._centred: dict[str, Any] | None = None
        #: (hyper-parameters, :meth:`prior_params` built from them).
        self._prior: tuple[GMMHyperparams, GMMParams] | None = None
        #: (a q(mu, Lambda) factor, :meth:`_wishart_terms` of it): shared by a sweep's users.
        self._terms: tuple[NormalWishart, dict[str, Tensor]] | None = None
        #: (:meth:`prior_params`' record, :meth:`_prior_consts` from it).
        self._consts: tuple[GMMParams, dict[str, Tensor]] | None = None
        self.n_components = check_int("n_components", n_components, minimum=1)
        if covariance not in ("full", "diag"):
            raise ValueError(f"covariance must be 'full' or 'diag', got {covariance!r}")
        if not isinstance(init, str | Tensor):
            raise TypeError(f"init must be a method name or a Tensor, got {type(init).__name__}")
        if isinstance(init, str) and init not in ("kmeans++", "kmeans", "random"):
            raise ValueError(f"init must be 'kmeans++', 'kmeans', 'random' or a responsibility tensor, "
                             f"got {init!r}")
        self.covariance = covariance
        self.init = init
        self._spec = dict(
            weight_concentration=None if weight_concentration is None
            else check_positive("weight_concentration", weight_concentration),
            mean_prior=mean_prior,
            mean_precision=check_positive("mean_precision", mean_precision),
            covariance_prior=covariance_prior,
            degrees_of_freedom=None if degrees_of_freedom is None
            else check_positive("degrees_of_freedom", degrees_of_freedom))
        #: The resolved hyper-parameters (None until :meth:`resolve` or :meth:`prepare`).
        self.hyperparams: GMMHyperparams | None = None

    #: Per-process caches, rebuilt on use: a pickled model (to another process, a file) drops them.
    _CACHES = ("_centred", "_prior", "_terms", "_consts")

    def __getstate__(self) -> dict[str, Any]:
        """The model's state without :attr:`_CACHES`.

        The mixed-precision mode's centred copy belongs to one data tensor of this process (held
        by a weak reference, which cannot be pickled); the others are derived from the state.
        """
        state = self.__dict__.copy()
        state.update(dict.fromkeys(self._CACHES))
        return state

    def __repr__(self) -> str:
        resolved = "resolved" if self.hyperparams else "auto"
        return (f"GaussianMixture(n_components={self.n_components}, "
                f"covariance={self.covariance!r}, hyperparams={resolved})")

    # ----------------------------------------------------------------------------- priors
    def resolve(self, x: Any) -> GaussianMixture:
        """A copy with every prior concrete (data-dependent defaults taken from ``x``).

        See :func:`~pyro_vi.models.gmm.priors.resolve_hyperparams` for the defaults.

        Raises ``ValueError`` for a non-PD covariance prior, ``ν0 <= D - 1`` or a mean prior
        of the wrong shape.
        """
        x = as_matrix(x, dtype=self.dtype, device=self.device)
        if self.hyperparams is not None:
            return self._resolve_from(x, None, None)
        mean = x.mean(0)
        return self._resolve_from(x, mean, _moments(x, mean, self.covariance,
                                                    scatter=self._needs_scatter())[1])

    def _needs_scatter(self) -> bool:
        return self.hyperparams is None and self._spec["covariance_prior"] is None

    def _resolve_from(self, x: Tensor, mean: Tensor | None, scatter: Tensor | None) -> GaussianMixture:
        """:meth:`resolve` given the column ``mean`` and centred ``scatter`` of ``x`` (block sums).

        The defaults are those of :func:`~pyro_vi.models.gmm.priors.resolve_hyperparams`; passing
        them in keeps its ``x - mean`` copy of the data out of the fit's peak memory.
        """
        if self.hyperparams is not None:
            if self.hyperparams.mean_prior.shape[0] != x.shape[1]:
                raise ValueError(f"x has D={x.shape[1]} columns but the prior was resolved "
                                 f"for D={self.hyperparams.mean_prior.shape[0]}")
            return self
        spec = dict(self._spec)
        if spec["mean_prior"] is None:
            spec["mean_prior"] = mean
        if spec["covariance_prior"] is None and scatter is not None:
            spec["covariance_prior"] = covariance_from_scatter(scatter, x.shape[0], self.covariance)
        new = replace_model(self)
        new.hyperparams = resolve_hyperparams(spec, x, n_components=self.n_components,
                                              covariance=self.covariance)
        return new

    def _hyperparams(self) -> GMMHyperparams:
        if self.hyperparams is None:
            raise RuntimeError("priors are not resolved: call gmm.resolve(x) or use cavi()")
        return self.hyperparams

    def _resolved(self, x: Tensor) -> GaussianMixture:
        return self if self.hyperparams is not None else self.resolve(x)

    def prior_params(self) -> GMMParams:
        r"""The prior as factors of the guide's families: :math:`p(\pi)`, :math:`p(\mu,\Lambda)`.

        Both are fixed, so the contract's default :meth:`global_elbo`,
        :math:`-\mathrm{KL}(q(\pi)\|p(\pi)) - \sum_k \mathrm{KL}(q(\mu_k,\Lambda_k)\|p(\mu_k,\Lambda_k))`,
        is Bishop's (2006) eqs. 10.73 + 10.74 − 10.76 − 10.77. Built once per resolved
        hyper-parameters (the KLs ask for it every sweep; its Cholesky factor cost 7 % of a sweep
        on iris).
        """
        p = self._hyperparams()
        cached = self._prior
        if cached is not None and cached[0] is p:
            return cached[1]
        prior = self._build_prior(p)
        self._prior = (p, prior)
        return prior

    def _build_prior(self, p: GMMHyperparams) -> GMMParams:
        k, d = self.n_components, p.mean_prior.shape[0]
        ref = p.mean_prior

        def full(shape: tuple[int, ...], value: float) -> Tensor:
            return torch.full(shape, value, dtype=ref.dtype, device=ref.device)

        weights = Dirichlet(full((k,), p.weight_concentration))
        if self.covariance == "full":
            tril = inverse_cholesky(p.covariance_prior, where="GMM prior: covariance_prior")
            comps: NormalWishart | NormalGamma = NormalWishart(
                p.mean_prior.expand(k, d), full((k,), p.mean_precision),
                tril.expand(k, d, d), full((k,), p.degrees_of_freedom))
        else:
            comps = NormalGamma(p.mean_prior.expand(k, d), full((k, d), p.mean_precision),
                                full((k, d), 0.5 * p.degrees_of_freedom),
                                (0.5 * p.covariance_prior).expand(k, d))
        return GMMParams(weights, comps)

    # -------------------------------------------------------------------- CAVI methods
    def prepare(self, data: Any) -> tuple[GaussianMixture, Tensor]:
        """Validate ``data`` (``(N, D)``, finite, floating, ``N >= K``) and resolve priors."""
        x = as_matrix(data, dtype=self.dtype, device=self.device, min_rows=self.n_components)
        mean, scatter, big = _moments(x, x.mean(0), self.covariance, scatter=self._needs_scatter())
        _check_spread(x, big)  # ×1e300 data: blame the data, not the prior derived from it
        model = self._resolve_from(x, mean, scatter)
        if model.compute_dtype != model.dtype:
            model = replace_model(model)
            model._keep_centred_copy(x)
        return model, x

    def init_stats(self, data: Tensor, *, generator: torch.Generator) -> Stats:
        """Statistics of the initial responsibilities the ``init`` option names."""
        init = self.init
        if isinstance(init, Tensor):
            r = init.to(dtype=data.dtype, device=data.device)
            if r.shape != (data.shape[0], self.n_components) or not torch.isfinite(r).all() \
                    or (r < 0).any() or not torch.allclose(r.sum(-1), torch.ones_like(r[:, 0])):
                raise ValueError(f"init responsibilities must be ({data.shape[0]}, "
                                 f"{self.n_components}), non-negative, rows summing to 1")
        elif init in ("kmeans", "kmeans++"):
            # seeding and Lloyd on the centred data (the offset subtracted chunk by chunk): their
            # distances expand |x|^2 - 2x.c + |c|^2, which at an offset of 1e8 spreads would
            # cancel to noise. Hard labels, so no (N, K) array is built.
            labels = initial_labels(data, self.n_components, method=init, generator=generator,
                                    offset=self._hyperparams().mean_prior)
            return self._label_stats(data, labels)
        else:
            r = initial_responsibilities(self._centre(data), self.n_components, method=init,
                                         generator=generator)
        return self._resp_stats(data, r)

    def _resp_stats(self, data: Tensor, r: Tensor) -> Stats:
        """:meth:`_stats` of given responsibilities ``r`` ``(N, K)``, block by block (no centred copy)."""
        return self._block_sums(data, self.dtype, given=r)[0]

    def prepare_shard(self, data: Any, *, comm: Comm) -> tuple[GaussianMixture, Tensor]:
        r""":meth:`prepare` for one rank's rows: data-derived priors from sums over all ranks.

        The default :math:`m_0` (the data mean) and :math:`W_0^{-1}` (the unbiased covariance)
        come from :math:`\sum_r\sum_n x_n` and the centred scatter summed over ranks, so every
        rank gets the priors of the concatenated rows; ``N >= K`` is checked on the total.
        """
        x = as_matrix(data, dtype=self.dtype, device=self.device)
        _check_spread(x, _moments(x, x.mean(0), self.covariance, scatter=False)[2])
        spec = dict(self._spec)
        n_rows = torch.tensor(float(x.shape[0]), dtype=x.dtype)
        if self.hyperparams is None and (spec["mean_prior"] is None or spec["covariance_prior"] is None):
            total, count = comm.sum((x.sum(0), n_rows))
            n, mean = int(count), total / count
            scatter = _moments(x, mean, self.covariance, scatter=True)[1]
            assert scatter is not None
            (scatter,) = comm.sum((scatter,))
            if spec["mean_prior"] is None:
                spec["mean_prior"] = mean
            if spec["covariance_prior"] is None:
                spec["covariance_prior"] = covariance_from_scatter(scatter, n, self.covariance)
        else:
            (count,) = comm.sum((n_rows,))
            n = int(count)
        if n < self.n_components:
            raise ValueError(f"x has N={n} rows over all ranks, fewer than the "
                             f"{self.n_components} needed")
        if self.hyperparams is not None:
            return self.resolve(x), x
        new = replace_model(self)
        new.hyperparams = resolve_hyperparams(spec, x, n_components=self.n_components,
                                              covariance=self.covariance)
        return new, x

    def init_stats_shard(self, data: Tensor, *, generator: torch.Generator, comm: Comm) -> Stats:
        """A tensor start is summed over ranks; a random one is drawn from a subsample of all rows.

        See :func:`pyro_vi.distributed.conjugate.subsample_start`: k-means++ (or Lloyd, or the
        random responsibilities) runs on up to 4096 rows chosen by the seed among all ranks'
        rows, so the start does not depend on the number of ranks.
        """
        if isinstance(self.init, Tensor):
            return comm.sum(self.init_stats(data, generator=generator))
        return subsample_start(self, data, generator=generator, comm=comm)

    def _stats_bytes_per_point(self, data: Tensor) -> int:
        k, d = self.n_components, data.shape[1]
        return (3 * k * d if self.covariance == "full" else 4 * k + 2 * d) * data.element_size()

    def _label_stats(self, data: Tensor, labels: Tensor) -> Stats:
        """:meth:`_stats` of one-hot responsibilities, block by block, without an ``(N, K)`` array."""
        return self._block_sums(data, self.dtype, labels=labels)[0]

    def _block_sums(self, data: Tensor, dtype: torch.dtype, *, coefficients: tuple[Tensor, Tensor] | None = None,
                    labels: Tensor | None = None, given: Tensor | None = None, workers: int | None = None,
                    onednn: bool | None = None) -> tuple[Stats, Tensor]:
        r"""Statistics :math:`R^T\Phi` and :math:`\sum_n` ``lse`` over blocks of :func:`block_rows` rows.

        The responsibilities of a block are the optimal ones from ``coefficients`` ``(g, c)``
        (``(K, Q + D)`` and ``(K, 1)`` in ``dtype``, :meth:`_coefficients`; their log-normalisers
        are summed into the second result), else one-hot ``labels`` ``(N,)``, else ``given``
        ``(N, K)``; features ``(Q + D, n)`` in ``dtype`` (:func:`_features`). The loop is
        :func:`pyro_vi.models.gmm.blocks.block_pass`, compiled on the CPU
        (:func:`~pyro_vi.models.gmm.blocks.runner`). Each worker (:func:`block_workers`) has one
        feature and one ``(K, rows)`` buffer for all its blocks and accumulates its sums in
        place in :attr:`dtype`: the pass allocates nothing that grows with ``N`` (large
        temporaries freed around small live tensors fragment glibc's heap, so RSS would grow by
        one per block). ``onednn`` (default: :meth:`_onednn`) is the product route.
        """
        n, d = data.shape
        diag = self.covariance == "diag"
        width = feature_width(d, diag)
        k = self.n_components
        m0 = self._hyperparams().mean_prior
        centred = self._centred_copy(data, dtype)
        count = -(-n // block_rows(width, dtype.itemsize))
        workers = block_workers(data, count) if workers is None else workers
        bounds = block_bounds(n, count, workers)
        rows = max((b - a for a, b in itertools.pairwise(bounds)), default=1)
        onednn = self._onednn(data, dtype) if onednn is None else onednn
        transposed = onednn and not diag  # oneDNN's R^T Phi comes as its (Q+D, K) transpose
        g, c = coefficients if coefficients is not None else (None, None)
        block_pass = runner(data.device)

        def run(w: int) -> tuple[Tensor, Tensor, Tensor]:
            if w and torch.get_num_threads() != 1:  # a pool thread: one torch thread of its own
                torch.set_num_threads(1)
            total = torch.zeros(*((width, k) if transposed else (k, width)), dtype=self.dtype, device=data.device)
            nk = torch.zeros(k, dtype=self.dtype, device=data.device)
            elbo = torch.zeros((), dtype=self.dtype, device=data.device)
            buf = feature_buffer(d, diag, rows, dtype, data.device, padded=not onednn)
            out = torch.empty(k, rows, dtype=dtype, device=data.device)
            part = None if dtype == self.dtype or onednn else torch.empty(k, width, dtype=dtype, device=data.device)
            block_pass(data, centred, m0, bounds, w, workers, buf, out, total, nk, elbo, part, g, c,
                       _EXP_FLOOR[dtype], labels, given, diag, onednn)
            return total.T if transposed else total, nk, elbo

        if workers == 1:
            return self._unpack(d, *run(0))
        # the unpacking too: its scatter, run at several threads, leaves OpenMP's idle threads
        # spinning into the next pass (6 ms of a 21 ms one at 2 threads, measured here)
        with single_threaded():
            later = [_pool(workers - 1).submit(run, w) for w in range(1, workers)]
            parts = [run(0), *(f.result() for f in later)]  # worker 0 is this thread
            return self._unpack(d, *(sum((p[j] for p in parts[1:]), parts[0][j]) for j in range(3)))

    def _unpack(self, d: int, total: Tensor, nk: Tensor, elbo: Tensor) -> tuple[Stats, Tensor]:
        r"""Summed ``(K, Q + D)`` block sums as :math:`N_k, \sum_n r_{nk}x'_n, \sum_n r_{nk}x'_n x'^T_n`; ``elbo``."""
        k, width = total.shape
        q = width - d
        sx = total[:, q:]
        if self.covariance == "diag":
            return (nk, sx, total[:, :q]), elbo
        back = _pair_maps(d, str(total.device), total.dtype)[2]
        return (nk, sx, total[:, :q].index_select(1, back).view(k, d, d)), elbo

    def _centred_copy(self, data: Tensor, dtype: torch.dtype) -> Tensor | None:
        """The ``(D, N)`` copy of :math:`(x - m_0)^T` in ``dtype`` that :meth:`prepare` made for ``data``, or None.

        Only the mixed-precision mode makes one (:meth:`_keep_centred_copy`), and only for the
        very tensor ``prepare`` returned: a chunk, minibatch or new data is centred block by block.
        """
        kept = self._centred
        if kept is None or dtype == self.dtype or kept.get("mean") is not self._hyperparams().mean_prior:
            return None
        source = kept["data"]()
        return kept["copy"] if source is data and kept["copy"].dtype == dtype else None

    def _keep_centred_copy(self, x: Tensor) -> None:
        r"""Make the mixed-precision mode's one ``(D, N)`` copy of :math:`(x - m_0)^T` in :attr:`compute_dtype`.

        Made block by block (no float64 temporary the size of the data) and held by this model
        only while ``x`` lives (a weak reference): ``N·D·4`` bytes in float32, half the float64
        data. Each sweep then reads its blocks instead of centring, transposing and rounding
        the data again (3 ms of a 0.05 s sweep at N=1e5, D=32, K=16, measured here). The copy
        goes with the data or with the model, whichever goes first: nothing else holds it, so
        fits repeated on the same data do not pile up copies.
        """
        m0 = self._hyperparams().mean_prior
        n, d = x.shape
        # in the feature buffer's layout (feature_buffer): (D, N) rows for full, x's own for diag
        copy_ = (torch.empty(n, d, dtype=self.compute_dtype, device=x.device).T if self.covariance == "diag"
                 else torch.empty(d, n, dtype=self.compute_dtype, device=x.device))
        for i in range(0, n, 8192):
            torch.sub(x[i:i + 8192].T, m0.unsqueeze(-1), out=copy_[:, i:i + 8192])
        kept = _Kept(mean=m0, copy=copy_)
        alive = weakref.ref(kept)  # the data's callback must not keep the copy alive

        def drop(_: object) -> None:
            held = alive()
            if held is not None:
                held.clear()

        kept["data"] = weakref.ref(x, drop)
        self._centred = kept

    def _centre(self, x: Tensor) -> Tensor:
        """``x - m0``: every statistic and quadratic form is computed in these coordinates."""
        return x - self._hyperparams().mean_prior

    def _stats(self, x0: Tensor, r: Tensor) -> Stats:
        r""":math:`N_k, \sum_n r_{nk}x'_n, \sum_n r_{nk}x'_n x'^T_n` (Bishop 10.51–10.53), :math:`x' = x - m_0`.

        ``x0`` is the data centred on the prior mean :math:`m_0` (a constant,
        :meth:`_centre`), which keeps the scatter matrices well conditioned whatever the
        data's offset; diag keeps only the squared deviations.
        """
        n, d = x0.shape
        k = r.shape[1]
        nk = r.sum(0)
        sx = r.T @ x0
        if self.covariance == "full":
            weighted = (r.unsqueeze(-1) * x0.unsqueeze(-2)).reshape(n, k * d)
            sxx = (x0.T @ weighted).reshape(d, k, d).transpose(0, 1)
        else:
            sxx = r.T @ (x0 * x0)
        return nk, sx, sxx

    def log_rho(self, x: Tensor, params: GMMParams) -> Tensor:
        r"""Unnormalised log-responsibilities, shape ``(N, K)`` (Bishop 2006, eq. 10.46).

        .. math::
            \log\rho_{nk} = E[\log\pi_k] + \tfrac12 E[\log|\Lambda_k|] - \tfrac{D}{2}\log 2\pi
                - \tfrac12 E_{\mu_k,\Lambda_k}[(x_n-\mu_k)^T\Lambda_k(x_n-\mu_k)]

        The quadratic form is evaluated in coordinates centred on the prior mean
        :math:`m_0`, :math:`x_n - \mu_k = (x_n - m_0) - (\mu_k - m_0)`, so a large common
        offset of the data (epoch seconds, Kelvin) cancels exactly once, in :meth:`_centre`.
        """
        return self._log_rho_centred(self._centre(x), params)

    def _log_rho_centred(self, x0: Tensor, params: GMMParams) -> Tensor:
        """:meth:`log_rho` of data already centred on the prior mean (``x0 = x - m0``)."""
        comp = params.components
        d = x0.shape[1]
        mc = comp.loc - self._hyperparams().mean_prior  # component means relative to m0
        if isinstance(comp, NormalWishart):
            logdet = comp.precision.expected_logdet()
            shifted = NormalWishart(mc, comp.precision_scale, comp.scale_tril, comp.df)
            maha = shifted.expected_mahalanobis(x0)
        else:
            logdet = comp.precision.expected_log().sum(-1)
            e_lam = comp.concentration / comp.rate  # (K, D)
            maha = ((x0 * x0) @ e_lam.T - 2.0 * x0 @ (e_lam * mc).T
                    + (e_lam * mc**2 + 1.0 / comp.precision_scale).sum(-1))
        return params.weights.expected_log() + 0.5 * logdet - 0.5 * d * _LOG_2PI - 0.5 * maha

    def responsibilities(self, x: Tensor, params: GMMParams) -> Tensor:
        r"""Optimal :math:`r_{nk} = \rho_{nk} / \sum_j \rho_{nj}` (Bishop 2006, eq. 10.49), ``(N, K)``."""
        return torch.softmax(self.log_rho(x, params), -1)

    def local_step(self, data: Tensor, params: GMMParams) -> Local:
        r"""Responsibilities, their statistics, and :math:`\sum_n \log\sum_k \rho_{nk}`.

        With :math:`q(z)` at its optimum, the data terms of the ELBO (Bishop eqs. 10.71, 10.72,
        10.75) collapse to :math:`\sum_n \log \sum_k \rho_{nk}`.

        Two paths, the same numbers to round-off. The *triangular* one (full covariance, small
        ``D``) is :meth:`log_rho` and :meth:`_stats`. The *quadratic-feature* one (diag, and full
        where :func:`prefers_features` says so) uses that both the Mahalanobis
        terms and the scatter statistics are linear in :math:`\phi_n = (\mathrm{vech}(x'_n
        x'^T_n), x'_n)`:

        .. math::
            \log\rho_{nk} = \phi_n^T g_k + c_k,\qquad
            \Big(\sum_n r_{nk}\,\mathrm{vech}(x'_n x'^T_n), \sum_n r_{nk} x'_n\Big) = (R^T\Phi)_k

        with :math:`A_k = \nu_k W_k`, :math:`g_k = -\tfrac12(\mathrm{vech}_2(A_k), -2A_k m'_k)`
        (off-diagonal entries doubled) and :math:`c_k = E\log\pi_k + \tfrac12 E\log|\Lambda_k|
        - \tfrac D2\log 2\pi - \tfrac12(m'^T_k A_k m'_k + D/\beta_k)` (Bishop eqs. 10.46,
        10.64): one ``(n × Q+D)·(Q+D × K)`` GEMM and one :math:`R^T\Phi` GEMM per block of
        :func:`block_rows` rows, about :math:`2NK D(D+1)` flops instead of :math:`4NKD^2`.
        """
        if not self._use_features(data.shape[1]):
            x0 = self._centre(data)
            log_rho = self._log_rho_centred(x0, params)
            return Local(self._stats(x0, torch.softmax(log_rho, -1)), torch.logsumexp(log_rho, -1).sum())
        return self._feature_step(data, params)

    def _onednn(self, data: Tensor, dtype: torch.dtype) -> bool:
        """Whether the feature path's float32 block products go to oneDNN (:func:`pyro_vi.linalg.mm_t`).

        Only in the mixed-precision mode on the CPU, where :func:`pyro_vi.linalg.onednn_float32`
        says oneDNN is usable and a block's product has at least :data:`ONEDNN_MIN_MACS`
        multiply-adds; the features are then laid out for it (:func:`feature_buffer`).
        """
        if not (dtype == torch.float32 and dtype != self.dtype and data.device.type == "cpu"
                and onednn_float32()):
            return False
        d = data.shape[1]
        width = feature_width(d, self.covariance == "diag")
        rows = min(data.shape[0], block_rows(width, dtype.itemsize))
        return self.n_components * width * rows >= ONEDNN_MIN_MACS

    def _use_features(self, d: int) -> bool:
        if self.compute_dtype != self.dtype:
            return True  # mixed precision runs on the feature path at every D
        if self._path is not None:
            return self._path == "features"
        return self.covariance == "diag" or prefers_features(d, self.n_components)

    def _coefficients(self, params: GMMParams, d: int) -> tuple[Tensor, Tensor]:
        """``(K, Q + D)`` feature weights ``g`` and ``(K,)`` constants ``c`` of log rho (see :meth:`local_step`)."""
        comp = params.components
        mc = comp.loc - self._hyperparams().mean_prior
        if isinstance(comp, NormalWishart):
            terms = self._wishart_terms(comp)
            a = terms["w"].mul(comp.df[:, None, None])
            flat, weight, _ = _pair_maps(d, str(a.device), a.dtype)
            quad = a.flatten(1).index_select(1, flat).mul_(weight)
            am = (a * mc.unsqueeze(-2)).sum(-1)  # A_k m'_k: half the time of a batched (D, D)(D, 1) product
            const = (am * mc).sum(-1) + d / comp.precision_scale
            logdet = terms["psi"] + d * math.log(2.0) + 2.0 * terms["logdiag"]  # Bishop eq. 10.65
        else:
            quad = comp.concentration / comp.rate  # E[lambda], (K, D)
            am = quad * mc
            const = (am * mc + 1.0 / comp.precision_scale).sum(-1)
            logdet = comp.precision.expected_log().sum(-1)
        g = torch.cat([quad.mul(-0.5), am], 1)  # -1/2 (vech_2(A), -2 A m')
        c = params.weights.expected_log() + 0.5 * logdet - 0.5 * d * _LOG_2PI - 0.5 * const
        return g, c

    def _feature_step(self, data: Tensor, params: GMMParams) -> Local:
        d = data.shape[1]
        width = feature_width(d, self.covariance == "diag")
        workers = block_workers(data, -(-data.shape[0] // block_rows(width, self.compute_dtype.itemsize)))
        # the coefficients at one thread too: their small batched products, run at several,
        # leave OpenMP's idle threads spinning into the blocks (6-7 ms of a 30 ms pass at 2)
        with single_threaded() if workers > 1 else contextlib.nullcontext():
            return self._optimal_step(data, params, workers)

    def _optimal_step(self, data: Tensor, params: GMMParams, workers: int) -> Local:
        g, c = self._coefficients(params, data.shape[1])
        # (K, Q+D) rows times the (Q+D, rows) features: (K, rows) log rho. A wide product runs
        # ~2x faster than a (rows, Q+D)(Q+D, K) one with its K-column output (1 thread, float64).
        gk, c = g.to(self.compute_dtype), c.to(self.compute_dtype).unsqueeze(-1)
        return Local(*self._block_sums(data, self.compute_dtype, coefficients=(gk, c), workers=workers))

    def proposals(self, data: Tensor, params: GMMParams) -> list[tuple[str, Stats]]:
        """Split and merge moves from ``params``, best first (:func:`pyro_vi.models.gmm.moves.proposals`)."""
        return move_proposals(self, data, params)

    def compute_eps(self) -> float:
        """Machine epsilon of :attr:`compute_dtype`: the engine allows ``1000 ×`` it of relative ELBO decrease.

        float64: ``2.2e-13`` relative; float32: ``1.2e-4`` relative.
        """
        return float(torch.finfo(self.compute_dtype).eps)

    @_one_thread
    def global_step(self, stats: Stats, params: GMMParams | None) -> GMMParams:
        r"""Closed-form updates of :math:`q(\pi)` and :math:`q(\mu_k,\Lambda_k)`.

        With statistics centred on :math:`m_0` (:math:`\bar x'_k = \bar x_k - m_0`), the
        Bishop (2006) updates

        .. math::
            \alpha_k = \alpha_0 + N_k \;(10.58),\quad \beta_k = \beta_0 + N_k \;(10.60),\quad
            m_k = (\beta_0 m_0 + N_k\bar x_k)/\beta_k \;(10.61),\\
            W_k^{-1} = W_0^{-1} + N_k S_k + \tfrac{\beta_0 N_k}{\beta_0+N_k}
                (\bar x_k - m_0)(\bar x_k - m_0)^T \;(10.62),\quad \nu_k = \nu_0 + N_k \;(10.63)

        read :math:`W_k^{-1} = W_0^{-1} + \sum_n r_{nk} x'_n x'^T_n - \beta_k m'_k m'^T_k`, which
        stays defined as :math:`N_k \to 0`. The diagonal model uses the per-dimension
        Normal-Gamma analogue: :math:`a_{k} = a_0 + N_k/2`,
        :math:`b_{kd} = b_{0d} + \tfrac12(\sum_n r_{nk} x'^2_{nd} - \beta_k m'^2_{kd})`.
        """
        p = self._hyperparams()
        nk, sx, sxx = stats
        alpha = p.weight_concentration + nk
        beta = p.mean_precision + nk
        mc = sx / beta.unsqueeze(-1)
        loc = p.mean_prior + mc
        if self.covariance == "full":
            w_inv = p.covariance_prior + sxx - beta[:, None, None] * (mc.unsqueeze(-1) * mc.unsqueeze(-2))
            tril = inverse_cholesky(w_inv, where="GMM global step (Bishop eq. 10.62): W_k^-1")
            comps: NormalWishart | NormalGamma = NormalWishart(loc, beta, tril,
                                                               p.degrees_of_freedom + nk)
        else:
            conc = (0.5 * p.degrees_of_freedom + 0.5 * nk).unsqueeze(-1).expand_as(loc)
            rate = 0.5 * p.covariance_prior + 0.5 * (sxx - beta.unsqueeze(-1) * mc**2)
            rate = rate.clamp_min(0.5 * p.covariance_prior * 1e-12)
            comps = NormalGamma(loc, beta.unsqueeze(-1).expand_as(loc), conc, rate)
        return GMMParams(Dirichlet(alpha), comps)

    @_one_thread
    def global_elbo(self, params: GMMParams) -> Tensor:
        r"""The contract's :math:`-\mathrm{KL}` terms (:meth:`prior_params`), at one thread (:func:`_one_thread`).

        Full covariance: the closed forms of :meth:`Dirichlet.kl <pyro_vi.factors.Dirichlet.kl>`
        and :meth:`NormalWishart.kl <pyro_vi.factors.NormalWishart.kl>` (Bishop 2006, eqs.
        10.73 + 10.74 - 10.76 - 10.77) written out once, with the prior's own terms
        (:math:`\log\Gamma_D(\nu_0/2)`, the Dirichlet prior's log-normaliser) computed once per
        :meth:`prior_params` record: the generic sum over factors cost a third of a sweep on iris.
        Diag: the generic sum.
        """
        prior = self.prior_params()
        comp, prior_comp = params.components, prior.components
        if not isinstance(comp, NormalWishart) or not isinstance(prior_comp, NormalWishart):
            return super().global_elbo(params)
        const = self._prior_consts(prior)
        d = comp.loc.shape[-1]
        # KL(q(pi) || p(pi)), with E[log pi] (Bishop eq. 10.66)
        alpha, alpha0 = params.weights.concentration, prior.weights.concentration
        total_alpha = alpha.sum()
        elog = torch.digamma(alpha) - torch.digamma(total_alpha)
        kl = (const["dirichlet_lognorm"] + torch.lgamma(total_alpha) - torch.lgamma(alpha).sum()
              + ((alpha - alpha0) * elog).sum())
        # sum_k KL(W(W_k, nu_k) || W(W_0, nu_0)), with M = L_0^-1 L_k: ||M||_F^2 = tr(W_0^-1 W_k)
        # and log|M| = log|L_k| - log|L_0| (M is triangular)
        terms = self._wishart_terms(comp)
        nu, nu0 = comp.df, prior_comp.df
        trace = (terms["w"] * const["w0_inv"]).sum((-2, -1))
        log_diag = terms["logdiag"] - const["logdiag0"]
        mvlgamma = torch.lgamma(terms["args"]).sum(-1) + const["mvlgamma_offset"]  # log Gamma_D(nu/2)
        wishart = (0.5 * nu * (trace - d) - nu0 * log_diag + const["mvlgamma0"] - mvlgamma
                   + 0.5 * (nu - nu0) * terms["psi"])
        # plus the expected KL of the conditional Normals (NormalWishart.kl's centred form)
        beta0 = prior_comp.precision_scale
        ratio = beta0 / comp.precision_scale
        proj = (comp.scale_tril * (comp.loc - prior_comp.loc).unsqueeze(-1)).sum(-2)  # L_k^T (m_k - m_0)
        cond = 0.5 * (d * (ratio - 1.0 - torch.log(ratio)) + beta0 * nu * proj.square().sum(-1))
        return -(kl + (wishart + cond).sum())

    def _prior_consts(self, prior: GMMParams) -> dict[str, Tensor]:
        """The prior-only terms of :meth:`global_elbo`, once per :meth:`prior_params` object."""
        cached = self._consts
        if cached is not None and cached[0] is prior:
            return cached[1]
        a0, comp = prior.weights.concentration, prior.components
        assert isinstance(comp, NormalWishart)
        d = comp.loc.shape[-1]
        consts = {"dirichlet_lognorm": torch.lgamma(a0).sum() - torch.lgamma(a0.sum()),
                  "mvlgamma0": torch.mvlgamma(0.5 * comp.df, p=d),
                  "mvlgamma_offset": torch.tensor(0.25 * d * (d - 1) * math.log(math.pi), dtype=a0.dtype,
                                                  device=a0.device),
                  "w0_inv": torch.cholesky_inverse(comp.scale_tril),
                  "logdiag0": torch.log(torch.diagonal(comp.scale_tril, dim1=-2, dim2=-1)).sum(-1)}
        self._consts = (prior, consts)
        return consts

    def _wishart_terms(self, comp: NormalWishart) -> dict[str, Tensor]:
        r"""Terms of :math:`q(\Lambda_k)` that the coefficients and the global ELBO both use, once per factor.

        ``w`` :math:`= W_k = L_kL_k^T` ``(K, D, D)``; ``logdiag`` :math:`= \sum_i \log L_{k,ii}`;
        ``args`` :math:`= (\nu_k + 1 - i)/2`, ``(K, D)``; ``psi`` :math:`= \sum_i \psi((\nu_k + 1 - i)/2)`
        (Bishop 2006, eq. 10.65). Kept for the last factor asked about (a sweep asks twice).
        """
        cached = self._terms
        if cached is not None and cached[0] is comp:
            return cached[1]
        tril, nu = comp.scale_tril, comp.df
        d = tril.shape[-1]
        args = 0.5 * (nu.unsqueeze(-1) + 1.0 - torch.arange(1, d + 1, dtype=nu.dtype, device=nu.device))
        terms = {"w": tril @ tril.transpose(-1, -2),
                 "logdiag": torch.log(torch.diagonal(tril, dim1=-2, dim2=-1)).sum(-1),
                 "args": args, "psi": torch.digamma(args).sum(-1)}
        self._terms = (comp, terms)
        return terms

    def elbo_roundoff(self, data: Tensor) -> float | None:
        r"""The contract's estimate (:func:`~pyro_vi.cavi.model.data_roundoff`) for the data centred on :math:`m_0`.

        :math:`10\,\epsilon\sum_j N(1 + |\bar x_j - m_{0j}|/s_j)^2` with :math:`\epsilon` of
        :attr:`compute_dtype`: the same number ``data_roundoff(x - m0)`` gives, from block sums
        (:func:`_moments`), without a centred copy of the data.
        """
        n = data.shape[0]
        mean = data.mean(0)
        sq = _moments(data, mean, "diag", scatter=True)[1]
        assert sq is not None
        sd = (sq / (n - 1)).sqrt() if n > 1 else torch.zeros_like(sq)
        off = (mean - self._hyperparams().mean_prior).abs()
        ratio = torch.where(sd > 0, off / sd.clamp_min(torch.finfo(sd.dtype).tiny), torch.zeros_like(off))
        return 10.0 * torch.finfo(self.compute_dtype).eps * float(n * (1.0 + ratio).square().sum())

    def local_bytes_per_point(self, data: Tensor) -> int | None:
        """Bytes of temporaries per data point in :meth:`local_step` (for chunking).

        None on the quadratic-feature path: it centres and builds features block by block
        (:func:`block_rows`) whatever the chunk, so its temporaries do not grow with the chunk and
        the engine need not split the data.
        """
        if not self._use_features(data.shape[1]):
            return self._stats_bytes_per_point(data)
        return None

    def label_alignment(self) -> LabelAlignment:
        """Components are matched on ``loc``; ``weights``, ``loc``, ``precision`` and ``z`` follow."""
        return LabelAlignment("loc", ("weights", "loc", "precision"), labels=("z",))

    # ------------------------------------------------------------------------- Pyro side
    def model(self, x: Tensor) -> Tensor:
        """The generative model as plain Pyro code; ``x`` is ``(N, D)`` observed data.

        Priors left at their data-dependent defaults are resolved from the ``x`` it is called
        with; resolve them once (``gmm = gmm.resolve(x_full)``) before minibatching.
        """
        return mixture_program(self._resolved(x).prior_params(), x)

    def sample_guide(self, params: GMMParams, *data: Any,
                     enumerate_z: bool = False) -> dict[str, Tensor]:
        """Sample the global sites from ``params`` and ``z`` from the optimal :math:`q(z)`.

        :math:`q(z_n)` is the Categorical of eq. 10.49 given ``params`` for whatever ``x`` it
        is called with (so it works on new data); ``enumerate_z=True`` omits ``z``.
        """
        resp = None if enumerate_z else self.responsibilities(data[0], params)
        return sample_latents(params, resp)

    def fitted_guide(self, params: GMMParams, *, enumerate_z: bool = False) -> FittedGuide:
        """A Pyro guide carrying fixed ``params`` (``CAVIResult.guide``); see :meth:`sample_guide`."""
        return FittedGuide(self, params, enumerate_z=enumerate_z)

    def _svi_start(self, x: Tensor, seed: int) -> tuple[GMMParams, Tensor]:
        """Initial (params, responsibilities) for SVI, the way CAVI starts with ``seed``."""
        gmm, x = self.prepare(x)
        gen = torch.Generator().manual_seed(seed)
        params = gmm.global_step(gmm.init_stats(x, generator=gen), None)
        resp = gmm.responsibilities(x, params).clamp_min(1e-6)
        return params, resp / resp.sum(-1, keepdim=True)

    def _sites(self, x: Tensor, *, with_resp: bool, seed: int = 0) -> tuple[GMMParams, Tensor | None]:
        gmm = self._resolved(x)
        return param_sites(self.name, gmm._hyperparams(), self.covariance,
                           lambda: gmm._svi_start(x, seed), with_resp=with_resp)

    def start_svi(self, x: Tensor, *, seed: int = 0, free_responsibilities: bool = False) -> None:
        """Create the SVI guides' ``pyro.param`` sites at the CAVI-style start drawn with ``seed``.

        The guides create missing sites from seed 0 on their first call; call this first to
        start from another seed (``free_responsibilities=True`` also creates ``"gmm.resp"``,
        the free :math:`q(z)` of :meth:`guide`). Sites already in the store are kept.
        """
        self._sites(x, with_resp=free_responsibilities, seed=check_seed("seed", seed) or 0)

    def guide_params(self, x: Tensor, *args: Any) -> GMMParams:
        """The global factors as ``pyro.param`` sites ``"gmm.*"`` (see :mod:`~pyro_vi.models.gmm.guides`)."""
        return self._sites(x, with_resp=False)[0]

    def guide(self, x: Tensor, *args: Any) -> dict[str, Tensor]:
        r"""Mean-field guide :math:`q(\pi)\prod_k q(\mu_k,\Lambda_k)\prod_n q(z_n)` with ``pyro.param``s.

        Unlike the contract's default, :math:`q(z_n)` has free parameters ``"gmm.resp"``.
        """
        params, resp = self._sites(x, with_resp=True)
        return sample_latents(params, resp)

    def guide_optimal_z(self, x: Tensor) -> dict[str, Tensor]:
        r"""Mean-field guide whose :math:`q(z_n)` is the coordinate-ascent optimum given the globals.

        The global factors :math:`q(\pi)\prod_k q(\mu_k,\Lambda_k)` are ``pyro.param`` sites, as in
        :meth:`guide`; :math:`q(z_n)` is the Categorical with the optimal responsibilities
        :math:`r_{nk}\propto\rho_{nk}` at the *current* global parameters (Bishop 2006,
        eqs. 10.46-10.49) — the local step of :func:`pyro_vi.cavi`, taken inside every SVI step
        (local step, then a step on the globals: the scheme of stochastic VI, Hoffman et al. 2013).

        The responsibilities are computed without gradient. That loses nothing: writing
        :math:`L(\theta, r)` for the ELBO, :math:`r^*(\theta)` maximizes it over the simplex, so
        :math:`\partial L/\partial r` is normal to the simplex there and
        :math:`\tfrac{d}{d\theta} L(\theta, r^*(\theta)) = \partial_\theta L(\theta, r)|_{r=r^*}`
        (the envelope theorem). Under :class:`~pyro.infer.Trace_ELBO`, z is still a sampled,
        non-reparameterizable site, but its score-function term carries no gradient; every
        gradient is a reparameterized one through :math:`\pi, \mu, \Lambda`, with z drawn from
        :math:`q(z)`. That is what makes this guide converge where the free-:math:`q(z)`
        :meth:`guide` does not (see :mod:`pyro_vi.models.gmm.svi`).

        Works on any ``x`` (a minibatch, new data): ``(N, D)``; :math:`q(z)` is ``(N, K)``.
        """
        params = self.guide_params(x)
        with torch.no_grad():
            resp = self._resolved(x).responsibilities(x, params)
        return sample_latents(params, resp)

    def guide_enum(self, x: Tensor) -> dict[str, Tensor]:
        """The guide without :math:`q(z)`, for ``TraceEnum_ELBO(max_plate_nesting=1)``."""
        return sample_latents(self.guide_params(x), None)

    # ------------------------------------------------------------------------ summaries
    def summary(self, params: GMMParams, *, threshold: float = 0.01) -> GMMSummary:
        """Posterior means and uncertainties of weights, means and covariances."""
        return summarize(params, threshold=threshold)

    def summary_sites(self, params: GMMParams, *data: Any) -> dict[str, Any]:
        """``weights`` (Dirichlet), ``precision`` (Wishart or Gammas) and ``loc`` (Student-t).

        ``z`` is left out: its q is :meth:`responsibilities` of the data.
        """
        comp = params.components
        return {"weights": params.weights, "precision": comp.precision, "loc": loc_marginal(comp)}

    def posterior_summary(self, params: GMMParams, *data: Any, prob: float = 0.94,
                          seed: int = 0, threshold: float = 0.01) -> pd.DataFrame:
        r"""The contract's exact table, rows of nearly empty components flagged ``negligible``.

        A component is negligible when :math:`E[\pi_k] <` ``threshold``; its :math:`\mu_k`
        rows may then hold a ``"plugin_sd"`` (see :mod:`pyro_vi.cavi.summary`).
        """
        if check_real("threshold", threshold, minimum=0.0) > 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        small = params.weights.mean() < threshold
        flags = {"weights": small, "loc": small[:, None],
                 "precision": small[:, None, None] if self.covariance == "full" else small[:, None]}
        return summary_table(self.summary_sites(params, *data), prob=prob, seed=seed,
                             negligible=flags)

    def log_predictive(self, params: GMMParams, x: Any) -> Tensor:
        """Posterior predictive log-density per point, ``(N,)`` (Bishop 2006, eqs. 10.80–10.82)."""
        return torch.logsumexp(log_predictive_components(params, self._new_points(params, x)), -1)

    def predict_proba(self, params: GMMParams, x: Any) -> Tensor:
        r""":math:`p(z = k \mid x, \mathcal{D})` under the Student-t predictive, ``(N, K)``."""
        return torch.softmax(log_predictive_components(params, self._new_points(params, x)), -1)

    def _new_points(self, params: GMMParams, x: Any) -> Tensor:
        x = as_matrix(x, dtype=self.dtype, device=self.device)
        d = params.components.loc.shape[-1]
        if x.shape[1] != d:
            raise ValueError(f"x has D={x.shape[1]} columns but the mixture has D={d}")
        return x

    def predict(self, params: GMMParams, x: Any) -> Tensor:
        """Most probable component of each point, ``(N,)`` int64."""
        return self.predict_proba(params, x).argmax(-1)


def replace_model(gmm: GaussianMixture) -> GaussianMixture:
    """Return a shallow copy of ``gmm``, of its own class (models are immutable once built)."""
    return copy.copy(gmm)

