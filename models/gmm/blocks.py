r"""The quadratic-feature path's block loop, in the subset of Python that TorchScript compiles.

One function, :func:`block_pass`, runs a worker's share of the blocks of
:meth:`~pyro_vi.models.gmm.GaussianMixture.local_step`'s feature path: it writes each block's
features :math:`\phi_n = (\mathrm{vech}(x'_n x'^T_n), x'_n)`, forms its responsibilities (the
optimal ones of Bishop 2006, eq. 10.46–10.49, hard labels, or given ones) and adds
:math:`R^T\Phi`, :math:`\sum_n r_{nk}` and :math:`\sum_n\log\sum_k\rho_{nk}` into the worker's
sums. The same source runs two ways (:func:`runner`):

* compiled by ``torch.jit.script`` on the CPU, where the compiled loop runs without the GIL.
  Python threads hand the GIL back and forth at every torch call, and a block makes about
  twenty: at two block workers on this project's 2-core machines each call cost 5–7 µs more
  (a 3.6 µs element-wise product took 10.9 µs per thread, measured here), and a sweep at
  N=1e5, D=32, K=16 gained only 1.57x (float32) and 1.73x (float64) from a second thread
  against 2.13x and 2.07x compiled. At one thread the compiled loop is 1.08x (float64) to
  1.15x (float32) faster too: no Python between the calls (medians of 4 rounds, Intel Xeon).
* as plain Python, one torch call after another, on other devices (the GPU's fusers, on by
  default there, could fuse the element-wise calls and change their rounding) and where
  ``torch.jit.script`` is missing or fails.

Both run the same kernels in the same order, so their sums are bitwise equal (tested). TorchScript
is deprecated in favour of ``torch.compile``, which on the CPU needs a C++ compiler at run
time; should a later torch drop ``torch.jit.script``, the plain function runs, the same numbers
at the speeds above. The compiled function is made once per process (its first call, about
10 ms, also profiles it).

Annotations are ``typing`` ones, evaluated (no ``from __future__ import annotations``): the
TorchScript compiler reads them.
"""

import functools
import warnings
from typing import Callable, List, Optional, Union  # noqa: UP035 -- TorchScript reads typing's names

import torch
from torch import Tensor

__all__ = ["block_pass", "feature_block", "fill_features", "runner"]


def feature_block(buf: Tensor, m: int) -> Tensor:
    """The part of a feature buffer that holds a block of ``m`` points, ``(feature_rows, m)``.

    A contiguous (not ``padded``, :func:`~pyro_vi.models.gmm.model.feature_buffer`) buffer gives
    its first ``feature_rows · m`` elements, contiguous again; the others give their first ``m``
    columns.

    Examples
    --------
    >>> import torch
    >>> feature_block(torch.arange(6.0).reshape(2, 3), 2)
    tensor([[0., 1.],
            [2., 3.]])
    """
    if buf.is_contiguous() and buf.shape[1] != m:
        return buf.view(-1)[:buf.shape[0] * m].view(buf.shape[0], m)
    return buf[:, :m]


