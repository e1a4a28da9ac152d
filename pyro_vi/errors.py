"""Warnings and errors raised by pyro-vi's inference loops."""

from __future__ import annotations

__all__ = ["ConvergenceWarning", "ELBODecreaseError", "NotConjugateError", "NumericalError",
           "PrecisionWarning"]


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


class NotConjugateError(ValueError):
    """A latent site of a plain Pyro model has no closed-form CAVI update.

    Raised by :func:`pyro_vi.cavi` (and :func:`pyro_vi.conjugacy` reports the same reason)
    before any fitting. ``site`` is the latent, ``child`` the site whose distribution it enters
    (None when the latent's own family is the problem), ``slot`` the parameter it enters
    (``"loc"``, ``"rate"``, ...; None when not one slot) and ``reason`` what was found.
    """

    def __init__(self, site: str, child: str | None = None, slot: str | None = None,
                 reason: str | None = None) -> None:
        self.site, self.child, self.slot, self.reason = site, child, slot, reason
        if reason is None:  # re-raised with its message alone (as Pyro's handlers do)
            super().__init__(site)
            return
        where = f"{site!r}"
        if child is not None:
            where += f" enters {slot or 'the distribution'} of {child!r}"
        super().__init__(f"{where}: {reason}; no closed-form update — fit it with fit_svi "
                         "and an autoguide (pyro.infer.autoguide.AutoNormal)")
