"""A linear-Gaussian VAE (probabilistic PCA decoder) whose log p(x) and ELBO are closed form.

Decoder x = W z + b + N(0, s^2 I), z ~ N(0, I); encoder q(z|x) = N(A x + a, diag(sigma^2)) with
a constant sigma. With W = Q diag(c) (orthonormal Q) the exact posterior is diagonal,
p(z|x) = N(M^-1 W^T (x - b) / s^2, M^-1) with M = I + W^T W / s^2 = diag(1 + c^2 / s^2)
(Tipping & Bishop 1999, eqs. 6-7), so the encoder can be made exact.
"""

from __future__ import annotations

import math

import torch

from pyro_vi.models.vae.model import VAE, VAEConfig

D, L, S = 5, 2, 0.5


def linear_vae(*, exact: bool, seed: int = 0) -> tuple[VAE, dict[str, torch.Tensor]]:
    """A hidden=() Gaussian VAE with hand-set weights; returns it and its float64 parameters."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, L, generator=g, dtype=torch.float64))
    c = torch.tensor([1.5, 0.8], dtype=torch.float64)
    w = q * c
    b = torch.randn(D, generator=g, dtype=torch.float64)
    post_var = 1.0 / (1.0 + c**2 / S**2)
    a_mat = post_var[:, None] * w.T / S**2
    log_sigma = 0.5 * torch.log(post_var)
    if not exact:  # a deliberately imperfect encoder: shrunk mean map, too-wide variance
        a_mat = 0.7 * a_mat
        log_sigma = log_sigma + 0.4
    a_vec = -a_mat @ b
    p = {"W": w, "b": b, "A": a_mat, "a": a_vec, "log_sigma": log_sigma}
    vae = VAE(VAEConfig(input_dim=D, latent_dim=L, hidden=(), likelihood="gaussian", scale=S,
                        binarize=None))
    with torch.no_grad():
        enc, dec = vae.encoder.net[0], vae.decoder.net[0]
        enc.weight.copy_(torch.cat([a_mat, torch.zeros(L, D, dtype=torch.float64)]))
        enc.bias.copy_(torch.cat([a_vec, log_sigma]))
        dec.weight.copy_(w)
        dec.bias.copy_(b)
    return vae, p


def sample_data(p: dict[str, torch.Tensor], n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, L, generator=g, dtype=torch.float64)
    return z @ p["W"].T + p["b"] + S * torch.randn(n, D, generator=g, dtype=torch.float64)


def exact_log_px(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """log N(x | b, W W^T + s^2 I), float64, per row."""
    cov = p["W"] @ p["W"].T + S**2 * torch.eye(D, dtype=torch.float64)
    mvn = torch.distributions.MultivariateNormal(p["b"], covariance_matrix=cov)
    return mvn.log_prob(x.double())


def closed_form_elbo(x: torch.Tensor, enc_w: torch.Tensor, enc_b: torch.Tensor,
                     dec_w: torch.Tensor, dec_b: torch.Tensor) -> torch.Tensor:
    """ELBO per row for the encoder Linear(D, 2L) and decoder Linear(L, D), any dtype.

    E_q log N(x|Wz+b, s^2 I) = -D/2 log(2 pi s^2)
                               - (|x - W mu - b|^2 + tr(W diag(sig^2) W^T)) / (2 s^2)
    E_q log N(z|0, I)        = -L/2 log(2 pi) - (|mu|^2 + sum sig^2) / 2
    H[q]                     = sum(log sig) + L/2 log(2 pi e)
    """
    out = x @ enc_w.T + enc_b
    mu, log_sig = out[:, :L], out[:, L:]
    var = torch.exp(2 * log_sig)
    resid = x - mu @ dec_w.T - dec_b
    trace = (var * (dec_w**2).sum(0)).sum(-1)  # tr(W diag(v) W^T) = sum_j v_j |W_:j|^2
    e_lik = -0.5 * D * math.log(2 * math.pi * S**2) - ((resid**2).sum(-1) + trace) / (2 * S**2)
    e_prior = -0.5 * L * math.log(2 * math.pi) - 0.5 * ((mu**2).sum(-1) + var.sum(-1))
    entropy = log_sig.sum(-1) + 0.5 * L * math.log(2 * math.pi * math.e)
    return e_lik + e_prior + entropy
