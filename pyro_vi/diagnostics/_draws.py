r"""Draws from a guide, scored under its model: the Monte-Carlo core of the trust diagnostics.

:func:`draw_from_guide` runs a guide ``num_samples`` times and scores every draw under the
model. It is shared by :mod:`pyro_vi.diagnostics.inference_data` (InferenceData),
:mod:`pyro_vi.diagnostics.psis` (Pareto :math:`\hat k`)
and :mod:`pyro_vi.diagnostics.nuts` (comparison with NUTS). For each draw
:math:`\theta^{(s)} \sim q` it returns

* the value of every latent site of the model that the guide samples;
* :math:`\log q(\theta^{(s)})`, the guide's log density (auxiliary guide sites included, as
  Pyro's autoguides intend);
* :math:`\log p(x, \theta^{(s)})`, the model's log joint. Discrete latent sites the guide does
  not sample (a GMM's ``z`` under an enumerated guide), and optionally the *local* ones it does
  sample, are summed out exactly by Pyro's tensor contraction over parallel-enumerated
  dimensions (:func:`pyro.ops.contract.contract_to_tensor`, as Pyro's HMC potential does;
  Obermeyer et al. 2019, "Tensor variable elimination for plated factor graphs", ICML);
* optionally the pointwise log-likelihood :math:`\log p(x_i \mid \theta^{(s)})` of every
  observed site, with every local discrete latent site (enumerable, inside the observation's
  plates, like a GMM's ``z_i``) summed out, whether or not the guide samples it.

Draws are vectorised under an outer ``pyro.plate`` placed left of every batch dimension (as
:class:`pyro.infer.Predictive` does with ``parallel=True``); a model or guide that does not
broadcast over it is run one draw at a time instead. Everything runs under ``torch.no_grad()``.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import torch
from opt_einsum import shared_intermediates
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.ops.contract import contract_to_tensor
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from pyro_vi._checks import check_bool, check_callable, check_int, check_seed
from pyro_vi.diagnostics._sites import ModelStructure, check_guide, inspect_model, node, sample_sites
from pyro_vi.errors import NumericalError

__all__ = ["GuideDraws", "UnplatedBatchError", "check_num_samples", "draw_from_guide", "seeded"]

_DRAWS = "_pyro_vi_draws"


@dataclass(frozen=True)
class GuideDraws:
    r"""Draws from a guide, scored under the model (see :func:`draw_from_guide`).

    Attributes
    ----------
    values : dict of str to Tensor
        Every latent model site the guide samples, shape ``(num_samples, *site_shape)``.
    log_p : Tensor
        :math:`\log p(x, \theta^{(s)})`, shape ``(num_samples,)``, float64; discrete sites
        in ``marginalised`` summed out.
    log_q : Tensor
        :math:`\log q(\theta^{(s)})`, shape ``(num_samples,)``, float64.
    log_lik : dict of str to Tensor
        Observed site -> pointwise log-likelihood ``(num_samples, *batch_shape)``; empty unless
        requested.
    structure : ModelStructure
        The model's sites and plates.
    marginalised : tuple of str
        Discrete latent sites the guide does not sample, summed out in ``log_p``.
    vectorised : bool
        Whether the draws ran batched under an outer plate (else one at a time).
    """

    values: dict[str, Tensor]
    log_p: Tensor
    log_q: Tensor
    log_lik: dict[str, Tensor]
    structure: ModelStructure
    marginalised: tuple[str, ...]
    vectorised: bool = True

    @property
    def log_ratio(self) -> Tensor:
        r"""Log importance ratios :math:`\log p(x,\theta) - \log q(\theta)`, ``(num_samples,)``."""
        return self.log_p - self.log_q


def check_num_samples(num_samples: Any, *, name: str = "num_samples") -> int:
    """Return ``num_samples`` as an int: :func:`pyro_vi._checks.check_int` with ``minimum=1``.

    Examples
    --------
    >>> check_num_samples(3)
    3
    """
    return check_int(name, num_samples, minimum=1)


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run a block with ``pyro.set_rng_seed(seed)``, restoring every RNG state afterwards.

    ``seed=None`` leaves the global RNGs alone (the block draws from, and advances, them).
    """
    if seed is None:
        yield
        return
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    pyro.set_rng_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


