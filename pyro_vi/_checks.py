"""Argument checks shared by every entry point, so one mistake gets one exception everywhere.

The rule: a value of the wrong *kind* (a string where a number belongs, a float where an
integer belongs, a boolean where any number belongs) is a :class:`TypeError`; a value of the
right kind outside its range is a :class:`ValueError`. Both name the argument. numpy integer
and float scalars are accepted wherever Python ones are.

Examples
--------
>>> import numpy as np
>>> check_int("max_iter", np.int64(3), minimum=1)
3
>>> check_real("tol", 0, minimum=0.0)
0.0
>>> check_int("max_iter", 1.5)
Traceback (most recent call last):
    ...
TypeError: max_iter must be an int, got float 1.5
>>> check_real("tol", True)
Traceback (most recent call last):
    ...
TypeError: tol must be a real number, got bool True
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "as_matrix",
    "as_vector",
    "check_bool",
    "check_callable",
    "check_device",
    "check_dtype",
    "check_finite",
    "check_int",
    "check_optional_int",
    "check_positive",
    "check_real",
    "check_seed",
    "check_spread",
]


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an ``int`` after checking it is an integer in ``[minimum, maximum]``."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_kind(value)}")
    out = int(value)
    if minimum is not None and out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {out}")
    if maximum is not None and out > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {out}")
    return out


def check_optional_int(name: str, value: Any, *, minimum: int | None = None) -> int | None:
    """:func:`check_int` that lets ``None`` through."""
    return None if value is None else check_int(name, value, minimum=minimum)


def check_real(name: str, value: Any, *, minimum: float | None = None, positive: bool = False,
               finite: bool = True) -> float:
    """Return ``value`` as a ``float`` after checking it is a real number in range.

    ``minimum`` is inclusive; ``positive=True`` asks for ``> 0``; ``finite=False`` admits inf.
    NaN is always a ValueError.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_kind(value)}")
    out = float(value)
    if math.isnan(out) or (finite and not math.isfinite(out)):
        raise ValueError(f"{name} must be a finite number, got {out}")
    if positive and not out > 0:
        raise ValueError(f"{name} must be > 0, got {out}")
    if minimum is not None and out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {out}")
    return out


def check_finite(name: str, value: Any) -> float:
    """A finite real number, as ``float``."""
    return check_real(name, value)


def check_positive(name: str, value: Any) -> float:
    """A finite real number ``> 0``, as ``float``."""
    return check_real(name, value, positive=True)


def check_bool(name: str, value: Any, *, optional: bool = False) -> bool | None:
    """``True``/``False`` (or ``None`` when ``optional``); anything else is a TypeError."""
    if value is None and optional:
        return None
    if not isinstance(value, bool | np.bool_):
        allowed = "None, True or False" if optional else "True or False"
        raise TypeError(f"{name} must be {allowed}, got {_kind(value)}")
    return bool(value)


def check_seed(name: str, value: Any) -> int | None:
    """A seed: ``None`` or an integer ``>= 0`` (numpy integers included)."""
    return check_optional_int(name, value, minimum=0)


def check_callable(name: str, value: Any) -> Any:
    """``value`` itself, after checking it is callable."""
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")
    return value


_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
           "float": torch.float32, "float64": torch.float64, "double": torch.float64}


def check_dtype(name: str, value: Any) -> torch.dtype:
    """A floating ``torch.dtype``; the strings ``"float32"``, ``"float64"``, ... are accepted."""
    if isinstance(value, str):
        key = value.removeprefix("torch.")
        if key not in _DTYPES:
            raise ValueError(f"{name} must be a floating dtype such as torch.float64 or 'float64', "
                             f"got {value!r}")
        return _DTYPES[key]
    if not isinstance(value, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype, got {_kind(value)}")
    if not value.is_floating_point:
        raise ValueError(f"{name} must be a floating dtype, got {value}")
    return value


def check_device(name: str, value: Any) -> torch.device | None:
    """None or a device torch knows *and can use here*: ``"cuda"`` without CUDA is a ValueError.

    Strings and :class:`torch.device` are accepted; anything else is a ``TypeError``.
    """
    if value is None:
        return None
    if not isinstance(value, str | torch.device):
        raise TypeError(f"{name} must be a torch.device or a string such as 'cpu', "
                        f"got {_kind(value)}")
    try:
        dev = torch.device(value)
    except RuntimeError as err:
        raise ValueError(f"{name} must name a torch device such as 'cpu' or 'cuda:0', "
                         f"got {value!r}") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={value!r} but CUDA is not available here "
                             "(torch.cuda.is_available() is False); use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={value!r} but only {torch.cuda.device_count()} CUDA "
                             "device(s) exist")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}={value!r} but MPS is not available here; use 'cpu'")
    return dev


