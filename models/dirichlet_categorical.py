r"""Dirichlet–Categorical (and Dirichlet–Multinomial): one Dirichlet latent over K categories.

:math:`\pi \sim \mathrm{Dir}(\alpha_0)`; data are labels (Categorical) or rows of counts
(Multinomial). The guide is one Dirichlet, so its optimum *is* the exact posterior (Bishop
2006, §2.2) and the ELBO at the optimum is the exact log evidence; CAVI reaches it in one sweep.
The analytic ELBO keeps the multinomial coefficients, so it is on the scale of Pyro's
``Trace_ELBO``.

Pyro sites: ``probs`` and ``obs`` in plate ``data``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from pyro_vi._checks import as_vector, check_int, check_positive
from pyro_vi.cavi.model import ConjugateModel, Local, Stats
from pyro_vi.factors import Dirichlet

__all__ = ["DirichletCategorical", "DirichletParams"]


@dataclass(frozen=True)
class DirichletParams:
    r""":math:`q(\pi) = \mathrm{Dir}(\alpha_N)`."""

    probs: Dirichlet


class DirichletCategorical(ConjugateModel[Tensor, DirichletParams, Stats]):
    r"""Dirichlet–Categorical / Multinomial: :math:`\pi \sim \mathrm{Dir}(\alpha_0)`.

    Data: labels ``y`` in ``{0, ..., K-1}`` (Categorical), or an ``(N, K)`` array of counts
    (row :math:`n` a Multinomial draw with total :math:`\sum_k c_{nk}`). Exact posterior
    (Bishop 2006, eq. 2.41): :math:`q(\pi) = \mathrm{Dir}(\alpha_0 + \sum_n c_n)`.

    Parameters
    ----------
    concentration : float or sequence of float
        :math:`\alpha_0 > 0`: one value per category, or a scalar with ``n_categories``.
    n_categories : int, keyword-only
        :math:`K`, needed when ``concentration`` is a scalar.
    dtype, device
        Where the fit runs (float64 on the CPU by default).

    Examples
    --------
    >>> import torch
    >>> from pyro_vi import cavi
    >>> m = DirichletCategorical(1.0, n_categories=3)
    >>> cavi(m, torch.tensor([0, 2, 2])).params.probs.mean()
    tensor([0.3333, 0.1667, 0.5000], dtype=torch.float64)
    """

    name = "dirichlet_categorical"

    def __init__(self, concentration: Any, *, n_categories: int | None = None,
                 dtype: Any = torch.float64, device: Any = None) -> None:
        super().__init__(dtype=dtype, device=device)
        if isinstance(concentration, numbers.Real) and not isinstance(concentration, bool):
            if n_categories is None:
                raise ValueError("n_categories must be given (an int >= 2) when concentration "
                                 "is a scalar")
            k = check_int("n_categories", n_categories, minimum=2)
            concentration = [check_positive("concentration", concentration)] * k
        conc = as_vector(concentration, "concentration", dtype=self.dtype, device=self.device)
        if (conc <= 0).any() or conc.shape[0] < 2:
            raise ValueError("concentration must hold >= 2 numbers, all > 0")
        self.concentration = conc

    @property
    def n_categories(self) -> int:
        """:math:`K`."""
        return self.concentration.shape[0]

    def prior_params(self) -> DirichletParams:
        r""":math:`p(\pi) = \mathrm{Dir}(\alpha_0)`."""
        return DirichletParams(Dirichlet(self.concentration))

    def prepare(self, data: Any) -> tuple[DirichletCategorical, Tensor]:
        """Canonical ``(N, K)`` counts from labels or counts (ValueError naming ``y``)."""
        k = self.n_categories
        t = data if isinstance(data, Tensor) else torch.as_tensor(data)
        if t.dim() == 2:
            c = t.to(self.dtype)
            if c.shape[1] != k or c.shape[0] == 0:
                raise ValueError(f"counts y must have shape (N, {k}), got {tuple(c.shape)}")
            if not torch.isfinite(c).all() or (c < 0).any() or (c != torch.round(c)).any():
                raise ValueError("counts y must be finite whole numbers >= 0")
            return self, c.to(device=self.device)
        y = as_vector(t, "y", dtype=self.dtype, device=self.device, integer=True)
        if (y < 0).any() or (y >= k).any():
            raise ValueError(f"labels y must lie in 0..{k - 1}")
        return self, torch.nn.functional.one_hot(y.long(), k).to(self.dtype)

    def init_stats(self, data: Tensor, *, generator: torch.Generator) -> Stats:
        """Return the data's sufficient statistics, the category totals (no local factors)."""
        return (data.sum(0),)

    def local_step(self, data: Tensor, params: DirichletParams) -> Local:
        r"""Totals and :math:`E_q[\log p(c|\pi)] = \sum_n \log\binom{n_n}{c_n} + \sum_k c_k E[\log\pi_k]`."""
        log_coef = torch.lgamma(data.sum(-1) + 1) - torch.lgamma(data + 1).sum(-1)
        ell = log_coef.sum() + (data.sum(0) * params.probs.expected_log()).sum()
        return Local((data.sum(0),), ell)

    def global_step(self, stats: Stats, params: DirichletParams | None) -> DirichletParams:
        r""":math:`\alpha_N = \alpha_0 + \sum_n c_n` (Bishop eq. 2.41)."""
        return DirichletParams(Dirichlet(self.concentration + stats[0]))

    def model(self, y: Tensor) -> None:
        """Pyro model: ``probs`` ~ Dirichlet, ``obs`` ~ Categorical(probs) or Multinomial.

        For counts whose row totals differ (torch's Multinomial needs one total) the
        likelihood enters as ``pyro.factor("obs", ...)`` with the exact multinomial log-pmf.
        """
        pi = pyro.sample("probs", dist.Dirichlet(self.concentration))
        with pyro.plate("data", y.shape[0], dim=-1):
            if y.dim() == 1:
                pyro.sample("obs", dist.Categorical(pi), obs=y)
                return
            totals = y.sum(-1)
            if bool((totals == totals[0]).all()):
                pyro.sample("obs", dist.Multinomial(int(totals[0]), pi), obs=y)
            else:
                log_coef = torch.lgamma(totals + 1) - torch.lgamma(y + 1).sum(-1)
                pyro.factor("obs", log_coef + (y * torch.log(pi)).sum(-1))

    def sample_guide(self, params: DirichletParams, *data: Any) -> dict[str, Tensor]:
        r"""Sample ``probs`` from :math:`q(\pi)`."""
        return {"probs": pyro.sample("probs", dist.Dirichlet(params.probs.concentration))}

    def guide_params(self, *data: Any) -> DirichletParams:
        """Site ``dirichlet_categorical.concentration``, initialised at the prior."""
        prior = self.prior_params().probs
        conc = pyro.param(f"{self.name}.concentration", prior.concentration.clone,
                          constraint=constraints.positive)
        return DirichletParams(Dirichlet(conc))
