"""The Bayesian GMM as plain Pyro code: ``model``, the mean-field ``guide`` and its variants.

Sites (the same in model and guides, so any Pyro ELBO pairs them):

============  =====================================  ================================
site          model                                  guide
============  =====================================  ================================
weights       Dirichlet(α0)                          Dirichlet(α)
precision     Wishart(ν0, W0), plate "components"    Wishart(ν_k, W_k)  (diag: Gammas)
loc           N(m0, (β0 Λ_k)^-1), plate "components" N(m_k, (β_k Λ_k)^-1)
z             Categorical(π), plate "data"           Categorical(r_n)   (not in guide_enum)
obs           N(loc_z, precision_z^-1), observed     —
============  =====================================  ================================

``z`` carries ``infer={"enumerate": "parallel"}``, so :class:`pyro.infer.TraceEnum_ELBO` sums it
out when the guide (``guide_enum``) has no ``z``. Indexing uses :class:`pyro.ops.indexing.Vindex`,
so the model runs with vectorized particles and under enumeration. ``max_plate_nesting = 1``.

The SVI guide's variational parameters are ``pyro.param`` sites named ``"{name}.alpha"``,
``"{name}.loc"``, ``"{name}.beta"``, ``"{name}.scale_tril"`` and ``"{name}.df"`` (diag:
``"{name}.shape"``, ``"{name}.rate"``), and ``"{name}.resp"`` for :math:`q(z)`; they are
initialised the way CAVI starts (seeded k-means++, one global step, optimal responsibilities).

Three guides share those global sites: ``guide`` (free :math:`q(z_n)` parameters),
``guide_optimal_z`` (:math:`q(z_n)` recomputed in closed form from the current globals at every
call) and ``guide_enum`` (no :math:`q(z)`, for enumeration).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.ops.indexing import Vindex
from torch import Tensor

from pyro_vi.factors import Dirichlet, NormalGamma, NormalWishart
from pyro_vi.linalg import inverse_cholesky

if TYPE_CHECKING:
    from pyro_vi.models.gmm.model import GaussianMixture, GMMParams

__all__ = ["FittedGMMGuide", "GMMPyroMixin", "sample_latents"]

MAX_PLATE_NESTING = 1


class _Wishart(dist.Wishart):
    """:class:`pyro.distributions.Wishart` without torch's spurious resampling warning.

    ``torch.distributions.Wishart.rsample`` (torch <= 2.13) tests ``support.check(sample)``
    (True for a *valid* sample) as if it flagged singular ones, so every batched draw warns
    "Singular sample detected" and is redrawn (pytorch/pytorch#122021). The Bartlett draw
    (Bartlett 1933; Smith & Hocking 1972) is exact, so we return it as is.
    """

    def rsample(self, sample_shape: Any = (), max_try_correction: Any = None) -> Tensor:
        return self._bartlett_sampling(torch.Size(sample_shape))


def _component_dists(comps: NormalWishart | NormalGamma) -> tuple[Any, Any]:
    """(precision distribution, function precision -> loc distribution) for one factor."""
    if isinstance(comps, NormalWishart):
        prec_d = _Wishart(df=comps.df, scale_tril=comps.scale_tril)

        def loc_d(prec: Tensor) -> Any:
            beta = comps.precision_scale
            return dist.MultivariateNormal(comps.loc, precision_matrix=beta[..., None, None] * prec)

        return prec_d, loc_d
    prec_g = dist.Gamma(comps.shape, comps.rate).to_event(1)

    def loc_n(prec: Tensor) -> Any:
        return dist.Normal(comps.loc, (comps.precision_scale * prec).rsqrt()).to_event(1)

    return prec_g, loc_n


def sample_latents(params: GMMParams, resp: Tensor | None) -> dict[str, Tensor]:
    """Sample the guide's sites from ``params`` (and ``z`` from ``resp`` when given)."""
    k = params.weights.concentration.shape[-1]
    out = {"weights": pyro.sample("weights", dist.Dirichlet(params.weights.concentration))}
    prec_d, loc_d = _component_dists(params.components)
    with pyro.plate("components", k, dim=-1):
        out["precision"] = pyro.sample("precision", prec_d)
        out["loc"] = pyro.sample("loc", loc_d(out["precision"]))
    if resp is not None:
        with pyro.plate("data", resp.shape[0], dim=-1):
            out["z"] = pyro.sample("z", dist.Categorical(probs=resp))
    return out


class FittedGMMGuide:
    """A Pyro guide with fixed, fitted parameters (e.g. from :func:`pyro_vi.cavi.engine`).

    ``q(z_n)`` is the optimal Categorical given the global factors, computed for whatever
    ``x`` the guide is called with (Bishop 2006, eq. 10.49), so the guide also works on new
    data. With ``enumerate_z=True`` it omits ``z`` (for ``TraceEnum_ELBO``).
    """

    def __init__(self, gmm: GaussianMixture, params: GMMParams, *, enumerate_z: bool = False):
        self.gmm = gmm
        self.params = params
        self.enumerate_z = enumerate_z

    def __call__(self, x: Tensor, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Sample the guide's sites for data ``x`` (``(N, D)``)."""
        resp = None if self.enumerate_z else self.gmm.responsibilities(x, self.params)
        return sample_latents(self.params, resp)


class GMMPyroMixin:
    """Pyro ``model``/``guide`` methods of :class:`~pyro_vi.models.gmm.GaussianMixture`."""

    name = "gmm"
    max_plate_nesting = MAX_PLATE_NESTING
    #: Seed of the k-means++ start of the SVI guides' parameters (see :meth:`svi_init`).
    svi_seed = 0

    def _resolved(self, x: Tensor) -> GaussianMixture:
        gmm: GaussianMixture = self  # type: ignore[assignment]
        return gmm if gmm.prior is not None else gmm.resolve(x)

    def model(self, x: Tensor) -> Tensor:
        """The generative model as plain Pyro code; ``x`` is ``(N, D)`` observed data.

        Priors left at their data-dependent defaults are resolved from the ``x`` it is called
        with; resolve them once (``gmm = gmm.resolve(x_full)``) before minibatching.
        """
        gmm = self._resolved(x)
        prior = gmm.prior_factors()
        out = sample_latents(prior, None)
        loc, prec = out["loc"], out["precision"]
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Categorical(out["weights"]), infer={"enumerate": "parallel"})
            if gmm.covariance == "full":
                # Factor the K precisions once, then gather per point: MultivariateNormal given
                # a precision matrix per point would factor N copies (and backpropagate them).
                tril = inverse_cholesky(prec, where="GMM model: component precision")
                loc_z = Vindex(loc.unsqueeze(-3))[..., z, :]
                tril_z = Vindex(tril.unsqueeze(-4))[..., z, :, :]
                obs_d: Any = dist.MultivariateNormal(loc_z, scale_tril=tril_z)
            else:
                loc_z = Vindex(loc.unsqueeze(-3))[..., z, :]
                prec_z = Vindex(prec.unsqueeze(-3))[..., z, :]
                obs_d = dist.Normal(loc_z, prec_z.rsqrt()).to_event(1)
            pyro.sample("obs", obs_d, obs=x)
        return z

    def svi_init(self, x: Tensor, *, init: Any = "kmeans++", seed: int = 0) -> tuple[GMMParams, Tensor]:
        """Initial (params, responsibilities) for SVI, the way :func:`pyro_vi.cavi.engine` starts."""
        gmm, x = self.prepare(x)  # type: ignore[attr-defined]
        gen = torch.Generator().manual_seed(seed)
        params = gmm.global_step(gmm.init_stats(x, init=init, generator=gen), None)
        resp = gmm.responsibilities(x, params).clamp_min(1e-6)
        return params, resp / resp.sum(-1, keepdim=True)

    def _param_sites(self, x: Tensor, *, with_resp: bool) -> tuple[GMMParams, Tensor | None]:
        from pyro_vi.models.gmm.model import GMMParams

        gmm = self._resolved(x)
        store = pyro.get_param_store()
        n = self.name
        init: tuple[GMMParams, Tensor] | None = None
        if f"{n}.alpha" not in store or (with_resp and f"{n}.resp" not in store):
            init = gmm.svi_init(x, seed=self.svi_seed)
        p0, r0 = init if init is not None else (None, None)

        prior = gmm._prior()  # type: ignore[attr-defined]

        def param(site: str, get: Any, lower: float | None = None) -> Tensor:
            if lower is None:
                return pyro.param(f"{n}.{site}", lambda: get(p0), constraint=constraints.real)

            def init_value() -> Tensor:  # strictly inside the constraint
                return torch.clamp(get(p0), min=lower * (1.0 + 1e-6) + 1e-12)

            return pyro.param(f"{n}.{site}", init_value, constraint=constraints.greater_than(lower))

        # The optimum of the mean-field ELBO has alpha_k >= alpha0, beta_k >= beta0, nu_k >= nu0
        # (a_kd >= a0): prior plus non-negative counts (Bishop eqs. 10.58, 10.60, 10.63). Bounding
        # the SVI parameters there loses nothing and keeps Monte-Carlo KL estimates sane: a
        # Dirichlet with alpha_k << alpha0 puts pi_k below float64's range.
        alpha = param("alpha", lambda p: p.weights.concentration, prior.weight_concentration)
        loc = param("loc", lambda p: p.components.loc)
        beta = param("beta", lambda p: p.components.precision_scale, prior.mean_precision)
        if gmm.covariance == "full":
            tril = pyro.param(f"{n}.scale_tril", lambda: p0.components.scale_tril,  # type: ignore[union-attr]
                              constraint=constraints.lower_cholesky)
            df = param("df", lambda p: p.components.df, prior.degrees_of_freedom)
            comps: NormalWishart | NormalGamma = NormalWishart(loc, beta, tril, df)
        else:
            shape = param("shape", lambda p: p.components.shape, 0.5 * prior.degrees_of_freedom)
            rate = pyro.param(f"{n}.rate", lambda: p0.components.rate,  # type: ignore[union-attr]
                              constraint=constraints.positive)
            comps = NormalGamma(loc, beta, shape, rate)
        resp = None
        if with_resp:
            resp = pyro.param(f"{n}.resp", lambda: r0, constraint=constraints.simplex)  # type: ignore[arg-type,return-value]
        return GMMParams(Dirichlet(alpha), comps), resp

    def guide(self, x: Tensor) -> dict[str, Tensor]:
        r"""Mean-field guide :math:`q(\pi)\prod_k q(\mu_k,\Lambda_k)\prod_n q(z_n)` with ``pyro.param``s."""
        params, resp = self._param_sites(x, with_resp=True)
        return sample_latents(params, resp)

    def guide_optimal_z(self, x: Tensor) -> dict[str, Tensor]:
        r"""Mean-field guide whose :math:`q(z_n)` is the coordinate-ascent optimum given the globals.

        The global factors :math:`q(\pi)\prod_k q(\mu_k,\Lambda_k)` are ``pyro.param`` sites, as in
        :meth:`guide`; :math:`q(z_n)` is the Categorical with the optimal responsibilities
        :math:`r_{nk}\propto\rho_{nk}` at the *current* global parameters (Bishop 2006,
        eqs. 10.46-10.49) — the local step of :func:`pyro_vi.cavi.engine`, taken inside every SVI step
        (local step, then a step on the globals: the scheme of stochastic VI, Hoffman et al. 2013).

        The responsibilities are computed without gradient. That loses nothing: writing
        :math:`L(\theta, r)` for the ELBO, :math:`r^*(\theta)` maximizes it over the simplex, so
        :math:`\partial L/\partial r` is normal to the simplex there and
        :math:`\tfrac{d}{d\theta} L(\theta, r^*(\theta)) = \partial_\theta L(\theta, r)|_{r=r^*}`
        (the envelope theorem). Under :class:`~pyro.infer.Trace_ELBO`, z is still a sampled,
        non-reparameterizable site, but its score-function term carries no gradient; every
        gradient is a reparameterized one through :math:`\pi, \mu, \Lambda`, with z drawn from
        :math:`q(z)`. That is what makes this guide converge where the free-:math:`q(z)`
        :meth:`guide` does not (see :mod:`pyro_vi.models.gmm.svi`).

        Works on any ``x`` (a minibatch, new data): ``(N, D)``; :math:`q(z)` is ``(N, K)``.
        """
        params, _ = self._param_sites(x, with_resp=False)
        with torch.no_grad():
            resp = self._resolved(x).responsibilities(x, params)
        return sample_latents(params, resp)

    def guide_enum(self, x: Tensor) -> dict[str, Tensor]:
        """The guide without :math:`q(z)`, for ``TraceEnum_ELBO(max_plate_nesting=1)``."""
        params, _ = self._param_sites(x, with_resp=False)
        return sample_latents(params, None)

    def params_from_store(self, x: Tensor) -> GMMParams:
        """The global parameters currently in Pyro's param store, as a detached ``GMMParams``."""
        with torch.no_grad():
            params, _ = self._param_sites(x, with_resp=False)
        comps = params.components
        fields = {k: v.detach().clone() for k, v in vars(comps).items()}
        return type(params)(Dirichlet(params.weights.concentration.detach().clone()),
                            type(comps)(**_ctor_args(comps, fields)))

    def fitted_guide(self, params: GMMParams, *, enumerate_z: bool = False) -> FittedGMMGuide:
        """A Pyro guide carrying fixed ``params`` (used as ``CAVIResult.guide``)."""
        return FittedGMMGuide(self, params, enumerate_z=enumerate_z)  # type: ignore[arg-type]


def _ctor_args(comps: NormalWishart | NormalGamma, fields: dict[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(comps, NormalWishart):
        keys = ("loc", "precision_scale", "scale_tril", "df")
    else:
        keys = ("loc", "precision_scale", "shape", "rate")
    return {k: fields[k] for k in keys}
