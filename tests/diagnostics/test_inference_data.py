"""ArviZ export: groups, dims and values checked against direct recomputation, ArviZ's own
functions run unmodified on a logistic regression (AutoNormal, SVI) and on the GMM (CAVI),
several fits become chains, and bad input fails before any work.

The same tests run on both ArviZ lines (CI: Python 3.11 with ArviZ 0.23, Python 3.12 with
ArviZ 1.x); only the container type, LOO's field name and the plot functions differ by line.

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
import xarray as xr
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
from pyro_vi.diagnostics._arviz_compat import is_legacy, psislw
from pyro_vi.svi.runner import fit_svi

S = 300  # draws per chain
LEGACY = is_legacy()  # ArviZ 0.2x (InferenceData) rather than 1.x (xarray.DataTree)


def groups(idata):
    return set(idata.groups()) if LEGACY else set(idata.children)


def elpd_loo(loo):
    return float(loo.elpd_loo if LEGACY else loo.elpd)


def plot_every_group(idata, loo, var_names, *, binary=False):
    """One ArviZ plot per group: posterior, sample_stats, posterior_predictive vs observed_data
    and (through LOO's Pareto k) log_likelihood; the line's own plotting functions (1.x has
    a calibration plot for binary outcomes, and warns if plot_ppc_dist gets them)."""
    if LEGACY:
        az.plot_posterior(idata, var_names=var_names)
        az.plot_posterior(idata, group="sample_stats", var_names=["lp", "log_q"])
        az.plot_ppc(idata)
    else:
        az.plot_dist(idata, var_names=var_names)
        az.plot_dist(idata, group="sample_stats", var_names=["lp", "log_q"])
        (az.plot_ppc_pava if binary else az.plot_ppc_dist)(idata)
    az.plot_khat(loo)
    assert plt.get_fignums()
    plt.close("all")


def psis_loo_by_definition(idata, name):
    """elpd_loo = sum_i log sum_s w_is p(y_i | theta_s), w_i the PSIS weights of 1/p(y_i | theta)
    (Vehtari, Gelman & Gabry 2017, eqs. 10 and 21), one chain so r_eff = 1."""
    ll = idata.log_likelihood[name].values.reshape(S, -1)
    return sum(logsumexp(psislw(-ll[:, i])[0] + ll[:, i]) for i in range(ll.shape[1]))


def test_the_container_is_the_lines_own():
    idata = to_inference_data(normal_model, exact_guide, normal_data(n=3), num_samples=4, seed=0)
    if LEGACY:
        assert isinstance(idata, az.InferenceData)
        tree = idata.to_datatree()  # the documented route to the 1.x container
        assert set(tree.children) == groups(idata)
        back = az.InferenceData.from_datatree(tree)
        np.testing.assert_array_equal(back.posterior["mu"].values, idata.posterior["mu"].values)
    else:
        assert isinstance(idata, xr.DataTree)
        assert "MigrationWarning" in vars(az)  # what tells the 1.x line apart
    assert idata.posterior.attrs["inference_library"] == "pyro"


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
    assert groups(idata) == {"posterior", "posterior_predictive", "log_likelihood",
                                   "observed_data", "constant_data", "sample_stats"}
    assert idata.posterior["intercept"].dims == ("chain", "draw")
    assert idata.posterior["beta"].dims == ("chain", "draw", "feature")
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "data")
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "data")
    np.testing.assert_array_equal(idata.observed_data["y"].values, y.numpy())
    np.testing.assert_array_equal(idata.constant_data["x"].values, x.numpy())
    # y is a model argument too, but it is an observed site's value: observed, not constant
    assert set(idata.constant_data.data_vars) == {"x"}
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
    summary = az.summary(idata, kind="stats", round_to="none")
    for name, site in (("intercept", "intercept"), ("beta", "beta")):
        loc = fit.params[f"AutoNormal.locs.{site}"].reshape(-1).numpy()
        scale = fit.params[f"AutoNormal.scales.{site}"].reshape(-1).numpy()
        rows = summary.loc[[r for r in summary.index if r.split("[")[0] == name]]
        # mean of S iid draws: MC standard error scale/sqrt(S); 5 SE
        np.testing.assert_array_less(np.abs(rows["mean"].to_numpy() - loc),
                                     5 * scale / math.sqrt(S))
        # sd of S Gaussian draws: relative SE 1/sqrt(2S) ~ 4 %; 5 SE
        np.testing.assert_allclose(rows["sd"].to_numpy(), scale, rtol=5 / math.sqrt(2 * S))


def test_logistic_arviz_functions_run_unmodified(logistic):
    _, _, _, idata = logistic
    with warnings.catch_warnings():
        # ArviZ warns when some point has Pareto k above its threshold: a statement about
        # this small data set and model, not about the export.
        warnings.simplefilter("ignore", UserWarning)
        loo = az.loo(idata, pointwise=True)
    # ArviZ's LOO on our group is PSIS-LOO by its definition, to round-off
    assert elpd_loo(loo) == pytest.approx(psis_loo_by_definition(idata, "y"), rel=1e-10)
    assert np.shape(loo.pareto_k) == (60,)
    # ess/rhat: S iid draws in one chain have bulk ESS near S (sd of the estimate ~10 %)
    ess = az.ess(idata)["beta"].values
    assert ((ess > S / 2) & (ess < 2 * S)).all()  # (r_hat needs two chains: see the fits test)
    plot_every_group(idata, loo, ["intercept", "beta"], binary=True)


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
        warnings.simplefilter("ignore", UserWarning)  # see the logistic LOO test
        loo = az.loo(idata, pointwise=True)
    # z is summed out pointwise: LOO scores each point under the mixture density
    assert elpd_loo(loo) == pytest.approx(psis_loo_by_definition(idata, "obs"), rel=1e-10)
    plot_every_group(idata, loo, ["weights", "loc"])


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
    assert groups(idata) == {"posterior", "sample_stats"}


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


def test_restarts_with_permuted_labels_agree_after_alignment():
    # Old Faithful, 2 components, n_init=4: the restarts find one solution, in two labellings.
    # Unaligned the across-restart r_hat of loc is ~1.7 (issue 12 §2: 1.73); aligned (the
    # default), each restart is one fit of the same q, so r_hat is that of 4 chains of iid
    # draws of one distribution: 100 draws each give r_hat - 1 of order 1/100 (< 1.05).
    from pyro_vi import GaussianMixture, cavi, load_old_faithful

    x = load_old_faithful(standardize=True)
    fit = cavi(GaussianMixture(2), x, n_init=4, seed=0)
    raw = fit.to_inference_data(num_samples=100, seed=0, restarts=True, align=False)
    aligned = fit.to_inference_data(num_samples=100, seed=0, restarts=True)
    assert float(az.rhat(raw, var_names=["loc"])["loc"].max()) > 1.5
    for name in ("loc", "weights", "precision"):
        assert float(az.rhat(aligned, var_names=[name])[name].max()) < 1.05
    assert "label_alignment" in aligned.posterior.attrs
    # the permutation is a relabelling: each chain's sorted loc means are unchanged
    for c in range(4):
        a = np.sort(aligned.posterior["loc"].values[c].mean(0), axis=0)
        b = np.sort(raw.posterior["loc"].values[c].mean(0), axis=0)
        np.testing.assert_allclose(a, b, rtol=1e-12)
    # and z is relabelled with them: sampled labels agree with chain 0's on 99.8 % of
    # (draw, point) pairs aligned, against 0.2 % for the two swapped chains unaligned
    for group, low in ((aligned, 0.9), (raw, None)):
        z = group.posterior["z"].values
        agree = [(z[c] == z[0]).mean() for c in range(4)]
        if low is None:
            assert min(agree) < 0.1
        else:
            assert min(agree) > low


def test_chains_of_one_guide_draw_independent_samples():
    # one guide twice: two chains; each chain draws with its own seed (seed + chain), so the
    # draws differ (continuous draws coincide with probability 0) and chain 0 is reproducible
    y = normal_data()
    idata = to_inference_data(normal_model, None, y, guides=[exact_guide, exact_guide],
                              num_samples=50, seed=3)
    mu = idata.posterior["mu"].values
    assert mu.shape[:2] == (2, 50)
    assert not np.array_equal(mu[0], mu[1])
    again = to_inference_data(normal_model, exact_guide, y, num_samples=50, seed=3)
    np.testing.assert_array_equal(again.posterior["mu"].values[0], mu[0])


def test_an_argument_named_like_a_site_is_not_constant_data():
    # obs=y[:3] is not the argument y itself, but y feeds the site "y": it is the observed
    # data, not a constant, so constant_data keeps only x
    def model(x, y):
        mu = pyro.sample("mu", dist.Normal(x.new_tensor(0.0), 1.0))
        with pyro.plate("data", 3):
            pyro.sample("y", dist.Normal(mu + x[:3], 1.0), obs=y[:3])

    def guide(x, y):
        pyro.sample("mu", dist.Normal(x.new_tensor(0.0), 1.0))

    x = torch.arange(5, dtype=torch.float64)
    y = torch.ones(5, dtype=torch.float64)
    idata = to_inference_data(model, guide, x, y, num_samples=20, seed=0)
    assert set(idata.constant_data.data_vars) == {"x"}
