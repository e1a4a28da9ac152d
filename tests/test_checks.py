"""One place for argument checks: the same mistake gets the same exception at every entry point.

The rule (pyro_vi/_checks.py): a value of the wrong kind (a float or a bool where an integer
belongs, a bool or a string where a number belongs) is a TypeError; the right kind out of range
is a ValueError; both name the argument. numpy scalars are accepted wherever Python ones are.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

from pyro_vi import (
    GaussianMixture,
    UnivariateNormal,
    cavi,
    elbo_estimate,
    fit_svi,
    load_old_faithful,
    psis_diagnostic,
    svi_cavi,
    to_inference_data,
)
from pyro_vi._checks import check_bool, check_dtype, check_int, check_real, check_seed

X = torch.tensor([0.9, 1.1, 1.3, 0.7], dtype=torch.float64)


def _model(x):
    mu = pyro.sample("mu", dist.Normal(x.new_tensor(0.0), 10.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def _guide(x):
    loc = pyro.param("loc", x.new_tensor(0.0))
    pyro.sample("mu", dist.Normal(loc, 1.0))


def _normal():
    return UnivariateNormal(mean_prior=0.0, mean_precision=1.0, precision_concentration=1.0,
                            precision_rate=1.0)


#: (entry point, integer option) pairs: call(value) runs the entry point with that option.
INTEGER_OPTIONS = {
    "cavi(max_iter)": lambda v: cavi(_normal(), X, max_iter=v, warn=False),
    "cavi(n_init)": lambda v: cavi(_normal(), X, n_init=v, warn=False),
    "cavi(seed)": lambda v: cavi(_normal(), X, seed=v, warn=False),
    "svi_cavi(batch_size)": lambda v: svi_cavi(_normal(), X, batch_size=v, num_epochs=1, seed=0),
    "svi_cavi(seed)": lambda v: svi_cavi(_normal(), X, batch_size=2, num_epochs=1, seed=v),
    "fit_svi(num_steps)": lambda v: fit_svi(_model, _guide, X, num_steps=v, progress=False),
    "fit_svi(seed)": lambda v: fit_svi(_model, _guide, X, num_steps=2, seed=v, progress=False),
    "elbo_estimate(num_particles)": lambda v: elbo_estimate(_model, _guide, X, num_particles=v),
    "psis_diagnostic(seed)": lambda v: psis_diagnostic(_model, _guide, X, num_samples=200, seed=v),
    "to_inference_data(num_samples)": lambda v: to_inference_data(_model, _guide, X, num_samples=v),
    "GaussianMixture(n_components)": lambda v: GaussianMixture(v),
}

#: (entry point, real option) pairs.
REAL_OPTIONS = {
    "cavi(tol)": lambda v: cavi(_normal(), X, tol=v, warn=False),
    "fit_svi(tol)": lambda v: fit_svi(_model, _guide, X, num_steps=2, tol=v, progress=False),
    "UnivariateNormal(mean_precision)": lambda v: UnivariateNormal(mean_precision=v),
    "GaussianMixture(weight_concentration)": lambda v: GaussianMixture(2, weight_concentration=v),
    "GaussianMixture(mean_precision)": lambda v: GaussianMixture(2, mean_precision=v),
}


@pytest.mark.parametrize("name", sorted(INTEGER_OPTIONS))
@pytest.mark.parametrize(("value", "error"), [(1.5, TypeError), (True, TypeError), ("3", TypeError),
                                              (-1, ValueError)])
def test_integer_options_share_one_exception_type(name, value, error):
    option = name[name.index("(") + 1:-1]
    with pytest.raises(error, match=option):
        INTEGER_OPTIONS[name](value)


@pytest.mark.parametrize("name", sorted(INTEGER_OPTIONS))
def test_integer_options_accept_numpy_integers(name):
    INTEGER_OPTIONS[name](np.int64(2))


@pytest.mark.parametrize("name", sorted(REAL_OPTIONS))
@pytest.mark.parametrize(("value", "error"), [(True, TypeError), ("0.1", TypeError),
                                              (math.nan, ValueError), (-1.0, ValueError)])
def test_real_options_share_one_exception_type(name, value, error):
    option = name[name.index("(") + 1:-1]
    with pytest.raises(error, match=option):
        REAL_OPTIONS[name](value)


@pytest.mark.parametrize("name", sorted(REAL_OPTIONS))
def test_real_options_accept_numpy_floats(name):
    REAL_OPTIONS[name](np.float64(0.5))


def test_numpy_seed_gives_the_same_fit_as_a_python_seed():
    x = load_old_faithful(standardize=True)
    a = cavi(GaussianMixture(3), x, seed=np.int64(3), warn=False)
    b = cavi(GaussianMixture(3), x, seed=3, warn=False)
    assert a.elbo == b.elbo
    pyro.clear_param_store()
    s1 = fit_svi(_model, AutoNormal(_model), X, num_steps=5, seed=np.int32(4), progress=False)
    pyro.clear_param_store()
    s2 = fit_svi(_model, AutoNormal(_model), X, num_steps=5, seed=4, progress=False)
    assert s1.history["loss"].tolist() == s2.history["loss"].tolist()


def test_the_helpers_name_the_argument_and_follow_the_rule():
    assert check_int("k", np.int16(4), minimum=1) == 4
    assert check_real("tol", np.float32(0.25), minimum=0.0) == 0.25
    assert check_seed("seed", None) is None
    assert check_bool("progress", None, optional=True) is None
    assert check_dtype("dtype", "float64") is torch.float64
    with pytest.raises(ValueError, match="dtype"):
        check_dtype("dtype", "float65")
    with pytest.raises(ValueError, match="dtype"):
        check_dtype("dtype", torch.int64)
    with pytest.raises(TypeError, match="dtype"):
        check_dtype("dtype", 64)
    with pytest.raises(ValueError, match="k must be <= 3"):
        check_int("k", 4, maximum=3)
    with pytest.raises(ValueError, match="rate must be > 0"):
        check_real("rate", 0.0, positive=True)
    with pytest.raises(ValueError, match="finite"):
        check_real("rate", math.inf)
    assert check_real("rate", math.inf, finite=False) == math.inf
    with pytest.raises(TypeError, match="progress"):
        check_bool("progress", 1)
