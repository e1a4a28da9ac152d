"""The guard of :func:`pyro_vi.fit_svi` against NaN and inf losses and gradients.

:class:`FiniteGuard` replaces an ELBO's ``loss_and_grads`` inside :class:`pyro.infer.SVI`. It
checks the loss and, with one fused reduction over all gradients, every gradient in the param
store *before* ``SVI.step`` hands them to the optimizer, so a bad gradient never reaches the
parameters. When a step is finite it also copies the parameter values it was evaluated at;
when step :math:`k` is not, :func:`describe` writes that copy back, so the param store holds
the values at which the last finite loss (step :math:`k-1`, the last row of the history) was
evaluated, also when the update of step :math:`k-1` itself overflowed. The cost per step is one
reduction and one copy per param tensor and one host sync; optimizer state is not rolled back.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.elbo import ELBO
from pyro.poutine.messenger import Messenger

from pyro_vi.errors import NumericalError

__all__ = ["PYRO_NAN_WARNING", "AliasCheck", "FiniteGuard", "NonFiniteLossError",
           "NonFiniteStep", "ParamAliasWarning", "describe"]

#: Pyro's own NaN warning (``pyro.util.warn_if_nan``); the guard raises an error instead.
PYRO_NAN_WARNING = r"Encountered (NaN|[+-]?inf)"


class NonFiniteLossError(NumericalError):
    """A NaN or inf loss or gradient in :func:`pyro_vi.fit_svi`.

    Attributes
    ----------
    step
        The 1-based step whose loss or gradient was not finite.
    sites
        The offending param sites: those with a non-finite gradient, else those the failing
        step used.
    result
        Partial :class:`~pyro_vi.SVIResult` (``stop_reason="non_finite"``) holding the
        parameters of the last finite step, which are also back in the param store.
    """

    def __init__(self, message: str, *, step: int, sites: list[str], result: Any):
        super().__init__(message)
        self.step, self.sites, self.result = step, sites, result


class ParamAliasWarning(UserWarning):
    """A guide parameter shared its memory with a tensor of the model; it was copied.

    Pyro 1.9's autoguides can store a model tensor as a parameter without copying it (e.g.
    ``AutoNormal(init_loc_fn=init_to_mean)`` keeps the prior's ``loc``), so the optimizer's
    in-place updates would rewrite the model's own prior. :func:`pyro_vi.fit_svi` gives such
    a parameter its own copy before the first update and warns with this class.
    """


def _storage(t: torch.Tensor) -> int:
    return int(t.untyped_storage().data_ptr()) if t.numel() else 0


def _tensors(obj: Any, depth: int = 3) -> list[torch.Tensor]:
    """The tensors a distribution holds (its parameters), also inside wrapped distributions."""
    out: list[torch.Tensor] = []
    for value in vars(obj).values():
        if isinstance(value, torch.Tensor):
            out.append(value)
        elif isinstance(value, torch.distributions.Distribution) and depth > 0:
            out.extend(_tensors(value, depth - 1))
    return out


class AliasCheck(Messenger):
    """Wraps the model in the first step to see which memory its sites' tensors use.

    Records the storage of every sample site's distribution parameters and observed values;
    the model's own ``pyro.param`` sites and the latent values replayed from the guide are
    exempt (sharing those is intended).
    :meth:`unalias` then copies any param-store tensor that shares one of those storages.
    """

    def __init__(self) -> None:
        super().__init__()
        self.active = True
        self.sites: dict[int, str] = {}
        self.own: set[int] = set()

    def _postprocess_message(self, msg: Any) -> None:
        if not self.active:
            return
        if msg["type"] == "param":
            self.own.add(_storage(msg["value"]))
        elif msg["type"] == "sample":
            tensors = _tensors(msg["fn"])
            if isinstance(msg["value"], torch.Tensor):
                if msg["is_observed"]:
                    tensors.append(msg["value"])
                else:  # a latent value comes from the guide (a Delta guide's is its param)
                    self.own.add(_storage(msg["value"]))
            for t in tensors:
                self.sites.setdefault(_storage(t), msg["name"])

    def unalias(self) -> list[str]:
        """Copy params that share memory with the model's tensors; one warning names them."""
        self.active = False
        copied = []
        for name, p in pyro.get_param_store().named_parameters():
            ptr = _storage(p)
            site = self.sites.get(ptr) if ptr and ptr not in self.own else None
            if site is not None:
                with torch.no_grad():
                    p.data = p.data.clone()  # same tensor object (the guide's), own memory
                copied.append(f"{name!r} (model site {site!r})")
        self.sites.clear()
        if copied:
            warnings.warn(f"fit_svi: param(s) {', '.join(copied)} shared memory with a tensor "
                          f"of the model (an autoguide stored it without a copy); each was "
                          f"copied so that the optimizer cannot overwrite the model",
                          ParamAliasWarning, stacklevel=2)
        return copied


class NonFiniteStep(Exception):
    """Raised inside ``svi.step`` before the optimizer would apply a non-finite gradient.

    ``invalid`` holds the first line of the validation error of Pyro/torch that stopped the
    step instead (a parameter driven out of its support), or None.
    """

    def __init__(self, loss: float, sites: list[str], invalid: str | None = None):
        super().__init__(loss, sites)
        self.loss, self.sites, self.invalid = loss, sites, invalid


#: The messages of torch.distributions' argument validation (``validate_args``), which Pyro
#: turns on by default: a parameter or value outside its constraint.
VALIDATION_ERROR = re.compile(r"Expected (parameter|value argument)")


