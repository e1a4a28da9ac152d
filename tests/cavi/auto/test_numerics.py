"""Raw-unit data: derived models compute location factors in centred coordinates.

The hand-written models centre their statistics (``UnivariateNormal.origin``, the mixture's
reference point), so they survive offsets of 1e9 and scales from 1e-6 to 1e6. The derived
model must reach the same fixed point on the same data: each case fits both, from the same
start where it matters, and compares the ELBOs. Deterministic (seeded data, closed-form
updates): the tolerance 1e-9 relative is far above float64 round-off of these sums (about
1e-16 * N * offset / spread = 2e-5 nats absolute at an offset of 1e9 over 300 points, i.e.
~2e-8 relative of ELBOs of size 1e3) and far below a lost digit.
"""

from __future__ import annotations

import pytest
import torch

from pyro_vi import cavi
from pyro_vi.cavi.kmeans import initial_responsibilities
from pyro_vi.models.gmm.model import GaussianMixture
from pyro_vi.models.normal import UnivariateNormal

F64 = torch.float64
CASES = [(0.0, 1.0), (1e9, 1.0), (0.0, 1e-6), (0.0, 1e6), (1e6, 1e-3)]


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1.0)


@pytest.mark.parametrize(("offset", "scale"), CASES)
def test_normal_mean_field_survives_raw_units(offset, scale):
    g = torch.Generator().manual_seed(0)
    x = offset + scale * torch.randn(200, generator=g, dtype=F64)
    m = UnivariateNormal(mean_prior=offset, mean_precision=1e-2 / scale**2,
                         precision_concentration=1.0, precision_rate=scale**2)
    hand = cavi(m, x, tol=1e-13, max_iter=1000)
    derived = cavi(m.prepare(x)[0].model, x, tol=1e-13, max_iter=1000, joint=False)
    assert rel(derived.elbo, hand.elbo) <= 1e-9, (derived.elbo, hand.elbo)
    got = float(derived.posterior("loc").mean)
    want = float(hand.params.loc.mean())
    assert abs(got - want) <= 1e-9 * scale, (got, want)


@pytest.mark.parametrize(("offset", "scale"), CASES)
def test_mixture_survives_raw_units(offset, scale):
    g = torch.Generator().manual_seed(1)
    x = offset + scale * (torch.randn(300, 2, generator=g, dtype=F64)
                          + 4.0 * (torch.arange(300) % 2)[:, None])
    gmm, xp = GaussianMixture(2).prepare(x)
    # one start for both, drawn on centred data (k-means++ distances of raw 1e9 values
    # would cancel): the fixed points must then agree
    resp = initial_responsibilities(xp - xp.mean(0), 2, method="kmeans++",
                                    generator=torch.Generator().manual_seed(0))
    hand = cavi(GaussianMixture(2, init=resp), x, tol=1e-12, max_iter=500)
    derived = cavi(gmm.model, xp, init=resp, tol=1e-12, max_iter=500)
    assert rel(derived.elbo, hand.elbo) <= 1e-9, (derived.elbo, hand.elbo)
