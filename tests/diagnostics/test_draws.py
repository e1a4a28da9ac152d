"""The guide-draws engine and model inspection: every per-draw score is recomputed by hand
with torch.distributions, in the vectorised path and in the one-draw-at-a-time fallback, with
discrete latents guided, enumerated, or summed out on request.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from _trust_models import F64, exact_guide, normal_data, normal_model
from pyro.ops.indexing import Vindex

from pyro_vi import NumericalError
from pyro_vi.diagnostics._draws import draw_from_guide, seeded
from pyro_vi.diagnostics._sites import inspect_model

X = torch.tensor([-2.0, -1.5, 2.0, 2.5, 3.0], dtype=F64)
W0, LOC0 = torch.tensor([3.0, 4.0], dtype=F64), torch.tensor([-2.0, 2.5], dtype=F64)


def mixture(x, *, vectorisable=True):
    w = pyro.sample("w", dist.Dirichlet(torch.ones(2, dtype=F64)))
    with pyro.plate("components", 2):
        loc = pyro.sample("loc", dist.Normal(torch.zeros((), dtype=F64), 5.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        mu = Vindex(loc.unsqueeze(-2))[..., z] if vectorisable else loc[z]
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)


def guide_globals(x):
    pyro.sample("w", dist.Dirichlet(W0))
    with pyro.plate("components", 2):
        pyro.sample("loc", dist.Normal(LOC0, 0.3))


def guide_mean_field(x):
    guide_globals(x)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Categorical(logits=torch.zeros(len(x), 2, dtype=F64)))


def _by_hand(w, loc, z=None):
    """log prior, log q of the globals, pointwise marginal log-lik, log p(x | z)."""
    prior = dist.Dirichlet(torch.ones(2, dtype=F64)).log_prob(w) + \
        dist.Normal(torch.zeros((), dtype=F64), 5.0).log_prob(loc).sum()
    log_q = dist.Dirichlet(W0).log_prob(w) + dist.Normal(LOC0, 0.3).log_prob(loc).sum()
    joint = w.log()[:, None] + dist.Normal(loc[:, None], 1.0).log_prob(X)  # (K, N)
    pointwise = torch.logsumexp(joint, 0)
    given_z = None if z is None else joint.gather(0, z[None]).sum()
    return prior, log_q, pointwise, given_z


def test_inspect_model_records_sites_plates_and_local_discrete():
    s = inspect_model(mixture, X)
    assert s.latent == ("w", "loc", "z")
    assert s.observed == ("obs",)
    assert s.plates == {"components": 2, "data": 5}
    assert s.max_plate_nesting == 1
    assert s.local_discrete == ("z",)
    assert s.sites["loc"].dims == ("components",)
    assert s.sites["w"].dims == (None,)
    assert s.sites["z"].enumerable
    assert s.sites["z"].discrete
    assert torch.equal(s.observed_values["obs"], X)


@pytest.mark.parametrize("vectorisable", [True, False])
def test_enumerated_guide_scores_are_exact(vectorisable):
    def model(x):
        mixture(x, vectorisable=vectorisable)

    d = draw_from_guide(model, guide_globals, X, num_samples=6, seed=0, pointwise=True)
    assert d.vectorised == vectorisable  # loc[z] does not broadcast: one draw at a time
    assert d.marginalised == ("z",)
    assert set(d.values) == {"w", "loc"}
    for s in range(6):
        prior, log_q, pointwise, _ = _by_hand(d.values["w"][s], d.values["loc"][s])
        assert float(d.log_p[s]) == pytest.approx(float(prior + pointwise.sum()), rel=1e-12)
        assert float(d.log_q[s]) == pytest.approx(float(log_q), rel=1e-12)
        torch.testing.assert_close(d.log_lik["obs"][s], pointwise, rtol=1e-12, atol=0)


@pytest.mark.parametrize("marginalise_local", [False, True])
def test_mean_field_guide_scores_are_exact(marginalise_local):
    d = draw_from_guide(mixture, guide_mean_field, X, num_samples=6, seed=1, pointwise=True,
                        marginalise_local=marginalise_local)
    assert d.vectorised
    assert d.values["z"].shape == (6, 5)
    assert d.values["z"].dtype == torch.long
    log_qz = -5 * math.log(2)
    for s in range(6):
        z = d.values["z"][s]
        prior, log_q, pointwise, given_z = _by_hand(d.values["w"][s], d.values["loc"][s], z)
        torch.testing.assert_close(d.log_lik["obs"][s], pointwise, rtol=1e-12, atol=0)
        if marginalise_local:
            expected_p, expected_q = prior + pointwise.sum(), log_q
        else:
            expected_p, expected_q = prior + given_z, log_q + log_qz
        assert float(d.log_p[s]) == pytest.approx(float(expected_p), rel=1e-12)
        assert float(d.log_q[s]) == pytest.approx(float(expected_q), rel=1e-12)


def test_seeded_draws_repeat_and_chunks_do_not_change_them():
    y = normal_data(n=4)
    a = draw_from_guide(normal_model, exact_guide, y, num_samples=7, seed=5)
    b = draw_from_guide(normal_model, exact_guide, y, num_samples=7, seed=5)
    torch.testing.assert_close(a.values["mu"], b.values["mu"], rtol=0, atol=0)
    c = draw_from_guide(normal_model, exact_guide, y, num_samples=7, seed=5, chunk_size=3)
    assert c.values["mu"].shape == (7, 2)
    torch.testing.assert_close(c.log_ratio, c.log_ratio.mean().expand(7), rtol=1e-12, atol=0)


def test_seeded_restores_every_global_rng():
    import random

    import numpy as np

    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    with seeded(3):
        torch.randn(3), np.random.rand(), random.random()
    assert torch.equal(torch.get_rng_state(), before[0])
    assert (np.random.get_state()[1] == before[1]).all()
    assert random.getstate() == before[2]


def test_nan_log_density_is_a_numerical_error():
    def model():
        a = pyro.sample("a", dist.Normal(torch.zeros((), dtype=F64), 1.0))
        pyro.factor("broken", a * float("nan"))

    def guide():
        pyro.sample("a", dist.Normal(torch.zeros((), dtype=F64), 1.0))

    # Pyro's validation would stop this earlier; without it the NaN must not pass silently.
    with pyro.validation_enabled(False), \
            pytest.raises(NumericalError, match=r"draw 0: log p\(x, z\) is nan"):
        draw_from_guide(model, guide, num_samples=3, seed=0)


def test_subsampled_plate_is_a_value_error():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=F64), 1.0))
        with pyro.plate("data", len(y), subsample_size=2) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    with pytest.raises(ValueError, match="subsampled"):
        inspect_model(model, torch.zeros(5, dtype=F64))


@pytest.mark.parametrize("bad", ["model", "guide"])
def test_non_callable_is_a_type_error(bad):
    args = {"model": normal_model, "guide": exact_guide} | {bad: 3}
    with pytest.raises(TypeError, match=f"{bad} must be callable"):
        draw_from_guide(args["model"], args["guide"], normal_data(), num_samples=2)


def test_an_unplated_batch_dimension_is_a_named_error():
    # The regression's mean broadcasts to (8, N) against obs of shape (N,): one extra batch
    # dim that no plate declares (Pyro's ELBOs reject the site too). It used to surface as
    # a RuntimeError from a reshape when drawing one sample at a time.
    from pyro_vi.diagnostics._draws import UnplatedBatchError

    x = torch.linspace(-1, 1, 30, dtype=F64)
    y = 2 * x

    def model(x, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(8, dtype=F64), 1.0).to_event(1))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(w[:, None] * x, 1.0), obs=y)

    def guide(x, y):
        pyro.sample("w", dist.Normal(torch.zeros(8, dtype=F64), 1.0).to_event(1))

    with pytest.raises(UnplatedBatchError, match=r"site 'y': log_prob has shape \(8, 30\)"):
        draw_from_guide(model, guide, x, y, num_samples=10, seed=0)
    assert issubclass(UnplatedBatchError, ValueError)


def test_a_model_that_does_not_broadcast_over_the_draws_plate_is_scored_per_draw_exactly():
    # einsum("nf,...f->...n") on a global w of shape (draws, 1, 3) gives a mean of shape
    # (draws, 1, N): under the draws plate Pyro broadcasts y's log-prob to (draws, draws, N),
    # and summing it per row counted the likelihood once per draw of the chunk (a log-ratio
    # sd of ~735 nats instead of ~1 on this case). Such a log-prob has more batch dims than
    # plates, so the draws are now scored one at a time, and equal an independent
    # computation with torch.distributions (float64: 1e-9).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g, dtype=F64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=F64) + torch.randn(40, generator=g, dtype=F64)
    loc = torch.tensor([1.0, -1.9, 0.6], dtype=F64)
    scale = torch.tensor([0.05, 0.06, 0.06], dtype=F64)

    def model(x, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=F64), 5.0).to_event(1))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(torch.einsum("nf,...f->...n", x, w), 1.0), obs=y)

    def guide(x, y):
        pyro.sample("w", dist.Normal(loc, scale).to_event(1))

    d = draw_from_guide(model, guide, x, y, num_samples=300, seed=0)
    w = d.values["w"]
    log_q = torch.distributions.Normal(loc, scale).log_prob(w).sum(-1)
    five, one = torch.tensor(5.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    log_p = (torch.distributions.Normal(torch.zeros((), dtype=F64), five).log_prob(w).sum(-1)
             + torch.distributions.Normal(w @ x.T, one).log_prob(y).sum(-1))
    torch.testing.assert_close(d.log_ratio, log_p - log_q, rtol=1e-9, atol=1e-9)
    assert not d.vectorised
