r"""Data-parallel SVI: the ELBO's gradients averaged over ranks, as DDP averages them.

:class:`AveragedELBO` wraps an ELBO's ``loss_and_grads`` for :func:`pyro_vi.fit_svi` with
``distributed=True``: each rank computes its loss and gradients on its own batch, then one
``all_reduce`` of the loss and every gradient of the param store, packed into one buffer,
replaces both by their means over ranks. That is the arithmetic of
:class:`torch.nn.parallel.DistributedDataParallel` (mean of the ranks' gradients; the start
broadcast from rank 0 by :func:`broadcast_params`), applied to Pyro's param store, so the
loop keeps Pyro's own :class:`~pyro.infer.SVI`, its optimizers, the finite guard and the
checkpoints. Every rank then applies the same update to the same parameters: params and the
loss history stay bitwise identical across ranks. Pyro's own route (``module_local_params=True``,
``Trace_ELBO()(model, guide)`` an ``ELBOModule``, wrapped in DDP, as in Pyro's
``examples/svi_lightning.py``) gives the same gradients (tested to float32 round-off) but
needs the model and guide to be modules and a torch optimizer loop of its own; averaging in the
ELBO keeps :func:`pyro_vi.fit_svi`'s loop, guard and checkpoints for any Pyro pair.

Each rank's loss must estimate the *full* data's loss: the data plate is declared with the
global size, ``pyro.plate("data", N, subsample_size=len(x_rank))`` (or ``subsample=idx``),
so Pyro scales each rank's likelihood by ``N / len(x_rank)`` and the mean over ranks is an
unbiased estimate with ``1/P`` of one rank's variance. :func:`check_plates` refuses plates
whose size differs across ranks (Pyro's Horovod example warns about exactly this).

References
----------
Pyro ``examples/svi_horovod.py`` and ``examples/svi_lightning.py``; Li et al. (2020), PyTorch
Distributed: experiences on accelerating data parallel training, VLDB 13(12).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import pyro.poutine as poutine
import torch

from pyro_vi.distributed.collectives import Comm, agreed

__all__ = ["AveragedELBO", "broadcast_params", "check_plates"]


def broadcast_params(comm: Comm) -> None:
    """Copy rank 0's param-store values into every rank's params, in place (DDP's start)."""
    params = dict(pyro.get_param_store().named_parameters())
    names = sorted(params)
    every = comm.gather_object([(n, tuple(params[n].shape)) for n in names])
    if any(e != every[0] for e in every):
        raise agreed(RuntimeError(
            "fit_svi(distributed=True): the ranks' param stores differ (names or shapes) after "
            "the first trace of the guide: every rank must run the same model and guide"))
    values = comm.broadcast([params[n].detach() for n in names])
    with torch.no_grad():
        for n, v in zip(names, values, strict=True):
            params[n].copy_(v)


def check_plates(model: Callable[..., Any], guide: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any], comm: Comm) -> None:
    """``ValueError`` on every rank if a plate's full size differs across ranks, or a rank's is empty.

    The full size (``pyro.plate(name, N, ...)``'s ``N``) must be the same global ``N`` on every
    rank; each rank's subsample (its rows) may differ in length but not be empty.
    """
    sizes: dict[str, tuple[int, int]] = {}  # plate -> (full size, this rank's subsample size)
    try:
        with torch.no_grad(), poutine.block():
            tr = poutine.trace(guide).get_trace(*args, **kwargs)
            mt = poutine.trace(poutine.replay(model, trace=tr)).get_trace(*args, **kwargs)
        for site in mt.nodes.values():
            for f in site.get("cond_indep_stack", ()):
                if f.size is not None and f.vectorized:
                    full = f.full_size if f.full_size is not None else f.size
                    sizes[f.name] = (int(full), int(f.size))
    except ZeroDivisionError:  # Pyro's plate scale N / 0: a subsample without rows
        sizes = {"(a plate)": (0, 0)}
    except Exception as err:  # noqa: BLE001 - raised on every rank
        comm.fail(err)
    every = comm.gather_object(sizes)
    for name in sorted(set().union(*every)):
        empty = [r for r, s in enumerate(every) if s.get(name, (1, 1))[1] == 0]
        shown = name if name == "(a plate)" else repr(name)
        if empty:
            raise agreed(ValueError(
                f"fit_svi(distributed=True): rank(s) {empty} have no rows in plate {shown}; "
                f"give every rank at least one row (pyro_vi.distributed.shard does whenever "
                f"N >= world size)"))
        seen = [s[name][0] if name in s else None for s in every]
        if len(set(seen)) > 1:
            raise agreed(ValueError(
                f"fit_svi(distributed=True): plate {name!r} has size {seen} on ranks "
                f"0..{comm.world_size - 1}; a data plate must have the global size N on every "
                f"rank, with the rank's rows as its subsample "
                f"(pyro.plate({name!r}, N, subsample_size=len(x_rank))), so that each rank's "
                f"likelihood is scaled to the full data"))


class AveragedELBO:
    """An ELBO whose ``loss_and_grads`` returns, and leaves as gradients, the means over ranks.

    ``clock`` (optional) is read on rank 0 and travels in the same all-reduce:
    :attr:`clock_value` is then rank 0's reading on every rank (the loop's ``seconds``).
    """

    def __init__(self, elbo: Any, comm: Comm, *, clock: Callable[[], float] | None = None):
        self.elbo, self.comm, self.clock = elbo, comm, clock
        self.clock_value = 0.0
        self._names: list[str] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.elbo, name)

    def loss_and_grads(self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any,
                       **kwargs: Any) -> float:
        """The rank's loss and gradients, then one all-reduce that averages both."""
        comm = self.comm
        try:
            loss = float(self.elbo.loss_and_grads(model, guide, *args, **kwargs))
            items = sorted(pyro.get_param_store().named_parameters())
            names = [n for n, p in items if p.grad is not None]
        except Exception as err:  # noqa: BLE001 - raised on every rank
            comm.fail(err)
        if names != self._names:  # the first step, or a new param: the same on every rank?
            every = comm.gather_object(names)
            if any(e != every[0] for e in every):
                raise agreed(RuntimeError(
                    "fit_svi(distributed=True): the ranks' guides have different params with "
                    f"gradients ({[len(e) for e in every]} per rank): every rank must run the "
                    "same model and guide"))
            self._names = names
        params = dict(items)
        grads = [params[n].grad for n in names]
        now = self.clock() if self.clock is not None and comm.rank == 0 else 0.0
        total, clock, *summed = comm.sum((torch.tensor(loss, dtype=torch.float64),
                                          torch.tensor(now, dtype=torch.float64),
                                          *[g for g in grads if g is not None]))
        self.clock_value = float(clock)
        inv = 1.0 / comm.world_size
        with torch.no_grad():
            for n, g in zip(names, summed, strict=True):
                params[n].grad = g.mul_(inv)
        return float(total) * inv