def _param_scope(guide: Callable[..., Any], params: Mapping[str, Any] | None,
                 args: Any, kwargs: Any) -> Any:
    """Open a fresh param store holding ``params`` (constrained values) for the block."""
    if params is None:
        return nullcontext()
    store = pyro.get_param_store()

    @contextmanager
    def scope() -> Iterator[None]:
        with store.scope():
            # One run registers every pyro.param with its constraint (PyroModule guides push
            # their own fitted values); then the result's constrained values overwrite them.
            with poutine.block():
                guide(*args, **kwargs)
            for name, value in params.items():
                if isinstance(value, Tensor):
                    if name in store:
                        store[name] = value.detach()
                    else:
                        pyro.param(name, value.detach())
            yield

    return scope()


def _nesting(trace: poutine.Trace) -> int:
    """Batch rank left free for an outer draws plate: plates and unplated batch dims alike."""
    nest = 0
    for site in sample_sites(trace):
        rank = site["value"].dim() - len(site["fn"].event_shape)
        dims = [-f.dim for f in site["cond_indep_stack"] if f.vectorized]
        nest = max(nest, rank, *dims)
    return nest


class UnplatedBatchError(ValueError):
    """A site's log-density has a batch dimension that no plate declares.

    Pyro's own ELBOs reject such a site ("invalid log_prob shape"); the draws cannot be
    scored one per draw, because the extra dimension would be taken for the draws'.
    """


def _per_draw(log_prob: Tensor, n: int, nest: int, name: str = "?") -> Tensor:
    """Sum a log-prob of batch rank <= ``nest + 1`` over all but the draws dim -> ``(n,)``."""
    if log_prob.dim() < nest + 1:
        return log_prob.sum().expand(n)
    if log_prob.dim() > nest + 1 or log_prob.shape[0] not in (1, n):
        if n > 1:
            # e.g. a global of shape (n, 1, F) under the draws plate giving a mean (n, 1, N):
            # Pyro broadcasts the log-prob to (n, n, N), and summing rows would count every
            # draw's likelihood n times. Score this model one draw at a time instead.
            raise _NotVectorisable(f"site {name!r}: log_prob shape {tuple(log_prob.shape)}")
        raise UnplatedBatchError(
            f"site {name!r}: log_prob has shape {tuple(log_prob.shape)}, more batch dims than "
            f"its plates and value allow ({nest}); an unplated batch dimension (e.g. a mean "
            "that broadcasts to (8, N) against data of shape (N,)): put it in a pyro.plate, "
            "use .to_event(), or fix the broadcast (Pyro's ELBOs reject this site too)")
    return log_prob.reshape(log_prob.shape[0], -1).sum(-1).expand(n)


def _log_joint(trace: poutine.Trace, n: int, nest: int) -> Tensor:
    r"""Per-draw :math:`\log p`, contracting enumerated dims (Pyro's HMC does the same)."""
    trace.compute_log_prob()
    sites = sample_sites(trace)
    if not any("_enumerate_dim" in s["infer"] for s in sites):
        return sum((_per_draw(s["log_prob"], n, nest, s["name"]) for s in sites), torch.zeros(n))
    trace.pack_tensors()
    factors: OrderedDict[frozenset[str], list[Tensor]] = OrderedDict()
    for s in sites:
        ordinal = frozenset(trace.plate_to_symbol[f.name] for f in s["cond_indep_stack"]
                            if f.vectorized)
        factors.setdefault(ordinal, []).append(s["packed"]["log_prob"])
    enum_dims = set(trace.symbol_to_dim) - set(trace.plate_to_symbol.values())
    target = frozenset({trace.plate_to_symbol[_DRAWS]} if _DRAWS in trace.plate_to_symbol else ())
    with shared_intermediates():
        out = contract_to_tensor(factors, enum_dims, target_ordinal=target)
    return out.reshape(-1).expand(n)


