"""Exact posterior tables (pyro_vi.cavi.summary) against scipy's distributions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as st
import torch

from pyro_vi import GaussianMixture, cavi, load_old_faithful
from pyro_vi.cavi.summary import StudentT, loc_marginal, summary_columns, summary_table
from pyro_vi.factors import (
    Beta,
    Dirichlet,
    Gamma,
    MultivariateNormal,
    Normal,
    NormalGamma,
    NormalWishart,
    Wishart,
)

F64 = torch.float64


def t(*v):
    """A float64 tensor: a scalar from one value, a vector from several."""
    return torch.tensor(v[0] if len(v) == 1 else v, dtype=F64)


def test_normal_gamma_beta_dirichlet_rows_are_scipy_moments_and_quantiles():
    sites = {"a": Normal(t(1.0, -2.0), precision=t(4.0, 0.25)),
             "b": Gamma(t(2.5), t(0.5)),
             "c": Beta(t(3.0), t(7.0)),
             "d": Dirichlet(t(1.0, 2.0, 5.0)),
             "e": MultivariateNormal.from_precision(t(0.0, 1.0), torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64))}
    table = summary_table(sites, prob=0.9)
    assert list(table.columns) == summary_columns(0.9) == [
        "mean", "sd", "eti_5%", "eti_95%", "method", "negligible"]
    assert list(table.index) == ["a[0]", "a[1]", "b", "c", "d[0]", "d[1]", "d[2]", "e[0]", "e[1]"]
    cov = np.linalg.inv([[2.0, 0.5], [0.5, 1.0]])
    laws = [st.norm(1.0, 0.5), st.norm(-2.0, 2.0), st.gamma(2.5, scale=2.0), st.beta(3.0, 7.0),
            st.beta(1.0, 7.0), st.beta(2.0, 6.0), st.beta(5.0, 3.0),
            st.norm(0.0, np.sqrt(cov[0, 0])), st.norm(1.0, np.sqrt(cov[1, 1]))]
    want = np.array([[d.mean(), d.std(), d.ppf(0.05), d.ppf(0.95)] for d in laws])
    np.testing.assert_allclose(table.iloc[:, :4].to_numpy(float), want, rtol=1e-10, atol=1e-12)
    # Dirichlet marginal moments as scipy's Dirichlet states them
    np.testing.assert_allclose(table.loc[["d[0]", "d[1]", "d[2]"], "sd"] ** 2,
                               st.dirichlet([1.0, 2.0, 5.0]).var(), rtol=1e-12)
    assert (table["method"] == "exact").all()
    assert not table["negligible"].any()


def test_wishart_moments_are_scipys_and_its_intervals_hold_their_mass():
    w = np.array([[2.0, 0.6], [0.6, 0.5]])
    nu = 5.0
    q = Wishart(torch.linalg.cholesky(torch.tensor(w, dtype=F64))[None], torch.tensor([nu], dtype=F64))
    table = summary_table({"L": q})
    assert list(table.index) == ["L[0, 0, 0]", "L[0, 0, 1]", "L[0, 1, 0]", "L[0, 1, 1]"]
    law = st.wishart(df=nu, scale=w)
    np.testing.assert_allclose(table["mean"].to_numpy(float), law.mean().ravel(), rtol=1e-12)
    np.testing.assert_allclose(table["sd"].to_numpy(float) ** 2, law.var().ravel(), rtol=1e-12)
    assert table["method"].tolist() == ["exact", "mc_interval", "mc_interval", "exact"]
    # diagonal: W_ii chi2_nu exactly
    np.testing.assert_allclose(table.loc["L[0, 1, 1]", ["eti_3%", "eti_97%"]].to_numpy(float),
                               0.5 * st.chi2(nu).ppf([0.03, 0.97]), rtol=1e-10)
    # off-diagonal: 200k scipy draws (independent of our Bartlett sampler). Each tail's mass has
    # SE 0.0027 from our 4000 draws and 0.0004 from scipy's: 0.015 is more than 5 SE.
    draws = law.rvs(size=200_000, random_state=np.random.default_rng(1))[:, 0, 1]
    lo, hi = table.loc["L[0, 0, 1]", ["eti_3%", "eti_97%"]].to_numpy(float)
    assert abs((draws < lo).mean() - 0.03) < 0.015
    assert abs((draws > hi).mean() - 0.03) < 0.015
    # seeded: the same seed gives the same table, another seed another interval
    assert summary_table({"L": q}).equals(table)
    assert not summary_table({"L": q}, seed=1).equals(table)


def test_loc_marginal_of_a_normal_wishart_is_the_student_t_of_its_draws():
    # mu | Lambda ~ N(m, (beta Lambda)^-1), Lambda ~ W(W, nu): 200k scipy draws vs the closed form
    w = np.array([[1.5, -0.4], [-0.4, 0.8]])
    m, beta, nu = np.array([0.5, -1.0]), 2.0, 6.0
    q = NormalWishart(torch.tensor(m[None]), torch.tensor([beta], dtype=F64),
                      torch.linalg.cholesky(torch.tensor(w))[None], torch.tensor([nu], dtype=F64))
    table = summary_table({"loc": loc_marginal(q)})
    rng = np.random.default_rng(0)
    lam = st.wishart(df=nu, scale=w).rvs(size=200_000, random_state=rng)
    z = rng.standard_normal((200_000, 2, 1))
    mu = m + np.linalg.solve(np.linalg.cholesky(beta * lam).transpose(0, 2, 1), z)[..., 0]
    # sd of a t with 5 dof has a heavy-tailed estimator: 2 % covers > 5 SE at 200k draws.
    np.testing.assert_allclose(table["sd"].to_numpy(float), mu.std(0), rtol=0.02)
    np.testing.assert_allclose(table["mean"].to_numpy(float), m)
    for i in range(2):
        lo, hi = table.iloc[i][["eti_3%", "eti_97%"]].to_numpy(float)
        assert abs((mu[:, i] < lo).mean() - 0.03) < 0.003  # binomial SE 0.0004
        assert abs((mu[:, i] > hi).mean() - 0.03) < 0.003


def test_normal_gamma_loc_marginal_and_its_exact_sd():
    q = NormalGamma(t(0.3), t(4.0), t(3.0), t(2.0))
    s = loc_marginal(q)
    law = st.t(6.0, 0.3, np.sqrt(2.0 / (3.0 * 4.0)))
    row = summary_table({"loc": s}).loc["loc"]
    np.testing.assert_allclose([row["mean"], row["sd"], row["eti_3%"]],
                               [law.mean(), law.std(), law.ppf(0.03)], rtol=1e-10)
    # Var[mu] = b / (beta (a - 1)) (Bishop 2006, eq. 2.160 ff.)
    assert row["sd"] ** 2 == pytest.approx(float(q.marginal_loc_variance()), rel=1e-12)


def test_a_student_t_without_variance_reports_its_plugin_sd_never_inf():
    s = StudentT(t(1.0, 3.0), t(0.0, 0.0), t(1.0, 1.0), t(0.7, 0.7))
    table = summary_table({"m": s})
    assert table["method"].tolist() == ["plugin_sd", "exact"]
    assert table.loc["m[0]", "sd"] == 0.7
    assert table.loc["m[1]", "sd"] == pytest.approx(np.sqrt(3.0))
    assert np.isfinite(table.iloc[:, :4].to_numpy(float)).all()


def test_gmm_flags_empty_components_and_reports_no_inf_or_nan():
    x = load_old_faithful(standardize=True)
    fit = cavi(GaussianMixture(6, weight_concentration=1e-3), x, seed=0)
    table = fit.summary()
    legacy = fit.cavi_model.summary(fit.params)  # the dataclass holds inf sds for empty ones
    assert not torch.isfinite(legacy.means_sd).all()
    assert np.isfinite(table.iloc[:, :4].to_numpy(float)).all()
    small = (legacy.weights < 0.01).numpy()
    assert small.sum() == 4  # 2 of 6 components keep the data (README, Bishop Fig. 10.6)
    for k in range(6):
        rows = [i for i in table.index if i.startswith((f"weights[{k}]", f"loc[{k},",
                                                       f"precision[{k},"))]
        assert len(rows) == 1 + 2 + 4
        assert (table.loc[rows, "negligible"] == small[k]).all()
    # kept components' rows are exact moments: loc sd equals the dataclass's closed form
    kept = np.flatnonzero(~small)
    sd = table.loc[[f"loc[{k}, {d}]" for k in kept for d in range(2)], "sd"].to_numpy(float)
    np.testing.assert_allclose(sd, legacy.means_sd[kept].reshape(-1).numpy(), rtol=1e-12)
    assert set(table.loc[table["negligible"] & table.index.str.startswith("loc"), "method"]) == {"plugin_sd"}
    with pytest.raises(ValueError, match="threshold"):
        fit.summary(threshold=2.0)
    assert not fit.summary(threshold=0.0)["negligible"].any()


def test_bad_prob_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="prob"):
        summary_table({"b": Gamma(t(1.0), t(1.0))}, prob=1.5)
    from pyro_vi.factors import Categorical

    with pytest.raises(TypeError, match="Categorical"):
        summary_table({"z": Categorical(t(0.0, 0.0))})
