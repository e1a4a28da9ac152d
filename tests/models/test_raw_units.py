"""Raw-unit data (issue 12 §1): offsets, scales, duplicates and tiny N across every conjugate model.

Three kinds of check:

* the issue's reproduction (a 2-D GMM with one column offset by 1e3, 1e4, 1e6): it aborted
  with ``ELBODecreaseError`` before the centred KLs and local steps;
* exact equivariance: with priors that move with the data, ``cavi(m, x + c).elbo`` equals
  ``cavi(m, x).elbo`` to 1e-9 relative for ``c`` up to 1e9 spreads, and scaling the data by
  ``s`` shifts the ELBO by exactly the log-Jacobian ``-N·D·log s`` (1e-6 <= s <= 1e6);
* a property test over random problems of every conjugate model: each run either raises a
  named ``ValueError``/``TypeError`` in ``prepare`` (before any work) or fits with a finite
  ELBO that never decreases. The CI variant draws 40 problems per model (9 models, ~360 in
  all, a few seconds); the ``slow`` variant draws 2,000 in all and prints the counts by regime.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_vi import cavi
from pyro_vi.errors import ELBODecreaseError, PrecisionWarning
from pyro_vi.models.beta_bernoulli import BetaBernoulli
from pyro_vi.models.dirichlet_categorical import DirichletCategorical
from pyro_vi.models.gamma_exponential import GammaExponential
from pyro_vi.models.gamma_poisson import GammaPoisson
from pyro_vi.models.gmm import GaussianMixture
from pyro_vi.models.hierarchical import HierarchicalNormal
from pyro_vi.models.linreg import BayesianLinearRegression
from pyro_vi.models.normal import UnivariateNormal

F64 = torch.float64


def _grid(x: torch.Tensor) -> torch.Tensor:
    """Round to multiples of 2^-20: then ``x + c`` is exact for integer ``|c| < 2^31``.

    So the shifted data are the same numbers, and any ELBO difference is the algorithm's.
    """
    return torch.round(x * 2.0**20) / 2.0**20


def _two_clusters(n: int = 300, d: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    x[: n // 2] += 4
    return _grid(x)


# ------------------------------------------------------------------ the issue's reproduction
@pytest.mark.parametrize("covariance", ["full", "diag"])
@pytest.mark.parametrize("offset", [1e3, 1e4, 1e6])
def test_issue_reproduction_offset_column_fits_with_the_same_elbo(covariance, offset):
    # HEAD raised ELBODecreaseError ("an update is wrong") at 1e4 and 1e6 (full) and 1e6 (diag).
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 2, generator=g, dtype=F64)
    x[:150] += 4
    y = x.clone()
    y[:, 0] += offset
    base = cavi(GaussianMixture(3, covariance=covariance), x, seed=0, n_init=3)
    fit = cavi(GaussianMixture(3, covariance=covariance), y, seed=0, n_init=3)
    # x + offset is rounded to the ulp of the offset (1.1e-10 at 1e6): a data change of that
    # size moves the ELBO by ~N·ulp = 3e-8 nats at most, 3e-11 relative; 1e-9 leaves 30x.
    assert fit.elbo == pytest.approx(base.elbo, rel=1e-9)


# ------------------------------------------------------------------------- equivariance
def _gmm(cov):
    def make(x, c, s):
        return GaussianMixture(3, covariance=cov), x * s + c

    return make


def _normal(x, c, s):
    # the prior moves with the data: μ0 -> s μ0 + c, τ -> τ / s² (the rate scales by s²)
    return (UnivariateNormal(mean_prior=0.5 * s + c, mean_precision=2.0, precision_concentration=3.0,
                             precision_rate=2.0 * s**2), x[:, 0] * s + c)


def _hier(x, c, s):
    y, sigma = x[:8, 0] * 10, 5.0 + x[8:16, 1].abs()
    return (HierarchicalNormal(mean_prior=1.0 * s + c, mean_scale=5.0 * s,
                               precision_concentration=2.0, precision_rate=50.0 * s**2),
            (y * s + c, sigma * s))


#: (maker, number of observed scalars N·D that the log-Jacobian counts)
EQUIVARIANT = {"gmm-full": (_gmm("full"), 600), "gmm-diag": (_gmm("diag"), 600),
               "normal": (_normal, 300), "hierarchical": (_hier, 8)}


@pytest.mark.parametrize("name", list(EQUIVARIANT))
@pytest.mark.parametrize("offset", [1e3, 1e6, 1e9])
def test_translation_equivariance(name, offset):
    make, _ = EQUIVARIANT[name]
    x = _two_clusters()
    spread = float(x.std())
    c = float(round(offset * spread))  # an integer: x + c is exact (see _grid)
    m0, d0 = make(x, 0.0, 1.0)
    m1, d1 = make(x, c, 1.0)
    # tol=1e-12: both runs go to the optimum, so a different stopping sweep cannot hide or
    # fake a difference. The two runs see the same centred numbers up to the rounding of the
    # data mean (~1e-7 at 1e9); 1e-9 relative is the issue's bar (HEAD: 191 nats at 1e8).
    f0 = cavi(m0, d0, seed=0, tol=1e-12, max_iter=2000)
    f1 = cavi(m1, d1, seed=0, tol=1e-12, max_iter=2000)
    assert f1.elbo == pytest.approx(f0.elbo, rel=1e-9)


@pytest.mark.parametrize("name", list(EQUIVARIANT))
@pytest.mark.parametrize("scale", [1e-6, 1e-3, 1e3, 1e6])
def test_scale_equivariance_shifts_the_elbo_by_the_log_jacobian(name, scale):
    # y = s x maps densities by 1/s per observed scalar: ELBO(s x) = ELBO(x) - N·D·log s exactly
    # (the KL terms are invariant because the priors scale with the data).
    make, nd = EQUIVARIANT[name]
    x = _two_clusters()
    f0 = cavi(*make(x, 0.0, 1.0), seed=0, tol=1e-12, max_iter=2000)
    f1 = cavi(*make(x, 0.0, scale), seed=0, tol=1e-12, max_iter=2000)
    # s x is rounded to 1 ulp (1e-16 relative): that moves the ELBO by ~1e-13 relative.
    assert f1.elbo + nd * math.log(scale) == pytest.approx(f0.elbo, rel=1e-9)


# ---------------------------------------------------------------------- extreme magnitudes
@pytest.mark.parametrize("factor", [1e300, 1e-170])
@pytest.mark.parametrize("make", [lambda: GaussianMixture(2), lambda: UnivariateNormal()],
                         ids=["gmm", "normal"])
def test_extreme_magnitudes_blame_the_data(make, factor):
    # HEAD: ×1e300 raised "covariance_prior must be a finite (2, 2) matrix", a prior never set.
    model = make()
    x = _two_clusters(40) * factor
    data = x if isinstance(model, GaussianMixture) else x[:, 0]
    with pytest.raises(ValueError, match=r"^x is too (large|small) for torch.float64.*rescale x"):
        cavi(model, data)


# --------------------------------------------------------------------- the property test
REGIMES = ("offset", "scaled columns", "duplicates", "tiny N", "plain")


def _problem(name: str, regime: str, seed: int, expo: float, n: int, d: int, k: int):
    """A random problem of model ``name`` in ``regime``; ``expo`` in [0, 1] sets its severity."""
    g = torch.Generator().manual_seed(seed)
    if regime == "tiny N":
        n = max(1, min(n, 3))
    offset = 10.0 ** (9 * expo) if regime == "offset" else 0.0
    scales = (10.0 ** (12 * torch.rand(d, generator=g, dtype=F64) - 6) if regime == "scaled columns"
              else torch.ones(d, dtype=F64))

    def normal(rows: int, cols: int) -> torch.Tensor:
        z = torch.randn(rows, cols, generator=g, dtype=F64)
        if regime == "duplicates":
            z = z[torch.randint(max(1, rows // 4), (rows,), generator=g)]
        return z

    if name.startswith("gmm"):
        n = max(n, k)
        centers = 4.0 * torch.randn(k, d, generator=g, dtype=F64)
        x = centers[torch.randint(k, (n,), generator=g)] + normal(n, d)
        return GaussianMixture(k, covariance=name[4:]), (x + offset) * scales
    if name == "normal":
        return UnivariateNormal(), (normal(n, 1)[:, 0] + offset) * scales[0]
    if name == "hierarchical":
        y = 10 * normal(n, 1)[:, 0]
        sigma = 1.0 + torch.rand(n, generator=g, dtype=F64)
        return (HierarchicalNormal(mean_prior=0.0, mean_scale=10.0, precision_concentration=2.0,
                                   precision_rate=50.0), ((y + offset) * scales[0], sigma * scales[0]))
    if name == "linreg":
        x = normal(n, d) * scales + offset
        w = torch.randn(d, generator=g, dtype=F64)
        y = x @ w + 0.1 * normal(n, 1)[:, 0]
        return BayesianLinearRegression(), (x, y)
    if name == "beta_bernoulli":
        y = (torch.rand(n, generator=g) < expo).to(F64)
        if regime == "duplicates":
            y = torch.ones(n, dtype=F64)
        return BetaBernoulli(), y
    if name == "gamma_poisson":
        lam = 10.0 ** (6 * expo) if regime in ("offset", "scaled columns") else 3.0
        counts = torch.poisson(torch.full((n,), lam, dtype=F64), generator=g) + round(offset)
        return GammaPoisson(), counts
    if name == "gamma_exponential":
        x = torch.empty(n, dtype=F64).exponential_(1.0, generator=g) * scales[0]
        if regime == "duplicates":
            x = x[:1].expand(n).clone()
        return GammaExponential(), x + offset * scales[0]
    if name == "dirichlet_categorical":
        labels = torch.randint(max(k, 2), (n,), generator=g)
        if regime == "duplicates":
            labels = torch.zeros(n, dtype=torch.int64)
        return DirichletCategorical(1.0, n_categories=max(k, 2)), labels
    raise AssertionError(name)


MODELS = ("gmm-full", "gmm-diag", "normal", "hierarchical", "linreg", "beta_bernoulli",
          "gamma_poisson", "gamma_exponential", "dirichlet_categorical")

#: regime -> outcome -> count, filled by every run of the property test (printed by the slow one)
COUNTS: dict[str, Counter[str]] = {}


def _check_one(name: str, regime: str, seed: int, expo: float, n: int, d: int, k: int) -> None:
    model, data = _problem(name, regime, seed, expo, n, d, k)
    tally = COUNTS.setdefault(f"{name} / {regime}", Counter())
    try:
        model.prepare(data)
    except (ValueError, TypeError) as err:  # named and before any work: allowed
        message = str(err)
        tally["rejected before work"] += 1
        assert message, "an input error must say what is wrong"
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PrecisionWarning)
        try:
            fit = cavi(model, data, seed=seed, max_iter=200, tol=1e-10, warn=False)
        except ELBODecreaseError as err:
            tally["ELBODecreaseError"] += 1
            raise AssertionError(f"{name}/{regime}: {err}") from err
    elbo = fit.history["elbo"]
    assert bool(elbo.map(math.isfinite).all()), f"{name}/{regime}: non-finite ELBO"
    drops = -(elbo.diff().iloc[1:])
    if any(issubclass(w.category, PrecisionWarning) for w in caught):
        # a drop within the data's float64 round-off (a raw offset the model cannot centre
        # away, e.g. a regression without intercept): the run stopped there, with its fit,
        # and said so; every earlier sweep was monotone
        assert fit.converged
        assert (drops.iloc[:-1] <= 1e-9 * elbo.abs().clip(lower=1.0).iloc[1:-1]).all()
        assert drops.iloc[-1] <= model.elbo_roundoff(model.prepare(data)[1])
        tally["fitted, stopped at float64 precision (PrecisionWarning)"] += 1
        return
    # the engine's own allowance: 1e-9 relative, the check a decrease would have failed
    assert (drops <= 1e-9 * elbo.abs().clip(lower=1.0).iloc[1:]).all()
    tally["fitted, finite and monotone"] += 1


_problems = st.tuples(st.sampled_from(REGIMES), st.integers(0, 2**31 - 1), st.floats(0, 1),
                      st.integers(1, 60), st.integers(1, 3), st.integers(1, 3))


def _run(name: str, examples: int):
    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(_problems)
    def prop(args):
        _check_one(name, *args)

    prop()


@pytest.mark.parametrize("name", MODELS)
def test_every_run_fits_monotonically_or_is_rejected_before_any_work(name):
    # CI subset: 40 derandomized problems per model, 360 in all.
    _run(name, 40)


@pytest.mark.slow
def test_property_over_2000_problems_with_counts_by_regime(capsys):
    # 2,000 problems: 223 per model (9 models, 2007 in all); prints the counts by regime.
    COUNTS.clear()
    for name in MODELS:
        _run(name, 223)
    total = sum(sum(c.values()) for c in COUNTS.values())
    with capsys.disabled():
        print(f"\n{total} problems")
        for key in sorted(COUNTS):
            print(f"{key:45s} {dict(COUNTS[key])}")
    assert total >= 2000
    assert not any(c["ELBODecreaseError: an update"] for c in COUNTS.values())


@pytest.mark.parametrize("covariance", ["full", "diag"])
@pytest.mark.parametrize("offset", [1e6, 1e9])
def test_stochastic_cavi_is_translation_equivariant(covariance, offset):
    # svi_cavi steps in natural parameters (blend): HEAD lost 1e-7 relative at 1e6 and failed
    # with "NormalWishart.from_natural: not positive definite" at 1e8. The same minibatches
    # and steps on the shifted data; x on the 2^-20 grid, so x + c is exact.
    from pyro_vi import svi_cavi

    x = _two_clusters(2000)
    c = float(round(offset))
    kw = dict(batch_size=200, num_epochs=3, seed=0, warn=False)
    f0 = svi_cavi(GaussianMixture(2, covariance=covariance), x, **kw)
    f1 = svi_cavi(GaussianMixture(2, covariance=covariance), x + c, **kw)
    assert f1.elbo == pytest.approx(f0.elbo, rel=1e-9)
