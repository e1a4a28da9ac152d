"""Coordinate-ascent VI: the model contract, the batch engine and stochastic VI on it."""

from pyro_vi.cavi.engine import CAVIResult, CAVIRun, ConjugateModel, Local, cavi, local_pass
from pyro_vi.cavi.stochastic import blend_params, svi_cavi

__all__ = ["CAVIResult", "CAVIRun", "ConjugateModel", "Local", "blend_params", "cavi", "local_pass", "svi_cavi"]
