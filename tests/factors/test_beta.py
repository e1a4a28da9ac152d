"""Exact tier for the Beta factor: density identity, moments, entropy and KL vs torch/scipy.

Everything is float64 and deterministic; ``rtol=1e-10`` is ~1e3 times the round-off of
lgamma/digamma at these parameter sizes and far below any formula error (>= 1e-3).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributions as td
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import digamma

from pyro_vi.factors import Beta, blend

F64 = torch.float64
HYP = settings(max_examples=25, deadline=None, derandomize=True)
positive = st.floats(0.05, 50.0)


def t(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=F64)


@HYP
@given(a=positive, b=positive, p=st.floats(0.01, 0.99))
def test_exponential_family_form_is_the_beta_density(a, b, p):
    q = Beta(t(a), t(b))
    stats = (torch.log(t(p)), torch.log1p(-t(p)))
    log_q = sum(e * s for e, s in zip(q.natural_params, stats, strict=True)) - q.log_normalizer()
    np.testing.assert_allclose(log_q, td.Beta(t(a), t(b)).log_prob(t(p)), rtol=1e-10)


@HYP
@given(a=positive, b=positive)
def test_moments_entropy_and_round_trip(a, b):
    q = Beta(t(a), t(b))
    e_log_p, e_log_1mp = q.expected_stats()
    np.testing.assert_allclose(e_log_p, digamma(a) - digamma(a + b), rtol=1e-10)
    np.testing.assert_allclose(e_log_1mp, digamma(b) - digamma(a + b), rtol=1e-10)
    np.testing.assert_allclose(q.entropy(), td.Beta(t(a), t(b)).entropy(), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(q.mean(), a / (a + b), rtol=1e-12)
    np.testing.assert_allclose(q.variance(), td.Beta(t(a), t(b)).variance, rtol=1e-12)
    back = Beta.from_natural(*q.natural_params)
    np.testing.assert_allclose(back.concentration1, a, rtol=1e-12)
    np.testing.assert_allclose(back.concentration0, b, rtol=1e-12)


@HYP
@given(a=positive, b=positive, c=positive, d=positive)
def test_kl_matches_torch(a, b, c, d):
    q, p = Beta(t(a), t(b)), Beta(t(c), t(d))
    expected = td.kl_divergence(td.Beta(t(a), t(b)), td.Beta(t(c), t(d)))
    np.testing.assert_allclose(q.kl(p), expected, rtol=1e-9, atol=1e-11)


def test_batched_and_blend_moves_in_natural_parameters():
    q = Beta(t([1.0, 2.0]), t(3.0))
    assert q.batch_shape == torch.Size([2])
    r = blend(q, Beta(t([3.0, 4.0]), t(5.0)), 0.25)
    np.testing.assert_allclose(r.concentration1, [1.5, 2.5])
    np.testing.assert_allclose(r.concentration0, [3.5, 3.5])
    assert isinstance(r.to_distribution(), td.Beta)


def test_kl_needs_the_same_family():
    from pyro_vi.factors import Gamma

    with pytest.raises(TypeError, match="Beta"):
        Beta(t(1.0), t(1.0)).kl(Gamma(t(1.0), t(1.0)))
