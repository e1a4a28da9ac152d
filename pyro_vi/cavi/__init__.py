"""Coordinate-ascent VI: the model contract, the batch engine and stochastic VI on it."""

from pyro_vi.cavi.engine import CAVIResult, CAVIRun, cavi
from pyro_vi.cavi.model import DEFAULT_CHUNK_BYTES, ConjugateModel, FittedGuide, Local, local_pass
from pyro_vi.cavi.stochastic import blend_params, svi_cavi

__all__ = ["DEFAULT_CHUNK_BYTES", "CAVIResult", "CAVIRun", "ConjugateModel", "FittedGuide", "Local",
           "blend_params", "cavi", "local_pass", "svi_cavi"]
