"""ArviZ export: groups, dims and values checked against direct recomputation, ArviZ's own
functions run unmodified on a logistic regression (AutoNormal, SVI) and on the GMM (CAVI),
several fits become chains, and bad input fails before any work.

Every stochastic quantity is either recomputed exactly from the exported draws (log
likelihoods, lp, ELBO history) or compared with the guide's parameters within 5 Monte-Carlo
standard errors (failure probability < 1e-6 per comparison).
"""

from __future__ import annotations

import math
import warnings

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from _trust_models import (
    F64,
    FakeResult,
    exact_guide,
    gmm_data,
    logistic_data,
    logistic_model,
    normal_data,
    normal_model,
    param_guide,
)
from pyro import poutine
from pyro.infer.autoguide import AutoNormal
from scipy import stats
from scipy.special import logsumexp

from pyro_vi import (
    GaussianMixture,
    NoObservedSitesWarning,
    cavi,
    inference_data_from_result,
    to_inference_data,
)
from pyro_vi.svi.runner import fit_svi

S = 300  # draws per chain


@pytest.fixture(scope="module")
def logistic():
    x, y = logistic_data()
    pyro.clear_param_store()
    fit = fit_svi(logistic_model, AutoNormal(logistic_model), x, y,
                  optim=pyro.optim.Adam({"lr": 0.05}), num_steps=100, seed=0, progress=False)
    idata = inference_data_from_result(fit, x, y, num_samples=S, seed=1)
    return fit, x, y, idata


@pytest.fixture(scope="module")
def gmm():
    x = gmm_data()
    fit = cavi(GaussianMixture(2), x, seed=0)
    return fit, x, inference_data_from_result(fit, x, num_samples=S, seed=1)


def test_logistic_groups_dims_and_attrs(logistic):
    fit, x, y, idata = logistic
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "log_likelihood",
                                   "observed_data", "constant_data", "sample_stats"}
    assert idata.posterior["intercept"].dims == ("chain", "draw")
    assert idata.posterior["beta"].dims == ("chain", "draw", "feature")
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "data")
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "data")
    np.testing.assert_array_equal(idata.observed_data["y"].values, y.numpy())
    np.testing.assert_array_equal(idata.constant_data["x"].values, x.numpy())
    assert idata.posterior.attrs["inference_method"] == "SVI"
    stats_ = idata.sample_stats
    np.testing.assert_array_equal(stats_["elbo"].values[0], fit.history["elbo"].to_numpy())
    assert bool(stats_["converged"].values[0]) == fit.converged
    assert stats_["final_elbo"].values[0] == pytest.approx(fit.elbo)


def test_logistic_log_likelihood_and_lp_are_exact(logistic):
    _, x, y, idata = logistic
    b0 = torch.as_tensor(idata.posterior["intercept"].values[0])
    beta = torch.as_tensor(idata.posterior["beta"].values[0])
    loglik = dist.Bernoulli(logits=b0[:, None] + beta @ x.T).log_prob(y)  # (S, N)
    np.testing.assert_allclose(idata.log_likelihood["y"].values[0], loglik.numpy(), rtol=1e-10)
    prior_d = dist.Normal(torch.zeros((), dtype=F64), 5.0)
    prior = prior_d.log_prob(b0) + prior_d.log_prob(beta).sum(-1)
    np.testing.assert_allclose(idata.sample_stats["lp"].values[0],
                               (prior + loglik.sum(-1)).numpy(), rtol=1e-10)


def test_logistic_posterior_matches_the_fitted_autonormal(logistic):
    fit, _, _, idata = logistic
    summary = az.summary(idata, kind="stats")
    for name, site in (("intercept", "intercept"), ("beta", "beta")):
        loc = fit.params[f"AutoNormal.locs.{site}"].reshape(-1).numpy()
        scale = fit.params[f"AutoNormal.scales.{site}"].reshape(-1).numpy()
        rows = summary.loc[[r for r in summary.index if r.split("[")[0] == name]]
        # mean of S iid draws: MC standard error scale/sqrt(S); 5 SE
        np.testing.assert_array_less(np.abs(rows["mean"].to_numpy() - loc),
                                     5 * scale / math.sqrt(S))
        # sd of S Gaussian draws: relative SE 1/sqrt(2S) ~ 3.5 %; summary rounds to 3 dp
        np.testing.assert_allclose(rows["sd"].to_numpy(), scale, rtol=5 / math.sqrt(2 * S),
                                   atol=1e-3)