class FiniteGuard:
    """``loss_and_grads`` for :class:`~pyro.infer.SVI` that vetoes non-finite steps."""

    def __init__(self, elbo: ELBO):
        self.elbo: Any = elbo  # ELBO subclasses define loss_and_grads; the base does not
        # Values at which the last finite step was evaluated: names, buffers, and the ids of the
        # live tensors they mirror (a new or replaced param triggers a rebuild).
        self._names: tuple[str, ...] = ()
        self._ids: tuple[int, ...] = ()
        self._kept: list[torch.Tensor] = []
        self.finite_steps = 0  # steps whose loss and gradients passed the check
        self.aliases = AliasCheck()  # wraps the model; checked once, before the first update

    def __call__(self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any,
                 **kwargs: Any) -> Any:
        """Run the ELBO's ``loss_and_grads``, then :meth:`check` the result."""
        try:
            loss = self.elbo.loss_and_grads(model, guide, *args, **kwargs)
        except ValueError as err:
            # After a finite step, Pyro's validation rejecting a parameter (a scale driven to
            # 0, a probability to 1) is numerical trouble of the run, like a NaN loss; at the
            # first step it is the user's model or initial values, and propagates as it is.
            if not self.finite_steps or not VALIDATION_ERROR.search(str(err)):
                raise
            raise NonFiniteStep(math.nan, [], invalid=str(err).splitlines()[0]) from err
        if self.aliases.active:
            self.aliases.unalias()
        self.check(float(loss))
        return loss

    def check(self, loss: float) -> None:
        """Raise :class:`NonFiniteStep` on a non-finite loss or gradient, else keep the params."""
        items = list(pyro.get_param_store().named_parameters())
        params = [p for _, p in items]
        grads = [p.grad for p in params if p.grad is not None]
        finite = math.isfinite(loss)
        if finite and grads:
            # The sum of the gradient norms is finite iff no entry is NaN/inf, barring overflow
            # of a huge norm, which the exact per-site check below then clears.
            finite = math.isfinite(float(torch.stack(torch._foreach_norm(grads)).sum()))
        if not finite:
            bad = [name for name, p in items
                   if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
            if bad or not math.isfinite(loss):
                raise NonFiniteStep(loss, bad)
        self._keep(items, params)
        self.finite_steps += 1

    def _keep(self, items: list[tuple[str, torch.Tensor]], params: list[torch.Tensor]) -> None:
        ids = tuple(map(id, params))
        with torch.no_grad():
            if ids != self._ids:
                self._names = tuple(name for name, _ in items)
                self._ids = ids
                self._kept = [p.detach().clone() for p in params]
            elif params:
                torch._foreach_copy_(self._kept, params)

    def restore(self) -> None:
        """Write the kept values back into the param store, in place."""
        kept = dict(zip(self._names, self._kept, strict=True))
        with torch.no_grad():
            for name, p in pyro.get_param_store().named_parameters():
                buf = kept.get(name)
                if buf is not None and buf.shape == p.shape:
                    p.copy_(buf)


def _rerun(model: Callable[..., Any], guide: Callable[..., Any], args: tuple[Any, ...],
           kwargs: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Param sites used, and sample sites with a non-finite log-density, in one fresh draw."""
    params: list[str] = []
    bad: list[str] = []
    try:
        with torch.no_grad(), poutine.block(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs)
    except Exception:  # the diagnosis must never mask the error it explains
        return params, bad
    for trace in (guide_trace, model_trace):
        for name, site in trace.nodes.items():
            if site["type"] == "param" and name not in params:
                params.append(name)
            elif site["type"] == "sample" and name not in bad:
                try:
                    fn: Any = site["fn"]
                    ok = bool(torch.isfinite(fn.log_prob(site["value"])).all())
                except Exception:  # out of support under validation
                    ok = False
                if not ok:
                    bad.append(name)
    return params, bad


def describe(signal: NonFiniteStep, step: int, guard: FiniteGuard, model: Callable[..., Any],
             guide: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> tuple[str, list[str]]:
    """Explain a :class:`NonFiniteStep` and restore the last finite step's params.

    Returns the message and the offending param sites. If no gradient is non-finite, guide and
    model are re-run once at the failing step's params to name the params the step used and
    any sample site whose log-density is not finite there. Gradients are zeroed.

    Returns
    -------
    tuple[str, list[str]]
        The message and the offending param sites.
    """
    store = pyro.get_param_store()
    for _, p in store.named_parameters():
        if p.grad is not None:
            p.grad = torch.zeros_like(p.grad)
    if signal.invalid is not None:
        msg = (f"fit_svi: Pyro's validation rejected a parameter at step {step} "
               f"({signal.invalid})")
    else:
        msg = f"fit_svi: non-finite loss or gradient at step {step} (loss={signal.loss})"
    sites = list(signal.sites)
    if sites:
        msg += f"; non-finite gradient at param site(s) {', '.join(sites)}"
    elif signal.invalid is None:  # a re-run would fail the same validation
        sites, bad_samples = _rerun(model, guide, args, kwargs)
        msg += f"; param site(s) of this step: {', '.join(sites) or '(none)'}"
        if bad_samples:
            msg += (f"; non-finite log-density at sample site(s) {', '.join(bad_samples)} "
                    f"(one re-run at this step's params)")
    overflowed = [name for name, p in store.named_parameters()
                  if not bool(torch.isfinite(p).all())]
    if overflowed:
        msg += f"; param value(s) {', '.join(overflowed)} were non-finite"
    if step > 1:
        guard.restore()
        msg += (f"; the params at which step {step - 1} evaluated its finite loss are restored "
                f"into the param store")
    else:
        msg += "; no step was finite: the initial params are in the param store"
    return msg, sites
