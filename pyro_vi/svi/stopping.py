r"""Every rule that ends a :func:`pyro_vi.fit_svi` run, and the reason each one names.

A run stops at the first of:

* ``"converged"``: the convergence rule was met: by default the noise-aware window rule
  (:class:`NoiseRule`, ``rule="noise"``), or the relative-change rule (:class:`WindowRule`,
  ``rule="relative"``);
* ``"callback"``: a hook asked to stop (the user's ``callback`` returned True);
* ``"max_steps"``: the step budget (:func:`step_budget`: ``num_steps``, or ``num_epochs``
  passes over the batches) is spent;
* ``"interrupted"``: Ctrl-C (:class:`KeyboardInterrupt`);
* ``"non_finite"``: the guard vetoed a NaN/inf step (the partial result of
  :class:`~pyro_vi.NonFiniteLossError`).

When the rule is met at a step where a hook also asks to stop, ``"converged"`` wins.

**The noise-aware rule (the default).** A noisy per-step loss is smoothed by non-overlapping
windows of ``window`` steps. Window :math:`k` has mean :math:`\bar L_k` and, from its sample
variance :math:`s_k^2`, the squared standard error :math:`s_k^2 / w` of that mean. Window
:math:`k` counts as *flat* when the change of the means is within ``z`` standard errors of
the difference, or within ``tol`` of the loss:

.. math::

    |\bar L_k - \bar L_{k-1}| \le z \sqrt{\frac{s_k^2 + s_{k-1}^2}{w}}
    \quad\text{or}\quad
    \frac{|\bar L_k - \bar L_{k-1}|}{\max(|\bar L_{k-1}|, 1)} < \mathrm{tol},

and the run has converged after ``patience`` consecutive flat windows. The first clause is a
two-sided z-test of "the loss still moves" against the Monte-Carlo noise: with a 1-particle
ELBO the noise (often several nats) dwarfs ``tol``·|loss|, so a relative rule alone keeps
running long after the mean has stopped moving; on a flat trace each window passes with
probability about :math:`2\Phi(z) - 1` (0.95 for ``z=2``). The second clause is for
deterministic losses (a ``Delta`` guide, :math:`s_k = 0`), where it is the relative rule. The
standard error treats the steps of a window as independent; positive autocorrelation of the
losses makes it too small, which errs on the side of running longer.

**The relative rule** (``rule="relative"``, the earlier default): only the second
clause, i.e. window :math:`k` is flat when
:math:`|\bar L_k - \bar L_{k-1}| / \max(|\bar L_{k-1}|, 1) < \mathrm{tol}`. The floor of 1
(nat) on the denominator makes the rule absolute for losses near zero, where a relative change
is meaningless. This is sklearn's ``tol`` on the bound's gain (``mixture/_base.py``) applied to
a smoothed Monte-Carlo loss, with ``patience`` guarding against one lucky window.

For both rules ``tol=0`` turns convergence off (the run spends its whole budget), and only
training losses enter them: values of the evaluation hook never do. A rule's state is a
dataclass of plain numbers, saved in checkpoints by :func:`rule_state` and restored by
:func:`restore_rule`, so a resumed run stops at the same step as an uninterrupted one.

A converged rule says only that the loss stopped moving, not that the model or the guide is
right: a model whose likelihood is counted 8 times by a broadcasting bug converges just as
well. :func:`pyro_vi.diagnose` is the step that follows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sized
from dataclasses import dataclass
from typing import Any

from pyro_vi._checks import check_optional_int

__all__ = ["DEFAULT_NUM_STEPS", "RULES", "STOP_REASONS", "NoiseRule", "WindowRule", "make_rule",
           "restore_rule", "rule_state", "step_budget"]

#: The values of :attr:`pyro_vi.SVIResult.stop_reason`.
STOP_REASONS = ("converged", "callback", "max_steps", "interrupted", "non_finite")

#: The step budget when neither ``num_steps`` nor ``num_epochs`` is given.
DEFAULT_NUM_STEPS = 5000


@dataclass
class WindowRule:
    """State of the relative-change rule; :meth:`update` takes one loss and says whether to stop.

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


@dataclass
class NoiseRule:
    """State of the noise-aware rule; :meth:`update` takes one loss and says whether to stop.

    A window's mean and sum of squared deviations are accumulated by Welford's update (no
    cancellation for large losses). The fields are plain numbers, as for :class:`WindowRule`.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(0)
    >>> rule = NoiseRule(tol=1e-4, window=50, patience=3, z=2.0)
    >>> stops = [rule.update(1000.0 + rng.gauss(0.0, 5.0)) for _ in range(2000)]
    >>> stops.index(True) + 1 <= 1000        # flat noisy trace: fires within 20 windows
    True
    >>> rule = NoiseRule(tol=1e-4, window=50, patience=3, z=2.0)
    >>> any(rule.update(1000.0 - 0.2 * t + rng.gauss(0.0, 5.0)) for t in range(2000))
    False
    """

    tol: float
    window: int
    patience: int
    z: float = 2.0
    count: int = 0
    mean: float = 0.0
    squares: float = 0.0
    previous: float | None = None
    previous_var: float = 0.0
    streak: int = 0

    def update(self, loss: float) -> bool:
        """Add one step's loss; True once ``patience`` consecutive windows were flat."""
        self.count += 1
        delta = loss - self.mean
        self.mean += delta / self.count
        self.squares += delta * (loss - self.mean)
        if self.count < self.window:
            return False
        w = self.window
        mean, var = self.mean, (self.squares / (w - 1) / w if w > 1 else 0.0)
        self.count, self.mean, self.squares = 0, 0.0, 0.0
        if self.previous is not None and self.tol > 0:
            change = abs(mean - self.previous)
            flat = (change <= self.z * math.sqrt(var + self.previous_var)
                    or change / max(abs(self.previous), 1.0) < self.tol)
            self.streak = self.streak + 1 if flat else 0
        self.previous, self.previous_var = mean, var
        return self.streak >= self.patience


#: ``rule=`` name -> rule class.
RULES: dict[str, type[NoiseRule] | type[WindowRule]] = {"noise": NoiseRule,
                                                        "relative": WindowRule}


def make_rule(rule: str, *, tol: float, window: int, patience: int,
              z: float) -> NoiseRule | WindowRule:
    """A fresh rule named ``rule`` (a key of :data:`RULES`); ``z`` is used by ``"noise"`` only.

    Examples
    --------
    >>> make_rule("relative", tol=1e-4, window=100, patience=3, z=2.0)
    WindowRule(tol=0.0001, window=100, patience=3, total=0.0, count=0, previous=None, streak=0)
    """
    if rule == "noise":
        return NoiseRule(tol, window, patience, z)
    if rule == "relative":
        return WindowRule(tol, window, patience)
    raise ValueError(f"rule must be one of {sorted(RULES)}, got {rule!r}")


def rule_state(rule: NoiseRule | WindowRule) -> dict[str, Any]:
    """A checkpointable snapshot of ``rule``: its name and its fields (plain numbers)."""
    name = next(k for k, cls in RULES.items() if type(rule) is cls)
    return {"rule": name, **vars(rule)}


def restore_rule(state: dict[str, Any]) -> NoiseRule | WindowRule:
    """The rule saved by :func:`rule_state`, exactly."""
    fields = dict(state)
    return RULES[fields.pop("rule")](**fields)


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
