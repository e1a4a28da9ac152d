r"""Held-out evaluation of latent-variable models: the ELBO and the importance-weighted bound.

Both estimators average the log-weights :math:`\log w_k = \log p(x, z_k) - \log q(z_k \mid x)`,
:math:`z_k \sim q(z \mid x)`, of each image:

.. math::

    \mathrm{ELBO}(x) \approx \frac{1}{k} \sum_k \log w_k, \qquad
    \log p(x) \gtrsim \hat{\mathcal L}_k(x) = \log \frac{1}{k} \sum_k w_k

(Burda et al. 2016, eqs. 4 and 7). :math:`E[\hat{\mathcal L}_k]` increases with ``k`` and tends
to :math:`\log p(x)` (their Theorem 1). The work is chunked over images and over particles and
the sum over particles is a running ``logsumexp``, so memory stays at
``batch_size * particle_chunk`` rows whatever ``k`` is: no ``k x N x D`` tensor is formed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from pyro_vi.errors import NumericalError

__all__ = ["LogLikEstimate", "LogWeightModel", "elbo_per_image", "iw_log_likelihood"]


class LogWeightModel(Protocol):
    """Anything with ``log_weights(x, k, *, generator) -> (k, n)`` (e.g. :class:`~pyro_vi.VAE`)."""

    def log_weights(
        self, x: Tensor, num_samples: int, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Return ``(num_samples, n)`` log-weights for the ``n`` rows of ``x``."""
        ...


@dataclass(frozen=True)
class LogLikEstimate:
    r"""A per-image bound on :math:`\log p(x)` in nats, averaged over a data set.

    Attributes
    ----------
    kind : {"elbo", "iw"}
        Which estimator.
    value : float
        Mean over images (nats per image).
    mc_stderr : float
        Monte-Carlo standard error of ``value`` for this fixed data set.
    per_image : Tensor
        ``(n,)`` estimate per image (float32, CPU).
    per_image_stderr : Tensor
        ``(n,)`` Monte-Carlo standard error per image. For ``"iw"`` it is the delta-method
        :math:`\sqrt{(\overline{w^2} / \bar w^2 - 1) / k}`, which understates the error when
        the weights are heavy-tailed.
    num_particles : int
        Particles per image (``k``).
    """

    kind: Literal["elbo", "iw"]
    value: float
    mc_stderr: float
    per_image: Tensor
    per_image_stderr: Tensor
    num_particles: int


