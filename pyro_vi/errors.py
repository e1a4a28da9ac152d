"""Warnings and errors raised by pyro-vi's inference loops."""

from __future__ import annotations

__all__ = ["ConvergenceWarning", "ELBODecreaseError", "NumericalError"]


class ConvergenceWarning(UserWarning):
    """A fit stopped at its iteration budget before meeting its tolerance."""


class NumericalError(ArithmeticError):
    """Numerical trouble (a non-PD matrix, a NaN or an inf) at a named place in a fit."""


class ELBODecreaseError(NumericalError):
    """The ELBO fell during coordinate ascent by more than round-off: a bug, never noise.

    Coordinate ascent on a conjugate-exponential model cannot decrease the ELBO (Bishop 2006,
    §10.1.1), so a drop names the iteration at which the update or the bound is wrong.
    """
