# ruff: noqa: E501  (the snippets are exact lines of code, kept whole so they can be searched for)
"""The mutant list: one realistic single-point change per entry, with the tests that judge it.

Each :class:`Mutant` names a file, an exact snippet that must occur exactly once in it, its
replacement, and a modest test selection (the modules that mirror the file plus the contract
test where it applies). ``note`` says what the mutant breaks; for a known equivalent mutant
it says so, and TESTING.md lists it. Seeded from the survivors of issue 18 and from the
formulas and rules users stake results on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    """One single-point change of one file."""

    id: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    note: str = ""


FACTORS = ("tests/factors",)
GMM = ("tests/models/gmm/test_model.py",)
LINREG = ("tests/models/test_linreg.py", "tests/models/test_contract.py")
CONTRACT = ("tests/models/test_contract.py",)
ENGINE = ("tests/cavi/test_engine.py",)
STOCH = ("tests/cavi/test_stochastic.py",)
PSIS = ("tests/diagnostics/test_psis.py",)
REPORT = ("tests/diagnostics/test_report.py",)
IDATA = ("tests/diagnostics/test_inference_data.py",)
STOP = ("tests/svi/test_stopping.py",)
RUNNER = ("tests/svi/test_runner.py",)


def _m(id: str, file: str, original: str, replacement: str, tests: tuple[str, ...],
       note: str = "") -> Mutant:
    return Mutant(id, file, original, replacement, tests, note)


_G = "pyro_vi/factors/gamma.py"
_N = "pyro_vi/factors/normal.py"
_D = "pyro_vi/factors/dirichlet.py"
_B = "pyro_vi/factors/beta.py"
_BASE = "pyro_vi/factors/base.py"
_W = "pyro_vi/factors/wishart.py"
_GMM = "models/gmm/model.py"
_LR = "models/linreg.py"
_ENG = "pyro_vi/cavi/engine.py"
_STO = "pyro_vi/cavi/stochastic.py"
_PS = "pyro_vi/diagnostics/psis.py"
_RE = "pyro_vi/diagnostics/report.py"
_ID = "pyro_vi/diagnostics/inference_data.py"
_SP = "pyro_vi/svi/stopping.py"
_CK = "pyro_vi/svi/checkpoint.py"
_LP = "pyro_vi/svi/loop.py"

MUTANTS: tuple[Mutant, ...] = (
    # ------------------------------------------------------------------ factors
    _m("gamma-natural-shape", _G, "return (self.concentration - 1.0, -self.rate)",
       "return (self.concentration, -self.rate)", FACTORS, "Gamma natural parameter a - 1"),
    _m("gamma-from-natural", _G, "return cls(eta[0] + 1.0, -eta[1])",
       "return cls(eta[0], -eta[1])", FACTORS, "Gamma from natural parameters"),
    _m("gamma-variance", _G, "return self.concentration / self.rate**2",
       "return self.concentration / self.rate", FACTORS, "Gamma variance a/b^2"),
    _m("gamma-expected-log", _G, "return torch.digamma(self.concentration) - torch.log(self.rate)",
       "return torch.log(self.concentration) - torch.log(self.rate)", FACTORS,
       "E[log x] = psi(a) - log b"),
    _m("gamma-log-normalizer", _G,
       "return torch.lgamma(self.concentration) - self.concentration * torch.log(self.rate)",
       "return torch.lgamma(self.concentration) + self.concentration * torch.log(self.rate)",
       FACTORS, "Gamma log-normalizer sign"),
    _m("ng-natural-rate", _G, "return (beta * m, -0.5 * beta, -b - 0.5 * beta * m**2, a - 0.5)",
       "return (beta * m, -0.5 * beta, -b + 0.5 * beta * m**2, a - 0.5)", FACTORS,
       "NormalGamma natural parameter of lambda"),
    _m("ng-expected-second", _G, "return (m * e_lam, 1.0 / beta + m**2 * e_lam, e_lam,",
       "return (m * e_lam, m**2 * e_lam, e_lam,", FACTORS, "E[lambda mu^2] = 1/beta + m^2 a/b"),
    _m("ng-mahalanobis", _G,
       "return 1.0 / self.precision_scale + self.concentration / self.rate * (x - self.loc) ** 2",
       "return self.concentration / self.rate * (x - self.loc) ** 2", FACTORS,
       "NormalGamma expected Mahalanobis drops 1/beta"),
    _m("ng-marginal-loc-variance", _G,
       "var = self.rate / (self.precision_scale * (self.concentration - 1.0))",
       "var = self.rate / (self.precision_scale * self.concentration)", FACTORS,
       "Student-t variance b/(beta (a - 1))"),
    _m("ng-marginal-loc-inf", _G,
       "return torch.where(self.concentration > 1.0, var, torch.full_like(var, math.inf))",
       "return torch.where(self.concentration > 0.5, var, torch.full_like(var, math.inf))",
       FACTORS, "the t variance is infinite for a <= 1"),
    _m("normal-natural", _N, "return (self.precision * self.loc, -0.5 * self.precision)",
       "return (self.precision * self.loc, -self.precision)", FACTORS,
       "Normal natural parameter -lambda/2"),
    _m("normal-second-moment", _N, "return self.loc**2 + 1.0 / self.precision",
       "return self.loc**2", FACTORS, "E[x^2] = m^2 + 1/lambda"),
    _m("normal-log-normalizer", _N,
       "return 0.5 * self.precision * self.loc**2 - 0.5 * torch.log(self.precision)",
       "return 0.5 * self.precision * self.loc**2 + 0.5 * torch.log(self.precision)", FACTORS,
       "Normal log-normalizer sign of log lambda"),
    _m("mvn-quadratic-form", _N, "return z.squeeze(-1).square().sum(-1)",
       "return z.squeeze(-1).abs().sum(-1)", FACTORS, "x^T Sigma x"),
    _m("mvn-from-natural", _N, "tril = cholesky(-2.0 * eta[1], where=\"MultivariateNormal.from_natural\")",
       "tril = cholesky(-eta[1], where=\"MultivariateNormal.from_natural\")", FACTORS,
       "MVN precision from natural parameters"),
    _m("dirichlet-expected-log", _D,
       "return torch.digamma(a) - torch.digamma(a.sum(-1, keepdim=True))",
       "return torch.digamma(a) - torch.log(a.sum(-1, keepdim=True))", FACTORS,
       "E[log pi_k] = psi(a_k) - psi(sum a)"),
    _m("dirichlet-log-normalizer", _D, "return torch.lgamma(a).sum(-1) - torch.lgamma(a.sum(-1))",
       "return torch.lgamma(a).sum(-1)", FACTORS, "log B(alpha)"),
    _m("dirichlet-variance", _D, "return a * (a0 - a) / (a0**2 * (a0 + 1.0))",
       "return a * (a0 - a) / (a0**2 * a0)", FACTORS, "Dirichlet variance"),
    _m("categorical-variance", _D, "return r * (1.0 - r)", "return r", FACTORS,
       "one-hot variance r(1 - r)"),
    _m("beta-expected-log", _B, "psi_ab = torch.digamma(a + b)", "psi_ab = torch.digamma(a)",
       FACTORS, "E[log x] = psi(a) - psi(a + b)"),
    _m("beta-variance", _B, "return a * b / ((a + b) ** 2 * (a + b + 1.0))",
       "return a * b / ((a + b) ** 2 * (a + b))", FACTORS, "Beta variance"),
    _m("base-entropy", _BASE,
       "return self.log_normalizer() - inner - self.expected_log_base_measure()",
       "return self.log_normalizer() - inner + self.expected_log_base_measure()", FACTORS,
       "H = A - <eta, E[T]> - E[log h]"),
    _m("base-blend", _BASE, "eta = [(1.0 - rho) * a + rho * b for a, b",
       "eta = [(1.0 - rho) * b + rho * a for a, b", FACTORS, "blend weights swapped"),
    _m("wishart-expected-logdet", _W, "psi = torch.digamma(0.5 * (df.unsqueeze(-1) + 1.0 - i)).sum(-1)",
       "psi = torch.digamma(0.5 * (df.unsqueeze(-1) - i)).sum(-1)", FACTORS,
       "E[log|Lambda|] digamma arguments"),
    _m("wishart-normalizer", _W, "return (0.5 * df * _logdet_tril(scale_tril) + 0.5 * df * d * math.log(2.0)",
       "return (0.5 * df * _logdet_tril(scale_tril) + 0.5 * d * math.log(2.0)", FACTORS,
       "Wishart log-normalizer nu D/2 log 2"),
    _m("wishart-from-natural", _W, "return cls(tril, 2.0 * eta[1] + d + 1.0)",
       "return cls(tril, 2.0 * eta[1] + d)", FACTORS, "nu = 2 eta + D + 1"),
    _m("wishart-variance", _W,
       "return self.df[..., None, None] * (w**2 + diag.unsqueeze(-1) * diag.unsqueeze(-2))",
       "return self.df[..., None, None] * (w**2 + diag.unsqueeze(-1) * diag.unsqueeze(-1))",
       FACTORS, "Var[Lambda_ij] = nu (W_ij^2 + W_ii W_jj)"),
    # ------------------------------------------------------------------ models: GMM
    _m("gmm-default-alpha0", _GMM, "alpha0 = s[\"weight_concentration\"] or 1.0 / self.n_components",
       "alpha0 = s[\"weight_concentration\"] or 1.0", GMM, "sklearn's default alpha0 = 1/K"),
    _m("gmm-default-nu0", _GMM, "nu0 = float(s[\"degrees_of_freedom\"] or d)",
       "nu0 = float(s[\"degrees_of_freedom\"] or d + 1)", GMM, "sklearn's default nu0 = D"),
    _m("gmm-default-cov-biased", _GMM, "cov = (dev.T @ dev / (x.shape[0] - 1)).reshape(x.shape[1], x.shape[1])",
       "cov = (dev.T @ dev / x.shape[0]).reshape(x.shape[1], x.shape[1])", GMM,
       "sklearn's default covariance prior is the unbiased covariance"),
    _m("gmm-default-diag-var", _GMM, "var = (dev.square().sum(0) / (x.shape[0] - 1) if x.shape[0] > 1",
       "var = (dev.square().sum(0) / x.shape[0] if x.shape[0] > 1", GMM,
       "diag prior: unbiased variances"),
    _m("gmm-beta-update", _GMM, "beta = p.mean_precision + nk", "beta = p.mean_precision + nk + 1.0",
       GMM, "Bishop eq. 10.60"),
    _m("gmm-w-inv", _GMM, "w_inv = p.covariance_prior + sxx - beta[:, None, None] * (mc.unsqueeze(-1) * mc.unsqueeze(-2))",
       "w_inv = p.covariance_prior + sxx", GMM, "Bishop eq. 10.62"),
    _m("gmm-diag-conc", _GMM, "conc = (0.5 * p.degrees_of_freedom + 0.5 * nk)",
       "conc = (0.5 * p.degrees_of_freedom + nk)", GMM, "diag Gamma shape"),
    _m("gmm-diag-maha", _GMM, "+ (e_lam * mc**2 + 1.0 / comp.precision_scale).sum(-1))",
       "+ (e_lam * mc**2).sum(-1))", GMM, "diag E[Mahalanobis] drops D/beta"),
    _m("gmm-log-rho-logdet", _GMM, "return params.weights.expected_log() + 0.5 * logdet - 0.5 * d * _LOG_2PI - 0.5 * maha",
       "return params.weights.expected_log() + logdet - 0.5 * d * _LOG_2PI - 0.5 * maha", GMM,
       "Bishop eq. 10.46"),
    # ------------------------------------------------------------------ models: linreg
    _m("linreg-a0-plus-1", _LR, "+ (0.5 if self.ard else 0.5 * d) * torch.ones_like(e_w2),",
       "+ (1.0 if self.ard else 0.5 * d) * torch.ones_like(e_w2),", LINREG,
       "issue 18 survivor: a_i = a0 + 1/2"),
    _m("linreg-c0-n-minus-1", _LR, "Gamma(self.noise_precision_concentration + 0.5 * n,",
       "Gamma(self.noise_precision_concentration + 0.5 * (n - 1),", LINREG,
       "issue 18 survivor: c = c0 + N/2"),
    _m("linreg-ew2-m2-update", _LR,
       "e_w2 = torch.diagonal(second) if self.ard else torch.diagonal(second).sum()",
       "e_w2 = q_w.loc.square() if self.ard else q_w.loc.square().sum()", LINREG,
       "issue 18 survivor: E[w^2] = m^2 + Sigma_ii in the alpha update"),
    _m("linreg-ew2-m2-resid", _LR, "+ (xtx * q_w.covariance()).sum()).clamp_min(0.0)",
       ").clamp_min(0.0)",
       LINREG, "issue 18 survivor: E||y - Xw||^2 uses E[w w^T]"),
    _m("linreg-swap-a0-b0", _LR, "alpha = Gamma(self._t(self.weight_precision_concentration).expand(shape),\n                          self._t(self.weight_precision_rate).expand(shape))",
       "alpha = Gamma(self._t(self.weight_precision_rate).expand(shape),\n                          self._t(self.weight_precision_concentration).expand(shape))",
       LINREG, "issue 18: prior shape and rate swapped"),
    _m("linreg-b-update", _LR, "self.weight_precision_rate + 0.5 * e_w2)",
       "self.weight_precision_rate + e_w2)", LINREG, "b_i = b0 + E[w_i^2]/2"),
    _m("linreg-predict-var", _LR, "1.0 / _mean(params.noise_precision) + q_w.quadratic_form(x))",
       "q_w.quadratic_form(x))", LINREG, "predictive variance has the noise term"),
    # ------------------------------------------------------------------ models: others
    _m("normal-conc", "models/normal.py", "conc = self.precision_concentration + 0.5 * (n + 1.0)",
       "conc = self.precision_concentration + 0.5 * n", ("tests/models/test_normal.py", *CONTRACT),
       "Bishop eq. 10.29: a_N = a0 + (N + 1)/2"),
    _m("normal-expected-sq", "models/normal.py", "+ lam0 * ((d - prior_off) ** 2 + v))", "+ lam0 * (d - prior_off) ** 2)",
       ("tests/models/test_normal.py", *CONTRACT), "Bishop eq. 10.30's prior term"),
    _m("normal-precision", "models/normal.py", "q_mu = Normal(c + d, precision=(lam0 + n) * e_tau)",
       "q_mu = Normal(c + d, precision=(lam0 + n))",
       ("tests/models/test_normal.py", *CONTRACT), "Bishop eq. 10.27: lambda_N = (lam0 + N) E[tau]"),
    _m("bb-failures", "models/beta_bernoulli.py", "return (k.sum(), (n - k).sum())",
       "return (k.sum(), n.sum())", ("tests/models/test_beta_bernoulli.py", *CONTRACT),
       "failures are n - k"),
    _m("hier-rate", "models/hierarchical.py", "rate = b0 + 0.5 * (s2 - 2.0 * mc * s1 + j * (mc * mc + q_mu.variance()))",
       "rate = b0 + 0.5 * (s2 - 2.0 * mc * s1 + j * mc * mc)",
       ("tests/models/test_hierarchical.py", *CONTRACT), "E[mu^2] = m^2 + 1/lambda"),
    _m("hier-conc", "models/hierarchical.py", "Gamma(a0 + 0.5 * j * torch.ones_like(rate), rate)",
       "Gamma(a0 + 0.5 * (j - 1) * torch.ones_like(rate), rate)",
       ("tests/models/test_hierarchical.py", *CONTRACT), "a = a0 + J/2"),
    _m("gp-elbo-lgamma", "models/gamma_poisson.py", "return -torch.lgamma(x + 1).sum()", "return torch.zeros((), dtype=x.dtype)",
       ("tests/models/test_gamma_poisson.py", *CONTRACT), "the ELBO keeps log x! (exact evidence)"),
    _m("dc-elbo", "models/dirichlet_categorical.py", "ell = log_coef.sum() + (data.sum(0) * params.probs.expected_log()).sum()",
       "ell = (data.sum(0) * params.probs.expected_log()).sum()",
       ("tests/models/test_dirichlet_categorical.py", *CONTRACT), "the multinomial coefficient"),
    # ------------------------------------------------------------------ CAVI engine
    _m("engine-finite-stats", _ENG, "        if not torch.isfinite(s).all():\n",
       "        if False:\n", ENGINE, "issue 18: the finite check must look at the statistics"),
    _m("engine-finite-elbo", _ENG, "    if not torch.isfinite(local.elbo):\n",
       "    if False:\n", ENGINE, "NaN ELBO stops naming the iteration"),
    _m("engine-monotone-sign", _ENG, "if change < -allowance * scale:",
       "if change < -allowance * scale - 1.0:", ENGINE, "the decrease check's allowance"),
    _m("engine-tol-relative", _ENG, "if abs(change) < tol * scale:", "if abs(change) < tol:",
       ENGINE, "tol is relative to max(|ELBO|, 1); equivalent on fits with |ELBO| <= 1"),
    _m("engine-best-run", _ENG, "best = max(runs, key=lambda r: r.elbo)",
       "best = runs[-1]", ENGINE, "n_init keeps the best"),
    _m("engine-seed-offset", _ENG, "else int(seed) + i)", "else int(seed))", ENGINE,
       "restart i uses seed + i"),
    _m("engine-allowance-eps", _ENG, "allowance = max(monotone_rtol, 1e3 * max(torch.finfo(local.elbo.dtype).eps, model.compute_eps()))",
       "allowance = monotone_rtol", ENGINE, "float32 round-off allowance"),
    _m("stoch-step-size", _STO, "return float((t + tau) ** (-kappa))",
       "return float((t + tau) ** (-kappa) / 2)", STOCH, "Robbins-Monro rho_t = (t + tau)^-kappa"),
    _m("stoch-scale", _STO, "scale = n / _rows(batch)", "scale = n / batch_size", STOCH,
       "the last short minibatch is scaled by N/|B|"),
    _m("stoch-init-scale", _STO, "params = check_params(model.global_step(tuple(s * (n / batch_size) for s in stats), None),",
       "params = check_params(model.global_step(tuple(s for s in stats), None),", STOCH,
       "the first minibatch's statistics scaled to N"),
    _m("stoch-finite", _STO, "if not torch.isfinite(local_elbo) or not all(torch.isfinite(s).all() for s in stats):",
       "if not torch.isfinite(local_elbo):", STOCH, "SVI-CAVI's finite check on statistics"),
    _m("stoch-reshuffle", _STO, "if pos == 0 and step > 1:\n                order = torch.randperm(n, generator=gen)",
       "if False:\n                order = torch.randperm(n, generator=gen)", STOCH,
       "reshuffle each epoch"),
    _m("stoch-tol-epoch", _STO, "if prev_epoch is not None and abs(mean - prev_epoch) <= tol * max(abs(mean), 1):",
       "if prev_epoch is not None and abs(mean - prev_epoch) <= tol * max(abs(mean), 1) * 10:",
       STOCH, "the epoch-mean tol"),
    # ------------------------------------------------------------------ trust layer: psis
    _m("psis-khat-good", _PS, "if khat < KHAT_GOOD:", "if khat <= KHAT_GOOD:", PSIS,
       "equivalent at exact equality unless a test sits at k-hat = 0.5"),
    _m("psis-khat-bad", _PS, "if khat < KHAT_BAD:", "if khat < KHAT_BAD + 0.05:", PSIS,
       "k-hat 0.7 threshold"),
    _m("psis-sd-uniform", _PS, "means[name], sds[name] = _moments(v, weights)",
       "means[name], sds[name] = _moments(v, weights)[0], _moments(v, uniform)[1]", PSIS,
       "issue 18 survivor: corrected sds use the smoothed weights"),
    _m("psis-vi-means", _PS, "vi_means[name], vi_sds[name] = _moments(v, uniform)",
       "vi_means[name], vi_sds[name] = _moments(v, weights)", PSIS,
       "issue 18 survivor: vi_means/vi_sds are the plain guide moments"),
    _m("psis-constant-band", _PS, "_CONSTANT = 1e-4", "_CONSTANT = 1.0", PSIS,
       "issue 18 survivor: only near-identical ratios take the constant shortcut"),
    _m("psis-constant-mixed-inf", _PS, "if finite.size == s and np.ptp(finite) <= _CONSTANT:",
       "if np.ptp(finite) <= _CONSTANT:", PSIS,
       "issue 18 survivor: -inf mixed with constant ratios is not 'good'"),
    _m("psis-ess", _PS, "float(1.0 / np.sum(weights**2))", "float(1.0 / np.sum(weights))", PSIS,
       "ESS = 1 / sum w^2"),
    _m("psis-var", _PS, "var = (w * (values - mean) ** 2).sum(0)",
       "var = (w * (values - mean) ** 2).sum(0) * len(weights) / max(len(weights) - 1, 1)", PSIS,
       "weighted variance"),
    # ------------------------------------------------------------------ trust layer: report
    _m("report-flat-3se", _RE, "trend, noise = slope * (w - 1), 3 * se * (w - 1)",
       "trend, noise = slope * (w - 1), 2 * se * (w - 1)", REPORT,
       "issue 18 survivor: the 3-SE flatness band"),
    _m("report-flat-rtol", _RE, "flat = abs(trend) <= max(noise, rtol * max(1.0, abs(float(y.mean()))))",
       "flat = abs(trend) <= noise", REPORT, "the round-off floor of the flatness test"),
    _m("report-se-dof", _RE, "/ max(w - 2, 1) /", "/ max(w, 1) /", REPORT,
       "residual dof w - 2; changes se by sqrt(w/(w-2)), small for long windows"),
    _m("report-bad-dnt", _RE, "if psis.verdict == \"bad\" or (converged is False and not_flat):",
       "if (converged is False and not_flat):", REPORT, "bad k-hat gives 'do not trust'"),
    _m("report-unconverged-flat", _RE, "if psis.verdict == \"bad\" or (converged is False and not_flat):",
       "if psis.verdict == \"bad\" or converged is False:", REPORT,
       "unconverged but flat is 'use with care', not 'do not trust'"),
    _m("report-care-ok", _RE, "care = psis.verdict == \"ok\" or not_flat or converged is False",
       "care = not_flat or converged is False", REPORT, "k-hat in [0.5, 0.7) is 'use with care'"),
    _m("report-care-unconverged", _RE, "care = psis.verdict == \"ok\" or not_flat or converged is False",
       "care = psis.verdict == \"ok\" or not_flat", REPORT, "unconverged alone is 'use with care'"),
    _m("report-mean-diff", _RE, "MAX_STD_MEAN_DIFF = 0.5", "MAX_STD_MEAN_DIFF = 1.0", REPORT,
       "issue 18 survivor: the NUTS mean-difference threshold"),
    _m("report-sd-ratio-hi", _RE, "SD_RATIO_RANGE = (2 / 3, 3 / 2)", "SD_RATIO_RANGE = (2 / 3, 2.0)",
       REPORT, "issue 18 survivor: an sd ratio above 3/2"),
    _m("report-sd-ratio-lo", _RE, "SD_RATIO_RANGE = (2 / 3, 3 / 2)", "SD_RATIO_RANGE = (1 / 2, 3 / 2)",
       REPORT, "an sd ratio below 2/3"),
    # ------------------------------------------------------------------ trust layer: idata
    _m("idata-seed-per-chain", _ID, "seed=None if seed is None else seed + c,",
       "seed=seed,", IDATA, "chain c draws with seed + c"),
    _m("idata-converged", _ID, "stats[\"converged\"] = ((\"chain\",), np.array([bool(i.converged) for i in infos]))",
       "stats[\"converged\"] = ((\"chain\",), np.array([True for i in infos]))", IDATA,
       "sample_stats.converged is the fit's flag"),
    _m("idata-final-elbo", _ID, "np.array([i.final_elbo for i in infos], float))",
       "np.array([i.elbo[-1] for i in infos], float))", IDATA,
       "final_elbo is the fit's ELBO, not the last history value (equal for CAVI)"),
    _m("idata-constant-drop-observed", _ID, "if not isinstance(value, Tensor) or name in structure.sites or name in structure.plates:",
       "if not isinstance(value, Tensor) or name in structure.plates:", IDATA,
       "observed values are not constant data"),
    # ------------------------------------------------------------------ SVI runtime
    _m("stop-window-streak-reset", _SP, "self.streak = self.streak + 1 if change < self.tol else 0",
       "self.streak = self.streak + 1 if change < self.tol else self.streak", STOP + RUNNER,
       "issue 18 survivor: the streak resets on a non-flat window"),
    _m("stop-window-floor", _SP, "change = abs(mean - self.previous) / max(abs(self.previous), 1.0)",
       "change = abs(mean - self.previous) / abs(self.previous)", STOP + RUNNER,
       "issue 18 survivor: the 1-nat floor near zero loss"),
    _m("stop-noise-streak-reset", _SP, "self.streak = self.streak + 1 if flat else 0",
       "self.streak = self.streak + 1 if flat else self.streak", STOP + RUNNER,
       "the noise rule's streak reset"),
    _m("stop-noise-floor", _SP, "or change / max(abs(self.previous), 1.0) < self.tol)",
       "or change / abs(self.previous) < self.tol)", STOP + RUNNER,
       "the noise rule's 1-nat floor"),
    _m("stop-noise-var", _SP, "mean, var = self.mean, (self.squares / (w - 1) / w if w > 1 else 0.0)",
       "mean, var = self.mean, (self.squares / (w - 1) if w > 1 else 0.0)", STOP + RUNNER,
       "the window mean's variance is s^2 / w"),
    _m("stop-noise-z", _SP, "flat = (change <= self.z * math.sqrt(var + self.previous_var)",
       "flat = (change <= self.z * math.sqrt(var)", STOP + RUNNER,
       "the difference of two means has both variances"),
    _m("stop-patience", _SP, "return self.streak >= self.patience\n\n\n@dataclass",
       "return self.streak > self.patience\n\n\n@dataclass", STOP + RUNNER, "patience windows in a row"),
    _m("stop-state-restore", _LP, "self.rule = restore_rule(saved[\"rule\"])", "pass",
       (*RUNNER, "tests/svi/test_checkpoint.py"),
       "issue 18 survivor: the rule's state is restored on resume"),
    _m("loop-seconds-resume", _LP,
       "self._t0 = time.perf_counter() - (self.state.seconds[-1] if self.state.seconds else 0.0)",
       "self._t0 = time.perf_counter()", (*RUNNER, "tests/svi/test_checkpoint.py"),
       "issue 18 survivor: seconds continue after a resume"),
    _m("loop-final-window", _LP, "recent = s.losses[-self.window:]", "recent = s.losses[-1:]",
       RUNNER, "the final ELBO is the mean of the last window"),
    _m("io-fsync", "pyro_vi/_io.py", "            os.fsync(f.fileno())\n", "", ("tests/test_io.py", *RUNNER),
       "equivalent for tests: fsync only matters on power loss"),
    _m("ckpt-format-check", _CK, "if not isinstance(state, dict) or state.get(\"format\") != FORMAT:",
       "if not isinstance(state, dict):", (*RUNNER, "tests/svi/test_checkpoint.py"),
       "a checkpoint of another format is refused"),
)
