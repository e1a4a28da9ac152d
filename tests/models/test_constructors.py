"""Every model constructor checks dtype and device by name (issue 12 §7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_vi import cavi
from pyro_vi.models.beta_bernoulli import BetaBernoulli
from pyro_vi.models.dirichlet_categorical import DirichletCategorical
from pyro_vi.models.gamma_exponential import GammaExponential
from pyro_vi.models.gamma_poisson import GammaPoisson
from pyro_vi.models.gmm import GaussianMixture
from pyro_vi.models.hierarchical import HierarchicalNormal
from pyro_vi.models.linreg import BayesianLinearRegression
from pyro_vi.models.normal import UnivariateNormal

MAKERS = {
    "gmm": lambda **k: GaussianMixture(2, **k),
    "normal": lambda **k: UnivariateNormal(**k),
    "hierarchical": lambda **k: HierarchicalNormal(mean_prior=0.0, mean_scale=1.0,
                                                   precision_concentration=1.0,
                                                   precision_rate=1.0, **k),
    "linreg": lambda **k: BayesianLinearRegression(**k),
    "beta_bernoulli": lambda **k: BetaBernoulli(**k),
    "gamma_poisson": lambda **k: GammaPoisson(**k),
    "gamma_exponential": lambda **k: GammaExponential(**k),
    "dirichlet_categorical": lambda **k: DirichletCategorical(1.0, n_categories=3, **k),
}


@pytest.mark.parametrize("name", list(MAKERS))
def test_dtype_strings_are_accepted_and_bad_ones_named(name):
    assert MAKERS[name](dtype="float64").dtype == torch.float64
    with pytest.raises(ValueError, match="^dtype must be a floating dtype"):
        MAKERS[name](dtype="float65")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
@pytest.mark.parametrize("name", list(MAKERS))
def test_cuda_without_cuda_is_a_named_value_error(name):
    # HEAD accepted it and failed later inside torch ("Torch not compiled with CUDA enabled")
    with pytest.raises(ValueError, match=r"^device='cuda' but CUDA is not available"):
        MAKERS[name](device="cuda")


@pytest.mark.parametrize("name", list(MAKERS))
def test_unknown_or_wrong_kind_of_device_is_named(name):
    with pytest.raises(ValueError, match="^device must name a torch device"):
        MAKERS[name](device="nope")
    with pytest.raises(TypeError, match="^device must be a torch.device or a string"):
        MAKERS[name](device=3.5)
    assert MAKERS[name](device="cpu").device == torch.device("cpu")


def test_numpy_integer_seed_gives_the_same_fit():
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = cavi(GaussianMixture(2), x, seed=np.int64(3), n_init=2)
    b = cavi(GaussianMixture(2), x, seed=3, n_init=2)
    assert a.elbo == b.elbo
