"""Small models shared by the trust-diagnostic tests (arviz, psis, mcmc, diagnose, draws).

Everything is float64 by construction (explicit dtypes), so the helpers do not depend on the
global default dtype.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyro
import pyro.distributions as dist
import torch

from pyro_vi import SVIResult

F64 = torch.float64

# Normal-Normal with known noise, two independent coordinates: mu_j ~ N(0, 10²),
# y_ij ~ N(mu_j, 1). The posterior is N(sum_i y_ij / (N + 1/100), 1 / (N + 1/100)).
PRIOR_SD = 10.0


def normal_data(n: int = 20, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=F64) + torch.tensor([1.0, -1.0], dtype=F64)


def normal_model(y: torch.Tensor) -> None:
    with pyro.plate("dim", 2):
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=F64), PRIOR_SD))
        with pyro.plate("data", y.shape[0], dim=-2):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def normal_posterior(y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Exact posterior mean (2,) and sd of normal_model (Murphy 2007, eq. 20)."""
    prec = y.shape[0] + PRIOR_SD**-2
    return y.sum(0) / prec, prec**-0.5


def exact_guide(y: torch.Tensor) -> None:
    mean, sd = normal_posterior(y)
    with pyro.plate("dim", 2):
        pyro.sample("mu", dist.Normal(mean, sd))


def logistic_data(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=F64)
    logits = 0.3 + x @ torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    return x, torch.bernoulli(torch.sigmoid(logits), generator=g)


def logistic_model(x: torch.Tensor, y: torch.Tensor) -> None:
    b0 = pyro.sample("intercept", dist.Normal(torch.zeros((), dtype=F64), 5.0))
    with pyro.plate("feature", x.shape[1]):
        beta = pyro.sample("beta", dist.Normal(torch.zeros((), dtype=F64), 5.0))
    with pyro.plate("data", x.shape[0]):
        # einsum instead of x @ beta so that the model broadcasts over a batch of draws
        pyro.sample("y", dist.Bernoulli(logits=b0 + torch.einsum("nf,...f->...n", x, beta)),
                    obs=y)


def gmm_data(n: int = 30, sep: float = 4.0, dim: int = 2, seed: int = 0) -> torch.Tensor:
    """Two unit-variance clusters of n points, centres ±sep/2 along the first axis."""
    g = torch.Generator().manual_seed(seed)
    shift = torch.zeros(dim, dtype=F64)
    shift[0] = sep / 2
    return torch.cat([torch.randn(n, dim, generator=g, dtype=F64) - shift,
                      torch.randn(n, dim, generator=g, dtype=F64) + shift])


def FakeResult(guide: Any, model: Any, params: dict[str, torch.Tensor], *,  # noqa: N802
               history: pd.DataFrame | None = None, converged: bool = True,
               elbo: float = -19.5, data: tuple[Any, ...] = ()) -> SVIResult:
    """An SVI result with hand-set params, history, flag and data (no training)."""
    if history is None:
        history = pd.DataFrame({"step": [1, 2, 3], "elbo": [-30.0, -20.0, -19.5]})
    return SVIResult(params=params, elbo=elbo, converged=converged, n_steps=len(history),
                     history=history, model=model, guide=guide, data=data)


def param_guide(y: torch.Tensor) -> None:
    """A guide whose parameters live in the param store (names 'loc', 'scale')."""
    loc = pyro.param("loc", torch.zeros(2, dtype=F64))
    scale = pyro.param("scale", torch.ones(2, dtype=F64),
                       constraint=dist.constraints.positive)
    with pyro.plate("dim", 2):
        pyro.sample("mu", dist.Normal(loc, scale))
