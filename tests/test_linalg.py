"""Checked Cholesky: the true factor on SPD input, a NumericalError that says where otherwise; mm_t."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pyro_vi.linalg
from pyro_vi.errors import NumericalError
from pyro_vi.linalg import cholesky, inverse_cholesky, mm_t, mm_t_for, onednn_float32

F64 = torch.float64


def _spd(batch: tuple[int, ...], d: int, seed: int) -> torch.Tensor:
    """Random SPD matrices ``A Aᵀ + d·I`` (condition number stays modest)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(*batch, d, d, generator=gen, dtype=F64)
    return a @ a.transpose(-1, -2) + d * torch.eye(d, dtype=F64)


@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
def test_cholesky_is_the_true_factor(batch):
    m = _spd(batch, 3, seed=1)
    chol = cholesky(m, where="test")
    assert chol.shape == m.shape
    # Lower triangular with a positive diagonal, and L Lᵀ reproduces the input ...
    assert torch.equal(chol, torch.tril(chol))
    assert (torch.diagonal(chol, dim1=-2, dim2=-1) > 0).all()
    torch.testing.assert_close(chol @ chol.transpose(-1, -2), m, rtol=1e-12, atol=1e-12)
    # ... and it is the unique such factor, i.e. numpy's.
    np.testing.assert_allclose(chol.numpy(), np.linalg.cholesky(m.numpy()), rtol=1e-12,
                               atol=1e-14)


def test_cholesky_non_pd_names_where_and_batch_index():
    m = _spd((2, 3), 3, seed=2)
    m[1, 2] = -m[1, 2]  # negative definite
    with pytest.raises(NumericalError, match=r"Wishart update k=7.*not positive definite") as err:
        cholesky(m, where="Wishart update k=7")
    assert "(1, 2)" in str(err.value)


def test_cholesky_non_pd_single_matrix():
    indefinite = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=F64)  # eigenvalues 3 and -1
    with pytest.raises(NumericalError, match=r"^single-matrix site: .*single matrix"):
        cholesky(indefinite, where="single-matrix site")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_cholesky_nonfinite_input_names_where(bad):
    m = _spd((3,), 2, seed=3)
    m[2, 0, 1] = bad
    with pytest.raises(NumericalError, match=r"^my-site: matrix holds NaN or inf"):
        cholesky(m, where="my-site")


def test_cholesky_of_finite_entries_whose_sum_overflows_is_not_called_non_finite():
    # The finiteness check sums the matrix first; 1e308 + 1e308 overflows to inf although every
    # entry is finite, and the element-wise check that follows must clear it. The symmetrisation
    # must not overflow either (0.5 * (M + M^T) gave an inf factor here).
    big = torch.tensor([[1e308, 0.0], [0.0, 1e308]], dtype=F64)
    torch.testing.assert_close(cholesky(big, where="big"), torch.diag(torch.full((2,), 1e154, dtype=F64)),
                               rtol=1e-15, atol=0.0)
    assert not torch.isfinite(big.sum())  # the case this test is about


