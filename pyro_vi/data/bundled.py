"""Real data sets shipped inside the package (no network needed)."""

from __future__ import annotations

import csv
from importlib import resources

import torch
from torch import Tensor

from pyro_vi._checks import check_bool, check_dtype

__all__ = ["load_old_faithful"]


def load_old_faithful(*, standardize: bool = False, dtype: torch.dtype = torch.float64) -> Tensor:
    """Load the Old Faithful geyser eruptions: 272 rows of (eruption minutes, waiting minutes).

    Source: R's ``datasets::faithful`` (Härdle 1991, *Smoothing Techniques*), the data of
    Bishop (2006) Fig. 10.6. Bundled as ``pyro_vi/data/old_faithful.csv``.

    Parameters
    ----------
    standardize : bool, keyword-only
        Subtract each column's mean and divide by its (population) standard deviation.
    dtype : torch.dtype
        Floating dtype of the result (default float64), on the CPU.

    Returns
    -------
    Tensor
        Shape ``(272, 2)``.

    Raises
    ------
    TypeError
        If ``dtype`` is not a ``torch.dtype`` (or its name), or ``standardize`` not a bool.
    ValueError
        If ``dtype`` is not a floating dtype.

    Examples
    --------
    >>> x = load_old_faithful()
    >>> tuple(x.shape), float(x[0, 1])
    ((272, 2), 79.0)
    """
    dtype = check_dtype("dtype", dtype)
    standardize = bool(check_bool("standardize", standardize))
    text = resources.files("pyro_vi").joinpath("data/old_faithful.csv").read_text()
    rows = list(csv.reader(text.splitlines()))
    if rows[0] != ["eruptions", "waiting"]:
        raise ValueError(f"old_faithful.csv: unexpected header {rows[0]}")
    x = torch.tensor([[float(v) for v in r] for r in rows[1:]], dtype=dtype)
    if standardize:
        x = (x - x.mean(0)) / x.std(0, unbiased=False)
    return x
