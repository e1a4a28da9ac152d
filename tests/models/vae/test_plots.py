"""VAE figures: each writes a readable PNG; the latent plot projects by PCA when L > 2."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import torch

from pyro_vi.models.vae.model import VAE, VAEConfig
from pyro_vi.models.vae.plots import (
    plot_elbo_curves,
    plot_latent_space,
    plot_prior_samples,
    plot_reconstructions,
)


def _png(path) -> np.ndarray:
    img = mpimg.imread(path)
    assert img.ndim == 3
    assert img.shape[0] > 100
    assert img.shape[1] > 100
    assert float(img[..., :3].std()) > 0.01  # something was drawn, not a blank canvas
    return img


@pytest.mark.parametrize("latent_dim", [1, 2, 5])
def test_every_figure_is_written(tmp_path, latent_dim):
    vae = VAE(VAEConfig(input_dim=16, latent_dim=latent_dim, hidden=(8,)))
    x = vae.prepare(torch.rand(30, 16, generator=torch.Generator().manual_seed(0)))
    y = torch.arange(30) % 10
    _png(plot_reconstructions(vae, x, tmp_path / "r.png", image_shape=(4, 4), n=6))
    _png(plot_prior_samples(vae, tmp_path / "p.png", image_shape=(4, 4), n=20))
    _png(plot_latent_space(vae, x, y, tmp_path / "sub" / "z.png"))
    curves = pd.DataFrame({"epoch": [0, 1, 2], "train_elbo": [np.nan, -30.0, -25.0],
                           "test_elbo": [-40.0, -29.0, -26.0]})
    _png(plot_elbo_curves(curves, tmp_path / "c.png"))


def test_gaussian_vae_figures(tmp_path):
    vae = VAE(VAEConfig(input_dim=4, likelihood="gaussian", binarize=None, hidden=(3,)))
    _png(plot_prior_samples(vae, tmp_path / "p.png", image_shape=(2, 2), n=10))


def test_bad_inputs_are_named(tmp_path):
    vae = VAE(VAEConfig(input_dim=16, hidden=(8,)))
    with pytest.raises(ValueError, match=r"image_shape \(3, 3\) does not hold input_dim=16"):
        plot_prior_samples(vae, tmp_path / "p.png", image_shape=(3, 3))
    with pytest.raises(ValueError, match="labels has 2 entries for 3 images"):
        plot_latent_space(vae, torch.rand(3, 16), torch.arange(2), tmp_path / "z.png")
    with pytest.raises(ValueError, match=r"curves lacks column\(s\) \['test_elbo'\]"):
        plot_elbo_curves(pd.DataFrame({"epoch": [0], "train_elbo": [0.0]}), tmp_path / "c.png")
