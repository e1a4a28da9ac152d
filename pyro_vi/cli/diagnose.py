"""``pyro-vi diagnose``: fit a model (built-in or your own) and print its trust report.

The report is :func:`pyro_vi.diagnose`'s. The model is one of

* ``gmm``: a Bayesian Gaussian mixture fitted by CAVI (``--components``), on the bundled Old
  Faithful data (standardised) or on one ``--data`` file, the (N, D) points;
* ``logistic``: a Bayesian logistic regression (:func:`logistic_model`) fitted by SVI, on
  synthetic data (``--n`` rows) or on two ``--data`` files, X (N, F) then y (N,);
* ``package.module:function``: your own Pyro model, an importable callable, fitted by SVI with
  an autoguide (``--guide auto-normal`` or ``auto-mvn``).

**Data.** Each ``--data PATH`` (repeat the option) is one positional argument of the model, in
the order given: ``--data x.csv --data y.npy`` calls ``model(x, y)``. A ``.csv`` file has one
header row and numbers only; one column becomes a (N,) float64 tensor, several an (N, C) one.
A ``.npy`` file is loaded without pickles and keeps its shape; floating arrays become float64,
integer ones int64 (group indices), booleans float64. NaN or inf in a file is an error.

**Guides.** ``cavi`` is the closed-form mean-field fit of a built-in conjugate model (only
``gmm``); ``auto-normal`` / ``auto-mvn`` are Pyro's AutoNormal / AutoMultivariateNormal fitted
by :func:`pyro_vi.fit_svi` (``logistic`` and user models; a model with discrete latent sites
cannot use them). Every bad value ends with a message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pyro_vi._checks import check_int
from pyro_vi._io import check_writable
from pyro_vi.cli.main import HelpFormatter, plain
from pyro_vi.diagnostics.psis import MIN_SAMPLES
from pyro_vi.diagnostics.report import diagnose

__all__ = ["GUIDES", "load_data", "load_model", "logistic_model", "main"]

#: ``--guide`` choices.
GUIDES = ("auto-normal", "auto-mvn", "cavi")
BUILTIN = ("gmm", "logistic")


class UsageError(Exception):
    """A bad command-line value: printed as ``pyro-vi diagnose: error: ...``, exit status 2."""


def _count(minimum: int) -> Any:
    """An argparse ``type`` for integers ``>= minimum``, checked by :func:`pyro_vi._checks.check_int`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        try:
            return check_int("value", value, minimum=minimum)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def load_model(spec: str) -> Callable[..., Any]:
    """The callable named by ``package.module:function`` (the module is imported).

    Raises
    ------
    UsageError
        A spec without ``:``, a module that cannot be imported, a missing or non-callable name.

    Examples
    --------
    >>> load_model("pyro_vi.cli.diagnose:logistic_model").__name__
    'logistic_model'
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--model {spec!r}: expected gmm, logistic or package.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any import-time failure of the user's module is a usage error
        raise UsageError(f"--model {spec!r}: cannot import {module_name!r} "
                         f"({type(err).__name__}: {err})") from None
    fn: Any = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise UsageError(f"--model {spec!r}: module {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise UsageError(f"--model {spec!r}: {attr!r} is a {type(fn).__name__}, not a callable")
    return fn


def load_data(path: str) -> Any:
    """One ``--data`` file as a tensor (see the module docstring for the rules).

    Raises
    ------
    UsageError
        A missing file, an unknown suffix, unparsable text, NaN/inf, or an empty array.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--data {path!r}: no such file")
    try:
        if p.suffix.lower() == ".npy":
            array = np.load(p, allow_pickle=False)
        elif p.suffix.lower() == ".csv":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "no data": checked below
                array = np.loadtxt(p, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)
            array = array[:, 0] if array.shape[1] == 1 else array
        else:
            raise UsageError(f"--data {path!r}: expected a .csv or .npy file")
    except (ValueError, OSError) as err:
        raise UsageError(f"--data {path!r}: cannot read it ({err})") from None
    if array.size == 0:
        raise UsageError(f"--data {path!r}: no data rows")
    if array.dtype.kind in "iu":
        return torch.as_tensor(array.astype(np.int64))
    if array.dtype.kind not in "fb":
        raise UsageError(f"--data {path!r}: holds {array.dtype} values, expected numbers")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0].tolist()
        raise UsageError(f"--data {path!r}: NaN or inf at index {bad} (row 0 is the first "
                         "data row)")
    return torch.as_tensor(array)


def _logistic_data(n: int, seed: int) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    logits = 0.3 + x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    return x, torch.bernoulli(torch.sigmoid(logits), generator=g)


def logistic_model(x: Any, y: Any) -> None:
    """Bayesian logistic regression: intercept and coefficients with N(0, 5²) priors."""
    import pyro
    import pyro.distributions as dist
    import torch

    b0 = pyro.sample("intercept", dist.Normal(x.new_tensor(0.0), 5.0))
    with pyro.plate("feature", x.shape[1]):
        beta = pyro.sample("beta", dist.Normal(x.new_tensor(0.0), 5.0))
    with pyro.plate("data", x.shape[0]):
        # einsum rather than x @ beta: the model then broadcasts over a batch of draws
        logits = b0 + torch.einsum("nf,...f->...n", x, beta)
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


