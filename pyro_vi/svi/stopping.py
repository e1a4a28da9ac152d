r"""Every rule that ends a :func:`pyro_vi.fit_svi` run, and the reason each one names.

A run stops at the first of:

* ``"converged"``: the windowed relative-change rule (:class:`WindowRule`) was met;
* ``"callback"``: a hook asked to stop (the user's ``callback`` returned True);
* ``"max_steps"``: the step budget (:func:`step_budget`: ``num_steps``, or ``num_epochs``
  passes over the batches) is spent;
* ``"interrupted"``: Ctrl-C (:class:`KeyboardInterrupt`);
* ``"non_finite"``: the guard vetoed a NaN/inf step (the partial result of
  :class:`~pyro_vi.NonFiniteLossError`).

When the rule is met at a step where a hook also asks to stop, ``"converged"`` wins.

**The window rule.** A noisy per-step loss is smoothed by non-overlapping windows of
``window`` steps. With window means :math:`\bar L_{k-1}, \bar L_k`, window :math:`k` counts
as *flat* when

.. math::

    \frac{|\bar L_k - \bar L_{k-1}|}{\max(|\bar L_{k-1}|, 1)} < \mathrm{tol},

and the run has converged after ``patience`` consecutive flat windows. The floor of 1 (nat) on
the denominator makes the rule absolute for losses near zero, where a relative change is
meaningless. This is sklearn's ``tol`` on the bound's gain (``mixture/_base.py``) applied to a
smoothed Monte-Carlo loss, with ``patience`` guarding against one lucky window. Only training
losses enter it: values of the evaluation hook never do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sized
from dataclasses import dataclass
from typing import Any

from pyro_vi._checks import check_optional_int

__all__ = ["DEFAULT_NUM_STEPS", "STOP_REASONS", "WindowRule", "step_budget"]

#: The values of :attr:`pyro_vi.SVIResult.stop_reason`.
STOP_REASONS = ("converged", "callback", "max_steps", "interrupted", "non_finite")

#: The step budget when neither ``num_steps`` nor ``num_epochs`` is given.
DEFAULT_NUM_STEPS = 5000


@dataclass
class WindowRule:
    """State of the stopping rule; :meth:`update` takes one loss and says whether to stop.

    The fields are plain numbers, so ``vars(rule)`` is a checkpointable snapshot and
    ``WindowRule(**snapshot)`` restores it exactly.
    """

    tol: float
    window: int
    patience: int
    total: float = 0.0
    count: int = 0
    previous: float | None = None
    streak: int = 0

    def update(self, loss: float) -> bool:
        """Add one step's loss; True once ``patience`` consecutive windows were flat."""
        self.total += loss
        self.count += 1
        if self.count < self.window:
            return False
        mean, self.total, self.count = self.total / self.window, 0.0, 0
        if self.previous is not None:
            change = abs(mean - self.previous) / max(abs(self.previous), 1.0)
            self.streak = self.streak + 1 if change < self.tol else 0
        self.previous = mean
        return self.streak >= self.patience


def step_budget(*, num_steps: Any, num_epochs: Any, batches: Iterable[Any] | None) -> int:
    """The total number of steps a run may take.

    ``num_steps`` counts optimizer steps; ``num_epochs`` counts passes over ``batches``
    (``num_epochs * len(batches)`` steps). The two are exclusive; with neither the budget is
    :data:`DEFAULT_NUM_STEPS`.

    Raises
    ------
    TypeError
        A non-integer budget, or ``num_epochs`` with batches that have no ``len()``.
    ValueError
        A budget below 1, both budgets, or ``num_epochs`` without batches.

    Examples
    --------
    >>> step_budget(num_steps=None, num_epochs=3, batches=[1, 2, 3, 4])
    12
    >>> step_budget(num_steps=None, num_epochs=None, batches=None)
    5000
    """
    steps = check_optional_int("num_steps", num_steps, minimum=1)
    epochs = check_optional_int("num_epochs", num_epochs, minimum=1)
    if epochs is None:
        return DEFAULT_NUM_STEPS if steps is None else steps
    if steps is not None:
        raise ValueError("give num_steps or num_epochs, not both")
    if batches is None:
        raise ValueError("num_epochs needs batches (without them every step sees all the data)")
    if not isinstance(batches, Sized):
        raise TypeError(f"num_epochs needs batches with a len(), got {type(batches).__name__}")
    return epochs * len(batches)
