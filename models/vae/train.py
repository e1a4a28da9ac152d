r"""Train a :class:`~pyro_vi.VAE` by epochs through :func:`pyro_vi.fit_svi`, with ELBO curves.

Two objectives: the ELBO (``Trace_ELBO``, Kingma & Welling 2014) and the importance-weighted
bound (``RenyiELBO(alpha=0, num_particles=k)``, which is the IWAE bound of Burda et al. 2016,
eq. 8; Li & Turner 2016, eq. 5).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO
from pyro.optim import Adam  # type: ignore[attr-defined]  # made at import time

from pyro_vi.models.vae.evaluate import elbo_per_image
from pyro_vi.models.vae.model import VAE
from pyro_vi.svi.runner import SVIResult, fit_svi

__all__ = ["VAEFit", "fit_vae", "make_elbo"]


@dataclass(frozen=True)
class VAEFit:
    """Outcome of :func:`fit_vae`.

    Attributes
    ----------
    svi : SVIResult
        The :func:`pyro_vi.fit_svi` result (per-step history, stop reason).
    curves : pandas.DataFrame
        One row per epoch (row 0 = before training): ``epoch``, ``step``, ``train_elbo``
        (mean minibatch objective per image over the epoch: the ELBO, or the IW bound for
        ``"iwae"``), ``test_elbo`` (per image, NaN without ``x_test``), ``train_seconds``
        (cumulative, evaluation excluded) and ``images_per_second`` (that epoch's throughput).
    """

    svi: SVIResult
    curves: pd.DataFrame


def make_elbo(kind: Literal["trace", "iwae"], *, num_particles: int = 1) -> ELBO:
    """``Trace_ELBO`` or the IWAE bound ``RenyiELBO(alpha=0)``, vectorized over particles.

    Examples
    --------
    >>> type(make_elbo("iwae", num_particles=5)).__name__
    'RenyiELBO'
    """
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles must be a positive int, got {num_particles!r}")
    vectorize = num_particles > 1
    if kind == "trace":
        return Trace_ELBO(num_particles=num_particles, vectorize_particles=vectorize,
                          max_plate_nesting=1)
    if kind == "iwae":
        return RenyiELBO(alpha=0.0, num_particles=num_particles, vectorize_particles=vectorize,
                         max_plate_nesting=1)
    raise ValueError(f"elbo must be 'trace' or 'iwae', got {kind!r}")


def fit_vae(vae: VAE, x_train: Any, *, x_test: Any = None, epochs: int = 10,
            batch_size: int = 100, elbo: Literal["trace", "iwae"] = "trace",
            num_particles: int = 1, lr: float = 1e-3, seed: int = 0,
            progress: bool | None = None, eval_particles: int = 1,
            on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> VAEFit:
    r"""Train ``vae`` for ``epochs`` passes over ``x_train`` with Adam, evaluating each epoch.

    Each epoch is ``ceil(N / batch_size)`` steps of :func:`pyro_vi.fit_svi` on shuffled
    minibatches (:meth:`VAE.batches`; dynamic binarization if configured), with ``tol=0`` so
    the whole budget runs. After each epoch the test ELBO per image is estimated with
    ``eval_particles`` draws (:func:`pyro_vi.elbo_per_image`) and ``on_epoch(epoch, row)`` is
    called.

    With ``elbo="trace"`` the model sees ``num_data=N`` and Pyro scales each minibatch
    likelihood by :math:`N / n` (Hoffman et al. 2013, eq. 14). With ``elbo="iwae"`` the
    minibatch is *not* rescaled: Pyro's ``RenyiELBO`` applies a subsample scale inside the
    log-mean-exp over particles, which changes the objective (pyro-ppl 1.9.2); unscaled, each
    step maximizes :math:`\sum_{i \in B} \hat{\mathcal L}_k(x_i)`, proportional to the
    full-data IWAE bound, and Adam is insensitive to that constant.

    .. warning::
        Stochastic optimization of a non-convex objective: results depend on ``seed``, the
        learning rate and the epoch budget; no convergence test is applied. ``x_test`` is
        prepared with :meth:`VAE.prepare` (statically binarized with ``config.seed``).

    References
    ----------
    Kingma, D. P. & Welling, M. (2014). Auto-Encoding Variational Bayes. ICLR.
    Burda, Y., Grosse, R. & Salakhutdinov, R. (2016). Importance Weighted Autoencoders. ICLR.

    Examples
    --------
    >>> import torch
    >>> from pyro_vi.models.vae.model import VAE, VAEConfig
    >>> vae = VAE(VAEConfig(input_dim=4, hidden=(8,)))
    >>> x = torch.rand(40, 4)
    >>> fit = fit_vae(vae, x, x_test=x[:10], epochs=2, batch_size=20, progress=False)
    >>> fit.curves[["epoch", "step"]].values.tolist()
    [[0, 0], [1, 2], [2, 4]]
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size),
                        ("eval_particles", eval_particles)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    estimator = make_elbo(elbo, num_particles=num_particles)
    batches = vae.batches(x_train, batch_size=batch_size)
    n_train = batches.num_data  # type: ignore[attr-defined]
    per_epoch = len(batches)  # type: ignore[arg-type]
    xt = None if x_test is None else vae.prepare(x_test, name="x_test")
    kwargs = {"num_data": n_train} if elbo == "trace" else {}

    def test_elbo() -> float:
        if xt is None:
            return float("nan")
        return elbo_per_image(vae, xt, num_particles=eval_particles, seed=seed).value

    rows = [{"epoch": 0, "step": 0, "train_elbo": float("nan"), "test_elbo": test_elbo(),
             "train_seconds": 0.0, "images_per_second": float("nan")}]
    epoch_losses: list[float] = []
    clock = {"start": time.perf_counter(), "train": 0.0}

    def callback(step: int, loss: float) -> bool:
        epoch_losses.append(loss)
        if step % per_epoch:
            return False
        seconds = time.perf_counter() - clock["start"]
        clock["train"] += seconds
        total = sum(epoch_losses)
        # trace: each loss estimates -N * ELBO/image; iwae: the batch losses sum over N images
        per_image = -(total / len(epoch_losses) if elbo == "trace" else total) / n_train
        row = {"epoch": step // per_epoch, "step": step, "train_elbo": per_image,
               "test_elbo": test_elbo(), "train_seconds": clock["train"],
               "images_per_second": n_train / seconds}
        rows.append(row)
        epoch_losses.clear()
        if on_epoch is not None:
            on_epoch(int(row["epoch"]), row)
        clock["start"] = time.perf_counter()
        return False

    clock["start"] = time.perf_counter()
    result = fit_svi(vae.model, vae.guide, elbo=estimator, optim=Adam({"lr": lr}),
                     num_steps=epochs * per_epoch, batches=batches, tol=0.0, seed=seed,
                     progress=progress, callback=callback, **kwargs)
    return VAEFit(svi=result, curves=pd.DataFrame(rows))
