"""Posterior summaries and the Student-t posterior predictive of the Bayesian GMM."""

from __future__ import annotations

from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_vi.factors import NormalWishart
from pyro_vi.models.gmm.params import GMMParams

__all__ = ["GMMSummary", "log_predictive_components", "summarize"]

#: Rows per chunk when evaluating the predictive density (bounds the N×K×D temporaries).
PREDICTIVE_CHUNK = 8192


@dataclass(frozen=True)
class GMMSummary:
    r"""Posterior summaries of a fitted mixture (tensors on the params' device and dtype).

    Attributes
    ----------
    weights, weights_sd : Tensor (K,)
        :math:`E[\pi_k]` and its sd under the Dirichlet.
    means, means_sd : Tensor (K, D)
        :math:`E[\mu_k] = m_k` and the marginal sd of :math:`\mu_k` (a Student-t; full:
        :math:`\mathrm{diag}(W_k^{-1})/(\beta_k(\nu_k-D-1))`, inf when :math:`\nu_k \le D+1`).
    covariances : Tensor (K, D, D)
        :math:`(\nu_k W_k)^{-1} = E[\Lambda_k]^{-1}`, scikit-learn's ``covariances_``.
    covariances_mean, covariances_sd : Tensor (K, D, D)
        :math:`E[\Lambda_k^{-1}] = W_k^{-1}/(\nu_k-D-1)` and the elementwise sd of the
        inverse-Wishart (NaN where the moment does not exist: :math:`\nu_k \le D+1`, resp.
        :math:`\nu_k \le D+3`). Diag: diagonal matrices from the inverse-Gamma moments.
    n_effective : int
        Components whose expected weight exceeds ``threshold``.
    """

    weights: Tensor
    weights_sd: Tensor
    means: Tensor
    means_sd: Tensor
    covariances: Tensor
    covariances_mean: Tensor
    covariances_sd: Tensor
    n_effective: int


def summarize(params: GMMParams, *, threshold: float = 0.01) -> GMMSummary:
    """Build a :class:`GMMSummary` from fitted parameters."""
    w = params.weights
    comp = params.components
    nan = torch.tensor(float("nan"), dtype=comp.loc.dtype, device=comp.loc.device)
    if isinstance(comp, NormalWishart):
        d = comp.dim
        psi = comp.precision.scale_inv  # W^-1, the inverse-Wishart scale
        nu = comp.df[:, None, None]
        var_mu = torch.diagonal(psi, dim1=-2, dim2=-1) / (
            comp.precision_scale[:, None] * (comp.df[:, None] - d - 1.0))
        means_sd = torch.where(comp.df[:, None] > d + 1, var_mu.clamp_min(0).sqrt(),
                               torch.full_like(var_mu, float("inf")))
        covariances = psi / nu
        cov_mean = torch.where(nu > d + 1, psi / (nu - d - 1.0), nan)
        diag = torch.diagonal(psi, dim1=-2, dim2=-1)
        num = (nu - d + 1.0) * psi**2 + (nu - d - 1.0) * diag[:, :, None] * diag[:, None, :]
        var = num / ((nu - d) * (nu - d - 1.0) ** 2 * (nu - d - 3.0))
        cov_sd = torch.where(nu > d + 3, var.clamp_min(0).sqrt(), nan)
    else:
        a, b, beta = comp.concentration, comp.rate, comp.precision_scale
        means_sd = torch.where(a > 1, (b / (beta * (a - 1.0))).clamp_min(0).sqrt(),
                               torch.full_like(a, float("inf")))
        covariances = torch.diag_embed(b / a)
        cov_mean = torch.diag_embed(torch.where(a > 1, b / (a - 1.0), nan))
        cov_sd = torch.diag_embed(torch.where(a > 2, b / ((a - 1.0) * (a - 2.0).clamp_min(1e-300).sqrt()), nan))
    weights = w.mean()
    return GMMSummary(weights=weights, weights_sd=w.variance().sqrt(), means=comp.loc,
                      means_sd=means_sd, covariances=covariances, covariances_mean=cov_mean,
                      covariances_sd=cov_sd, n_effective=int((weights > threshold).sum()))


def log_predictive_components(params: GMMParams, x: Tensor) -> Tensor:
    r""":math:`\log E[\pi_k] + \log \mathrm{St}(x_n \mid m_k, L_k, \nu_k + 1 - D)`, shape ``(N, K)``.

    Bishop (2006), eqs. 10.81–10.82: the predictive is a mixture of Student-t's with
    :math:`L_k = \frac{(\nu_k + 1 - D)\beta_k}{1 + \beta_k} W_k`. The diagonal model's
    predictive is a product of univariate Student-t's with :math:`2a_{kd}` degrees of freedom
    and scale :math:`\sqrt{b_{kd}(1+\beta_{kd})/(a_{kd}\beta_{kd})}`. Evaluated in chunks of
    :data:`PREDICTIVE_CHUNK` rows.
    """
    comp = params.components
    log_w = torch.log(params.weights.mean())
    if isinstance(comp, NormalWishart):
        d = comp.dim
        df = comp.df + 1.0 - d
        factor = ((1.0 + comp.precision_scale) / (df * comp.precision_scale)).sqrt()
        # scale matrix L^-1 = factor^2 W^-1; its Cholesky is factor * chol(W^-1)
        tril = factor[:, None, None] * torch.linalg.cholesky(comp.precision.scale_inv)
        st = dist.MultivariateStudentT(df, comp.loc, tril)
    else:
        a, b, beta = comp.concentration, comp.rate, comp.precision_scale
        st = dist.StudentT(2.0 * a, comp.loc, (b * (1.0 + beta) / (a * beta)).sqrt()).to_event(1)
    parts = [st.log_prob(x[i:i + PREDICTIVE_CHUNK].unsqueeze(-2))
             for i in range(0, x.shape[0], PREDICTIVE_CHUNK)]
    return torch.cat(parts) + log_w
