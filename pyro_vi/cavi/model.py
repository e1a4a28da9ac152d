"""What the conjugate models share: input checks, the analytic ELBO and fitted Pyro guides.

A model subclasses :class:`ConjugateModelBase` and implements the
:class:`pyro_vi.ConjugateModel` protocol plus two Pyro-facing hooks:

* ``sample_guide(params, *data)``: sample every guide site from the global factors in
  ``params`` (and any local factors, computed optimally from ``data``);
* ``guide_params(*data)``: the same params record built from ``pyro.param`` sites, so that
  ``model.guide`` can be trained by :func:`pyro_vi.fit_svi`.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import Tensor

from pyro_vi._checks import as_vector, check_finite, check_positive
from pyro_vi.cavi.engine import local_pass
from pyro_vi.factors import ExpFamFactor

__all__ = ["ConjugateModelBase", "FittedGuide", "as_vector", "check_finite", "check_positive", "detach_params"]


def detach_params(params: Any) -> Any:
    """Copy a params dataclass, detaching every factor and tensor from autograd."""
    out = {}
    for f in dataclasses.fields(params):
        v = getattr(params, f.name)
        if isinstance(v, ExpFamFactor):
            v = copy.copy(v)
            for key, val in vars(v).items():
                if isinstance(val, Tensor):
                    setattr(v, key, val.detach().clone())
        elif isinstance(v, Tensor):
            v = v.detach().clone()
        out[f.name] = v
    return type(params)(**out)


class FittedGuide:
    """A Pyro guide with fixed, fitted parameters (``CAVIResult.guide``).

    Calling it with the model's data samples every guide site from ``params``; local factors
    (if the model has any) are set to their optimum given ``params`` for the data it is given.
    """

    def __init__(self, model: ConjugateModelBase, params: Any) -> None:
        self.model = model
        self.params = params

    def __call__(self, *data: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Sample the guide sites for ``data`` (the model's arguments)."""
        return self.model.sample_guide(self.params, *data)


class ConjugateModelBase:
    """Shared methods of the conjugate models in :mod:`pyro_vi.models`."""

    #: Plates nested inside the model (the data plate); Pyro's ELBOs need it for particles.
    max_plate_nesting = 1

    dtype: torch.dtype = torch.float64
    device: torch.device | str | None = None

    def _t(self, v: float) -> Tensor:
        """A scalar tensor in the model's dtype and device."""
        return torch.tensor(v, dtype=self.dtype, device=self.device)

    def sample_guide(self, params: Any, *data: Any) -> dict[str, Tensor]:  # pragma: no cover
        """Sample the guide's sites from ``params``."""
        raise NotImplementedError

    def guide_params(self, *data: Any) -> Any:  # pragma: no cover
        """Build the params record from ``pyro.param`` sites (initialised from the prior)."""
        raise NotImplementedError

    def guide(self, *data: Any) -> dict[str, Tensor]:
        """Run the mean-field guide with trainable ``pyro.param`` sites (for ``fit_svi``)."""
        return self.sample_guide(self.guide_params(*data), *data)

    def params_from_store(self, *data: Any) -> Any:
        """Read the params from Pyro's param store, detached (after training ``guide``)."""
        with torch.no_grad():
            return detach_params(self.guide_params(*data))

    def fitted_guide(self, params: Any) -> FittedGuide:
        """Return a Pyro guide carrying fixed ``params`` (used as ``CAVIResult.guide``)."""
        return FittedGuide(self, params)

    def elbo(self, data: Any, params: Any, *, chunk_size: int | None = None) -> float:
        """Analytic ELBO at ``params`` (local factors, if any, at their optimum), in nats."""
        model, data = self.prepare(data)  # type: ignore[attr-defined]
        local = local_pass(model, data, params, chunk_size=chunk_size)
        return float(local.elbo + model.global_elbo(params))
