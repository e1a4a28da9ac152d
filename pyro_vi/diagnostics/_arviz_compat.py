r"""The one bridge to ArviZ: both lines, 0.2x (``InferenceData``) and 1.x (``xarray.DataTree``).

The line is chosen by what the installed ``arviz`` offers, never by its version string:
ArviZ 0.2x defines the class ``arviz.InferenceData`` and the function ``arviz.psislw``;
ArviZ 1.x (Python >= 3.12) is a namespace over ``arviz_base``, ``arviz_stats`` and
``arviz_plots`` whose ``InferenceData`` is only a module-level ``__getattr__`` that warns and
hands back ``xarray.DataTree``. This module looks into the module's own namespace
(``vars(arviz)``), so the legacy name is never touched and no ``MigrationWarning`` is raised.

Every other module reaches ArviZ through the four functions here:

* :func:`dataset` builds one group (``(chain, draw, ...)`` arrays or, with
  ``sampled=False``, plain arrays) with ArviZ's own ``dict_to_dataset`` and provenance attrs;
* :func:`assemble` makes the container, ``InferenceData`` (0.2x) or ``DataTree`` (1.x);
* :func:`psislw` is ArviZ's Pareto smoothing (``arviz.psislw`` or
  ``arviz_stats.base.array_stats.psislw``);
* :func:`bulk_ess` is ArviZ's bulk effective sample size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np
import pyro

__all__ = ["assemble", "bulk_ess", "dataset", "is_legacy", "psislw"]


@cache
def is_legacy() -> bool:
    """Whether the installed ArviZ is the 0.2x line (it defines the ``InferenceData`` class)."""
    import arviz

    return isinstance(vars(arviz).get("InferenceData"), type)


def dataset(data: Mapping[str, np.ndarray], *, dims: Mapping[str, Sequence[str]],
            coords: Mapping[str, Any], attrs: Mapping[str, Any] | None = None,
            sampled: bool = True) -> Any:
    """One ArviZ group as an ``xarray.Dataset``, tagged with Pyro as the inference library.

    ``sampled`` arrays lead with ``(chain, draw)``; the others (observed and constant data)
    have no sample dims.
    """
    options: dict[str, Any] = {"dims": dict(dims), "coords": dict(coords),
                               "attrs": None if attrs is None else dict(attrs)}
    if is_legacy():
        import arviz as az

        if not sampled:
            options["default_dims"] = []
        return az.dict_to_dataset(dict(data), library=pyro, **options)
    from arviz_base import dict_to_dataset

    if not sampled:
        options["sample_dims"] = []
    return dict_to_dataset(dict(data), inference_library=pyro, **options)


def assemble(groups: Mapping[str, Any]) -> Any:
    """``arviz.InferenceData`` (ArviZ 0.2x) or ``xarray.DataTree`` (1.x) of named Datasets."""
    if is_legacy():
        import arviz as az

        return az.InferenceData(**groups)
    import xarray as xr

    return xr.DataTree.from_dict(dict(groups))


def psislw(log_ratios: np.ndarray) -> tuple[np.ndarray, float]:
    r"""Pareto-smoothed, normalised log weights and :math:`\hat k` of ``(S,)`` log ratios.

    ArviZ's own smoothing with relative efficiency 1 (independent draws). The lines differ in
    convention, not in method: 0.2x's ``arviz.psislw`` takes the log ratios, 1.x's
    ``array_stats.psislw`` takes log-likelihood values (PSIS-LOO's ratios are
    :math:`1/p(y_i \mid \theta)`) and negates them, so it is given :math:`-\log r`. They do
    differ in the tail length :math:`M`: ``ceil`` (0.2x) vs ``floor`` (1.x) of
    :math:`\min(S/5, 3\sqrt{S})`, one draw apart unless that is an integer.
    """
    ratios = np.asarray(log_ratios, dtype=np.float64)
    if is_legacy():
        import arviz as az

        log_weights, khat = az.psislw(ratios.copy(), reff=1.0)
    else:
        from arviz_stats.base import array_stats

        log_weights, khat = array_stats.psislw(-ratios, r_eff=1)
    return np.asarray(log_weights, dtype=np.float64), float(khat)


def bulk_ess(draws: np.ndarray) -> np.ndarray:
    """ArviZ bulk effective sample size of ``(chain, draw, *shape)`` draws, per element."""
    import arviz as az

    c, s = draws.shape[:2]
    flat = np.asarray(draws, dtype=np.float64).reshape(c, s, -1)
    ess = [float(az.ess(flat[:, :, i], method="bulk")) for i in range(flat.shape[-1])]
    return np.array(ess).reshape(draws.shape[2:])
