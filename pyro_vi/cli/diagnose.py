"""``pyro-vi diagnose``: fit a built-in example and print its trust report (:func:`pyro_vi.diagnose`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np

from pyro_vi._checks import check_int
from pyro_vi.diagnostics.report import diagnose

__all__ = ["logistic_model", "main"]


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


def _fit(ns: argparse.Namespace) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """Fit the chosen built-in example; return (result, model args, NUTS options)."""
    import pyro
    from pyro.optim import Adam  # type: ignore[attr-defined]  # made at import time

    if ns.model == "logistic":
        from pyro.infer.autoguide import AutoNormal

        from pyro_vi.svi.runner import fit_svi

        x, y = _logistic_data(ns.n, ns.seed)
        pyro.clear_param_store()
        svi = fit_svi(logistic_model, AutoNormal(logistic_model), x, y, optim=Adam({"lr": 0.05}),
                      num_steps=ns.steps, seed=ns.seed, progress=False)
        return svi, (x, y), {}
    from pyro_vi.cavi.engine import cavi
    from pyro_vi.diagnostics.nuts import match_components
    from pyro_vi.models.gmm.model import GaussianMixture

    if ns.data == "old-faithful":
        from pyro_vi.data.bundled import load_old_faithful

        x = load_old_faithful(standardize=True)
    else:
        import torch

        x = torch.as_tensor(np.loadtxt(ns.data, delimiter=",", skiprows=1, ndmin=2),
                            dtype=torch.float64)
    fit = cavi(GaussianMixture(ns.components), x, seed=ns.seed, max_iter=ns.steps)
    align = match_components("loc", ["weights", "loc", "precision"])
    return fit, (x,), {"align": align, "jit_compile": True}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pyro-vi diagnose``: fit a built-in example and print its trust report."""
    p = argparse.ArgumentParser(prog="pyro-vi diagnose", description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["gmm", "logistic"], default="gmm",
                   help="gmm: Bayesian GMM by CAVI; logistic: logistic regression, AutoNormal SVI")
    p.add_argument("--data", default="old-faithful",
                   help="gmm data: 'old-faithful' (bundled, standardised) or a CSV path")
    p.add_argument("--components", type=_count(1), default=2, help="gmm: number of components")
    p.add_argument("--n", type=_count(1), default=200, help="logistic: synthetic data size")
    p.add_argument("--steps", type=_count(1), default=2000, help="CAVI iterations / SVI steps (max)")
    p.add_argument("--nuts", action="store_true", help="also compare with NUTS (slow)")
    p.add_argument("--nuts-samples", type=_count(1), default=300)
    p.add_argument("--nuts-warmup", type=_count(0), default=300)
    p.add_argument("--num-samples", type=_count(1), default=4000, help="guide draws for PSIS")
    p.add_argument("--seed", type=_count(0), default=0)
    p.add_argument("--out-dir", default="diagnose-out", help="where figures are written")
    ns = p.parse_args(list(argv) if argv is not None else None)
    result, args, nuts_options = _fit(ns)
    nuts_options.update(num_samples=ns.nuts_samples, warmup_steps=ns.nuts_warmup)
    diagnose(result, *args, nuts=ns.nuts, out_dir=ns.out_dir, num_samples=ns.num_samples,
             seed=ns.seed, nuts_options=nuts_options)
    return 0
