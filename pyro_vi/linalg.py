"""Checked linear algebra: a Cholesky factor that says where a matrix stopped being PD."""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_vi.errors import NumericalError

__all__ = ["cholesky", "inverse_cholesky"]


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
    if not torch.isfinite(matrix).all():
        raise NumericalError(f"{where}: matrix holds NaN or inf")
    sym = 0.5 * (matrix + matrix.transpose(-1, -2))
    chol, info = torch.linalg.cholesky_ex(sym)
    bad = info != 0
    if bad.any():
        if bad.dim() == 0:
            at = "a single matrix"
        else:
            at = f"batch index {[tuple(int(i) for i in ix) for ix in bad.nonzero()][:5]}"
        raise NumericalError(f"{where}: matrix is not positive definite ({at})")
    return chol


def inverse_cholesky(matrix: Tensor, *, where: str) -> Tensor:
    """Lower Cholesky factor of ``matrix⁻¹``, for SPD ``matrix`` (e.g. a Wishart scale from W⁻¹).

    Examples
    --------
    >>> import torch
    >>> inverse_cholesky(torch.eye(2, dtype=torch.float64) * 4, where="demo").diagonal().tolist()
    [0.5, 0.5]
    """
    inv = torch.cholesky_inverse(cholesky(matrix, where=where))
    return cholesky(inv, where=where)