def _resolve(ns: argparse.Namespace) -> tuple[str, Callable[..., Any] | None, tuple[Any, ...]]:
    """Check the options against each other; return (guide, model or None for gmm, data)."""
    data = tuple(load_data(path) for path in ns.data)
    if ns.model == "gmm":
        guide = ns.guide or "cavi"
        if guide != "cavi":
            raise UsageError(f"--guide {guide}: the gmm has discrete latent sites; it is fitted "
                             "by cavi only")
        if len(data) > 1:
            raise UsageError(f"gmm takes one --data file (the points), got {len(data)}")
        if data and data[0].dim() != 2:
            data = (data[0].reshape(-1, 1).double(),)
        return guide, None, data
    guide = ns.guide or "auto-normal"
    if guide == "cavi":
        raise UsageError("--guide cavi is only for the built-in conjugate model gmm; use "
                         "auto-normal or auto-mvn for this model")
    if ns.model == "logistic":
        if data and len(data) != 2:
            raise UsageError(f"logistic takes two --data files (X, then y), got {len(data)}")
        if data:
            x, y = data
            if x.dim() == 1:
                x = x.reshape(-1, 1)
            if x.shape[0] != y.shape[0]:
                raise UsageError(f"logistic: X has {x.shape[0]} rows but y has {y.shape[0]}")
            data = (x.double(), y.double())
        else:
            data = _logistic_data(ns.n, ns.seed)
        return guide, logistic_model, data
    return guide, load_model(ns.model), data


def _fit(ns: argparse.Namespace, guide_name: str, model: Callable[..., Any] | None,
         data: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """Fit; return (result, model args, NUTS options)."""
    import pyro
    from pyro.optim import Adam  # type: ignore[attr-defined]  # made at import time

    if model is not None:
        from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

        from pyro_vi.svi.runner import fit_svi

        auto = AutoNormal if guide_name == "auto-normal" else AutoMultivariateNormal
        pyro.clear_param_store()
        svi = fit_svi(model, auto(model), *data, optim=Adam({"lr": ns.lr}),
                      num_steps=ns.steps, seed=ns.seed, progress=False)
        return svi, data, {}
    from pyro_vi.cavi.engine import cavi
    from pyro_vi.diagnostics.nuts import match_components
    from pyro_vi.models.gmm.model import GaussianMixture

    if data:
        (x,) = data
    else:
        from pyro_vi.data.bundled import load_old_faithful

        x = load_old_faithful(standardize=True)
    fit = cavi(GaussianMixture(ns.components), x, seed=ns.seed, max_iter=ns.steps)
    align = match_components("loc", ["weights", "loc", "precision"])
    return fit, (x,), {"align": align, "jit_compile": True}


def _parser() -> argparse.ArgumentParser:
    doc = plain(__doc__)
    p = argparse.ArgumentParser(prog="pyro-vi diagnose", description=doc.splitlines()[0],
                                formatter_class=HelpFormatter,
                                epilog="Data: each --data file is one positional argument of the "
                                       "model, in order; a CSV has a header row, one column -> "
                                       "(N,), several -> (N, C); .npy keeps its shape. Bad "
                                       "values exit with status 2.")
    p.add_argument("--model", default="gmm", metavar="gmm|logistic|MODULE:FUNCTION",
                   help="gmm: Bayesian GMM by CAVI; logistic: logistic regression by SVI; or "
                        "your own Pyro model as an importable package.module:function")
    p.add_argument("--data", action="append", default=[], metavar="PATH",
                   help="a .csv (header row) or .npy file; repeat it, one per model argument "
                        "(default: none; gmm then uses the bundled Old Faithful, standardised, "
                        "and logistic synthetic data of --n rows)")
    p.add_argument("--guide", choices=GUIDES, default=None,
                   help="cavi (gmm only) or an autoguide fitted by SVI (default: cavi for gmm, "
                        "auto-normal for logistic and your own model)")
    p.add_argument("--components", type=_count(1), default=2, help="gmm: number of components")
    p.add_argument("--n", type=_count(1), default=200, help="logistic: synthetic data size")
    p.add_argument("--steps", type=_count(1), default=2000,
                   help="CAVI iterations / SVI steps (max)")
    p.add_argument("--lr", type=_positive_float, default=0.05, help="SVI: Adam learning rate")
    p.add_argument("--nuts", action="store_true", help="also compare with NUTS (slow)")
    p.add_argument("--nuts-samples", type=_count(1), default=300, help="NUTS draws")
    p.add_argument("--nuts-warmup", type=_count(0), default=300, help="NUTS warm-up steps")
    p.add_argument("--num-samples", type=_count(MIN_SAMPLES), default=4000,
                   help=f"guide draws for PSIS (at least {MIN_SAMPLES}: k-hat needs a tail)")
    p.add_argument("--seed", type=_count(0), default=0, help="seed of the fit and the draws")
    p.add_argument("--out-dir", default="diagnose-out", help="where figures are written")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pyro-vi diagnose``: fit the chosen model and print its trust report."""
    p = _parser()
    ns = p.parse_args(list(argv) if argv is not None else None)
    try:
        guide, model, data = _resolve(ns)
        if ns.out_dir:  # before any fitting: figures go there at the end
            Path(ns.out_dir).mkdir(parents=True, exist_ok=True)
            check_writable(Path(ns.out_dir) / "elbo_trace.png", what="--out-dir")
    except (UsageError, OSError, ValueError) as err:
        p.error(str(err))
    try:
        result, args, nuts_options = _fit(ns, guide, model, data)
        nuts_options.update(num_samples=ns.nuts_samples, warmup_steps=ns.nuts_warmup)
        diagnose(result, *args, nuts=ns.nuts, out_dir=ns.out_dir, num_samples=ns.num_samples,
                 seed=ns.seed, nuts_options=nuts_options)
    except Exception as err:  # the user's model may fail in any way: a message, not a traceback
        print(f"{p.prog}: error: fitting or diagnosing {ns.model!r} failed: "
              f"{type(err).__name__}: {err}", file=sys.stderr)
        return 2
    return 0
