"""The variational autoencoder (Kingma & Welling 2014): model/guide pair, training, evaluation, plots."""

from pyro_vi.models.vae.model import VAE, VAEConfig, load_vae, save_vae

__all__ = ["VAE", "VAEConfig", "load_vae", "save_vae"]
