"""The engine's messages on numerical trouble (issue 12 §1): precision problems, non-finite terms."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from pyro_vi import cavi
from pyro_vi.cavi.model import data_roundoff
from pyro_vi.errors import ELBODecreaseError, NumericalError, PrecisionWarning
from pyro_vi.factors import NormalWishart
from pyro_vi.models.gmm import GaussianMixture
from pyro_vi.models.gmm.params import GMMParams

F64 = torch.float64


def _x(n: int = 200, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=F64)
    x[: n // 2] += 4
    return x


class _Nudged(GaussianMixture):
    """Moves every mean by ``shift`` in sweep 3's global step; ``noise`` is its round-off claim."""

    def __init__(self, *args: Any, shift: float, noise: float | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shift, self.noise, self.calls = shift, noise, [0]

    def global_step(self, stats, params):
        new = super().global_step(stats, params)
        self.calls[0] += 1
        if self.calls[0] == 4:
            c = new.components
            new = GMMParams(new.weights, NormalWishart(c.loc + self.shift, c.precision_scale,
                                                       c.scale_tril, c.df))
        return new

    def elbo_roundoff(self, data):
        return self.noise


def test_a_decrease_within_the_datas_round_off_is_called_a_precision_problem():
    # the run keeps its fit: it stops where the dtype stops resolving, as converged, and says so
    with pytest.warns(PrecisionWarning, match="precision problem") as record:
        fit = cavi(_Nudged(2, shift=0.5, noise=1e6), _x(), max_iter=20, warn=False)
    assert fit.converged
    assert fit.n_steps == 3  # the 4th global step (the start is the 1st) lowered the ELBO
    msg = str(record[0].message)
    assert "update is wrong" not in msg
    assert "centre and scale the data" in msg
    assert "float64" in msg


def test_a_decrease_beyond_the_round_off_still_blames_an_update():
    with pytest.raises(ELBODecreaseError, match="an update is wrong") as err:
        cavi(_Nudged(2, shift=0.5, noise=None), _x(), max_iter=20, warn=False)
    assert "precision problem" not in str(err.value)


def test_data_roundoff_grows_with_the_offset_squared():
    # 10 eps sum_j N (1 + |mean_j| / sd_j)^2: the formula, evaluated independently
    x = _x()
    y = x + torch.tensor([1e6, 0.0], dtype=F64)
    ratio = (y.mean(0).abs() / y.std(0))
    want = 10 * torch.finfo(F64).eps * float(x.shape[0] * (1 + ratio).square().sum())
    assert data_roundoff(y) == pytest.approx(want, rel=1e-12)
    assert data_roundoff(y) > 1e9 * data_roundoff(x - x.mean(0))


class _ZeroPriorPrecision(GaussianMixture):
    """A prior whose mean precision is 0: q is finite, but its KL to the prior is infinite."""

    def prior_params(self):
        p = super().prior_params()
        c = p.components
        return GMMParams(p.weights, NormalWishart(c.loc, torch.zeros_like(c.precision_scale),
                                                  c.scale_tril, c.df))


def test_a_non_finite_global_term_is_named_at_iteration_0():
    # HEAD: "CAVI iteration 0: the ELBO is inf" with no term named (and the global part was
    # not even checked); now the factor and its KL.
    with pytest.raises(NumericalError, match=r"CAVI iteration 0: the ELBO is -?inf: the global "
                                             r"KL of factor 'components' \(NormalWishart\)"):
        cavi(_ZeroPriorPrecision(2), _x(), max_iter=5, warn=False)


class _NanLocal(GaussianMixture):
    def local_step(self, data, params):
        out = super().local_step(data, params)
        return type(out)(out.stats, out.elbo * float("nan"))


def test_a_non_finite_local_share_is_named():
    with pytest.raises(NumericalError, match="CAVI iteration 0: the ELBO is nan: the local step's share"):
        cavi(_NanLocal(2), _x(), max_iter=5, warn=False)
