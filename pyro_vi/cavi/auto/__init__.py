"""Automatic CAVI for plain Pyro models: conjugacy detected in the user's code.

:func:`derive` turns a Pyro model and its data into a :class:`DerivedModel` on the one model
contract (what :func:`pyro_vi.cavi` does with a callable); :func:`conjugacy` reports what was
detected, site by site, and why a site is not conjugate.
"""

from pyro_vi.cavi.auto.derive import DerivedModel, derive
from pyro_vi.cavi.auto.report import ConjugacyReport, SiteReport, conjugacy

__all__ = ["ConjugacyReport", "DerivedModel", "SiteReport", "conjugacy", "derive"]
