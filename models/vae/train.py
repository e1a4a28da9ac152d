r"""Train a :class:`~pyro_vi.VAE` by epochs through :func:`pyro_vi.fit_svi`, with ELBO curves.

Two objectives: the ELBO (``Trace_ELBO``, Kingma & Welling 2014) and the importance-weighted
bound (``RenyiELBO(alpha=0, num_particles=k)``, which is the IWAE bound of Burda et al. 2016,
eq. 8; Li & Turner 2016, eq. 5).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO
from pyro.optim import Adam  # type: ignore[attr-defined]  # made at import time

from pyro_vi._checks import check_int, check_real, check_seed
from pyro_vi.models.vae.evaluate import elbo_per_image
from pyro_vi.models.vae.model import VAE
from pyro_vi.results import SVIResult
from pyro_vi.svi.guard import NonFiniteLossError
from pyro_vi.svi.loop import SVIState
from pyro_vi.svi.runner import fit_svi

__all__ = ["VAEResult", "fit_vae", "make_elbo"]

#: The per-epoch columns of :attr:`VAEResult.curves`.
CURVE_COLUMNS = ["epoch", "step", "train_elbo", "test_elbo", "train_seconds", "images_per_second"]


@dataclass(frozen=True, repr=False)
class VAEResult(SVIResult):
    """The :class:`~pyro_vi.SVIResult` of :func:`fit_vae`, evaluated once per epoch.

    ``history`` has the per-step columns of any SVI fit on batches (``step``, ``epoch``,
    ``loss``, ``elbo``, ``seconds``) and, on the last step of each epoch, ``test_elbo`` (per
    image, NaN without ``x_test``), ``train_elbo`` (that epoch's mean minibatch objective per
    image: the ELBO, or the IW bound for ``"iwae"``) and ``images_per_second`` (that epoch's
    throughput, evaluation excluded). ``initial_evaluation`` holds the test ELBO before training.
    """

    @property
    def curves(self) -> pd.DataFrame:
        """One row per epoch (row 0: before training), columns :data:`CURVE_COLUMNS`.

        ``train_seconds`` is the history's cumulative fitting time, evaluation excluded.
        """
        rows = self.evaluations.rename(columns={"seconds": "train_seconds"})
        return rows.reindex(columns=CURVE_COLUMNS)


def make_elbo(kind: Literal["trace", "iwae"], *, num_particles: int = 1) -> ELBO:
    """``Trace_ELBO`` or the IWAE bound ``RenyiELBO(alpha=0)``, vectorized over particles.

    Examples
    --------
    >>> type(make_elbo("iwae", num_particles=5)).__name__
    'RenyiELBO'
    """
    check_int("num_particles", num_particles, minimum=1)
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
            on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> VAEResult:
    r"""Train ``vae`` for ``epochs`` passes over ``x_train`` with Adam, evaluating each epoch.

    One call of :func:`pyro_vi.fit_svi` with ``num_epochs=epochs`` on shuffled minibatches
    (:meth:`VAE.batches`; dynamic binarization if configured) and ``tol=0``, so the whole budget
    runs. Its evaluation hook runs before training and at the end of each epoch: the test ELBO
    per image with ``eval_particles`` draws (:func:`pyro_vi.elbo_per_image`), the epoch's
    train objective and throughput; then ``on_epoch(epoch, row)`` is called with that epoch's
    row of :attr:`VAEResult.curves`.

    With ``elbo="trace"`` the model sees ``num_data=N`` and Pyro scales each minibatch
    likelihood by :math:`N / n` (Hoffman et al. 2013, eq. 14). With ``elbo="iwae"`` the
    minibatch is *not* rescaled: Pyro's ``RenyiELBO`` applies a subsample scale inside the
    log-mean-exp over particles, which changes the objective (pyro-ppl 1.9.2); unscaled, each
    step maximizes :math:`\sum_{i \in B} \hat{\mathcal L}_k(x_i)`, proportional to the
    full-data IWAE bound, and Adam is insensitive to that constant.

    Returns
    -------
    VAEResult
        An :class:`~pyro_vi.SVIResult` with the epoch metrics as history columns; next,
        ``fit.diagnose()`` (see :meth:`~pyro_vi.FitResult.diagnose`).

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
    >>> fit.n_steps, fit.history["test_elbo"].notna().tolist()
    (4, [False, True, False, True])
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size),
                        ("eval_particles", eval_particles)):
        check_int(name, value, minimum=1)
    check_real("lr", lr, positive=True)
    seed = check_seed("seed", seed) or 0
    estimator = make_elbo(elbo, num_particles=num_particles)
    batches = vae.batches(x_train, batch_size=batch_size)
    n_train = batches.num_data  # type: ignore[attr-defined]
    xt = None if x_test is None else vae.prepare(x_test, name="x_test")
    kwargs = {"num_data": n_train} if elbo == "trace" else {}

    def per_epoch(state: SVIState) -> dict[str, float]:
        test = math.nan if xt is None else elbo_per_image(
            vae, xt, num_particles=eval_particles, seed=seed).value
        row = {"test_elbo": test}
        if state.step:
            n = state.epochs.count(state.epoch)  # the steps of the epoch just finished
            total = sum(state.losses[-n:])
            start = state.seconds[-n - 1] if len(state.seconds) > n else 0.0
            # trace: each loss estimates -N * ELBO/image; iwae: the batch losses sum over N images
            row["train_elbo"] = -(total / n if elbo == "trace" else total) / n_train
            row["images_per_second"] = n_train / (state.seconds[-1] - start)
            if on_epoch is not None:
                on_epoch(state.epoch, {"epoch": state.epoch, "step": state.step, **row,
                                       "train_seconds": state.seconds[-1]})
        return row

    try:
        result = fit_svi(vae.model, vae.guide, elbo=estimator, optim=Adam({"lr": lr}),
                         num_epochs=epochs, batches=batches, tol=0.0, seed=seed,
                         progress=progress, evaluate=(len(batches), per_epoch),
                         **kwargs)  # type: ignore[arg-type]
    except NonFiniteLossError as err:
        # the epochs trained so far come back as a VAEResult (last finite params in the store)
        err.result = VAEResult.from_result(err.result)
        raise
    return VAEResult.from_result(result)
