"""elbo_estimate against Pyro's Trace_ELBO (same RNG stream) and against closed-form ELBOs.

Every stochastic check is seeded. A "within 4 SE" check of an unbiased Gaussian-ish mean fails
with probability 6e-5 per fresh seed, so a failure means a bias, not bad luck.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_vi import ELBOEstimate, NumericalError, elbo_estimate

SIGMA_MU, SIGMA_Z, SIGMA_X = 2.0, 1.0, 0.5  # hierarchical model scales
Q_MU_SCALE, Q_Z_SCALE = 0.7, 0.4  # guide scales


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)


def hier_model(x):
    """mu ~ N(0, 2^2); z_i ~ N(mu, 1); x_i ~ N(z_i, 0.5^2): a global and a local latent."""
    mu = pyro.sample("mu", dist.Normal(0.0, SIGMA_MU))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(mu, SIGMA_Z))
        pyro.sample("x", dist.Normal(z, SIGMA_X), obs=x)


def hier_guide(x):
    m = pyro.param("m", torch.tensor(0.3))
    pyro.sample("mu", dist.Normal(m, Q_MU_SCALE))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(0.8 * x, Q_Z_SCALE))


def hier_elbo_closed_form(x):
    """E_q[log p(x, mu, z)] + H(q), all terms Gaussian expectations (Bishop 2006, eq. 10.x)."""
    m, a = 0.3, 0.8 * x
    n = len(x)

    def e_log_normal(mean_sq, scale):  # E[log N(v | u, scale^2)] given E[(v - u)^2]
        return -0.5 * math.log(2 * math.pi * scale**2) - mean_sq / (2 * scale**2)

    e_mu = e_log_normal(m**2 + Q_MU_SCALE**2, SIGMA_MU)
    e_z = sum(e_log_normal(float((ai - m) ** 2) + Q_Z_SCALE**2 + Q_MU_SCALE**2, SIGMA_Z)
              for ai in a)
    e_x = sum(e_log_normal(float((xi - ai) ** 2) + Q_Z_SCALE**2, SIGMA_X)
              for xi, ai in zip(x, a, strict=True))
    entropy = 0.5 * math.log(2 * math.pi * math.e * Q_MU_SCALE**2) \
        + n * 0.5 * math.log(2 * math.pi * math.e * Q_Z_SCALE**2)
    return e_mu + e_z + e_x + entropy


def normal_model(x):
    mu = pyro.sample("mu", dist.Normal(1.0, 3.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.5), obs=x)


def normal_posterior(x):
    """Conjugate posterior of normal_model (Murphy 2007, 'Conjugate Bayesian analysis', eq. 20)."""
    prec = 1 / 3.0**2 + len(x) / 1.5**2
    mean = (1.0 / 3.0**2 + float(x.sum()) / 1.5**2) / prec
    return mean, prec**-0.5


def normal_log_evidence(x):
    """x ~ MVN(1, 1.5^2 I + 3^2 11^T), the marginal of normal_model."""
    n = len(x)
    cov = 1.5**2 * torch.eye(n) + 3.0**2 * torch.ones(n, n)
    return float(dist.MultivariateNormal(torch.ones(n), cov).log_prob(x))


@pytest.mark.parametrize("max_plate_nesting", [None, 1])
def test_mean_equals_vectorized_trace_elbo_under_same_seed(max_plate_nesting):
    # Same RNG stream: the guess of max_plate_nesting, then one plate of P particles, replay.
    x = torch.randn(6)
    pyro.set_rng_seed(3)
    est = elbo_estimate(hier_model, hier_guide, x, num_particles=4000, chunk_size=4000,
                        max_plate_nesting=max_plate_nesting)
    pyro.set_rng_seed(3)
    kw = {} if max_plate_nesting is None else {"max_plate_nesting": max_plate_nesting}
    loss = Trace_ELBO(num_particles=4000, vectorize_particles=True, **kw).loss(
        hier_model, hier_guide, x)
    assert est.mean == pytest.approx(-loss, rel=1e-10, abs=0)
    assert est.num_particles == 4000
    assert est.vectorized
    assert est.log_weights.shape == (4000,)
    assert est.log_weights.dtype == torch.float64


def test_mean_equals_trace_elbo_with_an_autoguide():
    x = torch.randn(5) + 2.0
    guide = AutoNormal(normal_model)
    guide(x)  # set the guide up (it draws random numbers once) before either estimate
    pyro.set_rng_seed(7)
    est = elbo_estimate(normal_model, guide, x, num_particles=3000, chunk_size=3000)
    pyro.set_rng_seed(7)
    loss = Trace_ELBO(num_particles=3000, vectorize_particles=True).loss(normal_model, guide, x)
    assert est.mean == pytest.approx(-loss, rel=1e-10, abs=0)


def test_exact_posterior_guide_gives_log_evidence_with_zero_stderr():
    # log p(x, z) - log q(z) = log p(x) for every z when q is the exact posterior, so each
    # weight equals the evidence up to float64 round-off of terms of size ~50 (~1e-13).
    x = torch.randn(20) * 1.5 + 0.7
    mean, scale = normal_posterior(x)

    def guide(x):
        pyro.sample("mu", dist.Normal(mean, scale))

    est = elbo_estimate(normal_model, guide, x, num_particles=10000)
    assert est.mean == pytest.approx(normal_log_evidence(x), abs=1e-9)
    assert est.stderr < 1e-10


def test_inexact_guide_agrees_with_closed_form_elbo_within_4se():
    x = torch.randn(8)
    est = elbo_estimate(hier_model, hier_guide, x, num_particles=20000, chunk_size=3000)
    exact = hier_elbo_closed_form(x)
    assert abs(est.mean - exact) < 4 * est.stderr
    # The check has power: an SE of < 0.05 nats resolves any bias larger than 0.2 nats.
    assert 0 < est.stderr < 0.05


def test_chunking_does_not_bias_local_latents():
    # 7 chunks (the last one partial) against one plate: independent draws of the same
    # estimator, so their difference has SE sqrt(se1^2 + se2^2).
    x = torch.randn(8)
    one = elbo_estimate(hier_model, hier_guide, x, num_particles=7000, chunk_size=7000)
    many = elbo_estimate(hier_model, hier_guide, x, num_particles=7000, chunk_size=1001)
    assert abs(one.mean - many.mean) < 4 * math.hypot(one.stderr, many.stderr)


def scalar_model(x):
    """Uses .item() on a latent, so it cannot run under a particle plate."""
    mu = pyro.sample("mu", dist.Normal(1.0, 3.0))
    shift = 0.0 if mu.item() > 1e9 else 0.0
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu + shift, 1.5), obs=x)


def scalar_guide(x):
    pyro.sample("mu", dist.Normal(0.5, 0.3))


def scalar_elbo_closed_form(x):
    m, s = 0.5, 0.3
    e_prior = -0.5 * math.log(2 * math.pi * 9.0) - ((m - 1.0) ** 2 + s**2) / 18.0
    e_lik = sum(-0.5 * math.log(2 * math.pi * 1.5**2) - (float(xi - m) ** 2 + s**2) / (2 * 2.25)
                for xi in x)
    return e_prior + e_lik + 0.5 * math.log(2 * math.pi * math.e * s**2)


def test_sequential_fallback_warns_and_stays_unbiased():
    x = torch.randn(6) + 1.0
    with pytest.warns(UserWarning, match="cannot be vectorized"):
        est = elbo_estimate(scalar_model, scalar_guide, x, num_particles=600)
    assert not est.vectorized
    assert abs(est.mean - scalar_elbo_closed_form(x)) < 4 * est.stderr


def test_vectorize_true_raises_and_false_never_vectorizes():
    x = torch.randn(6) + 1.0
    with pytest.raises(RuntimeError):
        elbo_estimate(scalar_model, scalar_guide, x, num_particles=100, vectorize=True)
    est = elbo_estimate(normal_model, scalar_guide, x, num_particles=600, vectorize=False)
    assert not est.vectorized
    assert abs(est.mean - scalar_elbo_closed_form(x)) < 4 * est.stderr


def test_non_finite_weights_raise_numerical_error():
    def model():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.factor("log_z", torch.log(z.clamp(min=0.0)))  # -inf for every particle with z < 0

    def guide():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(NumericalError, match=r"log weights are not finite"):
        elbo_estimate(model, guide, num_particles=200)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"num_particles": 1}, ValueError, "num_particles"),
    ({"num_particles": 10.0}, TypeError, "num_particles"),
    ({"chunk_size": 0}, ValueError, "chunk_size"),
    ({"max_plate_nesting": -1}, ValueError, "max_plate_nesting"),
    ({"vectorize": "yes"}, TypeError, "vectorize"),
])
def test_bad_options_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        elbo_estimate(normal_model, scalar_guide, torch.zeros(3), **kwargs)


def test_non_callable_model_is_named():
    with pytest.raises(TypeError, match="model"):
        elbo_estimate("model", scalar_guide)
    assert isinstance(elbo_estimate(normal_model, scalar_guide, torch.zeros(2),
                                    num_particles=10), ELBOEstimate)


def test_a_guide_lacking_a_model_site_is_refused_naming_the_site():
    # issue 12 §7: the model's "tau" would be drawn from its prior inside the model trace,
    # so the number returned would not be an ELBO of this model
    def two_sites():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        tau = pyro.sample("tau", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(mu + tau, 1.0), obs=torch.tensor(1.0))

    def only_mu():
        pyro.sample("mu", dist.Normal(0.5, 0.7))

    with pytest.raises(ValueError, match="guide has no sample site 'tau'"):
        elbo_estimate(two_sites, only_mu, num_particles=10)
