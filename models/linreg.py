r"""Bayesian linear regression with unknown noise precision and an ARD prior, by CAVI.

Model (Bishop 2006, §10.3 with the ARD prior of §7.2.2; Bishop & Tipping 2000):

.. math::
    \alpha_i \sim \mathrm{Gam}(a_0, b_0),\quad
    w_i \mid \alpha_i \sim N(0, \alpha_i^{-1}),\quad
    \beta \sim \mathrm{Gam}(c_0, d_0),\quad
    y_n \mid w, \beta \sim N(w^T x_n, \beta^{-1}).

Mean-field guide :math:`q(w)q(\alpha)q(\beta)`: a full-covariance Normal for :math:`w` and
Gammas for the precisions. ``ard=False`` shares one :math:`\alpha` across inputs (Bishop's
§10.3 model); a float ``weight_precision`` or ``noise_precision`` fixes that precision, and
with both fixed :math:`q(w)` is the exact Gaussian posterior (Bishop eqs. 3.53–3.54) and the
ELBO the exact log evidence (eq. 3.86). There is no intercept: add a column of ones to ``X``.

Pyro sites: ``weight_precision`` (ARD: event shape ``(D,)``), ``noise_precision``,
``weights`` (event shape ``(D,)``), ``obs`` in plate ``data``; fixed precisions have no site.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from pyro_vi._checks import as_matrix, as_vector, check_bool, check_positive, check_spread
from pyro_vi.cavi.model import ConjugateModel, Local, Stats
from pyro_vi.factors import Gamma, MultivariateNormal

__all__ = ["BayesianLinearRegression", "LinRegParams", "LinRegPrediction"]

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class LinRegParams:
    r""":math:`q(w)`, :math:`q(\alpha)`, :math:`q(\beta)` (Gammas, or fixed values as tensors)."""

    weights: MultivariateNormal
    weight_precision: Gamma | Tensor
    noise_precision: Gamma | Tensor


class LinRegPrediction(NamedTuple):
    r"""Predictive mean :math:`E[w]^T x`, variance :math:`1/E[\beta] + x^T\Sigma_w x` (``(M,)``)."""

    mean: Tensor
    variance: Tensor


def _mean(p: Gamma | Tensor) -> Tensor:
    return p.mean() if isinstance(p, Gamma) else p


def _mean_log(p: Gamma | Tensor) -> Tensor:
    return p.expected_log() if isinstance(p, Gamma) else torch.log(p)


class BayesianLinearRegression(ConjugateModel[tuple[Tensor, Tensor], LinRegParams, Stats]):
    r"""Linear regression :math:`y = w^T x + \varepsilon` with Gamma priors on every precision.

    Parameters
    ----------
    ard : bool, keyword-only
        One :math:`\alpha_i` per input (automatic relevance determination) or one shared.
    weight_precision : float or None
        Fix :math:`\alpha` to this value instead of learning it.
    noise_precision : float or None
        Fix :math:`\beta` to this value instead of learning it.
    weight_precision_concentration, weight_precision_rate : float
        :math:`a_0, b_0 > 0` of the Gamma prior on :math:`\alpha` (default ``1e-6``: broad, as
        in Bishop & Tipping 2000).
    noise_precision_concentration, noise_precision_rate : float
        :math:`c_0, d_0 > 0` of the Gamma prior on :math:`\beta` (default ``1e-6``).
    dtype, device
        Where the fit runs (float64 on the CPU by default).

    Examples
    --------
    >>> import torch
    >>> from pyro_vi import cavi
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(100, 3, generator=g, dtype=torch.float64)
    >>> w = torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64)
    >>> y = X @ w + 0.1 * torch.randn(100, generator=g, dtype=torch.float64)
    >>> fit = cavi(BayesianLinearRegression(), (X, y), max_iter=2000)
    >>> (fit.params.weights.mean().round(decimals=1) + 0.0).tolist()
    [2.0, 0.0, -1.0]
    """

    name = "linreg"

    def __init__(self, *, ard: bool = True, weight_precision: float | None = None,
                 noise_precision: float | None = None,
                 weight_precision_concentration: float = 1e-6, weight_precision_rate: float = 1e-6,
                 noise_precision_concentration: float = 1e-6, noise_precision_rate: float = 1e-6,
                 dtype: Any = torch.float64, device: Any = None) -> None:
        super().__init__(dtype=dtype, device=device)
        self.ard = bool(check_bool("ard", ard))
        self.weight_precision = (None if weight_precision is None
                                 else check_positive("weight_precision", weight_precision))
        self.noise_precision = (None if noise_precision is None
                                else check_positive("noise_precision", noise_precision))
        self.weight_precision_concentration = check_positive(
            "weight_precision_concentration", weight_precision_concentration)
        self.weight_precision_rate = check_positive("weight_precision_rate", weight_precision_rate)
        self.noise_precision_concentration = check_positive(
            "noise_precision_concentration", noise_precision_concentration)
        self.noise_precision_rate = check_positive("noise_precision_rate", noise_precision_rate)
        #: Number of inputs D, resolved from the data by :meth:`prepare` (the prior's size).
        self.n_features: int | None = None

    def _resolved(self, d: int) -> BayesianLinearRegression:
        """Return this model for ``d`` inputs (a copy when ``n_features`` differs)."""
        if self.n_features == d:
            return self
        new = copy.copy(self)
        new.n_features = d
        return new

    def prior_params(self) -> LinRegParams:
        r"""The prior as factors (fixed precisions as tensors); needs ``n_features``.

        :math:`\alpha \sim \mathrm{Gam}(a_0, b_0)` (batch ``(D,)`` with ARD),
        :math:`\beta \sim \mathrm{Gam}(c_0, d_0)`, and for :math:`w` its conditional prior
        :math:`N(0, \mathrm{diag}(E_p[\alpha])^{-1})` at the prior mean of :math:`\alpha`
        (:meth:`global_elbo` uses the exact conditional).
        """
        if self.n_features is None:
            raise RuntimeError("the number of inputs is not resolved: call model.prepare((X, y))")
        d = self.n_features
        alpha: Gamma | Tensor
        if self.weight_precision is None:
            shape = (d,) if self.ard else ()
            alpha = Gamma(self._t(self.weight_precision_concentration).expand(shape),
                          self._t(self.weight_precision_rate).expand(shape))
        else:
            alpha = self._t(self.weight_precision)
        beta: Gamma | Tensor = (self._t(self.noise_precision) if self.noise_precision is not None
                                else Gamma(self._t(self.noise_precision_concentration),
                                           self._t(self.noise_precision_rate)))
        tril = torch.diag_embed(_mean(alpha).expand(d).sqrt())
        return LinRegParams(MultivariateNormal(torch.zeros_like(tril[0]), tril), alpha, beta)

    # -------------------------------------------------------------------- CAVI methods
    def prepare(self, data: Any) -> tuple[BayesianLinearRegression, tuple[Tensor, Tensor]]:
        """Validate ``(X, y)``: ``X`` finite ``(N, D)``, ``y`` finite ``(N,)``; resolve D."""
        if not isinstance(data, tuple | list) or len(data) != 2:
            raise TypeError("data must be a tuple (X, y)")
        x = as_matrix(data[0], "X", dtype=self.dtype, device=self.device)
        y = as_vector(data[1], "y", dtype=self.dtype, device=self.device)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"X and y differ in length: X has {x.shape[0]} rows, y has "
                             f"{y.shape[0]} entries")
        check_spread("X", x, centre=False)
        check_spread("y", y, centre=False)
        model = self._resolved(x.shape[1])
        model._check_conditioning(x)
        return model, (x, y)

    def _check_conditioning(self, x: Tensor) -> None:
        r"""ValueError naming ``X`` when the first global step's precision is numerically singular.

        :math:`\mathrm{diag}(E_p[\alpha]) + E_p[\beta] X^TX` (Bishop eq. 10.99 at the prior),
        Jacobi-scaled, must have a Cholesky factor in this dtype. Raw columns with a large
        common offset and no intercept make :math:`X^TX` ill-conditioned by the offset squared.
        """
        prior = self.prior_params()
        alpha, beta = _mean(prior.weight_precision), _mean(prior.noise_precision)
        prec = torch.diag_embed(alpha.expand(x.shape[1])) + beta * (x.T @ x)
        scale = torch.diagonal(prec).rsqrt()
        scaled = prec * scale[:, None] * scale[None, :]
        eig = torch.linalg.eigvalsh(scaled)
        if eig[0] <= 100 * x.shape[1] * torch.finfo(x.dtype).eps * eig[-1]:
            raise ValueError(
                f"X is numerically collinear in {x.dtype}: the posterior precision "
                f"diag(E[alpha]) + E[beta] X^T X has condition number "
                f"{float(eig[-1] / eig[0].clamp_min(torch.finfo(x.dtype).tiny)):.3g} "
                "(columns with a large common offset, e.g. raw years or epoch seconds); "
                "centre the columns of X (and y), with a column of ones for the intercept")

    @staticmethod
    def _stats(data: tuple[Tensor, Tensor], ref: Tensor | None = None) -> Stats:
        r""":math:`(N, X^TX, X^Tr, r^Tr)` with residuals :math:`r = y - X w_{ref}` (Bishop's :math:`\Phi^T\Phi`).

        Centred on a reference weight vector (the current :math:`E[w]`; zero before the first
        sweep), so the global step's :math:`E\lVert y - Xw\rVert^2` is a small correction to
        :math:`r^Tr` instead of :math:`y^Ty - 2m^TX^Ty + \ldots`, which cancels to noise when
        the fit is good relative to :math:`|y|` (raw units, badly scaled columns).
        """
        x, y = data
        r = y if ref is None else y - x @ ref
        n = torch.tensor(float(x.shape[0]), dtype=x.dtype, device=x.device)
        return (n, x.T @ x, x.T @ r, r @ r)

    def init_stats(self, data: tuple[Tensor, Tensor], *, generator: torch.Generator) -> Stats:
        """Return the data's sufficient statistics at the reference ``w = 0``."""
        return self._stats(data)

    def local_step(self, data: tuple[Tensor, Tensor], params: LinRegParams) -> Local:
        r"""Statistics (centred on :math:`E[w]`) and :math:`E_q[\log p(y|X,w,\beta)]`.

        .. math::
            \tfrac{N}{2}(E[\log\beta] - \log 2\pi) - \tfrac{E[\beta]}{2}
            \textstyle\sum_n \big((y_n - m^T x_n)^2 + x_n^T \Sigma_w x_n\big)
        """
        x, y = data
        q_w = params.weights
        r = y - x @ q_w.loc
        sq = r.square().sum() + q_w.quadratic_form(x).sum()
        beta = params.noise_precision
        elbo = 0.5 * x.shape[0] * (_mean_log(beta) - _LOG_2PI) - 0.5 * _mean(beta) * sq
        n = torch.tensor(float(x.shape[0]), dtype=x.dtype, device=x.device)
        return Local((n, x.T @ x, x.T @ r, r @ r), elbo)

    def global_step(self, stats: Stats, params: LinRegParams | None) -> LinRegParams:
        r"""One sweep: :math:`q(w)` given the old :math:`E[\alpha], E[\beta]`; then the Gammas.

        Bishop (2006), eqs. 10.99–10.100, 10.93–10.95 (ARD: per input, eq. 7.87 analogue):

        .. math::
            \Sigma_w^{-1} = \mathrm{diag}(E[\alpha]) + E[\beta] X^TX,\quad
            m = E[\beta]\Sigma_w X^Ty,\\
            a_i = a_0 + \tfrac12,\ b_i = b_0 + \tfrac12 E[w_i^2],\quad
            c = c_0 + \tfrac N2,\ d = d_0 + \tfrac12 E\lVert y - Xw \rVert^2 .

        The statistics are centred on the reference :math:`w_{ref}` = the previous
        :math:`E[w]` (zero with ``params=None``; see :meth:`_stats`): with
        :math:`r = y - Xw_{ref}`, :math:`m = w_{ref} + \delta`,
        :math:`\delta = \Sigma_w(E[\beta]X^Tr - \mathrm{diag}(E[\alpha])w_{ref})` and
        :math:`E\lVert y - Xw\rVert^2 = \lVert r\rVert^2 - 2\delta^TX^Tr + \delta^TX^TX\delta
        + \mathrm{tr}(X^TX\Sigma_w)`. With ``params=None`` the precisions start at their
        prior means (or fixed values).
        """
        n, xtx, xtr, rtr = stats
        d = xtx.shape[-1]
        if params is None:
            prior = self._resolved(d).prior_params()
            alpha, beta = _mean(prior.weight_precision), _mean(prior.noise_precision)
            ref = torch.zeros_like(xtr)
        else:
            alpha, beta = _mean(params.weight_precision), _mean(params.noise_precision)
            ref = params.weights.loc
        a_diag = alpha.expand(d)
        prec = torch.diag_embed(a_diag) + beta * xtx
        tril = MultivariateNormal.from_precision(
            torch.zeros_like(xtr), prec,
            where="linear regression global step (Bishop eq. 10.99)").precision_tril
        delta = torch.cholesky_solve((beta * xtr - a_diag * ref).unsqueeze(-1), tril).squeeze(-1)
        q_w = MultivariateNormal(ref + delta, tril)
        second = q_w.second_moment()
        if self.weight_precision is None:
            e_w2 = torch.diagonal(second) if self.ard else torch.diagonal(second).sum()
            q_alpha: Gamma | Tensor = Gamma(
                self.weight_precision_concentration
                + (0.5 if self.ard else 0.5 * d) * torch.ones_like(e_w2),
                self.weight_precision_rate + 0.5 * e_w2)
        else:
            q_alpha = self._t(self.weight_precision)
        if self.noise_precision is None:
            resid = (rtr - 2.0 * delta @ xtr + delta @ xtx @ delta
                     + (xtx * q_w.covariance()).sum()).clamp_min(0.0)
            q_beta: Gamma | Tensor = Gamma(self.noise_precision_concentration + 0.5 * n,
                                           self.noise_precision_rate + 0.5 * resid)
        else:
            q_beta = self._t(self.noise_precision)
        return LinRegParams(q_w, q_alpha, q_beta)

    def global_elbo(self, params: LinRegParams) -> Tensor:
        r"""Return the ELBO terms of the global factors.

        :math:`E_q[\log p(w|\alpha)] + H[q(w)] - \mathrm{KL}(q(\alpha)\|p(\alpha))
        - \mathrm{KL}(q(\beta)\|p(\beta))` (not the contract's default: the prior of
        :math:`w` depends on :math:`\alpha`), where

        .. math:: E_q[\log p(w|\alpha)] = \textstyle\sum_i \tfrac12(E[\log\alpha_i]
            - \log 2\pi) - \tfrac12 E[\alpha_i] E[w_i^2]
        """
        q_w, alpha, beta = params.weights, params.weight_precision, params.noise_precision
        d = q_w.dim
        e_w2 = torch.diagonal(q_w.second_moment())
        e_log_a = _mean_log(alpha).expand(d)
        out = (0.5 * (e_log_a - _LOG_2PI) - 0.5 * _mean(alpha) * e_w2).sum() + q_w.entropy()
        prior = self._resolved(d).prior_params()
        if isinstance(alpha, Gamma) and isinstance(prior.weight_precision, Gamma):
            out = out - alpha.kl(prior.weight_precision).sum()
        if isinstance(beta, Gamma) and isinstance(prior.noise_precision, Gamma):
            out = out - beta.kl(prior.noise_precision)
        return out

    # ------------------------------------------------------------------------ prediction
    def predict(self, params: LinRegParams, x: Any) -> LinRegPrediction:
        r"""Predictive mean and variance at new inputs ``x`` of shape ``(M, D)``.

        .. math:: E[y|x] = m^T x, \qquad \mathrm{Var}[y|x] = 1/E[\beta] + x^T\Sigma_w x

        (Bishop 2006, eqs. 10.105 and 3.59 with :math:`\beta` replaced by its posterior mean;
        the first term is the noise, the second the uncertainty in :math:`w`).
        """
        d = params.weights.dim
        x = as_matrix(x, "x", dtype=self.dtype, device=self.device)
        if x.shape[1] != d:
            raise ValueError(f"x must have D={d} columns, got {x.shape[1]}")
        q_w = params.weights
        return LinRegPrediction(x @ q_w.loc,
                                1.0 / _mean(params.noise_precision) + q_w.quadratic_form(x))

    # ----------------------------------------------------------------------------- Pyro
    def model(self, x: Tensor, y: Tensor) -> None:
        """Run the generative model as plain Pyro code; ``x`` is ``(N, D)``, ``y`` is ``(N,)``."""
        d = x.shape[1]
        if self.weight_precision is not None:
            alpha = self._t(self.weight_precision)
        else:
            prior = dist.Gamma(self._t(self.weight_precision_concentration),
                               self._t(self.weight_precision_rate))
            alpha = pyro.sample("weight_precision", prior.expand([d]).to_event(1) if self.ard
                                else prior)
        scale = alpha.rsqrt() if self.ard else alpha.rsqrt().unsqueeze(-1)
        w = pyro.sample("weights", dist.Normal(torch.zeros(d, dtype=x.dtype, device=x.device),
                                               scale).to_event(1))
        beta = (self._t(self.noise_precision) if self.noise_precision is not None else
                pyro.sample("noise_precision", dist.Gamma(self._t(self.noise_precision_concentration),
                                                          self._t(self.noise_precision_rate))))
        with pyro.plate("data", x.shape[0], dim=-1):
            # (x * w).sum(-1) broadcasts over particle dimensions of w, unlike x @ w.
            pyro.sample("obs", dist.Normal((x * w).sum(-1), beta.rsqrt()), obs=y)

    def sample_guide(self, params: LinRegParams, *data: Any) -> dict[str, Tensor]:
        """Sample the precisions (unless fixed) and ``weights`` from the mean-field factors."""
        out = {}
        alpha, beta = params.weight_precision, params.noise_precision
        if isinstance(alpha, Gamma):
            g = dist.Gamma(alpha.concentration, alpha.rate)
            out["weight_precision"] = pyro.sample("weight_precision",
                                                  g.to_event(1) if self.ard else g)
        q_w = params.weights
        out["weights"] = pyro.sample("weights", dist.MultivariateNormal(
            q_w.loc, precision_matrix=q_w.precision()))
        if isinstance(beta, Gamma):
            out["noise_precision"] = pyro.sample("noise_precision",
                                                 dist.Gamma(beta.concentration, beta.rate))
        return out

    def guide_params(self, x: Tensor, *data: Any) -> LinRegParams:
        """Build params from ``pyro.param`` sites ``linreg.*`` (initialised at the prior)."""
        d, n, pos = x.shape[1], self.name, constraints.positive
        zeros = (torch.zeros(s, dtype=self.dtype, device=self.device)
                 for s in ((), (d, d), (d,), ()))
        init = self.global_step(tuple(zeros), None)
        loc = pyro.param(f"{n}.w_loc", lambda: init.weights.loc)
        tril = pyro.param(f"{n}.w_precision_tril", lambda: init.weights.precision_tril,
                          constraint=constraints.lower_cholesky)
        alpha, beta = init.weight_precision, init.noise_precision
        if isinstance(alpha, Gamma):
            a_init = alpha
            alpha = Gamma(pyro.param(f"{n}.alpha_concentration", lambda: a_init.concentration,
                                     constraint=pos),
                          pyro.param(f"{n}.alpha_rate", lambda: a_init.rate, constraint=pos))
        if isinstance(beta, Gamma):
            b_init = beta
            beta = Gamma(pyro.param(f"{n}.beta_concentration", lambda: b_init.concentration,
                                    constraint=pos),
                         pyro.param(f"{n}.beta_rate", lambda: b_init.rate, constraint=pos))
        return LinRegParams(MultivariateNormal(loc, tril), alpha, beta)
