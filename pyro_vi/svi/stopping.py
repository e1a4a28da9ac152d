r"""The windowed relative-change stopping rule of :func:`pyro_vi.fit_svi`.

A noisy per-step loss is smoothed by non-overlapping windows of ``window`` steps. With window
means :math:`\bar L_{k-1}, \bar L_k`, window :math:`k` counts as *flat* when

.. math::

    \frac{|\bar L_k - \bar L_{k-1}|}{\max(|\bar L_{k-1}|, 1)} < \mathrm{tol},

and the run has converged after ``patience`` consecutive flat windows. The floor of 1 (nat) on
the denominator makes the rule absolute for losses near zero, where a relative change is
meaningless. This is sklearn's ``tol`` on the bound's gain (``mixture/_base.py``) applied to a
smoothed Monte-Carlo loss, with ``patience`` guarding against one lucky window.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WindowRule"]


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