def test_logistic_arviz_functions_run_unmodified(logistic):
    _, _, _, idata = logistic
    ll = idata.log_likelihood["y"].values.reshape(S, -1)
    # WAIC by its definition (Vehtari, Gelman & Gabry 2017, eqs. 11-12) from our group
    lppd = logsumexp(ll, axis=0) - math.log(S)
    expected = float((lppd - ll.var(axis=0)).sum())  # ArviZ: ddof=0
    with warnings.catch_warnings():
        # ArviZ warns when some point has Pareto k > 0.62 (LOO) or var(log lik) > 0.4
        # (WAIC): statements about this small data set and model, not about the export.
        warnings.simplefilter("ignore", UserWarning)
        loo = az.loo(idata, pointwise=True)
        waic = az.waic(idata)
    assert waic.elpd_waic == pytest.approx(expected, rel=1e-10)
    assert np.isfinite(loo.elpd_loo)
    assert loo.pareto_k.shape == (60,)
    for plot in (az.plot_posterior, az.plot_trace, az.plot_ppc):
        plot(idata)
        plt.close("all")


def _mixture_loglik(idata, x, draw):
    post = idata.posterior.isel(chain=0, draw=draw)
    w, loc, prec = (post[k].values for k in ("weights", "loc", "precision"))
    comp = [np.log(w[k]) + stats.multivariate_normal(loc[k], np.linalg.inv(prec[k])).logpdf(x)
            for k in range(len(w))]
    return logsumexp(np.stack(comp), axis=0)


def test_gmm_export_marginalises_z_in_the_log_likelihood(gmm):
    fit, x, idata = gmm
    assert idata.posterior["z"].dtype == np.int64
    assert idata.posterior["z"].dims == ("chain", "draw", "data")
    assert idata.posterior["loc"].dims == ("chain", "draw", "components", "loc_dim_1")
    assert idata.log_likelihood["obs"].dims == ("chain", "draw", "data")
    assert idata.posterior.attrs["inference_method"] == "CAVI"
    np.testing.assert_array_equal(idata.sample_stats["elbo"].values[0],
                                  fit.history["elbo"].to_numpy())
    for draw in (0, 7, S - 1):
        np.testing.assert_allclose(idata.log_likelihood["obs"].values[0, draw],
                                   _mixture_loglik(idata, x.numpy(), draw), rtol=1e-9)


def test_gmm_arviz_functions_run_unmodified(gmm):
    _, x, idata = gmm
    summary = az.summary(idata, var_names=["weights", "loc", "precision"], kind="stats")
    assert len(summary) == 2 + 4 + 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # see the logistic LOO/WAIC test
        assert np.isfinite(az.loo(idata).elpd_loo)
        assert np.isfinite(az.waic(idata).elpd_waic)
    az.plot_posterior(idata, var_names=["weights", "loc"])
    az.plot_trace(idata, var_names=["loc"])
    az.plot_ppc(idata)
    plt.close("all")


def test_gmm_enumerated_guide_lp_sums_out_z(gmm):
    fit, x, _ = gmm
    guide = fit.cavi_model.fitted_guide(fit.params, enumerate_z=True)
    idata = to_inference_data(fit.model, guide, x, num_samples=5, seed=2)
    assert "z" not in idata.posterior
    for draw in range(5):
        post = idata.posterior.isel(chain=0, draw=draw)
        theta = {k: torch.as_tensor(post[k].values) for k in ("weights", "loc", "precision")}
        z0 = {"z": torch.zeros(x.shape[0], dtype=torch.long)}
        trace = poutine.trace(poutine.condition(fit.model, theta | z0)).get_trace(x)
        log_prior = sum(float(trace.nodes[k]["fn"].log_prob(trace.nodes[k]["value"]).sum())
                        for k in theta)
        expected = log_prior + _mixture_loglik(idata, x.numpy(), draw).sum()
        assert idata.sample_stats["lp"].values[0, draw] == pytest.approx(expected, rel=1e-10)


def test_several_fits_become_chains_each_with_its_own_params():
    y = normal_data()
    fits = [FakeResult(param_guide, normal_model,
                       {"loc": torch.full((2,), m, dtype=F64),
                        "scale": torch.full((2,), 0.1, dtype=F64)}) for m in (-3.0, 3.0)]
    pyro.param("loc", torch.zeros(2, dtype=F64))  # a stale global value must not leak in
    idata = inference_data_from_result(fits, y, num_samples=200, seed=0)
    means = idata.posterior["mu"].mean(dim=("draw", "dim")).values
    # sd 0.1, 400 draws per chain: SE 0.005
    np.testing.assert_allclose(means, [-3.0, 3.0], atol=0.03)
    assert float(pyro.param("loc").detach()[0]) == 0.0  # the caller's param store is restored
    # fits that disagree show in r_hat (rank-normalised, so bounded: ~1.8 for disjoint chains)
    assert az.rhat(idata)["mu"].values.min() > 1.5
    assert idata.sample_stats["elbo"].shape == (2, 3)