def check_spread(name: str, x: Tensor, *, centre: bool = True) -> None:
    """Check that squares of ``x``'s deviations (from its column means) neither overflow nor vanish.

    CAVI's statistics are sums of squared deviations. Data whose squares overflow (values
    ~1e300 in float64) or underflow (spreads ~1e-160) cannot be fitted in ``x``'s dtype; the
    ``ValueError`` names ``name`` and says to rescale, instead of blaming a prior derived from
    it. ``centre=False`` checks the raw values (quantities whose squares are used as they are).
    """
    info = torch.finfo(x.dtype)
    n = max(1, x.shape[0])
    dev = x - x.mean(0) if centre else x
    big = float(dev.abs().max())
    what = "deviations from the mean" if centre else "values"
    if not math.isfinite(big) or big > math.sqrt(info.max / n):
        raise ValueError(
            f"{name} is too large for {x.dtype}: its {what} reach {big:.3g}, so their squares "
            f"(summed over {n} rows) overflow; rescale {name} (e.g. divide by its standard "
            "deviation) and transform the fit back")
    if 0.0 < big < math.sqrt(info.tiny) / info.eps:
        raise ValueError(
            f"{name} is too small for {x.dtype}: its {what} are at most {big:.3g}, so their "
            f"squares underflow; rescale {name} (e.g. divide by its standard deviation)")


def as_vector(x: Any, name: str, *, dtype: torch.dtype = torch.float64,
              device: torch.device | str | None = None, integer: bool = False) -> Tensor:
    """Check that ``x`` is a finite, non-empty 1-D numeric array; return a ``dtype`` tensor.

    With ``integer=True`` every entry must be a whole number (any numeric dtype is accepted;
    booleans count as 0/1). Raises ``TypeError`` for non-numeric input and ``ValueError``
    naming ``name`` otherwise.
    """
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (
            torch.bool, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if t.dim() != 1 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {tuple(t.shape)}")
    t = t.to(dtype=dtype, device=device)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} holds NaN or inf (first at index "
                         f"{int((~torch.isfinite(t)).nonzero()[0])})")
    if integer and (t != torch.round(t)).any():
        raise ValueError(f"{name} must hold whole numbers (counts)")
    return t


#: Rows per block of :func:`as_matrix`'s finiteness check.
_FINITE_ROWS = 8192


def as_matrix(x: Any, name: str = "x", *, dtype: torch.dtype = torch.float64,
              device: torch.device | str | None = None, min_rows: int = 1) -> Tensor:
    """Check that ``x`` is a finite floating ``(N, D)`` array; return a ``dtype`` tensor.

    Raises ``TypeError`` for non-floating dtypes and ``ValueError`` (naming ``name``) for a
    wrong number of dimensions, an empty array, fewer than ``min_rows`` rows, NaN or inf.
    """
    if isinstance(x, Tensor):
        t = x
    else:
        arr = np.asarray(x)
        if arr.dtype == object:
            raise TypeError(f"{name} must be a numeric array, got dtype object")
        t = torch.as_tensor(arr)
    if not t.is_floating_point():
        raise TypeError(f"{name} must hold floating-point numbers, got dtype {t.dtype}; "
                        f"convert it explicitly, e.g. {name}.double()")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D with shape (N, D), got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if t.shape[0] < min_rows:
        raise ValueError(f"{name} has N={t.shape[0]} rows, fewer than the {min_rows} needed")
    # block by block: a full-size boolean mask (and torch's abs() copy inside isfinite) would
    # cost more memory than a CAVI sweep over the same data
    for start in range(0, t.shape[0], _FINITE_ROWS):
        finite = torch.isfinite(t[start:start + _FINITE_ROWS]).all(-1)
        if not finite.all():
            row = start + int((~finite).nonzero()[0])
            raise ValueError(f"{name} holds NaN or inf (first at row {row})")
    return t.to(dtype=dtype, device=device)
