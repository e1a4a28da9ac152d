"""Exact tier for the exponential-family factors: closed forms vs scipy and torch.distributions.

Deterministic checks run in float64 at ``rtol=1e-8`` (the round-off of lgamma/digamma and of a
Cholesky round trip is ~1e-13 at these parameter sizes, so the band is loose by 1e5 and still
catches any formula error, which shows up at 1e-3 or worse).

Monte-Carlo checks are seeded and allow ``Z = 5`` standard errors per compared scalar, the
standard error being the sample standard deviation over sqrt(S). For a correct implementation a
fresh seed pushes one scalar past 5 SE with probability 5.7e-7 (two-sided normal tail; S >= 2e4
makes the CLT accurate for these light-tailed statistics); with the ~400 scalars this module
compares that is a failure budget of ~2e-4 per run. A wrong moment or KL typically sits 10-100s
of SE away.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.distributions as td
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import digamma, gammaln, multigammaln

from pyro_vi.factors import (
    Beta,
    Categorical,
    Dirichlet,
    ExpFamFactor,
    Gamma,
    MultivariateNormal,
    Normal,
    NormalGamma,
    NormalWishart,
    Wishart,
    blend,
    log_wishart_normalizer,
)

F64 = torch.float64
RTOL, ATOL = 1e-8, 1e-10
Z = 5.0  # Monte-Carlo band, in standard errors (see the module docstring)
S = 20_000  # Monte-Carlo draws per check
K, D = 4, 3  # categories of Dirichlet/Categorical, dimension of (Normal-)Wishart
FAMILIES = ["Dirichlet", "Categorical", "Gamma", "NormalGamma", "Wishart", "NormalWishart"]
# Derandomised so that a CI run is reproducible; few examples keep the module fast.
HYP = settings(max_examples=25, deadline=None, derandomize=True)
# torch.distributions.Wishart warns at construction when D-1 < ν < D because *sampling* is then
# unreliable; the tests marked with this filter only evaluate densities and entropies there.
LOW_DF_OK = pytest.mark.filterwarnings("ignore:Low df values detected:UserWarning")


def t(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=F64)


def close(actual, expected, *, rtol=RTOL, atol=ATOL) -> None:
    def arr(x):
        return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    np.testing.assert_allclose(arr(actual), arr(expected), rtol=rtol, atol=atol)


def assert_mc_mean(draws: torch.Tensor, exact: torch.Tensor, what: str) -> None:
    """Every entry of ``draws.mean(0)`` lies within Z standard errors of ``exact``."""
    se = draws.std(0) / math.sqrt(draws.shape[0])
    dev = (draws.mean(0) - exact).abs()
    worst = float((dev / se.clamp_min(1e-300)).max())
    assert bool((dev <= Z * se + 1e-12).all()), f"{what}: MC mean off by {worst:.1f} SE"


# ---------------------------------------------------------------- random factors (seeded)


def make(family: str, batch: tuple[int, ...] = (), seed: int = 0) -> ExpFamFactor:
    """A random, well-conditioned factor of ``family`` with ``batch_shape == batch``."""
    g = torch.Generator().manual_seed(seed)

    def u(*s):
        return torch.rand((*batch, *s), generator=g, dtype=F64)

    def n(*s):
        return torch.randn((*batch, *s), generator=g, dtype=F64)

    def tril():
        return torch.tril(0.3 * n(D, D), -1) + torch.diag_embed(0.5 + u(D))

    if family == "Dirichlet":
        return Dirichlet(0.5 + 4 * u(K))
    if family == "Categorical":
        return Categorical(n(K))
    if family == "Gamma":
        return Gamma(1.0 + 4 * u(), 0.5 + 2 * u())
    if family == "NormalGamma":
        return NormalGamma(n(), 0.5 + 2 * u(), 1.5 + 4 * u(), 0.5 + 2 * u())
    if family == "Wishart":
        return Wishart(tril(), D + 1 + 4 * u())
    return NormalWishart(n(D), 0.5 + 2 * u(), tril(), D + 1 + 4 * u())


def params(f: ExpFamFactor) -> tuple[torch.Tensor, ...]:
    """The factor's ordinary parameters."""
    if isinstance(f, Dirichlet):
        return (f.concentration,)
    if isinstance(f, Categorical):
        return (f.probs,)
    if isinstance(f, Gamma):
        return (f.concentration, f.rate)
    if isinstance(f, NormalGamma):
        return (f.loc, f.precision_scale, f.concentration, f.rate)
    if isinstance(f, Wishart):
        return (f.scale_tril, f.df)
    assert isinstance(f, NormalWishart)
    return (f.loc, f.precision_scale, f.scale_tril, f.df)