def test_inverse_cholesky_factors_the_inverse():
    m = _spd((5,), 4, seed=4)
    tril = inverse_cholesky(m, where="test")
    assert torch.equal(tril, torch.tril(tril))
    torch.testing.assert_close(tril @ tril.transpose(-1, -2), torch.linalg.inv(m),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(tril.numpy(), np.linalg.cholesky(np.linalg.inv(m.numpy())),
                               rtol=1e-10, atol=1e-12)


def test_inverse_cholesky_keeps_its_accuracy_on_an_ill_conditioned_matrix():
    # Scales from 1e-3 to 1e3: cond(M) = 1e12. L^T M L = I then holds to ~cond * eps; measured
    # 3.9e-5 at most over 20 such matrices (the Cholesky factor of an explicit inverse: 3.1e-5),
    # so 1e-3 is safe while a wrong factor misses by O(1). A diagonal matrix has a known
    # answer, 1/sqrt(diag), to the last bit or two.
    scales = torch.logspace(-3, 3, 5, dtype=F64)
    q = torch.linalg.qr(torch.randn(5, 5, dtype=F64, generator=torch.Generator().manual_seed(0)))[0]
    m = (q * scales**2) @ q.T
    m = 0.5 * (m + m.T)
    tril = inverse_cholesky(m, where="test")
    assert torch.equal(tril, torch.tril(tril))
    torch.testing.assert_close(tril.T @ m @ tril, torch.eye(5, dtype=F64), rtol=0, atol=1e-3)
    d = torch.diag(torch.logspace(-12, 12, 5, dtype=F64))
    torch.testing.assert_close(inverse_cholesky(d, where="test"), torch.diag(d.diagonal().rsqrt()),
                               rtol=1e-15, atol=0)


def test_inverse_cholesky_non_pd_names_where():
    with pytest.raises(NumericalError, match="^from_natural: "):
        inverse_cholesky(-torch.eye(3, dtype=F64), where="from_natural")


def _pair(m: int, n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)


def _float32_error(got: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    """Max error against the float64 product, in units of sum_k |a_ik b_jk| (the float32 scale)."""
    ref = a.double() @ b.double().T
    scale = a.double().abs() @ b.double().abs().T
    return float(((got.double() - ref).abs() / scale).max())


@pytest.mark.parametrize("layout", ["rows", "columns"])
@pytest.mark.parametrize(("m", "n", "k"), [(16, 1872, 560), (16, 560, 1872), (5, 3, 1), (64, 64, 64)])
def test_mm_t_is_the_product_to_float32_round_off(m, n, k, layout):
    # a float32 sum of k products errs by at most ~k·eps·sum|a b| (Higham 2002, eq. 3.5); the
    # blocked sums of BLAS and oneDNN stay far below: measured <= 3e-7 of sum|a b| here, so
    # 1e-5 (about 84 eps) has 30x room while a wrong layout or transpose errs by O(1)
    a, b = _pair(m, n, k, seed=m + n + k)
    if layout == "columns":
        b = b.T.contiguous().T  # packed by columns
    got = mm_t(a, b)
    assert got.shape == (m, n)
    assert got.dtype == torch.float32
    assert _float32_error(got, a, b) < 1e-5


def test_mm_t_uses_onednn_for_float32_cpu_and_torch_mm_otherwise(monkeypatch):
    a, b = _pair(8, 7, 33, seed=3)
    if onednn_float32():
        want = torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
        assert torch.equal(mm_t(a, b), want)
        assert mm_t_for(torch.float32, "cpu") is pyro_vi.linalg._onednn_mm_t
    # float64, padded rows, a gradient, or the switch off: torch.mm, bitwise
    a64, b64 = a.double(), b.double()
    assert torch.equal(mm_t(a64, b64), torch.mm(a64, b64.T))
    assert mm_t_for(torch.float64, "cpu") is pyro_vi.linalg._torch_mm_t
    padded = torch.empty(7, 40)[:, :33].copy_(b)
    assert torch.equal(mm_t(a, padded), torch.mm(a, padded.T))
    leaf = a.clone().requires_grad_()
    out = mm_t(leaf, b)
    out.sum().backward()
    torch.testing.assert_close(leaf.grad, b.sum(0).expand(8, 33))
    monkeypatch.setattr(pyro_vi.linalg, "ONEDNN_FLOAT32", False)
    assert not onednn_float32()
    assert torch.equal(mm_t(a, b), torch.mm(a, b.T))
    assert mm_t_for(torch.float32, "cpu") is pyro_vi.linalg._torch_mm_t


# torch's flags() sets a oneDNN TF32 flag too, which warns on builds without Intel GPU support
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN:UserWarning")
def test_mm_t_leaves_onednn_when_torch_turns_it_off_or_lowers_its_precision():
    a, b = _pair(4, 6, 9, seed=5)
    with torch.backends.mkldnn.flags(enabled=False):
        assert not onednn_float32()
        assert torch.equal(mm_t(a, b), torch.mm(a, b.T))
    matmul = getattr(torch.backends.mkldnn, "matmul", None)
    if matmul is None or not hasattr(matmul, "fp32_precision"):
        pytest.skip("this torch has no oneDNN float32 precision setting")
    before = matmul.fp32_precision
    try:
        matmul.fp32_precision = "bf16"  # bfloat16 products: not the float32 the mode promises
        assert not onednn_float32()
    finally:
        matmul.fp32_precision = before
    assert onednn_float32() == pyro_vi.linalg._onednn_checked()
