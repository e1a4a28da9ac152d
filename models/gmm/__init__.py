"""The Bayesian Gaussian mixture (Bishop 2006, §10.2): CAVI updates, Pyro program, SVI fit, summaries."""

from pyro_vi.models.gmm.model import GaussianMixture, GMMParams, GMMPrior, validate_points

__all__ = ["GMMParams", "GMMPrior", "GaussianMixture", "validate_points"]