def test_a_result_exports_on_its_own_data_with_its_method_label():
    y = normal_data(n=6)
    params = {"loc": torch.zeros(2, dtype=F64), "scale": torch.ones(2, dtype=F64)}
    fit = FakeResult(param_guide, normal_model, params, data=(y,))
    idata = inference_data_from_result(fit, num_samples=5, seed=0)
    assert idata.posterior.attrs["inference_method"] == "SVI"
    np.testing.assert_array_equal(idata.observed_data["y"].values, y.numpy())
    assert idata.sample_stats["converged"].values.tolist() == [True]


def test_user_dims_and_coords_are_used():
    y = normal_data(n=4)
    idata = to_inference_data(normal_model, exact_guide, y, num_samples=3, seed=0,
                              coords={"dim": ["a", "b"]}, dims={"y": ["obs", "dim"]})
    assert list(idata.posterior["mu"].coords["dim"].values) == ["a", "b"]
    assert idata.observed_data["y"].dims == ("obs", "dim")


def test_seed_makes_the_export_reproducible_and_leaves_the_global_rng_alone():
    y = normal_data(n=5)
    before = torch.get_rng_state()
    a = to_inference_data(normal_model, exact_guide, y, num_samples=10, seed=3)
    b = to_inference_data(normal_model, exact_guide, y, num_samples=10, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    np.testing.assert_array_equal(a.posterior["mu"].values, b.posterior["mu"].values)
    np.testing.assert_array_equal(a.posterior_predictive["y"].values,
                                  b.posterior_predictive["y"].values)


def test_model_without_observations_warns_and_skips_log_likelihood():
    def model():
        pyro.sample("a", dist.Normal(torch.zeros((), dtype=F64), 1.0))

    def guide():
        pyro.sample("a", dist.Normal(torch.zeros((), dtype=F64), 1.0))

    with pytest.warns(NoObservedSitesWarning, match="no observed sites"):
        idata = to_inference_data(model, guide, num_samples=5, seed=0)
    assert "log_likelihood" not in idata.groups()
    assert "posterior" in idata.groups()


def test_guide_missing_a_latent_site_is_a_value_error():
    def guide(y):
        pass

    with pytest.raises(ValueError, match="does not sample latent site 'mu'"):
        to_inference_data(normal_model, guide, normal_data(), num_samples=5)


def test_mismatched_plate_sizes_are_a_value_error():
    def guide(y):
        with pyro.plate("dim", 3):
            pyro.sample("mu", dist.Normal(torch.zeros(3, dtype=F64), 1.0))

    with pytest.raises(ValueError, match="plate sizes"):
        to_inference_data(normal_model, guide, normal_data(), num_samples=5)


@pytest.mark.parametrize(("num_samples", "error"), [(0, ValueError), (-2, ValueError),
                                                    (2.5, TypeError), (True, TypeError)])
def test_bad_num_samples(num_samples, error):
    with pytest.raises(error, match="num_samples"):
        to_inference_data(normal_model, exact_guide, normal_data(), num_samples=num_samples)


def test_guide_and_guides_are_exclusive():
    with pytest.raises(ValueError, match="either guide or guides"):
        to_inference_data(normal_model, exact_guide, normal_data(), guides=[exact_guide])
    with pytest.raises(ValueError, match="pass a guide"):
        to_inference_data(normal_model, None, normal_data())


def test_gmm_svi_result_exports_with_its_own_params():
    from pyro.infer import TraceEnum_ELBO

    x = gmm_data()
    gmm = GaussianMixture(2).resolve(x)
    fit = fit_svi(gmm.model, gmm.guide_enum, x, elbo=TraceEnum_ELBO(max_plate_nesting=1),
                  num_steps=30, seed=0, progress=False)
    pyro.clear_param_store()  # the export must read fit.params, not the global store
    idata = inference_data_from_result(fit, x, num_samples=S, seed=0)
    assert "z" not in idata.posterior
    loc = idata.posterior["loc"].values.reshape(S, 2, 2)
    # E_q[mu_k] = the 'gmm.loc' parameter (Normal-Wishart mean); 5 MC standard errors
    np.testing.assert_array_less(np.abs(loc.mean(0) - fit.params["gmm.loc"].numpy()),
                                 5 * loc.std(0) / math.sqrt(S))
    assert np.isfinite(idata.log_likelihood["obs"].values).all()