def assert_valid(f: ExpFamFactor) -> None:
    """The parameters lie in the family's parameter space."""
    for p in params(f):
        assert torch.isfinite(p).all()
    if isinstance(f, Dirichlet):
        assert (f.concentration > 0).all()
    elif isinstance(f, Categorical):
        close(f.probs.sum(-1), torch.ones(f.batch_shape, dtype=F64))
    elif isinstance(f, Gamma | NormalGamma):
        assert (f.concentration > 0).all()
        assert (f.rate > 0).all()
    if isinstance(f, NormalGamma | NormalWishart):
        assert (f.precision_scale > 0).all()
    if isinstance(f, Wishart | NormalWishart):
        assert (f.df > f.dim - 1).all()
        assert (torch.diagonal(f.scale_tril, dim1=-2, dim2=-1) > 0).all()


def sample_wishart(law: td.Wishart, n: int) -> torch.Tensor:
    """``law.sample((n,))`` without torch's spurious "Singular sample detected" warning.

    torch 2.13's ``Wishart.rsample`` tests ``support.check(sample)`` where it means
    ``~support.check(sample)`` (pytorch/pytorch#122021), so every valid draw is flagged and drawn
    once more by the same Bartlett sampler: the draws are still exact, only the warning is wrong.
    We silence that one message here and check positive-definiteness ourselves.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Singular sample detected", category=UserWarning)
        draws = law.sample((n,))
    assert bool((torch.linalg.cholesky_ex(draws).info == 0).all()), "torch drew a non-PD matrix"
    return draws


def torch_law(f: ExpFamFactor):
    """Sampler and log-density built from torch.distributions only (not from the factor's math)."""
    if isinstance(f, Wishart):
        wishart = f.to_distribution()
        return (lambda n: (sample_wishart(wishart, n),)), (lambda pt: wishart.log_prob(pt[0]))
    if isinstance(f, Dirichlet | Categorical | Gamma):
        law = f.to_distribution()
        return (lambda n: (law.sample((n,)),)), (lambda pt: law.log_prob(pt[0]))
    if isinstance(f, NormalGamma):
        gam = td.Gamma(f.concentration, f.rate)

        def normal(lam):
            return td.Normal(f.loc, (f.precision_scale * lam).rsqrt())

        def sample_ng(n):
            lam = gam.sample((n,))
            return normal(lam).sample(), lam

        return sample_ng, (lambda pt: normal(pt[1]).log_prob(pt[0]) + gam.log_prob(pt[1]))
    assert isinstance(f, NormalWishart)
    wish = td.Wishart(df=f.df, scale_tril=f.scale_tril)

    def mvn(lam):
        return td.MultivariateNormal(f.loc, precision_matrix=f.precision_scale[..., None, None]
                                     * lam)

    def sample_nw(n):
        lam = sample_wishart(wish, n)
        return mvn(lam).sample(), lam

    return sample_nw, (lambda pt: mvn(pt[1]).log_prob(pt[0]) + wish.log_prob(pt[1]))


def suff_stats(f: ExpFamFactor, pt: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """T(θ) at a point, written out independently of the factor classes."""
    if isinstance(f, Dirichlet):
        return (pt[0].log(),)
    if isinstance(f, Categorical):
        return (torch.nn.functional.one_hot(pt[0], K).to(F64),)
    if isinstance(f, Gamma):
        return (pt[0].log(), pt[0])
    if isinstance(f, NormalGamma):
        mu, lam = pt
        return (lam * mu, lam * mu**2, lam, lam.log())
    if isinstance(f, Wishart):
        return (pt[0], torch.logdet(pt[0]))
    mu, lam = pt
    lam_mu = (lam @ mu.unsqueeze(-1)).squeeze(-1)
    return (lam_mu, (mu * lam_mu).sum(-1), lam, torch.logdet(lam))


def ef_log_density(f: ExpFamFactor, pt: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """<η, T(θ)> - A(η) + log h, with log h the (constant) base measure of every family here."""
    inner = 0.0
    for eta, stat, d in zip(f.natural_params, suff_stats(f, pt), f.event_dims, strict=True):
        prod = eta * stat
        inner = inner + (prod.sum(tuple(range(-d, 0))) if d else prod)
    return inner - f.log_normalizer() + f.expected_log_base_measure()


# ---------------------------------------------------------------- hypothesis strategies


def _floats(lo: float, hi: float):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def _vec(n: int, lo: float, hi: float):
    return st.lists(_floats(lo, hi), min_size=n, max_size=n).map(t)


@st.composite
def trils(draw, d: int) -> torch.Tensor:
    """Lower Cholesky factors with diagonal in [0.3, 3] and off-diagonal in [-1, 1]."""
    tril = torch.diag(draw(_vec(d, 0.3, 3.0)))
    rows, cols = torch.tril_indices(d, d, -1)
    tril[rows, cols] = draw(_vec(d * (d - 1) // 2, -1.0, 1.0))
    return tril


POS = _floats(0.2, 10.0)
DF = _floats(D - 1 + 0.1, D + 20.0)
STRATEGIES = {
    "Dirichlet": _vec(K, 0.1, 20.0).map(Dirichlet),
    "Categorical": _vec(K, -8.0, 8.0).map(Categorical),
    "Gamma": st.tuples(POS, POS).map(lambda p: Gamma(t(p[0]), t(p[1]))),
    "NormalGamma": st.tuples(_floats(-5, 5), POS, POS, POS).map(
        lambda p: NormalGamma(*map(t, p))),
    "Wishart": st.tuples(trils(D), DF).map(lambda p: Wishart(p[0], t(p[1]))),
    "NormalWishart": st.tuples(_vec(D, -3.0, 3.0), POS, trils(D), DF).map(
        lambda p: NormalWishart(p[0], t(p[1]), p[2], t(p[3]))),
}


def pairs(family: str):
    return st.tuples(STRATEGIES[family], STRATEGIES[family])


# ---------------------------------------------------------------- Dirichlet


@HYP
@given(pairs("Dirichlet"))
def test_dirichlet_closed_forms_vs_scipy_and_torch(pair):
    q, p = pair
    a = q.concentration.numpy()
    close(q.log_normalizer(), gammaln(a).sum() - gammaln(a.sum()))
    close(q.expected_log(), digamma(a) - digamma(a.sum()))
    close(q.entropy(), td.Dirichlet(q.concentration).entropy())
    close(q.kl(p), td.kl_divergence(td.Dirichlet(q.concentration), td.Dirichlet(p.concentration)))


# ---------------------------------------------------------------- Gamma


@HYP
@given(pairs("Gamma"), _floats(0.01, 20.0))
def test_gamma_closed_forms_vs_scipy_and_torch(pair, lam):
    q, p = pair
    a, b = float(q.concentration), float(q.rate)
    ref = td.Gamma(q.concentration, q.rate)
    close(q.log_normalizer(), gammaln(a) - a * math.log(b))
    # log_prob(λ) = <η, T(λ)> - A with h = 1, so A follows from torch's density at any λ.
    close(q.log_normalizer(), (a - 1) * math.log(lam) - b * lam - ref.log_prob(t(lam)))
    close(q.mean(), ref.mean)
    close(q.expected_log(), digamma(a) - math.log(b))
    close(q.entropy(), ref.entropy())
    close(q.kl(p), td.kl_divergence(ref, td.Gamma(p.concentration, p.rate)))


# ---------------------------------------------------------------- Categorical


@HYP
@given(pairs("Categorical"))
def test_categorical_entropy_and_kl_vs_torch(pair):
    q, p = pair
    close(q.entropy(), q.to_distribution().entropy())
    close(q.kl(p), td.kl_divergence(q.to_distribution(), p.to_distribution()))


def test_categorical_exact_zero_probabilities_match_torch():
    probs = {
        "q": [0.5, 0.5, 0.0, 0.0],
        "same_zeros": [0.2, 0.8, 0.0, 0.0],
        "no_zeros": [0.1, 0.2, 0.3, 0.4],
        "rules_out_q": [0.0, 0.4, 0.3, 0.3],
    }
    ours = {k: Categorical.from_probs(t(v)) for k, v in probs.items()}
    ref = {k: td.Categorical(probs=t(v)) for k, v in probs.items()}
    for k in probs:
        close(ours[k].probs, t(probs[k]), atol=0)  # a zero stays an exact zero
        close(ours[k].entropy(), ref[k].entropy())
        for j in probs:
            # includes 0·log 0 = 0 and +inf where the prior rules out a category that q allows
            close(ours[k].kl(ours[j]), td.kl_divergence(ref[k], ref[j]))
    assert torch.isinf(ours["q"].kl(ours["rules_out_q"]))
    assert ours["q"].kl(ours["same_zeros"]) > 0
    # -inf logits are the same law; the entropy used to be 0·(-inf) = NaN here.
    minus_inf = Categorical(t([0.0, 0.0, -math.inf, -math.inf]))
    close(minus_inf.entropy(), math.log(2.0))
    close(blend(minus_inf, ours["no_zeros"], 1.0).probs, t(probs["no_zeros"]))


# ---------------------------------------------------------------- Wishart


@st.composite
def wishart_any_dim(draw):
    d = draw(st.integers(1, 4))
    return draw(trils(d)), t(draw(_floats(d - 1 + 0.05, d + 30.0)))


@HYP
@given(wishart_any_dim())
def test_log_wishart_normalizer_vs_multigammaln(wish):
    # After sklearn's test_log_wishart_norm: the normalizer from scipy's multivariate gamma.
    tril, df = wish
    d, nu = tril.shape[-1], float(df)
    _, logdet_w = np.linalg.slogdet((tril @ tril.T).numpy())
    expected = 0.5 * nu * logdet_w + 0.5 * nu * d * math.log(2.0) + multigammaln(0.5 * nu, d)
    close(log_wishart_normalizer(tril, df), expected)
    close(Wishart(tril, df).log_normalizer(), expected)


def _expected_logdet_scipy(tril: torch.Tensor, nu: float) -> float:
    d = tril.shape[-1]
    _, logdet_w = np.linalg.slogdet((tril @ tril.T).numpy())
    return float(digamma(0.5 * (nu + 1 - np.arange(1, d + 1))).sum() + d * math.log(2.0)
                 + logdet_w)


@LOW_DF_OK
@HYP
@given(STRATEGIES["Wishart"], trils(D))
def test_wishart_density_entropy_logdet_vs_torch_and_scipy(q, point_tril):
    lam = point_tril @ point_tril.T
    ref = q.to_distribution()
    # log W(Λ|W,ν) = <η, (Λ, log|Λ|)> - A, with h = 1.
    close(ef_log_density(q, (lam,)), ref.log_prob(lam))
    close(q.entropy(), ref.entropy())
    close(q.expected_logdet(), _expected_logdet_scipy(q.scale_tril, float(q.df)))
    close(q.mean(), ref.mean)


def test_wishart_expected_logdet_vs_monte_carlo():
    torch.manual_seed(11)
    q = make("Wishart", (3,), seed=11)
    draws = torch.logdet(sample_wishart(q.to_distribution(), 4 * S))  # (4S, 3)
    assert_mc_mean(draws, q.expected_logdet(), "E[log|Λ|]")
    for k in range(3):
        close(q.expected_logdet()[k], _expected_logdet_scipy(q.scale_tril[k], float(q.df[k])))


def _wishart_kl_reference(q: Wishart, p: Wishart) -> float:
    """KL = -H[q] - E_q[log p], with H from torch and the rest from scipy (no factor code)."""
    d = q.dim
    nu_q, nu_p = float(q.df), float(p.df)
    w_q = (q.scale_tril @ q.scale_tril.T).numpy()
    w_p = (p.scale_tril @ p.scale_tril.T).numpy()
    log_z_p = (0.5 * nu_p * np.linalg.slogdet(w_p)[1] + 0.5 * nu_p * d * math.log(2.0)
               + multigammaln(0.5 * nu_p, d))
    e_log_p = (0.5 * (nu_p - d - 1) * _expected_logdet_scipy(q.scale_tril, nu_q)
               - 0.5 * nu_q * np.trace(np.linalg.solve(w_p, w_q)) - log_z_p)
    return float(-q.to_distribution().entropy()) - e_log_p


@LOW_DF_OK
@HYP
@given(pairs("Wishart"))
def test_wishart_kl_vs_independent_closed_form(pair):
    q, p = pair
    close(q.kl(p), _wishart_kl_reference(q, p))


# ---------------------------------------------------------------- Normal-Gamma, Normal-Wishart


@pytest.mark.parametrize("family", FAMILIES)
def test_exp_family_form_reproduces_torch_density(family):
    # Points come from a different random factor, so they are not only typical points of q.
    torch.manual_seed(1)
    q, other = make(family, (2,), seed=1), make(family, (2,), seed=2)
    pts = torch_law(other)[0](50)
    close(ef_log_density(q, pts), torch_law(q)[1](pts), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_expected_stats_match_monte_carlo(family):
    torch.manual_seed(2)
    q = make(family, (2,), seed=3)
    pts = torch_law(q)[0](S)
    for i, (draws, exact) in enumerate(zip(suff_stats(q, pts), q.expected_stats(),
                                           strict=True)):
        assert_mc_mean(draws, exact, f"{family} E[T_{i}]")


@pytest.mark.parametrize("family", FAMILIES)
def test_entropy_is_minus_expected_log_density(family):
    torch.manual_seed(3)
    q = make(family, (2,), seed=4)
    sample, log_prob = torch_law(q)
    assert_mc_mean(-log_prob(sample(S)), q.entropy(), f"{family} entropy")


@pytest.mark.parametrize("family", FAMILIES)
def test_kl_matches_monte_carlo(family):
    torch.manual_seed(4)
    q, p = make(family, (2,), seed=5), make(family, (2,), seed=6)
    sample, log_q = torch_law(q)
    pts = sample(S)
    assert_mc_mean(log_q(pts) - torch_law(p)[1](pts), q.kl(p), f"{family} KL")


@HYP
@given(pairs("NormalGamma"))
def test_normal_gamma_kl_decomposes(pair):
    # KL(q(μ,λ)||p(μ,λ)) = E_q(λ)[KL(N_q(μ|λ) || N_p(μ|λ))] + KL(Gam_q || Gam_p). The Normal KL
    # is affine in λ (both variances scale with 1/λ), so its expectation is its value at E[λ].
    q, p = pair
    lam = q.concentration / q.rate
    normal_kl = td.kl_divergence(td.Normal(q.loc, (q.precision_scale * lam).rsqrt()),
                                 td.Normal(p.loc, (p.precision_scale * lam).rsqrt()))
    gamma_kl = td.kl_divergence(td.Gamma(q.concentration, q.rate), td.Gamma(p.concentration, p.rate))
    close(q.kl(p), normal_kl + gamma_kl)


@LOW_DF_OK
@HYP
@given(pairs("NormalWishart"))
def test_normal_wishart_kl_decomposes(pair):
    # As above with E_q[Λ] = νW: the Gaussian KL is affine in Λ. torch has no Wishart KL, so that
    # term comes from torch's entropy plus scipy's digamma/multigammaln.
    q, p = pair
    lam = q.df * q.precision.scale
    normal_kl = td.kl_divergence(
        td.MultivariateNormal(q.loc, precision_matrix=q.precision_scale * lam),
        td.MultivariateNormal(p.loc, precision_matrix=p.precision_scale * lam))
    close(q.kl(p), normal_kl + _wishart_kl_reference(q.precision, p.precision))


def test_normal_wishart_expected_mahalanobis():
    torch.manual_seed(5)
    x = torch.randn(6, D, dtype=F64) * 2
    for batch in [(3,), (2, 3)]:
        q = make("NormalWishart", batch, seed=7)
        got = q.expected_mahalanobis(x)
        assert got.shape == (6, *batch)
        for n in range(6):
            for idx in np.ndindex(*batch):
                diff = x[n] - q.loc[idx]
                w = q.scale_tril[idx] @ q.scale_tril[idx].T
                direct = D / q.precision_scale[idx] + q.df[idx] * diff @ w @ diff
                close(got[(n, *idx)], direct)
    q = make("NormalWishart", (3,), seed=8)
    mu, lam = torch_law(q)[0](S)  # (S, 3, D), (S, 3, D, D)
    diff = x[:, None, None, :] - mu  # (6, S, 3, D)
    draws = ((diff.unsqueeze(-2) @ lam).squeeze(-2) * diff).sum(-1).transpose(0, 1)
    assert_mc_mean(draws, q.expected_mahalanobis(x), "E[(x-μ)ᵀΛ(x-μ)]")
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3\)"):
        q.expected_mahalanobis(x[:, :2])


def test_normal_gamma_expected_mahalanobis():
    torch.manual_seed(6)
    q = make("NormalGamma", (2, 3), seed=9)
    x = torch.randn(5, 1, 1, dtype=F64) * 2
    got = q.expected_mahalanobis(x)
    assert got.shape == (5, 2, 3)
    direct = 1 / q.precision_scale + q.concentration / q.rate * (x - q.loc) ** 2
    close(got, direct)
    mu, lam = torch_law(q)[0](S)  # (S, 2, 3) each
    draws = (lam * (x[:, None] - mu) ** 2).transpose(0, 1)  # (S, 5, 2, 3)
    assert_mc_mean(draws, got, "E[λ(x-μ)²]")


# ---------------------------------------------------------------- invariants of every family


@pytest.mark.parametrize("family", FAMILIES)
@HYP
@given(data=st.data())
def test_kl_is_zero_to_itself_and_nonnegative(family, data):
    q, p = data.draw(pairs(family))
    close(q.kl(q), 0.0, atol=1e-9)
    assert float(q.kl(p)) >= -1e-9


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - {"Categorical"}))
def test_gradient_of_log_normalizer_is_expected_stats(family):
    # ∇A(η) = E[T] (Wainwright & Jordan 2008, Prop. 3.1) ties A, from_natural and expected_stats
    # together. Categorical is left out: it stores normalised logits, so its A(η) is identically
    # 0 and the identity holds only for the un-normalised form.
    q = make(family, (2,), seed=10)
    eta = tuple(e.detach().clone().requires_grad_(True) for e in q.natural_params)
    grads = torch.autograd.grad(type(q).from_natural(*eta).log_normalizer().sum(), eta)
    for g, s in zip(grads, q.expected_stats(), strict=True):
        close(g, s)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", [(3,), (2, 3)])
def test_from_natural_round_trips(family, batch):
    q = make(family, batch, seed=12)
    back = type(q).from_natural(*q.natural_params)
    for a, b in zip(params(back), params(q), strict=True):
        close(a, b, rtol=1e-10, atol=1e-10)
    for a, b in zip(back.natural_params, q.natural_params, strict=True):
        close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_blend_endpoints(family):
    a, b = make(family, (3,), seed=13), make(family, (3,), seed=14)
    for rho, want in [(0.0, a), (1.0, b)]:
        for x, y in zip(params(blend(a, b, rho)), params(want), strict=True):
            close(x, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
@HYP
@given(data=st.data(), rho=_floats(1e-6, 1 - 1e-6))
def test_blend_stays_in_family(family, data, rho):
    a, b = data.draw(pairs(family))
    mixed = blend(a, b, rho)
    assert type(mixed) is type(a)
    assert_valid(mixed)
    for got, ea, eb in zip(mixed.natural_params, a.natural_params, b.natural_params,
                           strict=True):
        want = (1 - rho) * ea + rho * eb
        if isinstance(a, Categorical):  # logits are defined up to a constant; stored normalised
            want = want - torch.logsumexp(want, -1, keepdim=True)
        close(got, want, atol=1e-8)


@pytest.mark.parametrize("rho", [-0.1, 1.0 + 1e-9, math.nan, math.inf])
def test_blend_rejects_rho_outside_unit_interval(rho):
    with pytest.raises(ValueError, match="rho must lie in"):
        blend(make("Gamma"), make("Gamma", seed=1), rho)


def test_kl_across_families_is_a_type_error():
    with pytest.raises(TypeError, match="Gamma needs a Gamma here, got Dirichlet"):
        make("Gamma").kl(make("Dirichlet"))


EVENT_SHAPES = {
    "Dirichlet": [(K,)],
    "Categorical": [(K,)],
    "Gamma": [(), ()],
    "NormalGamma": [(), (), (), ()],
    "Wishart": [(D, D), ()],
    "NormalWishart": [(D,), (), (D, D), ()],
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", [(K,), (2, K)])
def test_batched_output_shapes(family, batch):
    q, p = make(family, batch, seed=15), make(family, batch, seed=16)
    assert q.batch_shape == batch
    want = [(*batch, *e) for e in EVENT_SHAPES[family]]
    assert [tuple(e.shape) for e in q.natural_params] == want
    assert [tuple(s.shape) for s in q.expected_stats()] == want
    for out in [q.log_normalizer(), q.entropy(), q.kl(p), q.expected_log_prob(p),
                q.expected_log_base_measure()]:
        assert tuple(out.shape) == batch
        assert out.dtype == F64
    assert type(q).from_natural(*q.natural_params).batch_shape == batch
    if isinstance(q, NormalWishart):
        assert q.expected_mahalanobis(torch.zeros(5, D, dtype=F64)).shape == (5, *batch)
    if isinstance(q, NormalGamma):
        x = torch.zeros(5, *(1,) * len(batch), dtype=F64)
        assert q.expected_mahalanobis(x).shape == (5, *batch)
    # The values, not only the shapes: entry i of each batched output is the output of the
    # unbatched factor i (rebuilt from its slice of the natural parameters), so no batch entry
    # mixes with another. Same float64 operations on the same numbers: 1e-12 relative.
    cls = type(q)
    for idx in np.ndindex(*batch):
        qi = cls.from_natural(*(e[idx] for e in q.natural_params))
        pi = cls.from_natural(*(e[idx] for e in p.natural_params))
        assert qi.batch_shape == ()
        for got, want in [(q.log_normalizer()[idx], qi.log_normalizer()),
                          (q.entropy()[idx], qi.entropy()), (q.kl(p)[idx], qi.kl(pi)),
                          (q.expected_log_prob(p)[idx], qi.expected_log_prob(pi)),
                          (q.expected_log_base_measure()[idx], qi.expected_log_base_measure())]:
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        for a, b in zip(q.expected_stats(), qi.expected_stats(), strict=True):
            torch.testing.assert_close(a[idx], b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_expected_log_prob_is_entropy_minus_kl(family):
    # E_q[log p] = -H[q] - KL(q||p): the cross term agrees with the other two.
    q, p = make(family, (3,), seed=17), make(family, (3,), seed=18)
    close(q.expected_log_prob(p), -q.entropy() - q.kl(p))


# ------------------------------------------------------------ moments against torch
def test_mean_variance_and_stddev_match_torch():
    # torch.distributions computes the same closed forms independently; float64 round-off only.
    t = torch.tensor
    a, b = t([0.5, 2.0, 7.0], dtype=F64), t([1.5, 0.3, 2.0], dtype=F64)
    factors = [(Gamma(a, b), td.Gamma(a, b)), (Beta(a, b), td.Beta(a, b)),
               (Dirichlet(a), td.Dirichlet(a)), (Normal(a, precision=b), td.Normal(a, b.rsqrt()))]
    for f, ref in factors:
        close(f.mean(), ref.mean)
        close(f.variance(), ref.variance)
        close(f.stddev(), ref.stddev)
    tril = t([[2.0, 0.0], [0.5, 1.0]], dtype=F64)
    mvn = MultivariateNormal(t([0.1, -0.2], dtype=F64), tril)
    ref = td.MultivariateNormal(mvn.loc, precision_matrix=tril @ tril.T)
    close(mvn.variance(), ref.variance)
    close(mvn.stddev(), ref.stddev)


# ---------------------------------------------------------------- moments of every factor
def test_categorical_moments_are_the_one_hot_moments():
    from pyro_vi.factors import Categorical

    logits = torch.randn(3, 5, dtype=torch.float64)
    ref = td.OneHotCategorical(logits=logits)
    q = Categorical(logits)
    torch.testing.assert_close(q.mean(), ref.mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(q.variance(), ref.variance, rtol=1e-12, atol=0)
    torch.testing.assert_close(q.stddev(), ref.stddev, rtol=1e-12, atol=0)


def test_wishart_variance_matches_torch():
    from pyro_vi.factors import Wishart

    a = torch.randn(4, 3, 3, dtype=torch.float64)
    tril = torch.linalg.cholesky(a @ a.transpose(-1, -2) + 3 * torch.eye(3, dtype=torch.float64))
    df = torch.tensor([3.0, 4.5, 7.0, 20.0], dtype=torch.float64)
    q, ref = Wishart(tril, df), td.Wishart(df=df, scale_tril=tril)
    torch.testing.assert_close(q.variance(), ref.variance, rtol=1e-12, atol=0)
    torch.testing.assert_close(q.stddev(), ref.variance.sqrt(), rtol=1e-12, atol=0)


def test_normal_gamma_marginals_are_student_t_and_gamma():
    from pyro_vi.factors import NormalGamma

    m = torch.tensor([0.3, -2.0, 5.0], dtype=torch.float64)
    beta = torch.tensor([0.5, 2.0, 10.0], dtype=torch.float64)
    a = torch.tensor([1.5, 3.0, 0.8], dtype=torch.float64)
    b = torch.tensor([2.0, 0.7, 1.1], dtype=torch.float64)
    q = NormalGamma(m, beta, a, b)
    t = td.StudentT(2 * a, m, (b / (a * beta)).sqrt())  # Bishop 2006, eq. 2.159
    mean_loc, mean_prec = q.mean()
    var_loc, var_prec = q.variance()
    torch.testing.assert_close(mean_loc, m)
    torch.testing.assert_close(mean_prec, a / b, rtol=1e-12, atol=0)
    torch.testing.assert_close(var_prec, td.Gamma(a, b).variance, rtol=1e-12, atol=0)
    # 2a <= 2 (a = 0.8): the Student-t variance is infinite, and torch says so too
    torch.testing.assert_close(var_loc, t.variance, rtol=1e-12, atol=0)
    assert torch.isinf(var_loc[2])
    assert torch.isfinite(var_loc[:2]).all()
    sd_loc, _ = q.stddev()
    torch.testing.assert_close(sd_loc, t.variance.sqrt(), rtol=1e-12, atol=0)


def test_normal_wishart_loc_covariance_is_the_student_t_covariance():
    import pyro.distributions as pdist

    from pyro_vi.factors import NormalWishart

    d = 3
    a = torch.randn(2, d, d, dtype=torch.float64)
    w = a @ a.transpose(-1, -2) + torch.eye(d, dtype=torch.float64)
    tril = torch.linalg.cholesky(w)
    m = torch.randn(2, d, dtype=torch.float64)
    beta = torch.tensor([0.7, 4.0], dtype=torch.float64)
    df = torch.tensor([6.5, 3.5], dtype=torch.float64)  # nu - D - 1 = 2.5 and -0.5
    q = NormalWishart(m, beta, tril, df)
    dof = df - d + 1  # marginal of mu: Student-t (Bishop 2006, eqs. B.68-B.70)
    scale = torch.linalg.inv((dof * beta)[:, None, None] * w)
    t = pdist.MultivariateStudentT(dof[0], m[0], torch.linalg.cholesky(scale[0]))
    cov = q.loc_covariance()
    # pyro's covariance_matrix is the scale matrix (its docstring says so): times df/(df - 2)
    torch.testing.assert_close(cov[0], t.covariance_matrix * dof[0] / (dof[0] - 2), rtol=1e-10, atol=0)
    torch.testing.assert_close(torch.diagonal(cov[0]), t.variance, rtol=1e-10, atol=0)
    assert torch.isinf(cov[1]).all()  # nu <= D + 1: no finite covariance
    mean_loc, mean_prec = q.mean()
    torch.testing.assert_close(mean_prec, df[:, None, None] * w, rtol=1e-12, atol=0)
    var_loc, var_prec = q.variance()
    torch.testing.assert_close(var_loc[0], t.variance, rtol=1e-10, atol=0)
    torch.testing.assert_close(var_prec, td.Wishart(df=df, scale_tril=tril).variance, rtol=1e-12, atol=0)
