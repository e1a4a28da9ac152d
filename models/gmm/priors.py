r"""The mixture's hyper-parameters from the user's options and the data (scikit-learn's defaults).

:func:`resolve_hyperparams` turns the constructor's options into a
:class:`~pyro_vi.models.gmm.params.GMMHyperparams`, filling what the user left out the way
scikit-learn's ``BayesianGaussianMixture`` does: :math:`\alpha_0 = 1/K`, :math:`m_0` the data
mean, :math:`\nu_0 = D`, and :math:`W_0^{-1}` the unbiased data covariance when it is positive
definite (else the diagonal of variances, zeros replaced by 1; "diag": the variances).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pyro_vi.models.gmm.params import GMMHyperparams

__all__ = ["check_covariance_prior", "covariance_from_scatter", "default_covariance",
           "resolve_hyperparams"]


def default_covariance(x: Tensor, covariance: str) -> Tensor:
    """The unbiased covariance (``"full"``, when PD) or variances (``"diag"``) of ``x`` ``(N, D)``.

    Two-pass and centred: ``torch.var`` loses ~1e-6 of the variances at an offset of 1e9 spreads.
    """
    dev = x - x.mean(0)
    scatter = dev.square().sum(0) if covariance == "diag" else dev.T @ dev
    return covariance_from_scatter(scatter, x.shape[0], covariance)


def covariance_from_scatter(scatter: Tensor, n: int, covariance: str) -> Tensor:
    """:func:`default_covariance` from the centred scatter ``sum_n (x_n - mean)(x_n - mean)^T``.

    ``scatter`` is ``(D, D)`` (``"full"``) or the ``(D,)`` squared deviations (``"diag"``) of
    ``n`` rows: the sums a distributed fit adds over ranks.
    """
    diag = scatter if scatter.dim() == 1 else torch.diagonal(scatter)
    var = diag / (n - 1) if n > 1 else torch.zeros_like(diag)
    var = torch.where(var > 0, var, torch.ones_like(var))
    if covariance == "diag":
        return var
    d = scatter.shape[0]
    if n > d:
        cov = (scatter / (n - 1)).reshape(d, d)
        if torch.linalg.cholesky_ex(cov)[1] == 0 and torch.linalg.eigvalsh(cov)[0] > 1e-10 * var.max():
            return cov
    return torch.diag(var)


def check_covariance_prior(cov: Tensor, d: int, covariance: str) -> Tensor:
    """``cov`` as the prior :math:`W_0^{-1}`: ``(D, D)`` SPD (``"full"``) or ``D`` variances (``"diag"``).

    A ``(D, D)`` matrix given for ``"diag"`` contributes its diagonal. Raises ``ValueError``
    naming ``covariance_prior`` otherwise.
    """
    if covariance == "diag":
        if cov.shape == (d, d):
            cov = torch.diagonal(cov).clone()
        if cov.shape != (d,) or not torch.isfinite(cov).all() or (cov <= 0).any():
            raise ValueError(f"covariance_prior for 'diag' must be {d} positive variances "
                             f"(or a ({d}, {d}) matrix with a positive diagonal)")
        return cov
    if cov.shape != (d, d) or not torch.isfinite(cov).all():
        raise ValueError(f"covariance_prior must be a finite ({d}, {d}) matrix, "
                         f"got shape {tuple(cov.shape)}")
    if not torch.allclose(cov, cov.T, rtol=1e-10, atol=1e-12):
        raise ValueError("covariance_prior must be symmetric")
    if torch.linalg.cholesky_ex(cov)[1] != 0:
        raise ValueError("covariance_prior must be positive definite")
    return cov


def resolve_hyperparams(spec: dict[str, Any], x: Tensor, *, n_components: int,
                        covariance: str) -> GMMHyperparams:
    """Concrete hyper-parameters from the constructor's options ``spec`` and the data ``x`` ``(N, D)``.

    ``spec`` holds ``weight_concentration``, ``mean_prior``, ``mean_precision``,
    ``covariance_prior`` and ``degrees_of_freedom`` as given (None: the default above); the
    result's tensors take ``x``'s dtype and device. Raises ``ValueError`` for a non-PD
    covariance prior, ``ν0 <= D - 1`` or a mean prior of the wrong shape.

    Examples
    --------
    >>> import torch
    >>> spec = dict(weight_concentration=None, mean_prior=None, mean_precision=1.0,
    ...             covariance_prior=None, degrees_of_freedom=None)
    >>> x = torch.tensor([[0.0, 1.0], [2.0, 1.0], [1.0, 4.0]], dtype=torch.float64)
    >>> h = resolve_hyperparams(spec, x, n_components=2, covariance="diag")
    >>> h.weight_concentration, h.degrees_of_freedom, h.mean_prior.tolist(), h.covariance_prior.tolist()
    (0.5, 2.0, [1.0, 2.0], [1.0, 3.0])
    """
    d = x.shape[1]
    alpha0 = spec["weight_concentration"] or 1.0 / n_components
    nu0 = float(spec["degrees_of_freedom"] or d)
    if nu0 <= d - 1:
        raise ValueError(f"degrees_of_freedom must exceed D - 1 = {d - 1}, got {nu0}")
    m0 = (x.mean(0) if spec["mean_prior"] is None
          else torch.as_tensor(spec["mean_prior"], dtype=x.dtype, device=x.device))
    if m0.shape != (d,) or not torch.isfinite(m0).all():
        raise ValueError(f"mean_prior must be a finite vector of shape ({d},), "
                         f"got shape {tuple(m0.shape)}")
    cov = spec["covariance_prior"]
    cov = default_covariance(x, covariance) if cov is None else torch.as_tensor(cov, dtype=x.dtype, device=x.device)
    cov = check_covariance_prior(cov, d, covariance)
    return GMMHyperparams(float(alpha0), m0, float(spec["mean_precision"]), cov, nu0)
