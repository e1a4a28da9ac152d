"""Real data sets shipped inside the package (no network needed): Old Faithful, eight schools."""

from __future__ import annotations

import csv
from importlib import resources

import torch
from torch import Tensor

from pyro_vi._checks import check_bool, check_dtype

__all__ = ["load_eight_schools", "load_old_faithful"]


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
    rows = _read_csv("old_faithful.csv", ["eruptions", "waiting"])
    x = torch.tensor([[float(v) for v in r] for r in rows], dtype=dtype)
    if standardize:
        x = (x - x.mean(0)) / x.std(0, unbiased=False)
    return x


def load_eight_schools(*, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Load the eight-schools data: estimated coaching effects ``y`` and their standard errors.

    Source: Rubin (1981), "Estimation in parallel randomized experiments", *Journal of
    Educational Statistics* 6(4), 377-401, Table 2; the example of Gelman et al. (2013),
    *Bayesian Data Analysis*, 3rd ed., §5.5. Bundled as ``pyro_vi/data/eight_schools.csv``
    (columns ``school``, ``y``, ``sigma``; schools A-H). The pair is the data argument of
    :class:`pyro_vi.HierarchicalNormal`.

    Parameters
    ----------
    dtype : torch.dtype, keyword-only
        Floating dtype of the result (default float64), on the CPU.

    Returns
    -------
    (y, sigma) : tuple of Tensor
        Both of shape ``(8,)``: the effect estimate of each school (SAT-V points) and its known
        standard error.

    Raises
    ------
    TypeError
        If ``dtype`` is not a ``torch.dtype`` (or its name).
    ValueError
        If ``dtype`` is not a floating dtype.

    Examples
    --------
    >>> y, sigma = load_eight_schools()
    >>> y.tolist()[:3], sigma.tolist()[:3]
    ([28.0, 8.0, -3.0], [15.0, 10.0, 16.0])
    """
    dtype = check_dtype("dtype", dtype)
    rows = _read_csv("eight_schools.csv", ["school", "y", "sigma"])
    y = torch.tensor([float(r[1]) for r in rows], dtype=dtype)
    sigma = torch.tensor([float(r[2]) for r in rows], dtype=dtype)
    return y, sigma


def _read_csv(name: str, header: list[str]) -> list[list[str]]:
    """The rows of bundled ``pyro_vi/data/<name>`` after checking its header."""
    text = resources.files("pyro_vi").joinpath(f"data/{name}").read_text()
    rows = list(csv.reader(text.splitlines()))
    if rows[0] != header:
        raise ValueError(f"{name}: unexpected header {rows[0]}")
    return rows[1:]
