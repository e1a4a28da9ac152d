"""One result type for every fit: :class:`FitResult`, and its CAVI and SVI kinds.

Every fit, closed-form or stochastic, returns a frozen record of one shape: the fitted
``params``, the final ``elbo``, whether it ``converged``, how many steps it took (``n_steps``),
a ``history`` DataFrame with at least the columns ``step``, ``elbo`` and ``seconds``, and the
Pyro ``model``, a Pyro ``guide`` and the ``data`` it was fitted to. Export to ArviZ and the
trust report are defined once, here, for all of them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar, cast

import pandas as pd
import torch
from torch import Tensor

from pyro_vi._io import from_plain, import_class, load_tensors, save_tensors, to_plain

__all__ = ["FORMAT_VERSION", "CAVIResult", "CAVIRun", "FitResult", "SVIResult", "load_result"]

#: Version of the file :meth:`FitResult.save` writes; :func:`load_result` reads versions <= it.
FORMAT_VERSION = 1
_FORMAT = "pyro_vi.result"

_R = TypeVar("_R", bound="SVIResult")


@dataclass(frozen=True, repr=False)
class FitResult:
    """What every fit returns.

    Attributes
    ----------
    params : Any
        The fitted variational parameters: a model's params record of factors (CAVI), or the
        param store's constrained values by name (SVI).
    elbo : float
        The final ELBO in nats (analytic for CAVI; the last window's mean for SVI).
    converged : bool
        Whether the stopping rule was met.
    n_steps : int
        Sweeps (CAVI) or optimizer steps (SVI) taken, counting those before a resume.
    history : pandas.DataFrame
        One row per step: ``step``, ``elbo``, ``seconds`` (cumulative wall-clock), plus any
        columns of the fit's kind (``loss`` for SVI, evaluation columns for the GMM and VAE).
    model : callable
        The Pyro model that was fitted.
    guide : callable
        A Pyro guide for ``model``; see :attr:`store_params` for how it finds its parameters.
    data : tuple
        The model's positional data arguments (a reference, not a copy), so that
        :meth:`to_inference_data` and :meth:`diagnose` need no arguments.
    """

    #: The fit's method, as the ArviZ export and the report name it.
    method: ClassVar[str] = "variational"

    params: Any
    elbo: float
    converged: bool
    n_steps: int
    history: pd.DataFrame = field(compare=False)
    model: Callable[..., Any] = field(compare=False)
    guide: Callable[..., Any] = field(compare=False)
    data: tuple[Any, ...] = field(default=(), compare=False)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(elbo={self.elbo:.6g}, converged={self.converged}, "
                f"n_steps={self.n_steps})")

    @property
    def store_params(self) -> Mapping[str, Tensor] | None:
        """Param-store values the guide reads (SVI), or None when the guide carries its own."""
        return None

    def model_args(self, args: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        """``args`` if given, else the data the fit used (ValueError when it kept none)."""
        if args:
            return args
        if not self.data:
            raise ValueError(f"this {type(self).__name__} carries no data: pass the model's data arguments")
        return self.data

    def to_inference_data(self, *args: Any, **kwargs: Any) -> Any:
        """ArviZ export of this fit (see :func:`pyro_vi.to_inference_data`).

        ``*args`` default to the fit's own data. The guide runs with exactly this fit's
        parameters, even after Pyro's global param store has moved on.
        """
        from pyro_vi.diagnostics.inference_data import inference_data_from_result

        return inference_data_from_result(self, *self.model_args(args), **kwargs)

    def diagnose(self, *args: Any, **kwargs: Any) -> Any:
        """Plain-text trust report (see :func:`pyro_vi.diagnose`); ``*args`` default to the data."""
        from pyro_vi.diagnostics.report import diagnose

        return diagnose(self, *self.model_args(args), **kwargs)

    def save(self, path: str | os.PathLike[str], *, data: bool = True) -> None:
        """Write this fit to ``path``: tensors and plain data only, atomically, versioned.

        The file holds the params, ``elbo``, ``converged``, ``n_steps``, the ``history``
        columns, the fit's own fields and (``data=True``) the data tensors; a CAVI fit adds its
        conjugate model (class path and resolved hyper-parameters) and restarts, so that
        :func:`load_result` rebuilds ``.guide`` and ``.summary()``. It loads with
        ``torch.load(path, weights_only=True)``; read it back with :func:`load_result`.
        """
        save_tensors(path, self._to_file(data=data))

    def _to_file(self, *, data: bool) -> dict[str, Any]:
        cls = type(self)
        skip = {"history", "model", "guide", "data", "runs", "moves"}  # runs, moves: CAVIResult._to_file
        record = {f.name: to_plain(getattr(self, f.name)) for f in fields(self) if f.name not in skip}
        kept = self.data if data and all(isinstance(d, Tensor) for d in self.data) else ()
        return {"format": _FORMAT, "version": FORMAT_VERSION,
                "kind": f"{cls.__module__}:{cls.__qualname__}", "fields": record,
                "history": _history_to_file(self.history), "data": [to_plain(d) for d in kept]}


@dataclass(frozen=True)
class CAVIRun:
    """One restart of :func:`pyro_vi.cavi`: its params, ELBO, sweeps, flag and history."""

    params: Any
    elbo: float
    n_steps: int
    converged: bool
    history: pd.DataFrame


@dataclass(frozen=True, repr=False)
class CAVIResult(FitResult):
    """Result of :func:`pyro_vi.cavi` (and :func:`pyro_vi.svi_cavi`): the best of ``n_init`` restarts.

    Beyond :class:`FitResult`: ``cavi_model`` is the prepared conjugate model (priors
    resolved) that interprets ``params`` (``fit.cavi_model.summary(fit.params)``), and
    ``runs`` holds every restart in the order they ran; ``moves`` (``cavi(moves=...)``, else
    None) has one row per move run (``move``, ``elbo``, ``accepted``, ``sweeps``, ``seconds``),
    and the best run, ``params``, may then be a moved one rather than one of ``runs``.
    ``model`` is ``cavi_model.model``, the Pyro program, and ``guide`` is
    ``cavi_model.fitted_guide(params)``, an ordinary Pyro guide. ``params`` are float64 tensors
    on the data's device unless the model says otherwise.
    """

    method: ClassVar[str] = "CAVI"

    cavi_model: Any = field(default=None, compare=False)
    runs: tuple[CAVIRun, ...] = field(default=(), compare=False)
    moves: pd.DataFrame | None = field(default=None, compare=False)

    def summary(self, *, prob: float = 0.94, seed: int = 0, **options: Any) -> pd.DataFrame:
        """Exact posterior table of q: one row per scalar of every latent site.

        Columns ``mean``, ``sd``, ``eti_3%``, ``eti_97%`` (``az.summary``'s names; an
        equal-tailed interval of mass ``prob``), ``method`` (``"exact"``, or how a row that has
        no closed form was computed) and ``negligible`` (rows of mixture components whose
        expected weight is below ``threshold``, a GMM option); never inf or NaN. Row names are
        ``az.summary``'s (``"loc[0, 1]"``). See :mod:`pyro_vi.cavi.summary` for every formula;
        ``seed`` seeds the few Monte-Carlo intervals.

        Examples
        --------
        >>> import torch
        >>> from pyro_vi import BetaBernoulli, cavi
        >>> fit = cavi(BetaBernoulli(alpha=1.0, beta=1.0), torch.tensor([1.0, 0.0, 1.0, 1.0]))
        >>> row = fit.summary().loc["prob"]  # q(p) = Beta(4, 2)
        >>> float(row["mean"]), row["method"]
        (0.6666666666666666, 'exact')
        """
        return cast(pd.DataFrame, self.cavi_model.posterior_summary(
            self.params, *self.data, prob=prob, seed=seed, **options))

    def posterior(self, name: str) -> Any:
        """Q's marginal of latent site ``name`` as a torch distribution (e.g. ``Gamma``).

        For a plain Pyro model fitted by :func:`pyro_vi.cavi`, every latent site of the model
        (a local discrete latent gives its optimal ``Categorical``); for a hand-written model
        the sites of its summary.
        """
        return self.cavi_model.posterior(self.params, name, *self.data)

    def restart_results(self) -> list[CAVIResult]:
        """One result per restart (for one ArviZ chain per independent fit)."""
        return [self.from_run(self.cavi_model, r, runs=(r,), data=self.data) for r in self.runs]

    def to_inference_data(self, *args: Any, restarts: bool = False, **kwargs: Any) -> Any:
        """ArviZ export of this fit (see :func:`pyro_vi.to_inference_data`).

        ``restarts=True`` makes every restart of ``n_init`` its own chain, so between-fit
        disagreement shows in ``az.summary``'s ``r_hat``.
        """
        from pyro_vi.diagnostics.inference_data import inference_data_from_result

        target: Any = self.restart_results() if restarts else self
        return inference_data_from_result(target, *self.model_args(args), **kwargs)

    def _to_file(self, *, data: bool) -> dict[str, Any]:
        out = super()._to_file(data=data)
        out["fields"]["runs"] = [{"params": to_plain(r.params), "elbo": r.elbo, "n_steps": r.n_steps,
                                  "converged": r.converged, "history": _history_to_file(r.history)}
                                 for r in self.runs]
        out["fields"]["moves"] = None if self.moves is None else {
            "move": [str(m) for m in self.moves.move],
            "columns": _history_to_file(self.moves.drop(columns="move"))}
        return out

    @classmethod
    def from_run(cls, cavi_model: Any, run: CAVIRun, *, runs: tuple[CAVIRun, ...],
                 data: tuple[Any, ...], moves: pd.DataFrame | None = None) -> CAVIResult:
        """The result of one run of a conjugate model (its Pyro model and fitted guide)."""
        return cls(params=run.params, elbo=run.elbo, converged=run.converged, n_steps=run.n_steps,
                   history=run.history, model=cavi_model.model,
                   guide=cavi_model.fitted_guide(run.params), data=cavi_model.pyro_data(data),
                   cavi_model=cavi_model, runs=runs, moves=moves)


@dataclass(frozen=True, repr=False)
class SVIResult(FitResult):
    """Result of :func:`pyro_vi.fit_svi`.

    Beyond :class:`FitResult`: ``params`` maps every param-store name to a detached clone of
    its *constrained* value; ``history`` has a ``loss`` column (the estimator's loss, float64)
    beside ``elbo = -loss``, an ``epoch`` column when the fit ran on batches, and one column
    per value of the evaluation hook (NaN on steps without evaluation); ``elbo`` is the mean
    over the last ``window`` steps (what the stopping rule sees; NaN if no step ran).

    Attributes
    ----------
    stop_reason : str
        ``"converged"``, ``"max_steps"``, ``"callback"``, ``"interrupted"`` (Ctrl-C) or, on the
        partial result of a :class:`~pyro_vi.NonFiniteLossError`, ``"non_finite"``.
    initial_evaluation : dict or None
        The evaluation hook's values before the first step (None without the hook).
    """

    method: ClassVar[str] = "SVI"

    stop_reason: str = "max_steps"
    initial_evaluation: Mapping[str, float] | None = field(default=None, compare=False)

    @property
    def interrupted(self) -> bool:
        """True when the loop was stopped by :class:`KeyboardInterrupt`."""
        return self.stop_reason == "interrupted"

    @property
    def final_loss(self) -> float:
        """The smoothed final loss, ``-elbo``."""
        return -self.elbo if not math.isnan(self.elbo) else math.nan

    @property
    def store_params(self) -> Mapping[str, Tensor]:
        """The fitted param-store values; the guide runs in a scoped store holding them."""
        return cast(Mapping[str, Tensor], self.params)

    @property
    def evaluations(self) -> pd.DataFrame:
        """The history rows at which the evaluation hook ran, led by the one before step 1.

        Columns ``step`` (0 for the starting point), ``epoch`` (with batches), ``seconds`` and
        the evaluation columns; a row counts when one of its evaluation values is a number.
        """
        h = self.history
        extra = [c for c in h.columns if c not in _STEP_COLUMNS]
        keep = [c for c in ("step", "epoch", "seconds") if c in h.columns] + extra
        rows = h.loc[h[extra].notna().any(axis=1), keep] if extra else h.loc[[], keep]
        if self.initial_evaluation is not None:
            start = {"step": 0, "epoch": 0, "seconds": 0.0} | dict(self.initial_evaluation)
            first = pd.DataFrame([{c: start.get(c, math.nan) for c in keep}])
            first = first.astype(h.dtypes[keep].to_dict())
            rows = pd.concat([first, rows]) if len(rows) else first
        return rows.reset_index(drop=True)

    @classmethod
    def from_result(cls: type[_R], result: SVIResult, **changes: Any) -> _R:
        """``result`` as an instance of ``cls``, with some fields changed or added."""
        values = {f.name: getattr(result, f.name) for f in fields(result)}
        return cls(**(values | changes))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(stop_reason={self.stop_reason!r}, n_steps={self.n_steps}, "
                f"converged={self.converged}, elbo={self.elbo:.6g}, "
                f"params={sorted(self.store_params)})")


#: History columns of every SVI fit; the others come from the evaluation hook.
_STEP_COLUMNS = ("step", "epoch", "loss", "elbo", "seconds")


def load_result(path: str | os.PathLike[str], *, model: Callable[..., Any] | None = None,
                guide: Callable[..., Any] | None = None) -> FitResult:
    """Read a fit written by :meth:`FitResult.save` (never runs code: ``weights_only=True``).

    A CAVI result comes back whole: params, ELBO, history, restarts, data, and its conjugate
    model rebuilt from the stored class path (a class of ``pyro_vi``, nothing else is imported)
    and hyper-parameters, hence ``.model``, ``.guide`` and ``.summary()``. An SVI result stores
    the param-store values (``params``), the history and its own fields but no code: pass the
    ``model`` and ``guide`` callables it was fitted with (for an autoguide, a fresh
    ``AutoNormal(model)``; ``fit.to_inference_data()`` runs it on the stored ``params``).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is truncated, holds pickled objects, names a class outside pyro_vi, is not a
        pyro-vi result, or has a newer format version; the message names the file.
    TypeError
        If an SVI result is loaded without ``model`` and ``guide`` callables.

    Examples
    --------
    >>> import tempfile, torch
    >>> from pyro_vi import BetaBernoulli, cavi
    >>> fit = cavi(BetaBernoulli(), torch.tensor([1.0, 0.0, 1.0]))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     fit.save(f"{d}/fit.pt")
    ...     back = load_result(f"{d}/fit.pt")
    >>> back.elbo == fit.elbo, back.summary().equals(fit.summary())
    (True, True)
    """
    where = str(path)
    blob = load_tensors(path, what="pyro-vi result file")
    if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
        raise ValueError(f"{where}: not a pyro-vi result file (no {_FORMAT!r} header)")
    version = blob.get("version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(f"{where}: format version {version!r}; this pyro-vi reads 1..{FORMAT_VERSION}")
    cls = import_class(blob["kind"], where=where)
    if not issubclass(cls, FitResult):
        raise ValueError(f"{where}: {blob['kind']!r} is not a FitResult kind")
    values = {k: from_plain(v, where=where) for k, v in blob["fields"].items()
              if k not in ("runs", "moves")}
    values["history"] = _history_from_file(blob["history"])
    data = tuple(from_plain(d, where=where) for d in blob["data"])
    if issubclass(cls, CAVIResult):
        cavi_model = values["cavi_model"]
        runs = tuple(CAVIRun(params=from_plain(r["params"], where=where), elbo=r["elbo"],
                             n_steps=r["n_steps"], converged=r["converged"],
                             history=_history_from_file(r["history"]))
                     for r in blob["fields"]["runs"])
        kept = blob["fields"].get("moves")  # absent from files written before moves
        moves = None if kept is None else _history_from_file(kept["columns"]).assign(
            move=list(kept["move"]))[["move", "elbo", "accepted", "sweeps", "seconds"]]
        return cls(**values, runs=runs, moves=moves, data=data, model=cavi_model.model,
                   guide=cavi_model.fitted_guide(values["params"]))
    if not callable(model) or not callable(guide):
        raise TypeError(f"{where} holds a {cls.__name__}: pass the model and guide callables it "
                        f"was fitted with, load_result(path, model=..., guide=...)")
    return cls(**values, data=data, model=model, guide=guide)


def _history_to_file(history: pd.DataFrame) -> dict[str, Any]:
    """A history DataFrame as column names and one tensor per column (numbers and bools only)."""
    cols = {}
    for name in history.columns:
        values = history[name].to_numpy()
        if values.dtype.kind not in "biuf":
            raise TypeError(f"history column {name!r} has dtype {values.dtype}; cannot save it")
        cols[str(name)] = torch.from_numpy(values.copy())
    return {"columns": list(cols), "values": list(cols.values())}


def _history_from_file(blob: Mapping[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({c: v.numpy() for c, v in zip(blob["columns"], blob["values"], strict=True)},
                        columns=list(blob["columns"]))
