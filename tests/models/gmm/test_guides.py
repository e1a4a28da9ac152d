"""The GMM as Pyro code: the model's density, the fitted guide under Predictive and Trace_ELBO,
and the SVI guides under SVI (smoke; the SVI study itself lives in the SVI runner's tests)."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import scipy.stats as ss
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceEnum_ELBO

from pyro_vi import cavi, load_old_faithful
from pyro_vi.models.gmm.model import GaussianMixture

COVARIANCES = ["full", "diag"]


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return load_old_faithful(standardize=True)


@pytest.fixture(scope="module", params=COVARIANCES)
def fit(request, x):
    return cavi(GaussianMixture(2, covariance=request.param), x, seed=0)


# -------------------------------------------------------------------------- the model
@pytest.mark.parametrize("covariance", COVARIANCES)
def test_model_log_density_is_bishops_model(covariance):
    # Bishop eqs. 10.37-10.40 written with scipy.stats at fixed latent values; the Pyro model's
    # log joint must be the same number (float64 round-off only).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 2))
    prior = dict(weight_concentration=0.7, mean_prior=np.array([0.2, -0.1]), mean_precision=0.4,
                 degrees_of_freedom=3.5)
    cov0 = np.array([[1.5, 0.3], [0.3, 0.8]]) if covariance == "full" else np.array([1.5, 0.8])
    gmm = GaussianMixture(3, covariance=covariance, covariance_prior=cov0, **prior).resolve(x)
    pi = np.array([0.2, 0.5, 0.3])
    loc = rng.normal(size=(3, 2))
    if covariance == "full":
        a = rng.normal(size=(3, 2, 2))
        prec = a @ np.swapaxes(a, -1, -2) + np.eye(2)
    else:
        prec = rng.gamma(2.0, size=(3, 2))
    z = np.array([0, 1, 2, 2, 1, 0, 1])
    values = {"weights": pi, "loc": loc, "precision": prec, "z": z}
    cond = poutine.condition(gmm.model, data={k: torch.tensor(v) for k, v in values.items()})
    log_joint = float(poutine.trace(cond).get_trace(torch.tensor(x)).log_prob_sum())

    m0, b0, nu0 = prior["mean_prior"], prior["mean_precision"], prior["degrees_of_freedom"]
    ref = ss.dirichlet(np.full(3, prior["weight_concentration"])).logpdf(pi)
    for k in range(3):
        if covariance == "full":
            ref += ss.wishart(df=nu0, scale=np.linalg.inv(cov0)).logpdf(prec[k])
            ref += ss.multivariate_normal(m0, np.linalg.inv(b0 * prec[k])).logpdf(loc[k])
        else:  # lambda_kd ~ Gam(nu0/2, rate cov0_d/2): the D = 1 Wishart per dimension
            ref += ss.gamma(0.5 * nu0, scale=2.0 / cov0).logpdf(prec[k]).sum()
            ref += ss.norm(m0, 1.0 / np.sqrt(b0 * prec[k])).logpdf(loc[k]).sum()
    ref += np.log(pi[z]).sum()
    for n in range(len(x)):
        k = z[n]
        if covariance == "full":
            ref += ss.multivariate_normal(loc[k], np.linalg.inv(prec[k])).logpdf(x[n])
        else:
            ref += ss.norm(loc[k], 1.0 / np.sqrt(prec[k])).logpdf(x[n]).sum()
    assert log_joint == pytest.approx(ref, rel=1e-10)


# ------------------------------------------------------------------- the fitted guide
def test_predictive_with_fitted_guide_has_the_right_shapes(fit, x):
    k, (n, d) = 2, x.shape
    prec_shape = (k, d, d) if fit.cavi_model.covariance == "full" else (k, d)
    for parallel in (False, True):
        s = Predictive(fit.model, guide=fit.guide, num_samples=5, parallel=parallel)(x)
        # Predictive adds one batch dim left of max_plate_nesting = 1 for the global sites
        assert s["weights"].shape == (5, 1, k)
        assert s["loc"].shape == (5, k, d)
        assert s["precision"].shape == (5, *prec_shape)
        assert s["z"].shape == (5, n)
        assert s["obs"].shape == (5, n, d)
        assert all(torch.isfinite(v.double()).all() for v in s.values())
    # the guide computes q(z) for whatever data it is given
    new = Predictive(fit.model, guide=fit.guide, num_samples=3)(x[:11])
    assert new["z"].shape == (3, 11)
    assert new["obs"].shape == (3, 11, d)


def test_predictive_draws_follow_q_and_the_likelihood(fit, x):
    # The values, not only the shapes: z from q(z) (the optimal responsibilities given the
    # fitted globals) and replicated obs from the likelihood at the drawn latents.
    gmm, n_draws = fit.cavi_model, 400
    # uncondition: Predictive returns an observed site as the data itself; replicates need it
    # sampled, at the latents Predictive takes from the guide
    s = Predictive(poutine.uncondition(fit.model), guide=fit.guide, num_samples=n_draws,
                   parallel=True)(x)
    assert not torch.equal(s["obs"][0], x)
    # (1) per component, the number of points assigned: sum_n r_nk in expectation, with
    # variance sum_n r_nk (1 - r_nk) per draw. 5 SE of the mean over 400 draws: budget 6e-7
    # per component (seeded).
    r = gmm.responsibilities(x, fit.params)
    counts = torch.nn.functional.one_hot(s["z"], 2).sum(1).double()  # (draws, K)
    se = (r * (1 - r)).sum(0).sqrt() / n_draws**0.5
    assert ((counts.mean(0) - r.sum(0)).abs() < 5 * se).all()
    # (2) whitened residuals L^T (obs - loc_z) (L the Cholesky factor of the drawn precision,
    # or sqrt(precision) for diag) are i.i.d. N(0, 1): over 400 x 272 x 2 values the mean's SE
    # is 2.1e-3 and the variance's 3.0e-3 (sqrt(2/m)); 5 SE each: budget ~1e-6 per check.
    pick = s["z"][..., None, None] if gmm.covariance == "full" else s["z"][..., None]
    loc = s["loc"].gather(1, s["z"][..., None].expand(-1, -1, x.shape[1]))
    resid = s["obs"] - loc
    if gmm.covariance == "full":
        prec = s["precision"].gather(1, pick.expand(-1, -1, *s["precision"].shape[-2:]))
        white = (torch.linalg.cholesky(prec).mT @ resid[..., None])[..., 0]
    else:
        white = s["precision"].gather(1, pick.expand(-1, -1, x.shape[1])).sqrt() * resid
    m = white.numel()
    assert abs(float(white.mean())) < 5 / m**0.5
    assert abs(float(white.var()) - 1.0) < 5 * (2 / m) ** 0.5


def test_fitted_guide_samples_match_the_summary(fit, x):
    s = fit.cavi_model.summary(fit.params)
    n_draws = 4000
    draws = Predictive(fit.guide, num_samples=n_draws, parallel=True,
                       return_sites=["weights", "loc", "precision"])(x)
    w, loc, prec = draws["weights"][:, 0], draws["loc"], draws["precision"]
    # Means of n_draws i.i.d. draws: 5 standard errors per entry. About 20 such checks give a
    # failure budget of ~20 * 6e-7 ~ 1e-5 per run for a correct guide (draws are seeded).
    root = np.sqrt(n_draws)
    assert ((w.mean(0) - s.weights).abs() < 5 * s.weights_sd / root).all()
    assert ((loc.mean(0) - s.means).abs() < 5 * s.means_sd / root).all()
    # Sample sd of a near-Gaussian variable (Student-t with > 90 dof here): relative standard
    # error ~ 1/sqrt(2 n_draws) = 1.1%, so 6% is over 5 of them.
    torch.testing.assert_close(loc.std(0), s.means_sd, rtol=0.06, atol=0)
    cov = torch.linalg.inv(prec) if fit.cavi_model.covariance == "full" else torch.diag_embed(1 / prec)
    assert ((cov.mean(0) - s.covariances_mean).abs() <= 5 * s.covariances_sd / root).all()


def _mc_elbo(elbo, model, guide, x, batches=20):
    vals = np.array([-elbo.loss(model, guide, x) for _ in range(batches)])
    return vals.mean(), vals.std(ddof=1) / np.sqrt(batches)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_enumerating_z_gives_a_tighter_bound(covariance, x):
    # Trace_ELBO on the fitted guide equals the analytic bound (tests/models/test_contract.py).
    # Summing z out exactly (TraceEnum_ELBO with the guide that omits q(z)) gives a tighter
    # bound: it adds E_q(theta)[KL(q(z) || p(z | x, theta))] >= 0. Every third point keeps it
    # fast; 20 batch means of 100 particles: a 5-SE miss has probability ~1e-4.
    x = x[::3]
    fit = cavi(GaussianMixture(2, covariance=covariance), x, seed=0)
    pyro.set_rng_seed(1)
    enum = TraceEnum_ELBO(num_particles=100, vectorize_particles=True, max_plate_nesting=1)
    enum_guide = fit.cavi_model.fitted_guide(fit.params, enumerate_z=True)
    mean_enum, se_enum = _mc_elbo(enum, fit.model, enum_guide, x)
    assert mean_enum > fit.elbo - 5 * se_enum


# --------------------------------------------------------------------- the SVI guides
@pytest.mark.parametrize("covariance", COVARIANCES)
@pytest.mark.parametrize("kind", ["guide", "guide_optimal_z", "guide_enum"])
def test_svi_guides_run_under_svi(covariance, kind, x):
    gmm = GaussianMixture(3, covariance=covariance)
    guide = getattr(gmm, kind)
    loss = TraceEnum_ELBO(max_plate_nesting=1) if kind == "guide_enum" else Trace_ELBO()
    svi = SVI(gmm.model, guide, pyro.optim.Adam({"lr": 0.01}), loss)
    losses = [svi.step(x) for _ in range(5)]
    assert np.isfinite(losses).all()
    names = set(pyro.get_param_store().keys())
    assert names
    assert all(name.startswith("gmm.") for name in names)
    assert ("gmm.resp" in names) is (kind == "guide")  # free q(z) parameters only in `guide`
    # the trained guide also serves Predictive
    s = Predictive(gmm.model, guide=guide, num_samples=2)(x)
    assert s["obs"].shape == (2, *x.shape)
    # Each guide's Monte-Carlo bound against the closed form at the trained globals (read
    # back from the param store): with q(z) at its optimum given the globals, Trace_ELBO is
    # unbiased for the analytic ELBO; free responsibilities can only do worse (<=); summing z
    # out (TraceEnum) only better (>=). 20 batch means of 50 particles, 5 SE: ~3e-7 per case.
    with torch.no_grad():
        analytic = gmm.elbo(x, gmm.guide_params(x))
    loss_cls = TraceEnum_ELBO if kind == "guide_enum" else Trace_ELBO
    mc, se = _mc_elbo(loss_cls(num_particles=50, vectorize_particles=True, max_plate_nesting=1),
                      gmm.model, guide, x)
    assert 0 < se < 1.0  # an informative estimate: 5 SE is under 5 nats of |ELBO| ~ 450
    if kind == "guide_optimal_z":
        assert abs(mc - analytic) < 5 * se, (mc, analytic, se)
    elif kind == "guide":
        assert mc < analytic + 5 * se, (mc, analytic, se)
    else:
        assert mc > analytic - 5 * se, (mc, analytic, se)


def test_predictive_pads_sites_outside_plates_as_the_readme_says():
    # README "A short example": weights come back (S, 1, K). Pyro's Predictive puts its sample
    # plate at dim -(max_plate_nesting + 1) and pads each site with one 1 per plate it is not
    # in, so draws broadcast against the model's plates; our guide's own draw is (K,).
    from pyro.infer import Predictive

    from pyro_vi import GaussianMixture, cavi, load_old_faithful

    x = load_old_faithful(standardize=True)[::4]
    fit = cavi(GaussianMixture(3), x, seed=0)
    draws = Predictive(fit.model, guide=fit.guide, num_samples=2000)(x)
    assert fit.guide(x)["weights"].shape == (3,)
    assert draws["weights"].shape == (2000, 1, 3)
    assert draws["loc"].shape == (2000, 3, 2)  # in the components plate: no padding
    w = draws["weights"].squeeze(-2)
    # the squeezed draws are q(pi)'s: mean within 5 SE of the Dirichlet mean (budget 6e-7/entry)
    se = w.std(0) / 2000**0.5
    assert ((w.mean(0) - fit.params.weights.mean()).abs() < 5 * se).all()
