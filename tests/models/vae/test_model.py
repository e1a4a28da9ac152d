"""The VAE's model/guide: densities vs Pyro's traces, plate scaling, gradients, save/load, training.

Failure budget: the gradient test is 25 components at 4.5 sigma (Bonferroni 25 * 6.8e-6 =
1.7e-4); the training tests use margins > 10x the seed-to-seed spread measured for them.
"""

from __future__ import annotations

import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from _lingauss import D, L, closed_form_elbo, linear_vae, sample_data
from pyro.infer import Trace_ELBO

from pyro_vi.models.vae.model import VAE, VAEConfig, load_vae, save_vae

# ---- config ------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"input_dim": 0}, "input_dim must be a positive int"),
    ({"input_dim": 4, "latent_dim": 2.0}, "latent_dim must be a positive int"),
    ({"input_dim": 4, "hidden": (8, 0)}, "hidden must hold positive ints"),
    ({"input_dim": 4, "likelihood": "poisson"}, "likelihood must be"),
    ({"input_dim": 4, "scale": 1.0}, "scale is for the gaussian likelihood only"),
    ({"input_dim": 4, "likelihood": "gaussian", "binarize": None, "scale": -1.0},
     "scale must be positive"),
    ({"input_dim": 4, "likelihood": "gaussian"}, "binarize needs likelihood='bernoulli'"),
    ({"input_dim": 4, "binarize": "sometimes"}, "binarize must be"),
    ({"input_dim": 4, "device": "warp-drive"}, "is not a torch device"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VAEConfig(**kwargs)


def test_constructor_needs_a_config():
    with pytest.raises(TypeError, match="config must be a VAEConfig"):
        VAE({"input_dim": 4})


def test_prepare_rejects_bad_data_before_training():
    vae = VAE(VAEConfig(input_dim=3, hidden=(4,)))
    with pytest.raises(ValueError, match=r"x_train: values must lie in \[0, 1\]"):
        vae.prepare(torch.tensor([[0.0, 0.5, 1.5]]), name="x_train")
    with pytest.raises(ValueError, match="expected 3 columns"):
        vae.batches(torch.zeros(5, 4), batch_size=2)
    with pytest.raises(ValueError, match="NaN or inf"):
        vae.batches(torch.tensor([[0.0, math.nan, 1.0]]), batch_size=1)
    gauss = VAE(VAEConfig(input_dim=2, likelihood="gaussian", binarize=None, hidden=(4,)))
    assert gauss.prepare(torch.tensor([[-3.0, 7.0]])).tolist() == [[-3.0, 7.0]]


# ---- densities ---------------------------------------------------------------------------


@pytest.mark.parametrize("config", [
    VAEConfig(input_dim=6, latent_dim=3, hidden=(5,)),
    VAEConfig(input_dim=6, latent_dim=3, hidden=(5, 4), binarize=None),
    VAEConfig(input_dim=6, latent_dim=3, likelihood="gaussian", scale=0.3, binarize=None),
    VAEConfig(input_dim=6, latent_dim=3, likelihood="gaussian", scale=None, binarize=None),
], ids=["bernoulli-binary", "bernoulli-grey", "gaussian-fixed", "gaussian-learned"])
def test_log_weights_equal_pyro_model_minus_guide_log_density(config):
    vae = VAE(config)
    if vae.decoder.log_scale is not None:
        with torch.no_grad():
            vae.decoder.log_scale.fill_(-0.7)
    x = vae.prepare(torch.rand(4, 6, generator=torch.Generator().manual_seed(0)))
    gen = torch.Generator().manual_seed(5)
    lw = vae.log_weights(x, 3, generator=gen)
    eps = torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(5))
    loc, scale = vae.encoder(x)
    for j in range(3):  # Pyro's own log densities at the same z, per image
        z = (loc + scale * eps[j]).detach()
        g = poutine.trace(poutine.condition(vae.guide, data={"z": z})).get_trace(x)
        m = poutine.trace(poutine.condition(vae.model, data={"z": z})).get_trace(x)
        g.compute_log_prob()
        m.compute_log_prob()
        expect = m.nodes["z"]["log_prob"] + m.nodes["x"]["log_prob"] - g.nodes["z"]["log_prob"]
        torch.testing.assert_close(lw[j], expect, rtol=1e-5, atol=1e-4)


def test_plate_scales_the_minibatch_to_the_data_set():
    vae = VAE(VAEConfig(input_dim=4, hidden=(3,)))
    x = vae.prepare(torch.rand(5, 4))
    tr = poutine.trace(vae.model).get_trace(x, num_data=40)
    assert tr.nodes["x"]["scale"] == 8.0  # N / n = 40 / 5
    assert tr.nodes["z"]["scale"] == 8.0
    assert poutine.trace(vae.model).get_trace(x).nodes["x"]["scale"] == 1.0
    # the same draws give a full-data loss estimate exactly N/n times the batch's own loss
    pyro.set_rng_seed(0)
    scaled = Trace_ELBO().loss(vae.model, vae.guide, x, num_data=40)
    pyro.set_rng_seed(0)
    plain = Trace_ELBO().loss(vae.model, vae.guide, x)
    assert scaled == pytest.approx(8.0 * plain, rel=1e-6)
    guide_tr = poutine.trace(vae.guide).get_trace(x, num_data=40)
    assert guide_tr.nodes["z"]["fn"].has_rsample  # pathwise gradients, no score function


