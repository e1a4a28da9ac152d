"""pyro-vi: fast, exact-where-possible, trustworthy variational inference for Pyro models."""

from pyro_vi.bundled import load_old_faithful
from pyro_vi.cavi import CAVIResult, CAVIRun, ConjugateModel, Local, cavi
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
    "CAVIResult",
    "CAVIRun",
    "Categorical",
    "ConjugateModel",
    "ConvergenceWarning",
    "Dirichlet",
    "ELBODecreaseError",
    "ExpFamFactor",
    "Gamma",
    "GaussianMixture",
    "Local",
    "NormalGamma",
    "NormalWishart",
    "NumericalError",
    "Wishart",
    "__version__",
    "blend",
    "cavi",
    "load_old_faithful",
]

from pyro_vi.models.gmm import GaussianMixture  # noqa: E402  (models build on the engine above)
