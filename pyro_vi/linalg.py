"""Checked linear algebra: a Cholesky factor that says where a matrix stopped being PD; a fast float32 product."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from pyro_vi.errors import NumericalError

__all__ = ["ONEDNN_FLOAT32", "cholesky", "inverse_cholesky", "mm_t", "mm_t_for", "onednn_float32"]

#: Whether :func:`mm_t` may send float32 CPU products to oneDNN. False sends every product to
#: ``torch.mm`` (the benchmarks set it to compare the two in one process).
ONEDNN_FLOAT32 = True


def cholesky(matrix: Tensor, *, where: str) -> Tensor:
    """Lower Cholesky factor of a (batch of) symmetric positive-definite matrices.

    Raises :class:`~pyro_vi.errors.NumericalError` naming ``where`` and the offending batch
    index when a matrix is not positive definite or holds a NaN/inf, instead of returning NaNs.

    Examples
    --------
    >>> import torch
    >>> cholesky(torch.eye(2, dtype=torch.float64) * 4, where="demo")
    tensor([[2., 0.],
            [0., 2.]], dtype=torch.float64)
    """
    # a NaN or inf anywhere makes the sum non-finite: one reduction in the common case (the
    # element-wise check costs 67 µs on (16, 32, 32), the sum 16; a sum that overflows though
    # every entry is finite goes on to the element-wise check, which then passes)
    if not torch.isfinite(matrix.sum()) and not torch.isfinite(matrix).all():
        raise NumericalError(f"{where}: matrix holds NaN or inf")
    sym = matrix.mul(0.5).add_(matrix.transpose(-1, -2), alpha=0.5)  # halves first: M + M^T may overflow
    chol, info = torch.linalg.cholesky_ex(sym)
    if info.any():
        bad = info != 0
        if bad.dim() == 0:
            at = "a single matrix"
        else:
            at = f"batch index {[tuple(int(i) for i in ix) for ix in bad.nonzero()][:5]}"
        raise NumericalError(f"{where}: matrix is not positive definite ({at})")
    return chol


def inverse_cholesky(matrix: Tensor, *, where: str) -> Tensor:
    """Lower Cholesky factor of ``matrix⁻¹``, for SPD ``matrix`` (e.g. a Wishart scale from W⁻¹).

    Shapes ``(..., D, D)`` in, ``(..., D, D)`` out, in ``matrix``'s dtype and device. A matrix that
    is not positive definite (or holds NaN/inf) raises :class:`~pyro_vi.errors.NumericalError`
    naming ``where``.

    Examples
    --------
    >>> import torch
    >>> inverse_cholesky(torch.eye(2, dtype=torch.float64) * 4, where="demo").diagonal().tolist()
    [0.5, 0.5]
    """
    # With J the exchange matrix (indices reversed), J M J = C C^T (C lower) gives
    # M^-1 = (J C^-T J)(J C^-T J)^T, and J C^-T J is lower triangular with a positive diagonal:
    # the factor, from one Cholesky factorisation and one triangular inverse, where the Cholesky
    # factor of an explicit inverse took two and an inverse. The same accuracy (measured on 20
    # random 5x5 matrices of condition 1e12: max |L^T M L - I| 3.9e-5 against 3.1e-5).
    c = cholesky(matrix.flip(-2, -1), where=where)
    eye = torch.eye(c.shape[-1], dtype=c.dtype, device=c.device).expand_as(c)
    return torch.linalg.solve_triangular(c, eye, upper=False).transpose(-2, -1).flip(-2, -1)


def _dense(t: Tensor) -> bool:
    """A matrix whose entries are packed by rows or by columns, with no padding between them."""
    return t.is_contiguous() or t.T.is_contiguous()


@functools.cache
def _onednn_checked() -> bool:
    """Whether oneDNN's float32 matmul is in this build of torch and agrees with float64 on a fixed product."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        op = torch.ops.mkldnn._linear_pointwise
        a = torch.linspace(-1.0, 1.0, 7 * 37, dtype=torch.float64).reshape(7, 37).sin()
        b = torch.linspace(-2.0, 3.0, 5 * 37, dtype=torch.float64).reshape(5, 37).cos()
        ref = a @ b.T
        for w in (b.float(), b.T.contiguous().float().T):  # both layouts mm_t passes on
            got = op(a.float(), w, None, "none", [], "").double()
            if got.shape != ref.shape or not bool(((got - ref).abs() <= 1e-5 * (1.0 + ref.abs())).all()):
                return False
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return True


