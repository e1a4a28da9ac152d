"""pyro-vi: fast, exact-where-possible, trustworthy variational inference for Pyro models.

The flat public API: entry points, result records and errors. Helpers stay in their packages
(exponential-family factors in :mod:`pyro_vi.factors`, the model contract in
:mod:`pyro_vi.cavi.model`, the SVI runtime's parts in :mod:`pyro_vi.svi`).
"""

from pyro_vi.cavi.auto import ConjugacyReport, conjugacy
from pyro_vi.cavi.engine import CAVIResult, CAVIRun, ConjugateModel, Local, cavi
from pyro_vi.cavi.stochastic import blend_params, svi_cavi
from pyro_vi.data import (
    ImageData,
    Minibatches,
    load_digits,
    load_eight_schools,
    load_mnist,
    load_old_faithful,
)
from pyro_vi.diagnostics import (
    Diagnosis,
    ELBOEstimate,
    FitInfo,
    MCMCComparison,
    NoObservedSitesWarning,
    PSISResult,
    compare_to_mcmc,
    diagnose,
    elbo_estimate,
    inference_data_from_result,
    match_components,
    psis_diagnostic,
    to_inference_data,
)
from pyro_vi.errors import (
    ConvergenceWarning,
    ELBODecreaseError,
    NotConjugateError,
    NumericalError,
    PrecisionWarning,
)
from pyro_vi.results import load_result
from pyro_vi.svi import NonFiniteLossError, SVIResult, fit_svi

__version__ = "0.1.0"

__all__ = [
    "BayesianLinearRegression",
    "BetaBernoulli",
    "CAVIResult",
    "CAVIRun",
    "ConjugacyReport",
    "ConjugateModel",
    "ConvergenceWarning",
    "Diagnosis",
    "DirichletCategorical",
    "ELBODecreaseError",
    "ELBOEstimate",
    "FitInfo",
    "GammaPoisson",
    "GaussianMixture",
    "HierarchicalNormal",
    "ImageData",
    "Local",
    "LogLikEstimate",
    "MCMCComparison",
    "Minibatches",
    "NoObservedSitesWarning",
    "NonFiniteLossError",
    "NotConjugateError",
    "NumericalError",
    "PSISResult",
    "PrecisionWarning",
    "SVIResult",
    "UnivariateNormal",
    "VAE",
    "VAEConfig",
    "VAEResult",
    "__version__",
    "blend_params",
    "cavi",
    "compare_to_mcmc",
    "conjugacy",
    "diagnose",
    "elbo_estimate",
    "elbo_per_image",
    "fit_svi",
    "fit_vae",
    "inference_data_from_result",
    "iw_log_likelihood",
    "load_digits",
    "load_eight_schools",
    "load_mnist",
    "load_old_faithful",
    "load_result",
    "load_vae",
    "match_components",
    "psis_diagnostic",
    "save_vae",
    "svi_cavi",
    "to_inference_data",
]

# The models build on the engine above; the engine never imports them.
from pyro_vi.models.beta_bernoulli import BetaBernoulli  # noqa: E402
from pyro_vi.models.dirichlet_categorical import DirichletCategorical  # noqa: E402
from pyro_vi.models.gamma_poisson import GammaPoisson  # noqa: E402
from pyro_vi.models.gmm import GaussianMixture  # noqa: E402
from pyro_vi.models.hierarchical import HierarchicalNormal  # noqa: E402
from pyro_vi.models.linreg import BayesianLinearRegression  # noqa: E402
from pyro_vi.models.normal import UnivariateNormal  # noqa: E402
from pyro_vi.models.vae import VAE, VAEConfig, load_vae, save_vae  # noqa: E402
from pyro_vi.models.vae.evaluate import LogLikEstimate, elbo_per_image, iw_log_likelihood  # noqa: E402
from pyro_vi.models.vae.train import VAEResult, fit_vae  # noqa: E402