def _pointwise(trace: poutine.Trace, structure: ModelStructure, n: int,
               nest: int) -> dict[str, Tensor]:
    r"""Pointwise log-likelihood per observed site, ``(n, *batch_shape)``.

    For an observed site :math:`x` with plates :math:`P`, the enumerated sites whose plates are
    a subset of :math:`P` are summed out elementwise,
    :math:`\log p(x_i \mid \theta) = \log \sum_z p(z \mid \theta) p(x_i \mid z, \theta)`,
    by broadcasting their log-probabilities and a ``logsumexp`` over the enumeration dims.
    """
    trace.compute_log_prob()
    enumerated = [s for s in sample_sites(trace)
                  if "_enumerate_dim" in s["infer"] and not s["is_observed"]]
    out = {}
    for name in structure.observed:
        info = structure.sites[name]
        total, covered = node(trace, name)["log_prob"], set()
        for s in enumerated:
            if structure.sites[s["name"]].plates <= info.plates:
                total = total + s["log_prob"]
                covered.add(s["infer"]["_enumerate_dim"])
        enum_dims = tuple(range(-total.dim(), -(nest + 1)))
        if any(total.shape[d] > 1 and d not in covered for d in enum_dims):
            raise NotImplementedError(
                f"observed site {name!r} depends on an enumerated discrete site outside its "
                "plates; its pointwise log-likelihood is not defined elementwise")
        if enum_dims:
            total = total.logsumexp(dim=enum_dims)
        batch = info.shape[: len(info.shape) - info.event_dim]
        total = total.expand(total.shape[: total.dim() - len(batch)] + batch)
        out[name] = total.reshape(-1, *batch).expand(n, *batch)
    return out


def _draw_chunk(model: Callable[..., Any], guide: Callable[..., Any], structure: ModelStructure,
                n: int, nest: int, pointwise: bool, drop: frozenset[str], args: Any,
                kwargs: Any) -> tuple[dict[str, Tensor], Tensor, Tensor, dict[str, Tensor]]:
    """``n`` draws in one pass, vectorised by an outer plate at dim ``-(nest + 1)`` if n > 1."""
    plate = pyro.plate(_DRAWS, n, dim=-(nest + 1)) if n > 1 else nullcontext()
    with poutine.block():
        with plate:
            guide_tr = prune_subsample_sites(poutine.trace(guide).get_trace(*args, **kwargs))
        guide_tr.compute_log_prob()
        log_q = sum((_per_draw(s["log_prob"], n, nest, s["name"]) for s in sample_sites(guide_tr)
                     if s["name"] not in drop), torch.zeros(n))
        raw: dict[str, Tensor] = {k: node(guide_tr, k)["value"] for k in structure.latent
                                  if k in guide_tr.nodes}

        def run(keep: Mapping[str, Tensor]) -> poutine.Trace:
            m = poutine.enum(config_enumerate(poutine.condition(model, data=dict(keep)),
                                              default="parallel"), first_available_dim=-(nest + 2))
            with plate:
                return prune_subsample_sites(poutine.trace(m).get_trace(*args, **kwargs))

        model_tr = run({k: v for k, v in raw.items() if k not in drop})
        log_p = _log_joint(model_tr, n, nest)
        log_lik: dict[str, Tensor] = {}
        if pointwise:
            local = {k: v for k, v in raw.items() if k not in structure.local_discrete}
            tr = model_tr if len(local) == len(raw) - len(drop) else run(local)
            log_lik = _pointwise(tr, structure, n, nest)
    values = {}
    for k, v in raw.items():
        shape = structure.sites[k].shape
        if v.numel() != n * math.prod(shape) or (n > 1 and v.shape[0] != n):
            raise _NotVectorisable(f"site {k!r}: shape {tuple(v.shape)} for {n} draws")
        values[k] = v.reshape(n, *shape)
    return values, log_p, log_q, log_lik


class _NotVectorisable(RuntimeError):
    pass


