"""Seed and clear global state before every test, as Pyro's and numpyro's suites do."""

from __future__ import annotations

import matplotlib
import pyro
import pytest
import torch

matplotlib.use("Agg")

# Tests run in two xdist workers on two cores: one intra-op thread each avoids oversubscription
# (measured 7x slower with torch's default threads on a loaded 2-core machine).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_clear():
    """Every test starts from seed 0, an empty param store and float32 torch defaults."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    default = torch.get_default_dtype()
    yield
    torch.set_default_dtype(default)
    pyro.clear_param_store()
