"""Exact tier for the Normal and MultivariateNormal factors vs torch.distributions.

Float64 and deterministic. Densities, entropies and KLs agree to ``rtol=1e-9`` (a Cholesky of
a well-conditioned 3x3 matrix loses ~1e-14; any formula error is >= 1e-3).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributions as td
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_vi.errors import NumericalError
from pyro_vi.factors import MultivariateNormal, Normal, blend

F64 = torch.float64
HYP = settings(max_examples=25, deadline=None, derandomize=True)
D = 3


def t(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=F64)


def random_mvn(seed: int) -> tuple[MultivariateNormal, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(D, D, generator=g, dtype=F64)
    prec = a @ a.T + 0.5 * torch.eye(D, dtype=F64)
    loc = torch.randn(D, generator=g, dtype=F64)
    return MultivariateNormal.from_precision(loc, prec), loc, prec


@HYP
@given(m=st.floats(-5, 5), lam=st.floats(0.05, 20), x=st.floats(-5, 5))
def test_normal_exponential_family_form_is_the_density(m, lam, x):
    q = Normal(t(m), precision=t(lam))
    log_q = (q.natural_params[0] * x + q.natural_params[1] * x * x - q.log_normalizer()
             + q.expected_log_base_measure())
    ref = td.Normal(t(m), t(lam) ** -0.5)
    np.testing.assert_allclose(log_q, ref.log_prob(t(x)), rtol=1e-10)
    np.testing.assert_allclose(q.entropy(), ref.entropy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(q.expected_stats()[1], m * m + 1 / lam, rtol=1e-12)
    back = Normal.from_natural(*q.natural_params)
    np.testing.assert_allclose([back.loc, back.precision], [m, lam], rtol=1e-10, atol=1e-12)


@HYP
@given(m1=st.floats(-5, 5), l1=st.floats(0.05, 20), m2=st.floats(-5, 5), l2=st.floats(0.05, 20))
def test_normal_kl_matches_torch(m1, l1, m2, l2):
    got = Normal(t(m1), precision=t(l1)).kl(Normal(t(m2), precision=t(l2)))
    ref = td.kl_divergence(td.Normal(t(m1), t(l1) ** -0.5), td.Normal(t(m2), t(l2) ** -0.5))
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mvn_density_entropy_moments(seed):
    q, loc, prec = random_mvn(seed)
    ref = td.MultivariateNormal(loc, precision_matrix=prec)
    x = torch.randn(D, generator=torch.Generator().manual_seed(seed + 10), dtype=F64)
    eta1, eta2 = q.natural_params
    log_q = eta1 @ x + (eta2 * torch.outer(x, x)).sum() - q.log_normalizer() \
        + q.expected_log_base_measure()
    np.testing.assert_allclose(log_q, ref.log_prob(x), rtol=1e-9)
    np.testing.assert_allclose(q.entropy(), ref.entropy(), rtol=1e-9)
    np.testing.assert_allclose(q.covariance(), ref.covariance_matrix, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(q.second_moment(), ref.covariance_matrix + torch.outer(loc, loc),
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(q.quadratic_form(x), x @ ref.covariance_matrix @ x, rtol=1e-9)
    back = MultivariateNormal.from_natural(*q.natural_params)
    np.testing.assert_allclose(back.loc, loc, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(back.precision(), prec, rtol=1e-9, atol=1e-12)


def test_mvn_kl_matches_torch():
    q, lq, pq = random_mvn(3)
    p, lp, pp = random_mvn(4)
    ref = td.kl_divergence(td.MultivariateNormal(lq, precision_matrix=pq),
                           td.MultivariateNormal(lp, precision_matrix=pp))
    np.testing.assert_allclose(q.kl(p), ref, rtol=1e-9)


def test_mvn_blend_is_convex_in_natural_parameters():
    q, _, pq = random_mvn(5)
    p, _, pp = random_mvn(6)
    r = blend(q, p, 0.3)
    np.testing.assert_allclose(r.precision(), 0.7 * pq + 0.3 * pp, rtol=1e-9)
    eta = 0.7 * q.natural_params[0] + 0.3 * p.natural_params[0]
    np.testing.assert_allclose(r.precision() @ r.loc, eta, rtol=1e-9, atol=1e-12)


def test_mvn_not_positive_definite_names_where():
    with pytest.raises(NumericalError, match="from_natural"):
        MultivariateNormal.from_natural(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
