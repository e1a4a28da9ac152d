"""Centred, cancellation-free KLs and entropies (issue 12 §1) at large offsets and scales.

The natural-parameter form :math:`A(\\eta_p) - A(\\eta_q) - \\langle\\eta_p - \\eta_q, E[T]\\rangle`
cancels :math:`\\beta |m|^2 E[\\Lambda]` terms: at offsets of 1e8 it was off by hundreds of nats.
Each override is checked against ``torch.distributions.kl_divergence`` (or, for the joint
families torch lacks, the chain rule evaluated with torch's KLs) at rtol 1e-8, and for
translation and scale invariance.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributions as td

from pyro_vi.factors import (
    ExpFamFactor,
    Gamma,
    MultivariateNormal,
    Normal,
    NormalGamma,
    NormalWishart,
    Wishart,
    blend,
)

F64 = torch.float64
OFFSETS = [0.0, 1e4, 1e8, 1e9]


def t(v):
    return torch.as_tensor(v, dtype=F64)


def close(a, b, rtol=1e-8, atol=0.0):
    torch.testing.assert_close(torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64),
                               rtol=rtol, atol=atol)


def _tril(seed, d=3, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=F64)
    return torch.linalg.cholesky(scale * (a @ a.T + d * torch.eye(d, dtype=F64)))


@pytest.mark.parametrize("offset", OFFSETS)
def test_normal_kl_and_entropy_match_torch_at_any_offset(offset):
    q, p = Normal(t(offset + 0.3), precision=t(4.0)), Normal(t(offset - 0.2), precision=t(0.5))
    ref = td.kl_divergence(td.Normal(t(offset + 0.3), t(0.5)), td.Normal(t(offset - 0.2), t(2**0.5)))
    close(q.kl(p), ref)  # torch subtracts the means first: its KL is exact at any offset
    close(q.entropy(), td.Normal(t(0.0), t(0.5)).entropy())


@pytest.mark.parametrize("offset", OFFSETS)
def test_mvn_kl_and_entropy_match_torch_at_any_offset(offset):
    lq, lp = _tril(0), _tril(1, scale=0.1)
    mq, mp = offset + t([0.1, -0.2, 0.3]), offset + t([0.0, 0.4, -0.1])
    q, p = MultivariateNormal(mq, lq), MultivariateNormal(mp, lp)
    ref = td.kl_divergence(td.MultivariateNormal(mq, precision_matrix=lq @ lq.T),
                           td.MultivariateNormal(mp, precision_matrix=lp @ lp.T))
    close(q.kl(p), ref)
    close(q.entropy(), td.MultivariateNormal(mq, precision_matrix=lq @ lq.T).entropy())


@pytest.mark.parametrize("scale", [1e-12, 1.0, 1e12])
def test_gamma_kl_matches_torch_and_is_scale_invariant(scale):
    q, p = Gamma(t(3.0), t(2.0) * scale), Gamma(t(0.7), t(5.0) * scale)
    ref = td.kl_divergence(td.Gamma(t(3.0), t(2.0)), td.Gamma(t(0.7), t(5.0)))
    close(q.kl(p), ref)
    close(q.entropy(), td.Gamma(t(3.0), t(2.0) * scale).entropy())


@pytest.mark.parametrize("scale", [1e-12, 1.0, 1e12])
def test_wishart_kl_matches_the_natural_parameter_form_and_is_scale_invariant(scale):
    # torch has no Wishart KL; the base class's natural-parameter form is exact at scale 1
    # (nothing to cancel there), and the KL of two Wisharts is invariant under W -> s W.
    q, p = Wishart(_tril(2), t(6.5)), Wishart(_tril(3, scale=0.3), t(4.0))
    ref = ExpFamFactor.kl(q, p)
    qs, ps = Wishart(_tril(2, scale=scale), t(6.5)), Wishart(_tril(3, scale=0.3 * scale), t(4.0))
    close(qs.kl(ps), ref)


def _nw(offset, seed, beta, df):
    # means on a 2^-20 grid, so offset + m is exact (the offsets are integers below 2^31)
    m = torch.randn(2, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return NormalWishart(offset + torch.round(m * 2.0**20) / 2.0**20,
                         t([beta, 2 * beta]), torch.stack([_tril(seed), _tril(seed + 1, scale=0.2)]),
                         t([df, df + 1.5]))


@pytest.mark.parametrize("offset", OFFSETS)
def test_normal_wishart_kl_is_the_chain_rule_with_torchs_kls(offset):
    # KL(q(μ,Λ)||p(μ,Λ)) = KL(q(Λ)||p(Λ)) + E_q(Λ) KL(N(m, (βΛ)^-1) || N(m0, (β0Λ)^-1)); the inner
    # KL is affine in Λ, so its expectation is torch's MVN KL at Λ = E[Λ] = νW.
    q, p = _nw(offset, 0, 3.0, 7.0), _nw(offset, 5, 0.5, 4.0)
    lam = q.precision.mean()
    inner = td.kl_divergence(
        td.MultivariateNormal(q.loc, precision_matrix=q.precision_scale[:, None, None] * lam),
        td.MultivariateNormal(p.loc, precision_matrix=p.precision_scale[:, None, None] * lam))
    wish = ExpFamFactor.kl(q.precision, p.precision)
    close(q.kl(p), wish + inner)
    # translation invariance of KL and entropy against the unshifted pair (HEAD: ~1e2 nats off)
    q0, p0 = _nw(0.0, 0, 3.0, 7.0), _nw(0.0, 5, 0.5, 4.0)
    close(q.kl(p), q0.kl(p0), rtol=1e-10)
    close(q.entropy(), ExpFamFactor.entropy(q0), rtol=1e-10)


@pytest.mark.parametrize("offset", OFFSETS)
def test_normal_gamma_kl_is_the_chain_rule_with_torchs_kls(offset):
    m = offset + t([0.3, -1.0])
    q = NormalGamma(m, t([4.0, 2.0]), t([3.0, 5.0]), t([2.0, 0.5]))
    p = NormalGamma(m + t([0.5, 0.25]), t([0.5, 1.0]), t([1.0, 2.0]), t([1.0, 3.0]))
    e_lam = q.concentration / q.rate
    inner = td.kl_divergence(td.Normal(q.loc, (q.precision_scale * e_lam).rsqrt()),
                             td.Normal(p.loc, (p.precision_scale * e_lam).rsqrt()))
    gam = td.kl_divergence(td.Gamma(q.concentration, q.rate), td.Gamma(p.concentration, p.rate))
    close(q.kl(p), gam + inner)
    q0 = NormalGamma(t([0.3, -1.0]), q.precision_scale, q.concentration, q.rate)
    close(q.entropy(), ExpFamFactor.entropy(q0), rtol=1e-10)


def test_the_natural_parameter_form_fails_where_the_centred_one_holds():
    # The power check: at 1e8 the base class's form is far off, the override is not.
    q, p = _nw(1e8, 0, 3.0, 7.0), _nw(1e8, 5, 0.5, 4.0)
    q0, p0 = _nw(0.0, 0, 3.0, 7.0), _nw(0.0, 5, 0.5, 4.0)
    assert float((ExpFamFactor.kl(q, p) - q0.kl(p0)).abs().max()) > 1e-3
    close(q.kl(p), q0.kl(p0), rtol=1e-10)


@pytest.mark.parametrize("offset", [1e4, 1e8])
def test_blend_commutes_with_translation(offset):
    # blend is a convex step in natural parameters; translation is linear in them, so stepping
    # shifted factors must give the shifted step. HEAD blended the raw η: at 1e8 its W^-1 came
    # back from -2η3 - β m mᵀ, which cancels, and from_natural failed (not positive definite).
    q, p = _nw(0.0, 0, 3.0, 7.0), _nw(0.0, 5, 0.5, 4.0)
    want = blend(q, p, 0.3)
    got = blend(q.shifted(t(offset)), p.shifted(t(offset)), 0.3)
    close(got.loc - offset, want.loc, rtol=0, atol=1e-12 * offset)
    close(got.scale_tril, want.scale_tril, rtol=1e-9)
    close(got.df, want.df)
    close(got.precision_scale, want.precision_scale)
