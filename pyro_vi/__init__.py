"""pyro-vi: fast, exact-where-possible, trustworthy variational inference for Pyro models."""

from pyro_vi.errors import ConvergenceWarning, ELBODecreaseError, NumericalError
from pyro_vi.factors import (
    Categorical,
    Dirichlet,
    ExpFamFactor,
    Gamma,
    NormalGamma,
    NormalWishart,
    Wishart,
    blend,
)

__version__ = "0.1.0"

__all__ = [
    "Categorical",
    "ConvergenceWarning",
    "Dirichlet",
    "ELBODecreaseError",
    "ExpFamFactor",
    "Gamma",
    "NormalGamma",
    "NormalWishart",
    "NumericalError",
    "Wishart",
    "__version__",
    "blend",
]