def draw_from_guide(model: Callable[..., Any], guide: Callable[..., Any], *args: Any,
                    num_samples: int, seed: int | None = None, pointwise: bool = False,
                    params: Mapping[str, Any] | None = None, chunk_size: int = 256,
                    marginalise_local: bool = False, **kwargs: Any) -> GuideDraws:
    r"""Draw ``num_samples`` times from ``guide`` and score every draw under ``model``.

    Draws are vectorised in chunks of ``chunk_size`` under an outer ``pyro.plate`` left of
    every batch dim (as :class:`pyro.infer.Predictive` does with ``parallel=True``); a model
    or guide that does not broadcast over it is run one draw at a time instead.

    Parameters
    ----------
    model, guide : callable
        A Pyro model and guide taking ``*args, **kwargs``.
    num_samples : int
        Number of draws, >= 1.
    seed : int, optional
        Seed for the draws; the global RNG state is restored afterwards. ``None`` draws from
        (and advances) the global RNGs.
    pointwise : bool
        Also compute the pointwise log-likelihood of every observed site.
    params : mapping, optional
        Constrained parameter values (e.g. a fit result's ``params``) loaded into a fresh,
        scoped param store while the guide runs; ``None`` uses the current param store.
    chunk_size : int
        Draws per vectorised pass (bounds memory).
    marginalise_local : bool
        Also sum out the local discrete sites the guide samples (a mean-field GMM's ``z``):
        their values stay in ``values`` but leave ``log_q`` and are enumerated in ``log_p``,
        so ``log_ratio`` compares :math:`q(\theta)` with :math:`p(\theta \mid x)` for the
        other sites. Assumes those sites are sampled after (not parents of) the others in
        the guide, so that dropping their terms leaves the marginal :math:`\log q(\theta)`.

    Returns
    -------
    GuideDraws

    Raises
    ------
    ValueError
        ``num_samples < 1``, a latent site the guide does not cover (other than an enumerable
        discrete one, which is summed out), or guide/model plate sizes that differ.
    UnplatedBatchError
        (a ValueError) A site whose log-density has a batch dimension no plate declares.
    NumericalError
        A draw whose :math:`\log p` or :math:`\log q` is NaN or :math:`+\infty`.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch
    >>> def model(y):
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> def guide(y):
    ...     pyro.sample("mu", dist.Normal(0.5, 0.7))
    >>> d = draw_from_guide(model, guide, torch.tensor(1.0), num_samples=4, seed=0)
    >>> d.values["mu"].shape, d.log_ratio.shape
    (torch.Size([4]), torch.Size([4]))
    """
    num_samples = check_num_samples(num_samples)
    chunk_size = check_num_samples(chunk_size, name="chunk_size")
    check_callable("model", model)
    check_callable("guide", guide)
    seed = check_seed("seed", seed)
    pointwise = bool(check_bool("pointwise", pointwise))
    marginalise_local = bool(check_bool("marginalise_local", marginalise_local))
    with seeded(seed), torch.no_grad(), _param_scope(guide, params, args, kwargs):
        structure = inspect_model(model, *args, **kwargs)
        with poutine.block():
            first = prune_subsample_sites(poutine.trace(guide).get_trace(*args, **kwargs))
        marginalised = check_guide(structure, first)
        drop = frozenset(structure.local_discrete if marginalise_local else ()) & set(first.nodes)
        marginalised += tuple(sorted(drop))
        nest = max(_nesting(first), structure.max_plate_nesting,
                   max((len(s.shape) - s.event_dim for s in structure.sites.values()), default=0))
        chunks = []
        done = 0
        while done < num_samples:
            n = min(chunk_size, num_samples - done)
            try:
                chunks.append(_draw_chunk(model, guide, structure, n, nest, pointwise, drop,
                                          args, kwargs))
            except (RuntimeError, ValueError, IndexError):
                if n == 1:
                    raise
                chunk_size = 1  # not vectorisable: one draw per pass from here on
                continue
            done += n
    values = {k: torch.cat([c[0][k] for c in chunks]) for k in chunks[0][0]}
    log_p = torch.cat([c[1] for c in chunks]).double()
    log_q = torch.cat([c[2] for c in chunks]).double()
    _check_finite(log_p, log_q)
    log_lik = {k: torch.cat([c[3][k] for c in chunks]) for k in chunks[0][3]}
    vectorised = num_samples == 1 or chunk_size > 1
    return GuideDraws(values, log_p, log_q, log_lik, structure, marginalised, vectorised)


def _check_finite(log_p: Tensor, log_q: Tensor) -> None:
    for label, v in (("log p(x, z)", log_p), ("log q(z)", log_q)):
        bad = torch.isnan(v) | (v == float("inf"))
        if bad.any():
            i = int(bad.nonzero()[0])
            raise NumericalError(f"draw {i}: {label} is {float(v[i])}")
