"""The Bayesian Gaussian mixture (Bishop 2006, §10.2): CAVI updates, Pyro program, SVI fit, summaries."""

from pyro_vi.models.gmm.model import GaussianMixture
from pyro_vi.models.gmm.params import GMMHyperparams, GMMParams

__all__ = ["GMMHyperparams", "GMMParams", "GaussianMixture"]
