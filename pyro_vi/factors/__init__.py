"""Exponential-family factors: natural parameters, moments, log-normalizers, entropy and KL."""

from pyro_vi.factors.base import ExpFamFactor, blend
from pyro_vi.factors.beta import Beta
from pyro_vi.factors.dirichlet import Categorical, Dirichlet
from pyro_vi.factors.gamma import Gamma, NormalGamma
from pyro_vi.factors.normal import MultivariateNormal, Normal
from pyro_vi.factors.wishart import (
    BartlettWishart,
    NormalWishart,
    Wishart,
    expected_logdet,
    log_wishart_normalizer,
    muted_wishart_warning,
)

__all__ = [
    "BartlettWishart",
    "Beta",
    "Categorical",
    "Dirichlet",
    "ExpFamFactor",
    "Gamma",
    "MultivariateNormal",
    "Normal",
    "NormalGamma",
    "NormalWishart",
    "Wishart",
    "blend",
    "expected_logdet",
    "log_wishart_normalizer",
    "muted_wishart_warning",
]
