"""The Bayesian GMM as plain Pyro code: the generative program and the guides' sites.

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
``"{name}.concentration"``, ``"{name}.rate"``), and ``"{name}.resp"`` for :math:`q(z)`; they
are initialised the way CAVI starts (seeded k-means++, one global step, optimal
responsibilities).

Three guides of :class:`~pyro_vi.models.gmm.GaussianMixture` share those global sites:
``guide`` (free :math:`q(z_n)` parameters), ``guide_optimal_z`` (:math:`q(z_n)` recomputed in
closed form from the current globals at every call) and ``guide_enum`` (no :math:`q(z)`, for
enumeration). This module holds plain functions of params records; the mixture calls them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.ops.indexing import Vindex
from torch import Tensor

from pyro_vi.factors import BartlettWishart, Dirichlet, NormalGamma, NormalWishart
from pyro_vi.linalg import inverse_cholesky
from pyro_vi.models.gmm.params import GMMHyperparams, GMMParams

__all__ = ["MAX_PLATE_NESTING", "mixture_program", "param_sites", "sample_latents"]

MAX_PLATE_NESTING = 1


def _component_dists(comps: NormalWishart | NormalGamma) -> tuple[Any, Any]:
    """(precision distribution, function precision -> loc distribution) for one factor."""
    if isinstance(comps, NormalWishart):
        prec_d = BartlettWishart(df=comps.df, scale_tril=comps.scale_tril)

        def loc_d(prec: Tensor) -> Any:
            beta = comps.precision_scale
            return dist.MultivariateNormal(comps.loc, precision_matrix=beta[..., None, None] * prec)

        return prec_d, loc_d
    prec_g = dist.Gamma(comps.concentration, comps.rate).to_event(1)

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


def mixture_program(prior: GMMParams, x: Tensor) -> Tensor:
    """The generative model (Bishop 2006, eqs. 10.37–10.40) given the prior as factors.

    ``prior`` is :meth:`GaussianMixture.prior_params`; its component factor says full
    (Normal-Wishart) or diag (Normal-Gamma). ``x`` is ``(N, D)``; returns the sampled ``z``.
    """
    out = sample_latents(prior, None)
    loc, prec = out["loc"], out["precision"]
    with pyro.plate("data", x.shape[0], dim=-1):
        z = pyro.sample("z", dist.Categorical(out["weights"]), infer={"enumerate": "parallel"})
        if isinstance(prior.components, NormalWishart):
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


def param_sites(name: str, hyper: GMMHyperparams, covariance: str,
                start: Callable[[], tuple[GMMParams, Tensor]], *,
                with_resp: bool) -> tuple[GMMParams, Tensor | None]:
    """The global factors (and, ``with_resp``, :math:`q(z)`) as ``pyro.param`` sites.

    Sites missing from the param store are initialised from ``start()``, which returns
    (params, responsibilities) the way CAVI starts; it is not called when all exist.
    """
    store = pyro.get_param_store()
    missing = f"{name}.alpha" not in store or (with_resp and f"{name}.resp" not in store)
    init = start() if missing else None

    def first(get: Callable[[GMMParams], Tensor]) -> Callable[[], Tensor]:
        def value() -> Tensor:
            if init is None:
                raise RuntimeError(f"param store lost sites of {name!r} mid-call")
            return get(init[0])
        return value

    def param(site: str, get: Callable[[GMMParams], Tensor], lower: float | None = None) -> Tensor:
        if lower is None:
            return pyro.param(f"{name}.{site}", first(get), constraint=constraints.real)

        def init_value() -> Tensor:  # strictly inside the constraint
            return torch.clamp(first(get)(), min=lower * (1.0 + 1e-6) + 1e-12)

        return pyro.param(f"{name}.{site}", init_value, constraint=constraints.greater_than(lower))

    # The optimum of the mean-field ELBO has alpha_k >= alpha0, beta_k >= beta0, nu_k >= nu0
    # (a_kd >= a0): prior plus non-negative counts (Bishop eqs. 10.58, 10.60, 10.63). Bounding
    # the SVI parameters there loses nothing and keeps Monte-Carlo KL estimates sane: a
    # Dirichlet with alpha_k << alpha0 puts pi_k below float64's range.
    alpha = param("alpha", lambda p: p.weights.concentration, hyper.weight_concentration)
    loc = param("loc", lambda p: p.components.loc)
    beta = param("beta", lambda p: p.components.precision_scale, hyper.mean_precision)
    comps: NormalWishart | NormalGamma
    if covariance == "full":
        tril = pyro.param(f"{name}.scale_tril", first(_scale_tril),
                          constraint=constraints.lower_cholesky)
        df = param("df", _df, hyper.degrees_of_freedom)
        comps = NormalWishart(loc, beta, tril, df)
    else:
        conc = param("concentration", _concentration, 0.5 * hyper.degrees_of_freedom)
        rate = pyro.param(f"{name}.rate", first(_rate), constraint=constraints.positive)
        comps = NormalGamma(loc, beta, conc, rate)
    resp = None
    if with_resp:
        def resp_value() -> Tensor:
            if init is None:
                raise RuntimeError(f"param store lost sites of {name!r} mid-call")
            return init[1]

        resp = pyro.param(f"{name}.resp", resp_value, constraint=constraints.simplex)
    return GMMParams(Dirichlet(alpha), comps), resp


def _components_of(p: GMMParams, kind: type[Any]) -> Any:
    if not isinstance(p.components, kind):
        raise TypeError(f"expected {kind.__name__} components, got {type(p.components).__name__}")
    return p.components


def _scale_tril(p: GMMParams) -> Tensor:
    return _components_of(p, NormalWishart).scale_tril


def _df(p: GMMParams) -> Tensor:
    return _components_of(p, NormalWishart).df


def _concentration(p: GMMParams) -> Tensor:
    return _components_of(p, NormalGamma).concentration


def _rate(p: GMMParams) -> Tensor:
    return _components_of(p, NormalGamma).rate
