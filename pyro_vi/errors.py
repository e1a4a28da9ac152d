"""Warnings and errors raised by pyro-vi's inference loops."""

from __future__ import annotations

__all__ = ["ConvergenceWarning", "ELBODecreaseError", "NumericalError", "PrecisionWarning"]


class ConvergenceWarning(UserWarning):
    """A fit stopped at its iteration budget before meeting its tolerance."""


class PrecisionWarning(UserWarning):
    """A CAVI run stopped where the ELBO's changes fell below the round-off of its data.

    Coordinate ascent cannot lower the ELBO, but the floating-point ELBO of data far from its
    mean (raw units: years, epoch seconds, prices) carries round-off of many nats; once a
    sweep's change is within it, the run has gone as far as the dtype can resolve and stops,
    keeping its fit. Centring and scaling the data (or float64) resolves more.
    """


class NumericalError(ArithmeticError):
    """Numerical trouble (a non-PD matrix, a NaN or an inf) at a named place in a fit."""


class ELBODecreaseError(NumericalError):
    """The ELBO fell during coordinate ascent by more than round-off: a bug, never noise.

    Coordinate ascent on a conjugate-exponential model cannot decrease the ELBO (Bishop 2006,
    §10.1.1), so a drop names the iteration at which the update or the bound is wrong.
    """
