"""pyro-vi: fast, exact-where-possible, trustworthy variational inference for Pyro models."""

from pyro_vi.arviz import (
    FitInfo,
    NoObservedSitesWarning,
    inference_data_from_result,
    to_inference_data,
)
from pyro_vi.bundled import load_old_faithful
from pyro_vi.cavi import CAVIResult, CAVIRun, ConjugateModel, Local, cavi
from pyro_vi.datasets import ImageData, Minibatches, load_digits, load_mnist
from pyro_vi.diagnose import Diagnosis, diagnose
from pyro_vi.elbo import ELBOEstimate, elbo_estimate
from pyro_vi.errors import ConvergenceWarning, ELBODecreaseError, NumericalError
from pyro_vi.factors import (
    Beta,
    Categorical,
    Dirichlet,
    ExpFamFactor,
    Gamma,
    MultivariateNormal,
    Normal,
    NormalGamma,
    NormalWishart,
    Wishart,
    blend,
)
from pyro_vi.mcmc import MCMCComparison, compare_to_mcmc, match_components
from pyro_vi.psis import PSISResult, psis_diagnostic
from pyro_vi.stochastic import blend_params, svi_cavi
from pyro_vi.svi import NonFiniteLossError, SVIResult, fit_svi
from pyro_vi.vae_eval import LogLikEstimate, elbo_per_image, iw_log_likelihood

__version__ = "0.1.0"

__all__ = [
    "BayesianLinearRegression",
    "Beta",
    "BetaBernoulli",
    "CAVIResult",
    "CAVIRun",
    "Categorical",
    "ConjugateModel",
    "ConvergenceWarning",
    "Diagnosis",
    "Dirichlet",
    "DirichletCategorical",
    "ELBODecreaseError",
    "ELBOEstimate",
    "ExpFamFactor",
    "FitInfo",
    "Gamma",
    "GammaPoisson",
    "GaussianMixture",
    "HierarchicalNormal",
    "ImageData",
    "Local",
    "LogLikEstimate",
    "MCMCComparison",
    "Minibatches",
    "MultivariateNormal",
    "NoObservedSitesWarning",
    "NonFiniteLossError",
    "Normal",
    "NormalGamma",
    "NormalWishart",
    "NumericalError",
    "PSISResult",
    "SVIResult",
    "UnivariateNormal",
    "VAE",
    "VAEConfig",
    "VAEFit",
    "Wishart",
    "__version__",
    "blend",
    "blend_params",
    "cavi",
    "compare_to_mcmc",
    "diagnose",
    "elbo_estimate",
    "elbo_per_image",
    "fit_svi",
    "fit_vae",
    "inference_data_from_result",
    "iw_log_likelihood",
    "load_digits",
    "load_mnist",
    "load_old_faithful",
    "load_vae",
    "match_components",
    "psis_diagnostic",
    "save_vae",
    "svi_cavi",
    "to_inference_data",
]

from pyro_vi.models.conjugate import (  # noqa: E402
    BetaBernoulli,
    DirichletCategorical,
    GammaPoisson,
)
from pyro_vi.models.gmm import GaussianMixture  # noqa: E402  (models build on the engine above)
from pyro_vi.models.hierarchical import HierarchicalNormal  # noqa: E402
from pyro_vi.models.linreg import BayesianLinearRegression  # noqa: E402
from pyro_vi.models.normal import UnivariateNormal  # noqa: E402
from pyro_vi.models.vae import VAE, VAEConfig, load_vae, save_vae  # noqa: E402
from pyro_vi.vae_training import VAEFit, fit_vae  # noqa: E402  (needs models.vae)
