"""Can the fit be trusted: ELBO estimates, PSIS k-hat, ArviZ export, the NUTS comparison, the report."""

from pyro_vi.diagnostics.elbo import ELBOEstimate, elbo_estimate
from pyro_vi.diagnostics.inference_data import (
    FitInfo,
    NoObservedSitesWarning,
    inference_data_from_result,
    to_inference_data,
)
from pyro_vi.diagnostics.nuts import MCMCComparison, compare_to_mcmc, match_components
from pyro_vi.diagnostics.psis import PSISResult, psis_diagnostic
from pyro_vi.diagnostics.report import Diagnosis, diagnose

__all__ = [
    "Diagnosis",
    "ELBOEstimate",
    "FitInfo",
    "MCMCComparison",
    "NoObservedSitesWarning",
    "PSISResult",
    "compare_to_mcmc",
    "diagnose",
    "elbo_estimate",
    "inference_data_from_result",
    "match_components",
    "psis_diagnostic",
    "to_inference_data",
]
