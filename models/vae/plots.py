"""Figures of what a trained VAE learned: reconstructions, prior samples, latent space, curves.

Each function draws on its own :class:`matplotlib.figure.Figure` (no pyplot state, no display
needed), writes a PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor

from pyro_vi._io import save_figure
from pyro_vi.models.vae.model import VAE

__all__ = ["plot_elbo_curves", "plot_latent_space", "plot_prior_samples",
           "plot_reconstructions"]


def _pixel_means(vae: VAE, z: Tensor) -> np.ndarray:
    """Return decoder means E[x|z]: sigmoid of the logits (Bernoulli) or the Gaussian mean."""
    with torch.no_grad():
        out = vae.decoder(z)
        if vae.config.likelihood == "bernoulli":
            out = torch.sigmoid(out)
    return out.cpu().numpy()


def _image_grid(fig: Figure, rows: list[np.ndarray], shape: tuple[int, int],
                labels: list[str] | None = None) -> None:
    """Draw rows of flattened images as one mosaic (one axes: fast for many images)."""
    h, w = shape
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    mosaic = np.full((n_rows * (h + 1) - 1, n_cols * (w + 1) - 1), np.nan)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            mosaic[i * (h + 1):i * (h + 1) + h, j * (w + 1):j * (w + 1) + w] = img.reshape(h, w)
    ax = fig.add_subplot()
    ax.imshow(np.ma.masked_invalid(mosaic), cmap="gray_r", interpolation="nearest",
              vmin=float(np.nanmin(mosaic)), vmax=float(np.nanmax(mosaic)))
    ax.set_xticks([])
    ax.set_yticks([(h - 1) / 2 + i * (h + 1) for i in range(n_rows)] if labels else [])
    if labels:
        ax.set_yticklabels(labels, fontsize=8)
    ax.set_facecolor("#d8e0ff")  # the gaps between images


def _check_shape(vae: VAE, image_shape: tuple[int, int]) -> None:
    if int(np.prod(image_shape)) != vae.config.input_dim:
        raise ValueError(f"image_shape {image_shape} does not hold input_dim="
                         f"{vae.config.input_dim} pixels")


def plot_reconstructions(vae: VAE, x: Tensor, path: str | Path, *,
                         image_shape: tuple[int, int], n: int = 10) -> Path:
    r"""Plot held-out images (top) above their reconstructions :math:`E[x \mid z = \mu_\phi(x)]`.

    Examples
    --------
    >>> import tempfile, torch
    >>> from pyro_vi.models.vae.model import VAE, VAEConfig
    >>> vae = VAE(VAEConfig(input_dim=4, hidden=(3,)))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     plot_reconstructions(vae, torch.rand(3, 4), f"{d}/r.png", image_shape=(2, 2)).name
    'r.png'
    """
    _check_shape(vae, image_shape)
    x = x[:n].to(vae.device)
    with torch.no_grad():
        loc, _ = vae.encoder(x)
    rows = [x.cpu().numpy(), _pixel_means(vae, loc)]
    fig = Figure(figsize=(1.0 * len(x), 2.3))
    _image_grid(fig, rows, image_shape, ["held out", "reconstr."])
    fig.suptitle("Reconstructions of held-out images (decoder mean at the encoder mean)")
    return _save(fig, path)


def plot_prior_samples(vae: VAE, path: str | Path, *, image_shape: tuple[int, int],
                       n: int = 40, seed: int = 0) -> Path:
    r"""Plot decoder means :math:`E[x \mid z]` at ``n`` draws :math:`z \sim N(0, I)`, seeded."""
    _check_shape(vae, image_shape)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, vae.config.latent_dim, generator=g).to(vae.device)
    means = _pixel_means(vae, z)
    cols = 10
    rows = [means[i:i + cols] for i in range(0, n - n % cols or n, cols)]
    fig = Figure(figsize=(1.0 * len(rows[0]), 1.05 * len(rows) + 0.4))
    _image_grid(fig, rows, image_shape)
    fig.suptitle("Samples from the prior: E[x | z], z ~ N(0, I)")
    return _save(fig, path)


def plot_latent_space(vae: VAE, x: Tensor, labels: Tensor, path: str | Path) -> Path:
    """Scatter the encoder means of ``x`` by label (2 principal axes when ``L > 2``).

    Examples
    --------
    >>> import tempfile, torch
    >>> from pyro_vi.models.vae.model import VAE, VAEConfig
    >>> vae = VAE(VAEConfig(input_dim=4, latent_dim=3, hidden=(3,)))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     plot_latent_space(vae, torch.rand(9, 4), torch.arange(9) % 3, f"{d}/z.png").name
    'z.png'
    """
    if len(labels) != len(x):
        raise ValueError(f"labels has {len(labels)} entries for {len(x)} images")
    with torch.no_grad():
        loc, _ = vae.encoder(x.to(vae.device))
    z = loc.double().cpu()
    if z.shape[1] > 2:
        centred = z - z.mean(0)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        z = centred @ vh[:2].T
        share = (s[:2].pow(2).sum() / s.pow(2).sum()).item()
        axis = [f"PC{i + 1}" for i in range(2)]
        title = f"Latent means, PCA of {loc.shape[1]}-D (PC1+PC2: {share:.0%} of variance)"
    elif z.shape[1] == 2:
        axis, title = ["z1", "z2"], "Latent means (2-D)"
    else:
        z = torch.cat([z, torch.zeros_like(z)], 1)
        axis, title = ["z1", ""], "Latent means (1-D)"
    fig = Figure(figsize=(6.0, 5.0))
    ax = fig.add_subplot()
    y = labels.cpu().numpy()
    pts = ax.scatter(z[:, 0].numpy(), z[:, 1].numpy(), c=y, cmap="tab10", s=8,
                     vmin=-0.5, vmax=9.5)
    fig.colorbar(pts, ax=ax, ticks=range(10), label="label")
    ax.set_xlabel(axis[0])
    ax.set_ylabel(axis[1])
    ax.set_title(title)
    return _save(fig, path)


def plot_elbo_curves(curves: pd.DataFrame, path: str | Path) -> Path:
    """Plot train and test ELBO per image against epoch.

    ``curves`` has columns ``epoch``, ``train_elbo`` and ``test_elbo``, as
    :attr:`pyro_vi.models.vae.train.VAEResult.curves`.
    """
    missing = {"epoch", "train_elbo", "test_elbo"} - set(curves.columns)
    if missing:
        raise ValueError(f"curves lacks column(s) {sorted(missing)}")
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    ax.plot(curves["epoch"], curves["train_elbo"], label="train (minibatch estimate)")
    ax.plot(curves["epoch"], curves["test_elbo"], marker="o", ms=3, label="test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO per image (nats)")
    ax.set_title("ELBO during training")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)  # atomic: a failed write keeps the previous PNG
    return path
