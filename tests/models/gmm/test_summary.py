"""Posterior summaries and the Student-t predictive of the fitted GMM, against scipy.stats."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as ss
import torch
from scipy.integrate import simpson
from scipy.special import logsumexp, softmax
from sklearn.metrics import adjusted_rand_score

from pyro_vi import cavi, load_old_faithful
from pyro_vi.models.gmm.model import GaussianMixture


def _separated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three 2-D clusters 12 standard deviations apart, with their labels."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [12.0, 0.0], [0.0, 12.0]])
    labels = rng.integers(0, 3, n)
    return centers[labels] + rng.normal(size=(n, 2)), labels


@pytest.fixture(scope="module", params=["full", "diag"])
def fitted(request):
    x = load_old_faithful(standardize=True)
    fit = cavi(GaussianMixture(3, covariance=request.param), x, seed=0)
    return fit, x


def _component_logpdf(params, x):
    """log E[pi_k] + log St(x | ...) per component, from scipy.stats (Bishop eqs. 10.81-10.82)."""
    comp = params.components
    alpha = params.weights.concentration.numpy()
    log_w = np.log(alpha / alpha.sum())
    m, beta = comp.loc.numpy(), comp.precision_scale.numpy()
    out = []
    for k in range(len(alpha)):
        if hasattr(comp, "df"):  # Normal-Wishart: a multivariate Student-t
            d = m.shape[1]
            nu = float(comp.df[k])
            w_inv = comp.precision.scale_inv[k].numpy()
            df = nu + 1 - d
            shape = (1 + beta[k]) / (df * beta[k]) * w_inv   # L_k^{-1} of eq. 10.82
            out.append(ss.multivariate_t(m[k], shape, df=df).logpdf(x))
        else:  # Normal-Gamma per dimension: univariate t's with 2a dof
            a, b = comp.concentration[k].numpy(), comp.rate[k].numpy()
            scale = np.sqrt(b * (1 + beta[k]) / (a * beta[k]))
            out.append(ss.t(2 * a, m[k], scale).logpdf(x).sum(-1))
    return np.stack(out, -1).reshape(len(x), -1) + log_w


# ------------------------------------------------------------------------ predictive
def test_log_predictive_equals_scipy_student_t_mixture(fitted):
    fit, x = fitted
    grid = np.concatenate([x.numpy(), np.random.default_rng(0).normal(0, 3, size=(50, 2))])
    ours = fit.cavi_model.log_predictive(fit.params, grid).numpy()
    ref = logsumexp(_component_logpdf(fit.params, grid), axis=-1)
    # the same closed form through torch's and scipy's t densities: ~1e-15 relative
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


def test_predict_proba_equals_scipy_and_rows_sum_to_one(fitted):
    fit, x = fitted
    proba = fit.cavi_model.predict_proba(fit.params, x)
    torch.testing.assert_close(proba.sum(-1), torch.ones(len(x), dtype=torch.float64),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(proba.numpy(), softmax(_component_logpdf(fit.params, x.numpy()),
                                                      axis=-1), rtol=1e-9, atol=1e-13)
    np.testing.assert_array_equal(fit.cavi_model.predict(fit.params, x).numpy(),
                                  proba.argmax(-1).numpy())


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_log_predictive_integrates_to_one_in_1d(covariance):
    x = load_old_faithful(standardize=True)[:, :1]
    # nu0 = 5 keeps every predictive t at >= 5 dof, so the mass outside [-60, 60] (at least 40
    # scale units from any component) is < 1e-7; Simpson's rule on h = 0.004 resolves the
    # narrowest component (sd ~ 0.2) to far below that.
    fit = cavi(GaussianMixture(3, covariance=covariance, degrees_of_freedom=5.0), x, seed=0)
    grid = np.linspace(-60.0, 60.0, 30001)
    dens = np.exp(fit.cavi_model.log_predictive(fit.params, grid[:, None]).numpy())
    assert simpson(dens, x=grid) == pytest.approx(1.0, abs=1e-6)


def test_predict_recovers_well_separated_clusters():
    x, _ = _separated(300, seed=0)
    fit = cavi(GaussianMixture(3), x, seed=0, n_init=2)
    x_new, labels = _separated(500, seed=1)
    # clusters 12 sd apart: a point is misassigned only if it strays ~6 sd, probability ~1e-9
    # per point, so the partition of fresh points must be exact (ARI = 1).
    pred = fit.cavi_model.predict(fit.params, x_new).numpy()
    assert adjusted_rand_score(labels, pred) == 1.0


def test_new_points_are_validated(fitted):
    fit, _ = fitted
    with pytest.raises(ValueError, match="x has D=3 columns but the mixture has D=2"):
        fit.cavi_model.predict(fit.params, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="x holds NaN"):
        fit.cavi_model.log_predictive(fit.params, np.array([[0.0, np.nan]]))
    with pytest.raises(TypeError, match="floating"):
        fit.cavi_model.predict_proba(fit.params, np.zeros((4, 2), dtype=np.int64))


# ------------------------------------------------------------------------ summaries
def test_summary_moments_equal_scipy(fitted):
    fit, _ = fitted
    s = fit.cavi_model.summary(fit.params)
    comp = fit.params.components
    alpha = fit.params.weights.concentration.numpy()
    tol = dict(rtol=1e-10, atol=1e-14)  # closed forms evaluated twice in float64
    np.testing.assert_allclose(s.weights.numpy(), ss.dirichlet(alpha).mean(), **tol)
    np.testing.assert_allclose(s.weights_sd.numpy(), np.sqrt(ss.dirichlet(alpha).var()), **tol)
    np.testing.assert_allclose(s.means.numpy(), comp.loc.numpy(), **tol)
    k, d = comp.loc.shape
    for j in range(k):
        beta = comp.precision_scale[j].numpy()
        if hasattr(comp, "df"):
            nu, w_inv = float(comp.df[j]), comp.precision.scale_inv[j].numpy()
            # marginal of mu_k: multivariate t, nu - D + 1 dof, shape W^-1 / (beta (nu - D + 1))
            dof = nu - d + 1
            mu_sd = ss.t(dof, scale=np.sqrt(np.diag(w_inv) / (beta * dof))).std()
            iw = ss.invwishart(df=nu, scale=w_inv)
            # scipy returns None where the moment does not exist (nu <= D + 1, resp. D + 3);
            # the summary says NaN there
            nan = np.full((d, d), np.nan)
            cov_mean = nan if iw.mean() is None else iw.mean()
            cov_sd = nan if iw.var() is None else np.sqrt(iw.var())
            cov = np.linalg.inv(ss.wishart(df=nu, scale=np.linalg.inv(w_inv)).mean())
        else:
            a, b = comp.concentration[j].numpy(), comp.rate[j].numpy()
            mu_sd = ss.t(2 * a, scale=np.sqrt(b / (a * beta))).std()
            ig = ss.invgamma(a, scale=b)
            cov_mean, cov_sd = np.diag(ig.mean()), np.diag(ig.std())
            cov = np.diag(b / a)
        np.testing.assert_allclose(s.means_sd[j].numpy(), mu_sd, **tol)
        np.testing.assert_allclose(s.covariances_mean[j].numpy(), cov_mean, equal_nan=True, **tol)
        np.testing.assert_allclose(s.covariances_sd[j].numpy(), cov_sd, equal_nan=True, **tol)
        np.testing.assert_allclose(s.covariances[j].numpy(), cov, **tol)
    assert (s.weights_sd > 0).all()
    assert (s.means_sd > 0).all()
    sd_diag = s.covariances_sd.diagonal(dim1=-2, dim2=-1)
    assert (sd_diag[~sd_diag.isnan()] > 0).all()


def test_summary_marks_moments_that_do_not_exist():
    # K = 6 with alpha0 = 1e-3 empties four components: their nu_k = nu0 + N_k ~ D = 2, where
    # the Student-t marginal of mu_k has no variance (inf) and the inverse-Wishart no mean (NaN).
    x = load_old_faithful(standardize=True)
    fit = cavi(GaussianMixture(6, weight_concentration=1e-3), x, seed=0)
    s = fit.cavi_model.summary(fit.params)
    used = s.weights > 0.01
    assert int(used.sum()) == s.n_effective == 2
    assert torch.isfinite(s.means_sd[used]).all()
    assert torch.isinf(s.means_sd[~used]).all()
    assert torch.isnan(s.covariances_mean[~used]).all()
    assert torch.isfinite(s.covariances_mean[used]).all()
    assert fit.cavi_model.summary(fit.params, threshold=0.0).n_effective == 6


def test_means_sd_shrinks_like_one_over_sqrt_n():
    x, _ = _separated(3200, seed=2)
    centers = np.array([[0.0, 0.0], [12.0, 0.0], [0.0, 12.0]])
    sds = []
    for n in (50, 200, 800, 3200):
        # Weak priors so that only the data speak: the default covariance prior (the pooled
        # covariance, ~30 I here) and beta0 = 1 at the data mean (8 sd from each cluster) add
        # terms to W_k^-1 that fade like 1/N and would blur the 1/sqrt(N) law.
        gmm = GaussianMixture(3, covariance_prior=np.eye(2), mean_precision=1e-3)
        fit = cavi(gmm, x[:n], seed=0, n_init=2)
        s = fit.cavi_model.summary(fit.params)
        nearest = ((s.means.numpy()[:, None] - centers[None]) ** 2).sum(-1).argmin(-1)
        assert sorted(nearest) == [0, 1, 2]
        sds.append(s.means_sd.numpy()[np.argsort(nearest)])
    sds = np.array(sds)
    assert (np.diff(sds, axis=0) < 0).all()
    # The mean of N_k ~ N/3 unit-variance points has sd ~ 1/sqrt(N_k - 1): 4x more data halves
    # it. The ratio also carries the ratio of two sample sds, relative sd ~ 1/sqrt(2 N_k) <= 0.18
    # at N = 50, so [1.4, 2.8] is over 3 of those sds either side of 2.
    ratios = sds[:-1] / sds[1:]
    assert ((ratios > 1.4) & (ratios < 2.8)).all(), ratios