def onednn_float32() -> bool:
    """Whether :func:`mm_t` sends float32 CPU products to oneDNN now.

    True when :data:`ONEDNN_FLOAT32` is set, torch's oneDNN is available and enabled
    (``torch.backends.mkldnn.flags(enabled=False)`` turns it off), its float32 matmul precision is
    full IEEE float32 (not ``torch.backends.mkldnn.matmul.fp32_precision = "bf16"`` or ``"tf32"``),
    and its product agreed with a float64 one on a fixed problem (checked once per process).
    """
    if not ONEDNN_FLOAT32 or not torch.backends.mkldnn.enabled:
        return False
    matmul = getattr(torch.backends.mkldnn, "matmul", None)
    if getattr(matmul, "fp32_precision", "none") not in ("none", "ieee"):
        return False
    return _onednn_checked()


def mm_t(a: Tensor, b: Tensor) -> Tensor:
    r"""The product :math:`A B^T` of ``a`` ``(M, K)`` and ``b`` ``(N, K)``: ``(M, N)``, a new tensor.

    Float32 CPU matrices go to oneDNN's matmul (the ``mkldnn::_linear_pointwise`` operator shipped
    in torch, as torch's own compiler uses it) when :func:`onednn_float32` says it is usable,
    ``a`` is packed by rows and ``b`` by rows or columns; every other case, and any input that
    needs a gradient, is ``torch.mm(a, b.T)``. Same dtype and device as ``a``.

    Why: torch's CPU ``torch.mm`` calls MKL, while oneDNN picks its kernels by the processor's
    instruction set. On this project's AMD EPYC (Zen 5) machine MKL's float32 product runs at
    AVX2's rate, 104-108 GFLOP/s at one thread on a 2048² product, and oneDNN's AVX-512 one at
    257; the Gaussian mixture's ``(16 × 560)·(560 × 1872)`` block product takes 372 µs against
    151 µs. On an AVX2-only AMD EPYC (Zen 3, no AVX-512) the two tie on 2048² (64 and 62
    GFLOP/s) and oneDNN still wins the mixture's block products, 510-520 µs against 640-670
    (fastest of 30 runs each, interleaved). On an Intel Xeon with AVX-512 (a 2-core VM) MKL runs
    its own AVX-512 kernels and wins the products, 165 against 149 GFLOP/s on 2048² and
    269/250 µs against 336/280 µs on the mixture's two block products (fastest of 30), yet the
    whole float32 sweep ties there (61.7 ms oneDNN, 62.2 ms ``torch.mm``; N=1e5, D=32, K=16,
    one thread): oneDNN reads the blocks unpadded, ``torch.mm`` padded. The route is the same on
    every CPU, so a fit's rounding does not depend on a timing.
    Both are IEEE float32 with float32 accumulation; they differ in summation order, so in the
    last bits (max error 1.1e-6 against 3.5e-7 of the largest entry there).

    Examples
    --------
    >>> import torch
    >>> a, b = torch.ones(2, 3), torch.arange(6.0).reshape(2, 3)
    >>> mm_t(a, b)
    tensor([[ 3., 12.],
            [ 3., 12.]])
    """
    if (a.dtype == b.dtype == torch.float32 and a.device.type == b.device.type == "cpu"
            and a.dim() == b.dim() == 2 and a.is_contiguous() and _dense(b) and a.numel() and b.numel()
            and not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad))
            and onednn_float32()):
        return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return torch.mm(a, b.T)


def _torch_mm_t(a: Tensor, b: Tensor) -> Tensor:
    return torch.mm(a, b.T)


def _onednn_mm_t(a: Tensor, b: Tensor) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise.default(a, b, None, "none", [], "")


def mm_t_for(dtype: torch.dtype, device: torch.device | str) -> Callable[[Tensor, Tensor], Tensor]:
    """:func:`mm_t` with its checks made once, for a loop of many products in ``dtype`` on ``device``.

    The function returned computes ``a @ b.T`` by oneDNN where :func:`mm_t` would (float32 on
    the CPU, :func:`onednn_float32`), else by ``torch.mm``. The caller promises what ``mm_t``
    checks on every call: 2-D inputs of that dtype and device, none needing a gradient, ``a``
    packed by rows and ``b`` by rows or columns (:func:`mm_t` checks; this one does not). It saves
    about 3 µs a call, a tenth of a small block's products.

    Examples
    --------
    >>> import torch
    >>> product = mm_t_for(torch.float32, "cpu")
    >>> product(torch.ones(2, 3), torch.ones(4, 3)).shape
    torch.Size([2, 4])
    """
    if dtype == torch.float32 and torch.device(device).type == "cpu" and onednn_float32():
        return _onednn_mm_t
    return _torch_mm_t