def test_reparameterized_gradient_matches_the_closed_form_gradient():
    # linear-Gaussian VAE: the ELBO is closed form in (encoder, decoder) weights, so autograd
    # through it is the exact gradient; Pyro's Trace_ELBO gradient (through z = mu + sigma*eps
    # in the real guide) must agree component-wise within 4.5 Monte-Carlo standard errors.
    vae, p = linear_vae(exact=False)
    x = sample_data(p, 4).float()
    params = [vae.encoder.net[0].weight, vae.encoder.net[0].bias,
              vae.decoder.net[0].weight, vae.decoder.net[0].bias]
    exact_params = [q.detach().double().requires_grad_() for q in params]
    elbo = closed_form_elbo(x.double(), *exact_params).sum()
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(-elbo, exact_params)])
    draws = []
    estimator = Trace_ELBO(num_particles=4, vectorize_particles=True)
    for _ in range(500):
        for q in params:
            q.grad = None
        estimator.loss_and_grads(vae.model, vae.guide, x)
        draws.append(torch.cat([q.grad.flatten() for q in params]).double())
    draws_t = torch.stack(draws)
    mean, se = draws_t.mean(0), draws_t.std(0) / math.sqrt(len(draws))
    assert exact.numel() == (2 * L * D + 2 * L) + (D * L + D)
    z = (mean - exact).abs() / se.clamp_min(1e-12)
    assert float(z.max()) < 4.5, z
    assert float((exact.abs() / se).max()) > 20  # the test has power: gradients are far from 0
    enc_count = 2 * L * D + 2 * L
    assert float(se[:enc_count].max()) > 0  # the encoder's gradient is stochastic: via z


# ---- parameters, devices, save/load ------------------------------------------------------


def test_a_second_vae_with_the_same_name_trains_its_own_weights():
    first = VAE(VAEConfig(input_dim=4, hidden=(3,), seed=1))
    before = first.encoder.net[0].weight.detach().clone()
    second = VAE(VAEConfig(input_dim=4, hidden=(3,), seed=2))
    start = second.encoder.net[0].weight.detach().clone()
    svi = pyro.infer.SVI(second.model, second.guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    svi.step(second.prepare(torch.rand(6, 4)))
    assert not torch.equal(second.encoder.net[0].weight, start)
    assert torch.equal(first.encoder.net[0].weight, before)


def test_weights_are_float32_on_the_configured_device_and_seeded():
    a = VAE(VAEConfig(input_dim=4, hidden=(3,), seed=3, device="cpu"))
    b = VAE(VAEConfig(input_dim=4, hidden=(3,), seed=3))
    c = VAE(VAEConfig(input_dim=4, hidden=(3,), seed=4))
    for q in a.parameters():
        assert q.dtype == torch.float32
        assert q.device == torch.device("cpu")
    assert torch.equal(a.decoder.net[0].weight, b.decoder.net[0].weight)
    assert not torch.equal(a.decoder.net[0].weight, c.decoder.net[0].weight)
    assert a.prepare(torch.rand(2, 4)).device == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="device='cuda', but CUDA is not available"):
        VAE(VAEConfig(input_dim=4, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_runs_model_guide_and_evaluation():  # pragma: no cover - GPU machines only
    from pyro_vi.models.vae.evaluate import iw_log_likelihood

    vae = VAE(VAEConfig(input_dim=4, hidden=(3,), device="cuda"))
    x = vae.prepare(torch.rand(6, 4))
    assert x.is_cuda
    assert all(q.is_cuda for q in vae.parameters())
    Trace_ELBO().loss_and_grads(vae.model, vae.guide, x)
    assert math.isfinite(iw_log_likelihood(vae, x, k=10).value)


def test_save_and_load_round_trip(tmp_path):
    vae = VAE(VAEConfig(input_dim=5, latent_dim=3, hidden=(4,), likelihood="gaussian",
                        binarize=None, seed=9))
    with torch.no_grad():
        vae.decoder.log_scale.fill_(-1.25)
    path = save_vae(tmp_path / "sub" / "vae.pt", vae, data="digits", split_seed=7,
                    extra={"epochs": 3})
    pyro.clear_param_store()
    back = load_vae(path, device="cpu")
    assert back.vae.config == vae.config
    assert (back.data, back.split_seed, back.extra) == ("digits", 7, {"epochs": 3})
    for (k1, v1), (k2, v2) in zip(vae.state_dict().items(), back.vae.state_dict().items(),
                                  strict=True):
        assert k1 == k2
        assert torch.equal(v1, v2)
    x = torch.rand(3, 5)
    lw1 = vae.log_weights(x, 2, generator=torch.Generator().manual_seed(0))
    lw2 = back.vae.log_weights(x, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(lw1, lw2)


def test_load_names_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_vae(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt is not a VAE saved by"):
        load_vae(tmp_path / "other.pt")


def test_learned_gaussian_scale_is_a_trained_parameter():
    vae = VAE(VAEConfig(input_dim=4, hidden=(3,), likelihood="gaussian", binarize=None))
    assert "vae_decoder$$$log_scale" in pyro.get_param_store().keys()
    x = vae.prepare(0.1 * torch.randn(8, 4, generator=torch.Generator().manual_seed(0)))
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    for _ in range(5):
        svi.step(x)
    # data with sd 0.1 against an initial scale of 1: the likelihood pulls log_scale down
    assert vae.decoder.log_scale.detach().item() < -0.3
    fixed = VAE(VAEConfig(input_dim=4, hidden=(3,), likelihood="gaussian", binarize=None,
                          scale=0.2), name="fixed")
    assert fixed.decoder.log_scale is None
    assert fixed.decoder.scale() == 0.2
