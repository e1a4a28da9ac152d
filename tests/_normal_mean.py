"""The normal-mean model the SVI tests share, with its closed forms.

mu ~ N(PRIOR_LOC, PRIOR_SD^2), x_i ~ N(mu, LIK_SD^2): the exact posterior, log evidence and
the ELBO of a Normal q are known, so SVI runs can be checked against them.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch

PRIOR_LOC, PRIOR_SD, LIK_SD = 1.0, 3.0, 1.5


def normal_model(x):
    mu = pyro.sample("mu", dist.Normal(PRIOR_LOC, PRIOR_SD))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, LIK_SD), obs=x)


def posterior(x):
    """Exact posterior N(mean, sd^2) of normal_model (Murphy 2007, eq. 20)."""
    prec = 1 / PRIOR_SD**2 + len(x) / LIK_SD**2
    return (PRIOR_LOC / PRIOR_SD**2 + float(x.sum()) / LIK_SD**2) / prec, prec**-0.5


def log_evidence(x):
    n = len(x)
    cov = LIK_SD**2 * torch.eye(n) + PRIOR_SD**2 * torch.ones(n, n)
    return float(dist.MultivariateNormal(torch.full((n,), PRIOR_LOC), cov).log_prob(x))


def neg_elbo(x, m, s):
    """-ELBO of normal_model for q = N(m, s^2), in closed form."""
    e_prior = -0.5 * math.log(2 * math.pi * PRIOR_SD**2) - ((m - PRIOR_LOC) ** 2 + s**2) / (
        2 * PRIOR_SD**2)
    e_lik = sum(-0.5 * math.log(2 * math.pi * LIK_SD**2) - (float(xi - m) ** 2 + s**2) / (
        2 * LIK_SD**2) for xi in x)
    return -(e_prior + e_lik + 0.5 * math.log(2 * math.pi * math.e * s**2))


def data(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * LIK_SD + 2.0


def make_guide(x):
    """A Normal guide started 2 posterior SDs off, twice as wide."""
    mean, sd = posterior(x)

    def guide(x):
        loc = pyro.param("loc", lambda: torch.tensor(mean + 2 * sd))
        scale = pyro.param("scale", lambda: torch.tensor(2 * sd),
                           constraint=dist.constraints.positive)
        pyro.sample("mu", dist.Normal(loc, scale))

    return guide


def adam():
    return pyro.optim.ClippedAdam({"lr": 0.1, "lrd": 0.98})