def _check_args(x: Tensor, k: int, batch_size: int, particle_chunk: int, where: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{where}: x must be a non-empty (n, D) tensor")
    for name, v in (("num_particles", k), ("batch_size", batch_size),
                    ("particle_chunk", particle_chunk)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{where}: {name} must be a positive int, got {v!r}")


def _log_weight_stats(model: LogWeightModel, x: Tensor, k: int, *, batch_size: int,
                      particle_chunk: int, seed: int, where: str) -> tuple[Tensor, ...]:
    """Per image: ``log sum w``, ``log sum w^2``, ``sum log w``, ``sum (log w)^2``, each (n,)."""
    generator = torch.Generator(device=x.device).manual_seed(int(seed))
    outs: list[list[Tensor]] = [[], [], [], []]
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            lse1 = torch.full((xb.shape[0],), -math.inf, device=x.device, dtype=torch.float64)
            lse2, s1, s2 = lse1.clone(), torch.zeros_like(lse1), torch.zeros_like(lse1)
            for done in range(0, k, particle_chunk):
                m = min(particle_chunk, k - done)
                lw = model.log_weights(xb, m, generator=generator)
                if lw.shape != (m, xb.shape[0]):
                    raise ValueError(f"{where}: log_weights returned shape {tuple(lw.shape)}, "
                                     f"expected {(m, xb.shape[0])}")
                if not torch.isfinite(lw).all():
                    row = int((~torch.isfinite(lw)).any(0).nonzero()[0, 0]) + start
                    raise NumericalError(f"{where}: log-weights are NaN or inf (image {row})")
                lw = lw.double()
                lse1 = torch.logaddexp(lse1, torch.logsumexp(lw, 0))
                lse2 = torch.logaddexp(lse2, torch.logsumexp(2.0 * lw, 0))
                s1 += lw.sum(0)
                s2 += lw.pow(2).sum(0)
            for out, t in zip(outs, (lse1, lse2, s1, s2), strict=True):
                out.append(t.cpu())
    return tuple(torch.cat(o) for o in outs)


def elbo_per_image(model: LogWeightModel, x: Tensor, *, num_particles: int = 1,
                   batch_size: int = 100, particle_chunk: int = 200, seed: int = 0
                   ) -> LogLikEstimate:
    r"""Estimate the ELBO of each image of ``x``, in nats, and its average.

    .. math:: \mathrm{ELBO}(x) = E_{q(z|x)}[\log p(x, z) - \log q(z \mid x)]
        \le \log p(x)

    (Kingma & Welling 2014, eq. 3), averaged over ``num_particles`` reparameterized draws.

    .. warning::
        A lower bound, loose by :math:`KL(q(z|x) \,\|\, p(z|x))`; compare models by it only
        with that gap in mind (see :func:`iw_log_likelihood`). ``x`` must be prepared as for
        training (e.g. :meth:`VAE.prepare`), on the model's device.

    References
    ----------
    Kingma, D. P. & Welling, M. (2014). Auto-Encoding Variational Bayes. ICLR.

    Examples
    --------
    >>> import torch
    >>> from pyro_vi.models.vae.model import VAE, VAEConfig
    >>> vae = VAE(VAEConfig(input_dim=4, hidden=(8,)))
    >>> est = elbo_per_image(vae, vae.prepare(torch.rand(6, 4)), num_particles=10)
    >>> est.kind, est.per_image.shape, est.value < 0
    ('elbo', torch.Size([6]), True)
    """
    _check_args(x, num_particles, batch_size, particle_chunk, "elbo_per_image")
    _, _, s1, s2 = _log_weight_stats(model, x, num_particles, batch_size=batch_size,
                                     particle_chunk=particle_chunk, seed=seed,
                                     where="elbo_per_image")
    k = num_particles
    mean = s1 / k
    var = (s2 / k - mean.pow(2)).clamp_min(0.0) * (k / max(k - 1, 1))
    se = (var / k).sqrt() if k > 1 else torch.full_like(mean, math.nan)
    n = mean.shape[0]
    return LogLikEstimate("elbo", float(mean.mean()), float(se.pow(2).sum().sqrt() / n),
                          mean.float(), se.float(), k)


def iw_log_likelihood(model: LogWeightModel, x: Tensor, *, k: int = 5000, batch_size: int = 100,
                      particle_chunk: int = 200, seed: int = 0) -> LogLikEstimate:
    r"""Estimate :math:`\log p(x)` of each image by importance sampling with ``k`` particles.

    .. math:: \hat{\mathcal L}_k(x) = \log \frac{1}{k} \sum_{i=1}^k
        \frac{p(x, z_i)}{q(z_i \mid x)}, \qquad z_i \sim q(z \mid x)

    (Burda et al. 2016, eq. 7; ``k = 5000`` is their evaluation protocol, §5). It is a
    stochastic lower bound, :math:`E[\hat{\mathcal L}_k] \le \log p(x)`, that rises with
    ``k``; the sum runs as a chunked ``logsumexp`` in float64.

    .. warning::
        Consistent as ``k`` grows only if :math:`q(z|x)` covers :math:`p(z|x)`; with a
        too-narrow encoder the estimate can stay far below :math:`\log p(x)` while its
        reported standard error is small. ``x`` must be prepared as for training.

    References
    ----------
    Burda, Y., Grosse, R. & Salakhutdinov, R. (2016). Importance Weighted Autoencoders. ICLR.

    Examples
    --------
    >>> import torch
    >>> from pyro_vi.models.vae.model import VAE, VAEConfig
    >>> vae = VAE(VAEConfig(input_dim=4, hidden=(8,)))
    >>> x = vae.prepare(torch.rand(6, 4))
    >>> iw = iw_log_likelihood(vae, x, k=50, particle_chunk=16)
    >>> iw.value >= elbo_per_image(vae, x, num_particles=50).value - 3 * iw.mc_stderr
    True
    """
    _check_args(x, k, batch_size, particle_chunk, "iw_log_likelihood")
    lse1, lse2, _, _ = _log_weight_stats(model, x, k, batch_size=batch_size,
                                         particle_chunk=particle_chunk, seed=seed,
                                         where="iw_log_likelihood")
    value = lse1 - math.log(k)
    # delta method: var(log mean w) ~ var(w) / (k mean(w)^2) = (mean(w^2)/mean(w)^2 - 1) / k
    rel = torch.expm1(lse2 - math.log(k) - 2.0 * value).clamp_min(0.0)
    se = (rel / k).sqrt()
    n = value.shape[0]
    return LogLikEstimate("iw", float(value.mean()), float(se.pow(2).sum().sqrt() / n),
                          value.float(), se.float(), k)
