r"""A scikit-learn estimator for the Bayesian Gaussian mixture, fitted by CAVI.

:class:`VariationalGaussianMixture` is the :class:`~pyro_vi.models.gmm.GaussianMixture` with
scikit-learn's habits (``fit``/``predict``/``score``, ``get_params``/``set_params``/``clone``,
fitted attributes ending in ``_``), so it drops into a ``Pipeline`` or ``GridSearchCV``.
:func:`from_sklearn` and :meth:`VariationalGaussianMixture.to_sklearn` convert a fitted
``sklearn.mixture.BayesianGaussianMixture`` and ours into each other; the public import path
is :mod:`pyro_vi.sklearn`.

scikit-learn is an optional extra (``pip install 'pyro-vi[sklearn]'``); this module imports it
at import time and says so when it is missing.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

try:
    from sklearn.base import BaseEstimator, DensityMixin
    from sklearn.exceptions import ConvergenceWarning as _SkConvergenceWarning
    from sklearn.mixture import BayesianGaussianMixture
    from sklearn.utils import check_random_state
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as err:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError("pyro_vi.sklearn needs scikit-learn >= 1.3: pip install 'pyro-vi[sklearn]'") from err

from pyro_vi._checks import check_bool, check_int, check_positive, check_real
from pyro_vi.cavi.engine import CAVIResult, CAVIRun, cavi, local_pass
from pyro_vi.errors import ConvergenceWarning
from pyro_vi.factors import Dirichlet, NormalGamma, NormalWishart
from pyro_vi.linalg import inverse_cholesky
from pyro_vi.models.gmm.model import GaussianMixture
from pyro_vi.models.gmm.params import GMMParams

__all__ = ["SklearnConvergenceWarning", "VariationalGaussianMixture", "from_sklearn"]

_INITS = ("kmeans++", "random")
#: sklearn's spelling of our two starts (its "kmeans"/"random_from_data" have no match here).
_SK_INIT = {"kmeans++": "k-means++", "random": "random"}


class SklearnConvergenceWarning(ConvergenceWarning, _SkConvergenceWarning):
    """:class:`pyro_vi.ConvergenceWarning` that ``sklearn.exceptions.ConvergenceWarning`` filters also catch."""


def _optional_positive(name: str, value: Any) -> float | None:
    return None if value is None else check_positive(name, value)


class VariationalGaussianMixture(DensityMixin, BaseEstimator):  # type: ignore[misc]
    r"""Bayesian Gaussian mixture fitted by CAVI, as a scikit-learn estimator.

    The model, priors and updates are :class:`~pyro_vi.models.gmm.GaussianMixture`'s (Bishop
    2006, §10.2), with ``sklearn.mixture.BayesianGaussianMixture``'s parameter names and
    defaults for ``weight_concentration_prior_type="dirichlet_distribution"``.

    Parameters
    ----------
    n_components : int
        Number of components K.
    covariance_type : {"full", "diag"}
        Normal-Wishart or per-dimension Normal-Gamma components ("tied" and "spherical" are
        not offered).
    weight_concentration_prior : float, optional
        :math:`\alpha_0` (default ``1/K``).
    mean_precision_prior : float, optional
        :math:`\beta_0` (default 1).
    mean_prior : array (D,), optional
        :math:`m_0` (default: the data mean).
    degrees_of_freedom_prior : float, optional
        :math:`\nu_0 > D - 1` (default D).
    covariance_prior : array (D, D) or (D,), optional
        :math:`W_0^{-1}` (default: the data's covariance; "diag": its variances).
    n_init : int
        Restarts; the best final ELBO wins.
    screen_tol : float or None
        Run every restart to this relative change only and carry the 3 best on to ``tol``
        (:func:`pyro_vi.cavi`'s ``screen_tol``); None: every restart to ``tol``.
    moves : int
        After the restarts, up to this many runs from split and merge moves of the best fit
        (:func:`pyro_vi.cavi`'s ``moves``, :mod:`pyro_vi.models.gmm.moves`); 0: none.
        ``n_init=10, screen_tol=1e-4, moves=10`` reached scikit-learn's best ELBO of 10 starts
        on five data sets in 15 of 15 fits, in 0.50-0.91× its time (``benchmarks/gmm_starts.py``).
    max_iter : int
        CAVI sweeps per restart.
    tol : float
        Stop when the ELBO's *relative* change ``|ΔELBO| / max(|ELBO|, 1)`` is at most ``tol``
        (sklearn's ``tol`` is an absolute change of its bound).
    init_params : {"kmeans++", "random"}
        Hard k-means++ assignments (sklearn's ``"k-means++"``) or random soft ones.
    random_state : int, RandomState or None
        Seeds the starts (and :meth:`sample`).
    warm_start : bool
        Start ``fit`` from the current fit (one start, ``n_init`` ignored), e.g. from
        :func:`from_sklearn`: the first sweep's responsibilities are those of eq. 10.49 at the
        current parameters.

    Attributes
    ----------
    weights_, means_, covariances_, precisions_, precisions_cholesky_
        sklearn's layout: :math:`E[\pi]`, :math:`m_k`, :math:`E[\Lambda_k]^{-1}` ("full":
        ``(K, D, D)``; "diag": ``(K, D)``), its inverse, and sklearn's upper-triangular factor
        :math:`U_k` with ``precisions_ = U Uᵀ``.
    weight_concentration_, mean_precision_, degrees_of_freedom_
        :math:`\alpha_k`, :math:`\beta_k`, :math:`\nu_k` (sklearn's names).
    converged_, n_iter_ : bool, int
        The best restart's flag and CAVI sweeps.
    lower_bound_ : float
        Our analytic ELBO in nats with every constant kept (Bishop eqs. 10.70–10.77), so it is
        on the scale of Pyro's ``Trace_ELBO`` and of ``log p(X)``. sklearn's ``lower_bound_``
        drops the terms that do not depend on q; at a converged "full" fit, ours is sklearn's
        plus :math:`\ln C(\alpha_0) + K[\ln B(W_0,\nu_0) + \tfrac D2\ln\beta_0
        + \tfrac{D(D-1)}{4}\ln\pi] - \tfrac{ND}{2}\ln 2\pi` (Bishop eqs. B.23, B.79; the
        :math:`\ln\pi` is the multivariate Gamma's, which sklearn's Wishart norm omits).
    n_features_in_ : int
        D.
    model_, params_ : GaussianMixture, GMMParams
        The prepared model (priors resolved) and the fitted factors.
    result_ : CAVIResult or None
        The full fit (history, restarts, ``.guide``, ``.diagnose()``); None after
        :func:`from_sklearn` without data.

    Examples
    --------
    >>> from pyro_vi import load_old_faithful
    >>> x = load_old_faithful(standardize=True).numpy()
    >>> est = VariationalGaussianMixture(2, random_state=0).fit(x)
    >>> est.converged_, est.weights_.shape, est.predict(x[:3]).shape
    (True, (2,), (3,))

    .. warning::
        CAVI finds a local optimum of the ELBO: use ``n_init > 1``. Mean-field posteriors
        understate posterior variances (Bishop 2006, §10.1.2). sklearn's diagonal model takes
        :math:`E[\log|\Lambda_k|]` from a Wishart, ours from D independent Gammas (the exact
        mean-field expectation), so the "diag" fits of the two libraries differ slightly.

    References
    ----------
    Bishop, C. M. (2006). *Pattern Recognition and Machine Learning*, §10.2.
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        weight_concentration_prior: float | None = None,
        mean_precision_prior: float | None = None,
        mean_prior: Any = None,
        degrees_of_freedom_prior: float | None = None,
        covariance_prior: Any = None,
        n_init: int = 1,
        screen_tol: float | None = None,
        moves: int = 0,
        max_iter: int = 500,
        tol: float = 1e-8,
        init_params: str = "kmeans++",
        random_state: Any = None,
        warm_start: bool = False,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior
        self.n_init = n_init
        self.screen_tol = screen_tol
        self.moves = moves
        self.max_iter = max_iter
        self.tol = tol
        self.init_params = init_params
        self.random_state = random_state
        self.warm_start = warm_start

    # ------------------------------------------------------------------------------ fit
    def _validate_params(self) -> None:
        check_int("n_components", self.n_components, minimum=1)
        if self.covariance_type not in ("full", "diag"):
            raise ValueError(f"covariance_type must be 'full' or 'diag', got {self.covariance_type!r}")
        _optional_positive("weight_concentration_prior", self.weight_concentration_prior)
        _optional_positive("mean_precision_prior", self.mean_precision_prior)
        _optional_positive("degrees_of_freedom_prior", self.degrees_of_freedom_prior)
        check_int("n_init", self.n_init, minimum=1)
        if self.screen_tol is not None:
            check_real("screen_tol", self.screen_tol, minimum=0.0)
        check_int("moves", self.moves, minimum=0)
        check_int("max_iter", self.max_iter, minimum=1)
        check_real("tol", self.tol, minimum=0.0)
        if self.init_params not in _INITS:
            raise ValueError(f"init_params must be 'kmeans++' or 'random', got {self.init_params!r}")
        check_bool("warm_start", self.warm_start)

    def _model(self, init: str | Tensor) -> GaussianMixture:
        mean_precision = 1.0 if self.mean_precision_prior is None else self.mean_precision_prior
        return GaussianMixture(
            self.n_components, covariance=self.covariance_type, init=init,
            weight_concentration=self.weight_concentration_prior, mean_prior=self.mean_prior,
            mean_precision=mean_precision, covariance_prior=self.covariance_prior,
            degrees_of_freedom=self.degrees_of_freedom_prior)

    def fit(self, X: Any, y: Any = None) -> VariationalGaussianMixture:  # noqa: N803 (sklearn's name)
        """Fit by CAVI (:func:`pyro_vi.cavi`), best of ``n_init``; ``y`` is ignored.

        Emits :class:`SklearnConvergenceWarning` when the best restart did not converge.
        """
        self._validate_params()
        warm = bool(self.warm_start) and hasattr(self, "params_")
        x = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2, reset=not warm)
        if x.shape[0] < self.n_components:
            raise ValueError(f"X has {x.shape[0]} samples, fewer than n_components={self.n_components}")
        xt = torch.tensor(np.asarray(x, dtype=np.float64))  # a copy: X may be read-only
        init: str | Tensor = self.init_params
        if warm:
            init = self.model_.responsibilities(xt, self.params_)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        fit = cavi(self._model(init), xt, max_iter=int(self.max_iter), tol=float(self.tol),
                   n_init=1 if warm else int(self.n_init), seed=seed, warn=False,
                   screen_tol=None if warm or self.screen_tol is None else float(self.screen_tol),
                   moves=0 if warm else int(self.moves))
        if not fit.converged:
            warnings.warn(f"CAVI did not converge in max_iter={self.max_iter} sweeps (tol={self.tol}); "
                          "raise max_iter or tol", SklearnConvergenceWarning, stacklevel=2)
        self._set_fitted(fit.cavi_model, fit.params)
        self.converged_, self.n_iter_, self.lower_bound_ = fit.converged, fit.n_steps, fit.elbo
        self.result_: CAVIResult | None = fit
        return self

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:  # noqa: N803
        """``fit(X).predict(X)``."""
        return self.fit(X).predict(X)

    def _set_fitted(self, model: GaussianMixture, params: GMMParams) -> None:
        self.model_, self.params_ = model, params
        for name, value in _sklearn_arrays(params).items():
            setattr(self, name, value)

    # -------------------------------------------------------------------------- predict
    def _points(self, X: Any) -> Tensor:  # noqa: N803
        check_is_fitted(self)
        x = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return torch.tensor(np.asarray(x, dtype=np.float64))  # a copy: X may be read-only

    def predict_proba(self, X: Any) -> np.ndarray:  # noqa: N803
        r"""Responsibilities :math:`q(z_n = k) \propto \rho_{nk}` (Bishop 2006, eq. 10.49), ``(N, K)``.

        What CAVI's local step assigns to each point, and what sklearn's ``predict_proba``
        computes. The Student-t posterior predictive's :math:`p(z = k \mid x, \mathcal D)` is
        ``est.model_.predict_proba(est.params_, X)``.
        """
        x = self._points(X)
        return self.model_.responsibilities(x, self.params_).numpy()

    def predict(self, X: Any) -> np.ndarray:  # noqa: N803
        """Most responsible component of each point, ``(N,)`` (argmax of :meth:`predict_proba`)."""
        return self.predict_proba(X).argmax(-1)

    def score_samples(self, X: Any) -> np.ndarray:  # noqa: N803
        r"""Posterior predictive log-density :math:`\log p(x_n \mid \mathcal D)`, ``(N,)``.

        The predictive integrates over :math:`q`: a mixture of Student-t's with weights
        :math:`E[\pi_k]` (Bishop 2006, eqs. 10.80–10.82). sklearn's ``score_samples`` is instead
        :math:`\log\sum_k \rho_{nk}`, i.e. :math:`\log\sum_k \exp E_q[\log \pi_k N(x_n|\mu_k,\Lambda_k)]`,
        which by Jensen's inequality is never larger, so the numbers differ slightly (most for
        small components and few data).
        """
        x = self._points(X)
        return self.model_.log_predictive(self.params_, x).numpy()

    def score(self, X: Any, y: Any = None) -> float:  # noqa: N803
        """Mean posterior predictive log-density per point (see :meth:`score_samples`)."""
        return float(self.score_samples(X).mean())

    def elbo(self, X: Any) -> float:  # noqa: N803
        """Our analytic ELBO (nats, every constant) of the fitted parameters on ``X``.

        The local terms with :math:`q(z)` at its optimum (eq. 10.49) plus the global KL terms,
        as :func:`pyro_vi.cavi` evaluates it: ``est.elbo(X_train) == est.lower_bound_``.
        """
        x = self._points(X)
        local = local_pass(self.model_, x, self.params_, chunk_size=None)
        return float(local.elbo + self.model_.global_elbo(self.params_))

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        r"""Draw from the posterior predictive: ``(X (n, D), y (n,))``, grouped by component as sklearn's.

        :math:`z \sim \mathrm{Cat}(E[\pi])`, then :math:`x \mid z = k` from the Student-t of
        Bishop (2006), eq. 10.81 (diag: a product of univariate Student-t's), drawn as
        :math:`m_k + L_k \varepsilon \sqrt{\mathrm{df}/g}` with :math:`\varepsilon \sim N(0, I)`
        and :math:`g \sim \chi^2_{\mathrm{df}}`. sklearn samples Gaussians at point estimates.
        """
        check_is_fitted(self)
        n = check_int("n_samples", n_samples, minimum=1)
        rng = check_random_state(self.random_state)
        counts = rng.multinomial(n, self.weights_ / self.weights_.sum())
        y = np.repeat(np.arange(self.n_components), counts)
        loc, df, tril = _predictive_student_t(self.params_)
        eps = rng.standard_normal((n, loc.shape[-1]))
        g = rng.chisquare(df[y])
        if tril is not None:  # full: one df per component
            shift = np.einsum("nij,nj->ni", tril[y], eps) * np.sqrt(df[y] / g)[:, None]
        else:  # diag: `df` and the scales are (K, D); one chi-square per coordinate
            shift = eps * self._diag_scale[y] * np.sqrt(df[y] / g)
        return loc[y] + shift, y

    @property
    def _diag_scale(self) -> np.ndarray:
        comp = self.params_.components
        a, b, beta = comp.concentration, comp.rate, comp.precision_scale
        return (b * (1.0 + beta) / (a * beta)).sqrt().numpy()

    # ----------------------------------------------------------------------- converters
    def to_sklearn(self) -> BayesianGaussianMixture:
        r"""A fitted ``BayesianGaussianMixture`` with these priors and parameters.

        Its ``predict``/``predict_proba`` agree with ours ("full": to round-off; "diag" differ
        by sklearn's Wishart :math:`E[\log|\Lambda|]`, see the class warning). Its
        ``lower_bound_`` is ``-inf``: sklearn's bound needs its own E-step on data, and a
        ``warm_start`` refit then starts from these parameters. ``reg_covar=0`` keeps the
        model the same; ``tol`` is sklearn's default (an absolute change of its bound).
        """
        check_is_fitted(self)
        hp = self.model_.hyperparams
        assert hp is not None  # a fitted model has resolved priors
        bgm = BayesianGaussianMixture(
            n_components=self.n_components, covariance_type=self.covariance_type, reg_covar=0.0,
            max_iter=self.max_iter, n_init=self.n_init, init_params=_SK_INIT[self.init_params],
            weight_concentration_prior_type="dirichlet_distribution",
            weight_concentration_prior=hp.weight_concentration, mean_precision_prior=hp.mean_precision,
            mean_prior=hp.mean_prior.numpy(), degrees_of_freedom_prior=hp.degrees_of_freedom,
            covariance_prior=hp.covariance_prior.numpy(), random_state=self.random_state)
        bgm.weight_concentration_prior_ = hp.weight_concentration
        bgm.mean_precision_prior_ = hp.mean_precision
        bgm.mean_prior_ = hp.mean_prior.numpy()
        bgm.degrees_of_freedom_prior_ = hp.degrees_of_freedom
        bgm.covariance_prior_ = hp.covariance_prior.numpy()
        for name, value in _sklearn_arrays(self.params_).items():
            setattr(bgm, name, value.copy())
        bgm.converged_, bgm.n_iter_, bgm.n_features_in_ = self.converged_, self.n_iter_, self.n_features_in_
        bgm.lower_bound_, bgm.lower_bounds_ = -math.inf, []
        return bgm


def from_sklearn(bgm: Any, X: Any = None) -> VariationalGaussianMixture:  # noqa: N803
    r"""A fitted :class:`VariationalGaussianMixture` holding a fitted ``BayesianGaussianMixture``'s q.

    sklearn's resolved priors become the estimator's parameters and its fitted
    ``weight_concentration_``, ``mean_precision_``, ``means_``, ``degrees_of_freedom_`` and
    ``covariances_`` the factors ``params_`` (:math:`W_k^{-1} = \nu_k \Sigma_k`; "diag":
    :math:`a_{kd} = \nu_k/2`, :math:`b_{kd} = \nu_k\Sigma_{kd}/2`). Then ``est.elbo(X)`` scores
    sklearn's fit on our analytic ELBO, and ``est.set_params(warm_start=True).fit(X)``
    continues it by CAVI. With ``X`` (the data it was fitted to), ``lower_bound_`` is that ELBO
    and ``result_`` a zero-sweep :class:`~pyro_vi.CAVIResult`; without, NaN and None.

    Raises ``TypeError`` for anything but a fitted ``BayesianGaussianMixture`` and
    ``ValueError`` for its ``"dirichlet_process"`` weights (a stick-breaking q, not our
    Dirichlet) or a "tied"/"spherical" covariance.

    Examples
    --------
    >>> from sklearn.mixture import BayesianGaussianMixture
    >>> from pyro_vi import load_old_faithful
    >>> x = load_old_faithful(standardize=True).numpy()
    >>> bgm = BayesianGaussianMixture(n_components=2, weight_concentration_prior_type="dirichlet_distribution",
    ...                               random_state=0).fit(x)
    >>> est = from_sklearn(bgm, x)
    >>> bool((est.predict(x) == bgm.predict(x)).all())
    True
    """
    if not isinstance(bgm, BayesianGaussianMixture):
        raise TypeError(f"bgm must be a sklearn.mixture.BayesianGaussianMixture, got {type(bgm).__name__}")
    check_is_fitted(bgm)
    if bgm.weight_concentration_prior_type != "dirichlet_distribution":
        raise ValueError("bgm must use weight_concentration_prior_type='dirichlet_distribution' "
                         f"(got {bgm.weight_concentration_prior_type!r}: a stick-breaking q(π) is not ours)")
    if bgm.covariance_type not in ("full", "diag"):
        raise ValueError(f"bgm.covariance_type must be 'full' or 'diag', got {bgm.covariance_type!r}")
    est = VariationalGaussianMixture(
        bgm.n_components, covariance_type=bgm.covariance_type,
        weight_concentration_prior=float(bgm.weight_concentration_prior_),
        mean_precision_prior=float(bgm.mean_precision_prior_), mean_prior=np.array(bgm.mean_prior_),
        degrees_of_freedom_prior=float(bgm.degrees_of_freedom_prior_),
        covariance_prior=np.array(bgm.covariance_prior_), n_init=bgm.n_init, max_iter=bgm.max_iter,
        init_params="random" if bgm.init_params == "random" else "kmeans++",
        random_state=bgm.random_state)
    # Every prior is explicit, so resolving reads only the width of this one placeholder row.
    model = est._model(est.init_params).resolve(np.asarray(bgm.mean_prior_, dtype=np.float64)[None])
    est._set_fitted(model, _params_from_sklearn(bgm))
    est.n_features_in_ = int(bgm.means_.shape[1])
    est.converged_, est.n_iter_ = bool(bgm.converged_), int(bgm.n_iter_)
    est.lower_bound_, est.result_ = math.nan, None
    if X is not None:
        x = est._points(X)
        elbo = est.elbo(x.numpy())
        run = CAVIRun(params=est.params_, elbo=elbo, n_steps=0, converged=est.converged_,
                      history=pd.DataFrame({"step": [0], "elbo": [elbo], "seconds": [0.0]}))
        est.lower_bound_ = elbo
        est.result_ = CAVIResult.from_run(model, run, runs=(run,), data=(x,))
    return est


def _params_from_sklearn(bgm: Any) -> GMMParams:
    def t(v: Any) -> Tensor:
        return torch.as_tensor(np.asarray(v, dtype=np.float64))

    alpha, beta, loc, nu, cov = (t(getattr(bgm, a)) for a in (
        "weight_concentration_", "mean_precision_", "means_", "degrees_of_freedom_", "covariances_"))
    if bgm.covariance_type == "full":
        tril = inverse_cholesky(nu[:, None, None] * cov, where="from_sklearn: W_k^-1 = nu_k covariances_")
        comps: NormalWishart | NormalGamma = NormalWishart(loc, beta, tril, nu)
    else:
        conc = (0.5 * nu)[:, None].expand_as(loc)
        comps = NormalGamma(loc, beta[:, None].expand_as(loc), conc, conc * cov)
    return GMMParams(Dirichlet(alpha), comps)


def _sklearn_arrays(params: GMMParams) -> dict[str, np.ndarray]:
    """The fitted arrays of sklearn (``weights_`` … ``precisions_cholesky_``) of our factors."""
    alpha = params.weights.concentration
    comp = params.components
    out = {"weight_concentration_": alpha, "weights_": alpha / alpha.sum(), "means_": comp.loc}
    if isinstance(comp, NormalWishart):
        cov = comp.precision.scale_inv / comp.df[:, None, None]  # E[Λ]^-1 = W^-1 / ν
        eye = torch.eye(comp.dim, dtype=cov.dtype, device=cov.device).expand_as(cov)
        upper = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), eye, upper=False).mT
        out |= {"covariances_": cov, "precisions_": upper @ upper.mT, "precisions_cholesky_": upper,
                "degrees_of_freedom_": comp.df, "mean_precision_": comp.precision_scale}
    else:
        a, b = comp.concentration, comp.rate
        out |= {"covariances_": b / a, "precisions_": a / b, "precisions_cholesky_": (a / b).sqrt(),
                "degrees_of_freedom_": 2.0 * a[:, 0], "mean_precision_": comp.precision_scale[:, 0]}
    return {k: v.detach().cpu().numpy() for k, v in out.items()}


def _predictive_student_t(params: GMMParams) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    r"""``(loc, df, scale_tril)`` of the predictive Student-t's (Bishop eq. 10.81–10.82).

    Full: :math:`\mathrm{df}_k = \nu_k + 1 - D`, :math:`L_k^{-1} = \frac{1 + \beta_k}{\mathrm{df}_k\beta_k} W_k^{-1}`;
    diag: ``df = 2a`` per coordinate and no tril (the scales are :attr:`_diag_scale`).
    """
    comp = params.components
    if isinstance(comp, NormalWishart):
        df = comp.df + 1.0 - comp.dim
        factor = ((1.0 + comp.precision_scale) / (df * comp.precision_scale)).sqrt()
        tril = factor[:, None, None] * torch.linalg.cholesky(comp.precision.scale_inv)
        return comp.loc.numpy(), df.numpy(), tril.numpy()
    return comp.loc.numpy(), (2.0 * comp.concentration).numpy(), None
