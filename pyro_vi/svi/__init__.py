"""The SVI runtime around Pyro's own ``SVI``: the loop, its hooks, stopping rules, checkpoints, the guard."""

from pyro_vi.svi.guard import NonFiniteLossError
from pyro_vi.svi.loop import SVIRun, SVIState
from pyro_vi.svi.runner import SVIResult, fit_svi

__all__ = ["NonFiniteLossError", "SVIResult", "SVIRun", "SVIState", "fit_svi"]