def fill_features(out: Tensor, x: Tensor, m0: Tensor, centred: Optional[Tensor], diag: bool) -> Tensor:  # noqa: UP045
    r"""Write the features of the block ``x`` ``(n, D)`` into ``out`` and return them, ``(Q + D, n)``.

    :math:`\phi_n = ((x'_i x'_j)_{(i,j)}, x'_n)`, :math:`x' = x - m_0`, the pairs in the order of
    :func:`~pyro_vi.models.gmm.model.pair_index` (diag: :math:`(x'^2_n, x'_n)`, ``Q = D``), a
    view of ``out`` (``(feature_rows, n)``, :func:`~pyro_vi.models.gmm.model.feature_buffer`,
    in its dtype). ``x'`` is centred in ``x``'s dtype and rounded once to ``out``'s; ``centred``
    ``(D, n)``, already ``x'^T`` in ``out``'s dtype, replaces that step. The ``D(D+1)/2``
    products are one broadcast product of ``x'`` with a strided view of ``x'`` stacked twice
    (the cyclic diagonals of ``pair_index``), plus half a diagonal for even ``D``: two kernels,
    not one per row.

    Examples
    --------
    >>> import torch
    >>> out = torch.empty(3, 1)  # D = 1: x'^2, x', and the copy of x' the strided view reads
    >>> fill_features(out, torch.tensor([[3.0]]), torch.tensor([1.0]), None, False).flatten().tolist()
    [4.0, 2.0]
    """
    d = x.shape[1]
    q = d if diag else d * (d + 1) // 2
    lin = out[q:q + d]
    if centred is not None:
        lin.copy_(centred)
    else:
        torch.sub(x.T, m0.unsqueeze(-1), out=lin)  # in x's dtype, rounded once into out's
    if diag:
        torch.mul(lin, lin, out=out[:d])
        return out[:q + d]
    full = (d + 1) // 2
    m = x.shape[0]
    twice = out[q:q + 2 * d]
    out[q + d:q + d + full - 1].copy_(lin[:full - 1])  # x' stacked twice, read without a gather
    stride = twice.stride(0)
    shifted = twice.as_strided([full, d, m], [stride, stride, twice.stride(1)], twice.storage_offset())
    torch.mul(lin.unsqueeze(0), shifted, out=out[:full * d].unflatten(0, [full, d]))
    if d % 2 == 0:
        torch.mul(lin[:d // 2], lin[d // 2:], out=out[full * d:q])
    return out[:q + d]


def _onednn_mm_t(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b.T`` by oneDNN's float32 matmul, as :func:`pyro_vi.linalg.mm_t` calls it (no checks here)."""
    # oneDNN's post-op scalars (none): typed for TorchScript, whose ``number`` is int, float or complex
    no_scalars = torch.jit.annotate(List[Optional[Union[int, float, complex]]], [])  # noqa: UP006,UP007,UP045
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", no_scalars, "")


def block_pass(data: Tensor, centred: Optional[Tensor], m0: Tensor,  # noqa: UP045 -- TorchScript
               bounds: List[int], first: int, step: int,  # noqa: UP006
               buf: Tensor, out: Tensor, total: Tensor, nk: Tensor, elbo: Tensor,
               part: Optional[Tensor], g: Optional[Tensor], c: Optional[Tensor], floor: float,  # noqa: UP045
               labels: Optional[Tensor], given: Optional[Tensor], diag: bool, onednn: bool) -> None:  # noqa: UP045
    r"""Add blocks ``first, first + step, ...`` of ``data`` into ``total``, ``nk`` and ``elbo``, in place.

    Block ``j`` holds rows ``bounds[j]:bounds[j + 1]`` of ``data`` ``(N, D)``; ``centred``
    ``(D, N)``, where given, is :math:`(x - m_0)^T` already in ``buf``'s dtype and replaces the
    centring. Features go to ``buf`` (:func:`~pyro_vi.models.gmm.model.feature_buffer`, in the
    compute dtype), responsibilities to ``out`` ``(K, rows)``. Responsibilities: the optimal
    ones from ``g`` ``(K, Q + D)`` and ``c`` ``(K, 1)``,
    :math:`\log\rho = g\phi + c` (Bishop 2006, eq. 10.46) normalised over ``K`` (eq. 10.49),
    their log-normalisers summed into ``elbo``; else one-hot ``labels`` ``(N,)``; else
    ``given`` ``(N, K)``. Sums: ``total`` ``(K, Q + D)`` (``(Q + D, K)`` on the transposed oneDNN
    route, ``onednn and not diag``), ``nk`` ``(K,)`` and ``elbo`` ``()`` in the statistics' dtype;
    ``part`` ``(K, Q + D)`` in the compute dtype, where given, holds each block's product before
    it is added. ``onednn``: the float32 products go to oneDNN
    (:func:`pyro_vi.linalg.mm_t`). ``floor``: the lowest exponent passed to ``exp``.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[1.0, 2.0], [3.0, 5.0]], dtype=torch.float64)
    >>> total, nk = torch.zeros(1, 5, dtype=x.dtype), torch.zeros(1, dtype=x.dtype)
    >>> elbo = torch.zeros((), dtype=x.dtype)
    >>> buf, out = torch.empty(7, 2, dtype=x.dtype), torch.empty(1, 2, dtype=x.dtype)
    >>> block_pass(x, None, torch.zeros(2, dtype=x.dtype), [0, 2], 0, 1, buf, out, total, nk, elbo,
    ...            None, None, None, -700.0, torch.tensor([0, 0]), None, False, False)
    >>> total  # x'_1², x'_2², x'_1 x'_2, then x'_1, x'_2, summed over the two points
    tensor([[10., 29., 17.,  4.,  7.]], dtype=torch.float64)
    >>> nk
    tensor([2.], dtype=torch.float64)
    """
    transposed = onednn and not diag
    for j in range(first, len(bounds) - 1, step):
        i = bounds[j]
        m = bounds[j + 1] - i
        own = None if centred is None else centred[:, i:i + m]
        phi = fill_features(feature_block(buf, m), data[i:i + m], m0, own, diag)
        r = out[:, :m]
        if g is not None and c is not None:
            # softmax and logsumexp from one exp, in the worker's buffer (or in oneDNN's product)
            if onednn:
                rho = _onednn_mm_t(g, phi.T).add_(c)
            else:
                rho = torch.addmm(c, g, phi, out=r)
            top = rho.amax(0)
            # floor the exponent where exp would give a denormal (slow on x86, and below any
            # responsibility that can matter): float32 -80, float64 -700
            norm = rho.sub_(top).clamp_(min=floor).exp_().sum(0)
            r = rho.div_(norm)
            elbo.add_(norm.log_().add_(top).sum(dtype=elbo.dtype))
        elif labels is not None:
            r = r.zero_().scatter_(0, labels[i:i + m].unsqueeze(0), 1.0)
        elif given is not None:
            r = given[i:i + m].T
        if onednn:  # the features as the packed operand: measured faster either way
            total.add_(_onednn_mm_t(phi, r) if transposed else _onednn_mm_t(r, phi))
        elif part is None:
            total.addmm_(r, phi.T)
        else:  # the block's sums in the compute dtype, accumulated in the statistics' dtype
            total.add_(torch.mm(r, phi.T, out=part))
        nk.add_(r.sum(1))  # per block in r's dtype, like the GEMM's sums


#: Whether CPU passes run the compiled :func:`block_pass` (False: the plain function everywhere,
#: as the tests set it to compare the two).
SCRIPTED = True


@functools.cache
def _compiled() -> Callable[..., None]:
    """``torch.jit.script(block_pass)``, compiled once per process; the plain function where that fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript's deprecation notice
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.script(block_pass)  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 -- any failure to compile leaves the plain function, same results
        return block_pass


def runner(device: torch.device) -> Callable[..., None]:
    """:func:`block_pass` as a pass on ``device`` runs it: compiled on the CPU (:data:`SCRIPTED`), else plain.

    Examples
    --------
    >>> import torch
    >>> runner(torch.device("cuda")) is block_pass
    True
    """
    return _compiled() if device.type == "cpu" and SCRIPTED else block_pass
