r"""The variational autoencoder: an amortized Gaussian guide and an MLP decoder, as a Pyro pair.

.. math::

    p_\theta(x, z) = N(z \mid 0, I)\, p_\theta(x \mid z), \qquad
    q_\phi(z \mid x) = N\big(z \mid \mu_\phi(x),
    \operatorname{diag} \sigma_\phi(x)^2\big),

with :math:`p_\theta(x \mid z)` a product of Bernoullis (logits from the decoder) or of
Gaussians with a fixed or learned shared scale (Kingma & Welling 2014, §3 and appendix C).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.params import param_with_module_name
from torch import Tensor, nn

from pyro_vi._io import save_tensors
from pyro_vi.data.images import Minibatches, binarize, check_images

__all__ = ["VAE", "LoadedVAE", "VAEConfig", "load_vae", "save_vae"]

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class VAEConfig:
    """Architecture and likelihood of a :class:`VAE`.

    Parameters
    ----------
    input_dim : int
        Number of pixels ``D`` of one flattened image.
    latent_dim : int
        Dimension ``L`` of :math:`z`.
    hidden : tuple of int
        Encoder hidden widths; the decoder uses them reversed. ``()`` gives linear maps.
    likelihood : {"bernoulli", "gaussian"}
        Pixel likelihood.
    scale : float or None
        Gaussian only: a fixed observation scale :math:`s`, or ``None`` to learn one shared
        scale (the calibrated decoder of Rybkin et al. 2021).
    binarize : {"dynamic", "static"} or None
        Bernoulli only: resample binary images from the grey levels at every minibatch
        (dynamic, Burda et al. 2016, §5) or once with ``seed`` (static); ``None`` uses the grey
        levels in :math:`[0, 1]` as soft targets (cross-entropy, not a normalized likelihood).
    device : str
        Torch device of the weights and of the data the VAE prepares (``"cpu"``, ``"cuda"``).
    seed : int
        Seeds the weight initialization and static binarization.

    Examples
    --------
    >>> VAEConfig(input_dim=64).hidden
    (256, 128)
    """

    input_dim: int
    latent_dim: int = 2
    hidden: tuple[int, ...] = (256, 128)
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
    scale: float | None = None
    binarize: Literal["dynamic", "static"] | None = "dynamic"
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("input_dim", "latent_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VAEConfig.{name} must be a positive int, got {value!r}")
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ValueError(f"VAEConfig.hidden must hold positive ints, got {self.hidden!r}")
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(
                f"VAEConfig.likelihood must be 'bernoulli' or 'gaussian', got {self.likelihood!r}"
            )
        if self.likelihood == "bernoulli" and self.scale is not None:
            raise ValueError("VAEConfig.scale is for the gaussian likelihood only")
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"VAEConfig.scale must be positive and finite, got {self.scale!r}")
        if self.binarize not in ("dynamic", "static", None):
            raise ValueError(
                f"VAEConfig.binarize must be 'dynamic', 'static' or None, got {self.binarize!r}"
            )
        if self.likelihood == "gaussian" and self.binarize is not None:
            raise ValueError("VAEConfig.binarize needs likelihood='bernoulli' (set it to None)")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"VAEConfig.device {self.device!r} is not a torch device") from err


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    r""":math:`x \mapsto (\mu_\phi(x), \sigma_\phi(x))`, each of shape ``(..., L)``."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.net = _mlp([config.input_dim, *config.hidden, 2 * config.latent_dim])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        loc, log_scale = self.net(x).chunk(2, dim=-1)
        return loc, log_scale.exp()


