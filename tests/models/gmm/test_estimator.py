"""The scikit-learn estimator of the Bayesian GMM, and its converters to/from BayesianGaussianMixture.

Tiers: sklearn's own estimator checks; exact agreement with ``BayesianGaussianMixture``
continued from one start (1e-6), the same ELBO at the same params, converter round trips to
round-off, sklearn's ``score_samples`` below ours (Jensen's inequality, a theorem), Student-t
samples against scipy by KS tests; Pipeline and GridSearchCV scored by ``score``.

Of sklearn's 41 checks, one is skipped by sklearn itself: ``check_array_api_input`` runs only
with ``SCIPY_ARRAY_API=1``; the estimator does not claim Array API support (its tags say so),
so there is nothing to check. No check is expected to fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import digamma, gammaln, multigammaln, softmax
from sklearn.base import clone
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
from sklearn.exceptions import NotFittedError
from sklearn.mixture import BayesianGaussianMixture
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from pyro_vi import CAVIResult, ConvergenceWarning, cavi, load_old_faithful
from pyro_vi.cavi.kmeans import initial_responsibilities
from pyro_vi.models.gmm.estimator import SklearnConvergenceWarning, VariationalGaussianMixture, from_sklearn
from pyro_vi.models.gmm.model import GaussianMixture

ARRAYS = ("weight_concentration_", "weights_", "mean_precision_", "means_", "degrees_of_freedom_",
          "covariances_", "precisions_", "precisions_cholesky_")


@parametrize_with_checks([VariationalGaussianMixture(2, random_state=0),
                          VariationalGaussianMixture(2, covariance_type="diag", random_state=0)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _iris():
    x = load_iris().data.astype(np.float64)
    prior = dict(weight_concentration_prior=0.5, mean_precision_prior=0.7, mean_prior=x.mean(0) + 0.1,
                 degrees_of_freedom_prior=5.5, covariance_prior=np.cov(x.T) + 0.05 * np.eye(4))
    return x, prior


def _sk(ct, prior, **kw):
    if ct == "diag":
        prior = dict(prior, covariance_prior=np.diag(prior["covariance_prior"]).copy())
    return BayesianGaussianMixture(n_components=3, covariance_type=ct, reg_covar=0.0,
                                   weight_concentration_prior_type="dirichlet_distribution",
                                   **prior, **kw)


def _fitted_sk(ct, max_iter, random_state=0):
    x, prior = _iris()
    sk = _sk(ct, prior, max_iter=max_iter, tol=0.0, init_params="k-means++", random_state=random_state)
    with pytest.warns(SkConvergenceWarning):  # tol=0 never converges: a fixed number of sweeps
        sk.fit(x)
    return x, sk


def _assert_same_fit(a, b, rtol=1e-6, atol=1e-9):
    for name in ARRAYS:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, atol=atol, err_msg=name)


# ------------------------------------------------------------- agreement with sklearn
def test_continues_a_sklearn_fit_as_sklearn_does():
    # sklearn's fit for 2 sweeps is the common start; both then continue from it. Our warm
    # start takes one M-step from the responsibilities at the start and then max_iter sweeps,
    # i.e. max_iter + 1 (E, M) pairs: sklearn's warm start with max_iter + 1.
    x, sk = _fitted_sk("full", 2)
    est = from_sklearn(sk).set_params(warm_start=True, max_iter=20, tol=0.0)
    with pytest.warns(SklearnConvergenceWarning):
        est.fit(x)
    sk.set_params(warm_start=True, max_iter=21)
    with pytest.warns(SkConvergenceWarning):
        sk.fit(x)
    # The same float64 updates in another order; test_model.py's prior art measured ~1e-13.
    _assert_same_fit(est, sk)
    np.testing.assert_allclose(est.predict_proba(x), sk.predict_proba(x), rtol=1e-6, atol=1e-9)
    assert est.n_iter_ == 20
    assert not est.converged_
    assert est.result_.elbo == est.lower_bound_


def test_elbo_of_a_sklearn_fit_equals_ours_at_the_same_params():
    # The same 25 sweeps from the same responsibilities, once by sklearn and once by our engine;
    # from_sklearn's ELBO at sklearn's params must be the engine's ELBO at its own (equal) params.
    x, prior = _iris()
    r0 = initial_responsibilities(torch.tensor(x), 3, method="kmeans++",
                                  generator=torch.Generator().manual_seed(4)).numpy()

    class Fixed(BayesianGaussianMixture):
        def _initialize_parameters(self, X, random_state, **kw):  # noqa: N803 (sklearn's name)
            self._initialize(X, r0)

    sk = Fixed(n_components=3, covariance_type="full", reg_covar=0.0, max_iter=25, tol=0.0,
               weight_concentration_prior_type="dirichlet_distribution", init_params="random", **prior)
    with pytest.warns(SkConvergenceWarning):
        sk.fit(x)
    gmm = GaussianMixture(3, init=torch.tensor(r0), weight_concentration=prior["weight_concentration_prior"],
                          mean_precision=prior["mean_precision_prior"], mean_prior=prior["mean_prior"],
                          degrees_of_freedom=prior["degrees_of_freedom_prior"],
                          covariance_prior=prior["covariance_prior"])
    fit = cavi(gmm, x, max_iter=25, tol=0.0, warn=False)
    ours = from_sklearn(sk, x)
    # params agree to ~1e-13 (see above), the ELBO (-320 nats) is a smooth function of them
    assert ours.lower_bound_ == pytest.approx(fit.elbo, rel=1e-9)
    assert ours.elbo(x) == ours.lower_bound_
    assert isinstance(ours.result_, CAVIResult)
    assert ours.result_.n_steps == 0


def test_cold_fits_reach_sklearns_optimum_on_old_faithful():
    # Different k-means++ draws, one well-separated optimum: both run to a tight tolerance.
    x = load_old_faithful(standardize=True).numpy()
    est = VariationalGaussianMixture(2, random_state=0, tol=1e-12, max_iter=2000).fit(x)
    sk = BayesianGaussianMixture(n_components=2, weight_concentration_prior_type="dirichlet_distribution",
                                 reg_covar=0.0, tol=1e-10, max_iter=2000, init_params="k-means++",
                                 random_state=0).fit(x)
    order_ours, order_sk = np.argsort(est.means_[:, 0]), np.argsort(sk.means_[:, 0])
    for name in ARRAYS:
        # both stop where a sweep changes the bound by < 1e-10 relative: entries agree to ~1e-7
        np.testing.assert_allclose(getattr(est, name)[order_ours], getattr(sk, name)[order_sk],
                                   rtol=1e-5, atol=1e-8, err_msg=name)


def test_diag_differs_from_sklearn_by_its_wishart_log_determinant():
    # At equal params sklearn's diag log-responsibilities exceed ours by
    # 0.5 * sum_i [psi((nu_k - i)/2) - psi(nu_k/2)] per component: E[log|Λ|] of a Wishart
    # instead of D independent Gammas. Nothing else differs.
    x, prior = _iris()
    est = VariationalGaussianMixture(3, covariance_type="diag", random_state=0, **dict(
        prior, covariance_prior=np.diag(prior["covariance_prior"]).copy())).fit(x)
    sk = est.to_sklearn()
    nu, d = est.degrees_of_freedom_, x.shape[1]
    offset = 0.5 * (digamma(0.5 * (nu[:, None] - np.arange(d))) - digamma(0.5 * nu[:, None])).sum(-1)
    log_rho = est.model_.log_rho(torch.tensor(x), est.params_).numpy()
    np.testing.assert_allclose(softmax(log_rho + offset, axis=1), sk.predict_proba(x), rtol=1e-9, atol=1e-12)
    assert np.abs(offset).max() > 1e-3  # the offset is real, so the check above can fail


# ----------------------------------------------------------------------- converters
@pytest.mark.parametrize("ct", ["full", "diag"])
def test_round_trips(ct):
    x, sk = _fitted_sk(ct, 5)
    back = from_sklearn(sk).to_sklearn()
    _assert_same_fit(back, sk, rtol=1e-12, atol=1e-14)  # a Cholesky and an inverse: round-off only
    for prior in ("weight_concentration_prior_", "mean_precision_prior_", "mean_prior_",
                  "degrees_of_freedom_prior_", "covariance_prior_"):
        np.testing.assert_allclose(getattr(back, prior), getattr(sk, prior), rtol=1e-15, err_msg=prior)
    np.testing.assert_allclose(back.predict_proba(x), sk.predict_proba(x), rtol=1e-10, atol=1e-13)

    est = VariationalGaussianMixture(3, covariance_type=ct, random_state=1).fit(x)
    again = from_sklearn(est.to_sklearn(), x)
    _assert_same_fit(again, est, rtol=1e-12, atol=1e-14)
    assert again.lower_bound_ == pytest.approx(est.lower_bound_, rel=1e-12)
    np.testing.assert_allclose(again.score_samples(x), est.score_samples(x), rtol=1e-12, atol=1e-12)


def test_to_sklearn_predicts_as_we_do():
    x, prior = _iris()
    est = VariationalGaussianMixture(3, random_state=0, **prior).fit(x)
    sk = est.to_sklearn()
    np.testing.assert_allclose(sk.predict_proba(x), est.predict_proba(x), rtol=1e-10, atol=1e-13)
    assert (sk.predict(x) == est.predict(x)).all()
    # sklearn's score_samples is log sum_k exp E_q[log pi_k N(x|mu_k, Lambda_k)]; ours is
    # log sum_k E_q[pi_k N(x|mu_k, Lambda_k)] (Student-t). Jensen: ours >= sklearn's, per point.
    # (Measured on iris: gap 0.026 to 0.69 nats per point, the largest in the small component.)
    gap = est.score_samples(x) - sk.score_samples(x)
    assert gap.min() > 0


def test_from_sklearn_rejects_what_it_cannot_hold():
    x, prior = _iris()
    with pytest.raises(TypeError, match="bgm must be"):
        from_sklearn(VariationalGaussianMixture())
    with pytest.raises(NotFittedError):
        from_sklearn(BayesianGaussianMixture())
    dp = BayesianGaussianMixture(n_components=2, random_state=0, max_iter=500).fit(x)
    with pytest.raises(ValueError, match="dirichlet_distribution"):
        from_sklearn(dp)
    tied = BayesianGaussianMixture(n_components=2, covariance_type="tied", random_state=0, max_iter=500,
                                   weight_concentration_prior_type="dirichlet_distribution").fit(x)
    with pytest.raises(ValueError, match="covariance_type"):
        from_sklearn(tied)


# --------------------------------------------------------------- fitted attributes
@pytest.mark.parametrize("ct", ["full", "diag"])
def test_fitted_attributes_hang_together(ct):
    x, _ = _iris()
    est = VariationalGaussianMixture(3, covariance_type=ct, n_init=2, random_state=0).fit(x)
    assert isinstance(est.result_, CAVIResult)
    assert len(est.result_.runs) == 2
    assert est.lower_bound_ == est.result_.elbo == pytest.approx(est.elbo(x), rel=1e-12)
    assert est.n_iter_ == est.result_.n_steps
    assert est.converged_
    assert est.n_features_in_ == 4
    assert est.weights_.sum() == pytest.approx(1.0, rel=1e-12)
    if ct == "full":
        u = est.precisions_cholesky_
        assert np.allclose(np.tril(u, -1), 0.0)  # sklearn's factor is upper triangular
        np.testing.assert_allclose(u @ np.swapaxes(u, -1, -2), est.precisions_, rtol=1e-10)
        np.testing.assert_allclose(est.precisions_ @ est.covariances_, np.broadcast_to(np.eye(4), (3, 4, 4)),
                                   atol=1e-9)
    else:
        np.testing.assert_allclose(est.precisions_cholesky_**2 * est.covariances_, 1.0, rtol=1e-12)
    assert (est.fit_predict(x) == est.predict(x)).all()


def test_nonconvergence_warns_for_both_filters():
    x, _ = _iris()
    with pytest.warns(SkConvergenceWarning) as caught:
        VariationalGaussianMixture(3, max_iter=1, random_state=0).fit(x)
    assert isinstance(caught[0].message, ConvergenceWarning)


@pytest.mark.parametrize(("kw", "exc", "match"), [
    (dict(covariance_type="tied"), ValueError, "covariance_type"),
    (dict(init_params="kmeans"), ValueError, "init_params"),
    (dict(n_init=0), ValueError, "n_init"),
    (dict(max_iter=2.5), TypeError, "max_iter"),
    (dict(weight_concentration_prior=-1.0), ValueError, "weight_concentration_prior"),
    (dict(warm_start=1), TypeError, "warm_start"),
    (dict(moves=-1), ValueError, "moves"),
    (dict(screen_tol=-1e-5), ValueError, "screen_tol"),
])
def test_bad_parameters_are_named_at_fit(kw, exc, match):
    x, _ = _iris()
    est = VariationalGaussianMixture(2, **kw)  # stored unchecked, as sklearn requires
    with pytest.raises(exc, match=match):
        est.fit(x)


def test_fewer_samples_than_components_is_a_value_error():
    with pytest.raises(ValueError, match="n_components=5"):
        VariationalGaussianMixture(5).fit(np.random.default_rng(0).normal(size=(4, 2)))


# -------------------------------------------------------------------------- sample
def test_samples_follow_the_student_t_predictive():
    # KS tests at seeded draws of 20000: p-values of a correct sampler are uniform, so each
    # check fails with probability 1e-3 (failure budget 3e-3 for the three below).
    x, _ = _iris()
    full = VariationalGaussianMixture(1, random_state=0).fit(x[:, :2])
    xs, y = full.sample(20000)
    assert xs.shape == (20000, 2)
    assert (y == 0).all()
    comp = full.params_.components
    d, nu, beta = 2, float(comp.df[0]), float(comp.precision_scale[0])
    df = nu + 1 - d
    shape = comp.precision.scale_inv[0].numpy() * (1 + beta) / (df * beta)  # Bishop eq. 10.82
    diff = xs - full.means_[0]
    maha = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(shape), diff) / d  # ~ F(d, df)
    assert stats.kstest(maha, stats.f(d, df).cdf).pvalue > 1e-3

    diag = VariationalGaussianMixture(1, covariance_type="diag", random_state=0).fit(x[:, :2])
    xs, _ = diag.sample(20000)
    comp = diag.params_.components
    a, b, beta = (t[0].numpy() for t in (comp.concentration, comp.rate, comp.precision_scale))
    for j in range(2):
        ref = stats.t(2 * a[j], comp.loc[0, j].item(), np.sqrt(b[j] * (1 + beta[j]) / (a[j] * beta[j])))
        assert stats.kstest(xs[:, j], ref.cdf).pvalue > 1e-3


def test_sample_counts_follow_the_expected_weights():
    x = load_old_faithful(standardize=True).numpy()
    est = VariationalGaussianMixture(2, random_state=0).fit(x)
    _, y = est.sample(10000)
    assert (np.diff(y) >= 0).all()  # grouped by component, as sklearn's
    # binomial counts: a 4-sd band fails with probability 6e-5
    sd = np.sqrt(10000 * est.weights_[0] * (1 - est.weights_[0]))
    assert abs((y == 0).sum() - 10000 * est.weights_[0]) < 4 * sd
    with pytest.raises(ValueError, match="n_samples"):
        est.sample(0)


# ------------------------------------------------------------ Pipeline, GridSearchCV
def test_pipeline_and_grid_search_scored_by_score():
    x = load_old_faithful().numpy()  # raw units: the pipeline standardizes
    pipe = make_pipeline(StandardScaler(), VariationalGaussianMixture(random_state=0))
    grid = GridSearchCV(pipe, {"variationalgaussianmixture__n_components": [1, 2, 3]},
                        cv=KFold(3, shuffle=True, random_state=0)).fit(x)
    # the grid's scores are held-out mean predictive log-densities, recomputed by hand
    for i, k in enumerate([1, 2, 3]):
        folds = []
        for train, test in KFold(3, shuffle=True, random_state=0).split(x):
            p = clone(pipe).set_params(variationalgaussianmixture__n_components=k).fit(x[train])
            scaler, est = p[0], p[1]
            folds.append(est.score_samples(scaler.transform(x[test])).mean())
        assert grid.cv_results_["mean_test_score"][i] == pytest.approx(np.mean(folds), rel=1e-10)
    # Old Faithful is bimodal: one Gaussian is far worse out of sample (measured gap ~0.5 nats/point)
    scores = grid.cv_results_["mean_test_score"]
    assert scores[0] < max(scores[1:]) - 0.2
    assert grid.best_params_["variationalgaussianmixture__n_components"] in (2, 3)


def test_lower_bound_is_sklearns_plus_the_constants_it_drops():
    # Two different optima of the same model (iris, K = 3, two random starts): the offset is
    # the same closed-form constant at both, so it does not depend on q. sklearn evaluates its
    # bound with the previous sweep's responsibilities; at tol=1e-12 that is round-off (~1e-11).
    x, prior = _iris()
    n, d, k = x.shape[0], x.shape[1], 3
    a0, b0, nu0 = (prior[p] for p in ("weight_concentration_prior", "mean_precision_prior",
                                      "degrees_of_freedom_prior"))
    log_b0 = (0.5 * nu0 * np.linalg.slogdet(prior["covariance_prior"])[1] - 0.5 * nu0 * d * np.log(2)
              - multigammaln(0.5 * nu0, d))  # ln B(W0, nu0), Bishop eq. B.79, with W0^-1 given
    const = (gammaln(k * a0) - k * gammaln(a0) + k * (log_b0 + 0.5 * d * np.log(b0)
             + 0.25 * d * (d - 1) * np.log(np.pi)) - 0.5 * n * d * np.log(2 * np.pi))
    bounds = []
    for seed in (0, 2):
        sk = _sk("full", prior, tol=1e-12, max_iter=5000, init_params="random", random_state=seed).fit(x)
        ours = from_sklearn(sk, x).lower_bound_
        assert ours - sk.lower_bound_ == pytest.approx(const, abs=1e-8)
        bounds.append(ours)
    assert abs(bounds[0] - bounds[1]) > 1.0  # two optima indeed (measured 46.7 nats apart)


def test_moves_and_screened_restarts_reach_cavis_own_fit():
    # The estimator passes screen_tol and moves through to cavi: the same seed gives the same
    # ELBO as cavi(...) called directly with those options (deterministic, bitwise), and on
    # iris (K=6, raw units) the moves end above the plain restarts (-330.7 against -338.9,
    # measured; deterministic).
    from pyro_vi import GaussianMixture, cavi

    x, _ = _iris()
    est = VariationalGaussianMixture(6, n_init=3, screen_tol=1e-5, moves=5, random_state=1).fit(x)
    seed = int(np.random.RandomState(1).randint(np.iinfo(np.int32).max))
    fit = cavi(GaussianMixture(6), torch.tensor(x), n_init=3, seed=seed, warn=False, screen_tol=1e-5,
               moves=5)
    assert est.lower_bound_ == fit.elbo
    assert est.result_.moves is not None
    plain = VariationalGaussianMixture(6, n_init=3, random_state=1).fit(x)
    assert est.lower_bound_ > plain.lower_bound_ + 1.0