class Decoder(nn.Module):
    r""":math:`z \mapsto` Bernoulli logits or Gaussian means, shape ``(..., D)``.

    A learned Gaussian scale is the parameter ``log_scale`` (a scalar), so ``pyro.module`` and
    ``state_dict`` carry it with the weights.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.net = _mlp([config.latent_dim, *reversed(config.hidden), config.input_dim])
        learned = config.likelihood == "gaussian" and config.scale is None
        self.log_scale = nn.Parameter(torch.zeros(())) if learned else None
        self.fixed_scale = config.scale

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)

    def scale(self) -> Tensor | float:
        """Return the Gaussian observation scale :math:`s` (learned or fixed)."""
        if self.log_scale is not None:
            return self.log_scale.exp()
        return 1.0 if self.fixed_scale is None else self.fixed_scale


class VAE(nn.Module):
    r"""A VAE whose :meth:`model` and :meth:`guide` train with any Pyro ELBO.

    Both take a batch ``x`` of shape ``(n, D)`` (float32, on ``config.device``) and
    ``num_data=N``, the size of the whole data set: the ``"data"`` plate is subsampled with
    ``x``, so Pyro scales the batch's log-likelihood by ``N / n`` and the loss estimates the
    full-data ELBO (Hoffman et al. 2013, eq. 14). The guide samples with ``rsample``, so the
    gradient flows through :math:`z = \mu + \sigma \odot \varepsilon` (Kingma & Welling 2014,
    §2.4).

    .. warning::
        A Gaussian-mean-field amortized guide: the bound is loose by
        :math:`E_x KL(q_\phi(z|x) \,\|\, p_\theta(z|x))`, which is not zero when the true
        posterior is non-Gaussian or correlated. Report the importance-weighted
        log-likelihood (:func:`pyro_vi.iw_log_likelihood`) next to the ELBO. With
        ``RenyiELBO`` (IWAE) pass no ``num_data``: Pyro 1.9.2 applies the subsample scale
        inside its log-mean-exp over particles, which changes the objective
        (:func:`pyro_vi.fit_vae` does this for you).

    References
    ----------
    Kingma, D. P. & Welling, M. (2014). Auto-Encoding Variational Bayes. ICLR.
    Burda, Y., Grosse, R. & Salakhutdinov, R. (2016). Importance Weighted Autoencoders. ICLR.
    Rybkin, O., Daniilidis, K. & Levine, S. (2021). Simple and Effective VAE Training with
    Calibrated Decoders. ICML.

    Examples
    --------
    >>> import pyro, torch
    >>> from pyro.infer import SVI, Trace_ELBO
    >>> pyro.clear_param_store()
    >>> vae = VAE(VAEConfig(input_dim=4, latent_dim=2, hidden=(8,)))
    >>> x = vae.prepare(torch.rand(10, 4))
    >>> svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    >>> loss = svi.step(x[:5], num_data=10)
    >>> vae.log_weights(x, 3).shape
    torch.Size([3, 10])
    """

    def __init__(self, config: VAEConfig, *, name: str = "vae") -> None:
        super().__init__()
        if not isinstance(config, VAEConfig):
            raise TypeError(f"config must be a VAEConfig, got {type(config).__name__}")
        self.config = config
        self.name = name
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"VAEConfig.device={config.device!r}, but CUDA is not available")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.encoder = Encoder(config)
            self.decoder = Decoder(config)
        self.to(self.device)
        self.claim_param_names()

    def claim_param_names(self) -> None:
        """Point the param-store entries ``{name}_encoder$$$*`` / ``{name}_decoder$$$*`` here.

        ``pyro.module`` keeps an existing store entry of the same name, so without this a
        second VAE with the same ``name`` (or one loaded from disk) would be trained through
        the first one's tensors. Called on construction and by :func:`load_vae`.
        """
        store = pyro.get_param_store()
        for part, module in (("encoder", self.encoder), ("decoder", self.decoder)):
            for pname, param in module.named_parameters():
                store[param_with_module_name(f"{self.name}_{part}", pname)] = param

    # ---- Pyro model and guide -------------------------------------------------------------
    def model(self, x: Tensor, num_data: int | None = None) -> None:
        r""":math:`z_i \sim N(0, I)`, :math:`x_i \sim p_\theta(x \mid z_i)` for the batch."""
        pyro.module(f"{self.name}_decoder", self.decoder)
        n, latent = x.shape[0], self.config.latent_dim
        with pyro.plate("data", size=num_data or n, subsample=x):
            prior = dist.Normal(x.new_zeros(n, latent), x.new_ones(n, latent)).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", self._likelihood(self.decoder(z)), obs=x)

    def guide(self, x: Tensor, num_data: int | None = None) -> None:
        r""":math:`z_i \sim N(\mu_\phi(x_i), \operatorname{diag}\sigma_\phi(x_i)^2)`."""
        pyro.module(f"{self.name}_encoder", self.encoder)
        with pyro.plate("data", size=num_data or x.shape[0], subsample=x):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def _likelihood(self, out: Tensor) -> dist.TorchDistribution:
        if self.config.likelihood == "bernoulli":
            # validate_args=False: grey-level soft targets are allowed when binarize is None.
            return dist.Bernoulli(logits=out, validate_args=False).to_event(1)
        return dist.Normal(out, self.decoder.scale()).to_event(1)

    # ---- direct densities (used by evaluation) -------------------------------------------
    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        r""":math:`\log p_\theta(x \mid z)` summed over pixels; ``z`` is ``(..., n, L)``."""
        out = self.decoder(z)
        if self.config.likelihood == "bernoulli":
            x = x.expand_as(out)
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
        s = torch.as_tensor(self.decoder.scale(), dtype=out.dtype, device=out.device)
        sq = ((x - out) / s).pow(2).sum(-1)
        return -0.5 * sq - x.shape[-1] * (torch.log(s) + 0.5 * _LOG_2PI)

    def log_weights(
        self, x: Tensor, num_samples: int, *, generator: torch.Generator | None = None
    ) -> Tensor:
        r"""Draw importance log-weights :math:`\log p(x, z_k) - \log q(z_k \mid x)`, ``(k, n)``.

        .. math:: z_k = \mu_\phi(x) + \sigma_\phi(x) \odot \varepsilon_k, \quad
            \varepsilon_k \sim N(0, I).
        """
        loc, scale = self.encoder(x)
        eps = torch.randn(
            (num_samples, *loc.shape), generator=generator, device=loc.device, dtype=loc.dtype
        )
        z = loc + scale * eps
        log_q = (-0.5 * eps.pow(2) - torch.log(scale) - 0.5 * _LOG_2PI).sum(-1)
        log_prior = (-0.5 * z.pow(2) - 0.5 * _LOG_2PI).sum(-1)
        return self.log_likelihood(x, z) + log_prior - log_q

    # ---- data -----------------------------------------------------------------------------
    def prepare(self, x: Any, *, name: str = "x") -> Tensor:
        """Check ``x`` for this likelihood and return the float32 tensor to evaluate on.

        Raises :class:`ValueError` (naming ``name``) for a wrong shape, NaN/inf, or values
        outside :math:`[0, 1]` for the Bernoulli likelihood. With ``binarize`` set, the result
        is a static binarization seeded by ``config.seed`` (the usual evaluation protocol).
        """
        cfg = self.config
        x = check_images(x, input_dim=cfg.input_dim, unit_range=cfg.likelihood == "bernoulli",
                         name=name).to(self.device)
        if cfg.binarize is not None:
            x = binarize(x, seed=cfg.seed)
        return x

    def batches(
        self, x: Any, *, batch_size: int, seed: int | None = None, drop_last: bool = False
    ) -> Iterable[tuple[Tensor]]:
        """Return a re-iterable of shuffled ``(x_batch,)`` for ``fit_svi(..., batches=)``.

        With ``binarize="dynamic"`` every batch is a fresh Bernoulli draw from the grey levels.
        ``seed=None`` draws from the global torch RNG (see :class:`pyro_vi.Minibatches`).
        """
        cfg = self.config
        if cfg.binarize == "dynamic":
            x = check_images(x, input_dim=cfg.input_dim, unit_range=True, name="x")
            x = x.to(self.device)
        else:
            x = self.prepare(x)
        return Minibatches(x, batch_size=batch_size, seed=seed, drop_last=drop_last,
                           dynamic_binarize=cfg.binarize == "dynamic")


@dataclass(frozen=True)
class LoadedVAE:
    """A VAE read back by :func:`load_vae`, with the data it was trained on."""

    vae: VAE
    data: str
    split_seed: int
    extra: dict[str, Any]


def save_vae(
    path: str | Path, vae: VAE, *, data: str, split_seed: int, extra: dict[str, Any] | None = None
) -> Path:
    """Write weights, config and the data split seed to ``path`` (one ``torch.save`` dict).

    Written atomically (:func:`pyro_vi._io.atomic_write`): a save that fails or is killed
    leaves the previous file whole, and an existing file keeps its mode.

    Examples
    --------
    >>> import tempfile, torch
    >>> vae = VAE(VAEConfig(input_dim=4, hidden=(3,)))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = save_vae(f"{d}/vae.pt", vae, data="digits", split_seed=0)
    ...     back = load_vae(p)
    >>> back.vae.config == vae.config, back.split_seed
    (True, 0)
    """
    path = Path(path)
    payload = {
        "format": "pyro-vi-vae/1",
        "config": asdict(vae.config),
        "name": vae.name,
        "state_dict": {k: v.detach().cpu() for k, v in vae.state_dict().items()},
        "data": str(data),
        "split_seed": int(split_seed),
        "extra": dict(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(path, payload)  # atomic: a failed save keeps the previous file
    return path


def load_vae(path: str | Path, *, device: str | None = None) -> LoadedVAE:
    """Rebuild the :class:`VAE` saved by :func:`save_vae` (``weights_only`` load, no pickle).

    ``device`` overrides the saved ``config.device`` (e.g. load a GPU-trained VAE on CPU).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved VAE at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != "pyro-vi-vae/1":
        raise ValueError(f"{path} is not a VAE saved by pyro_vi.save_vae")
    config = dict(payload["config"])
    config["hidden"] = tuple(config["hidden"])
    if device is not None:
        config["device"] = device
    vae = VAE(VAEConfig(**config), name=payload["name"])
    vae.load_state_dict(payload["state_dict"])  # in place: the store still holds these tensors
    return LoadedVAE(vae=vae, data=payload["data"], split_seed=payload["split_seed"],
                     extra=payload["extra"])
