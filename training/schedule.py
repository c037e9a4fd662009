"""The learning-rate schedule: a pure function of training progress that resumes where it stopped.

The rate is set before every step from the step count (and, with a time
budget, the training seconds spent), so a run resumed from ``last.pt`` continues
the curve exactly. A resumed run with another length (more ``--epochs`` or
minutes) does not restart the curve: it anneals from the rate of its last step
to zero over what is left, never raising the rate again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

SCHEDULES = ("constant", "cosine")


@dataclass
class LRSchedule:
    """Cosine (or constant) rate from ``start_lr`` at ``start_step`` to 0 at the end of training.

    The end is ``total_steps`` steps, or ``budget_s`` training seconds when a
    time budget is set, whichever comes first.
    """

    kind: str
    start_lr: float
    total_steps: int
    start_step: int = 0
    budget_s: float | None = None
    start_s: float = 0.0

    def progress(self, step: int, seconds: float) -> float:
        """Share of this segment of the schedule done, 0..1."""
        by_steps = (step - self.start_step) / max(1, self.total_steps - self.start_step)
        by_time = 0.0
        if self.budget_s is not None:
            by_time = (seconds - self.start_s) / max(1e-9, self.budget_s - self.start_s)
        return min(1.0, max(0.0, by_steps, by_time))

    def lr(self, step: int, seconds: float = 0.0) -> float:
        """The learning rate for step ``step`` after ``seconds`` of training."""
        if self.kind == "constant":
            return self.start_lr
        return self.start_lr * 0.5 * (1 + math.cos(math.pi * self.progress(step, seconds)))

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def resumed(
        cls, state: dict, kind: str, total_steps: int, budget_s: float | None, step: int, seconds: float
    ) -> LRSchedule:
        """The schedule of a resumed run at ``step`` / ``seconds``.

        The same length as before: the stored curve, unchanged. Another length
        or kind: a new segment from the rate reached so far down to zero.
        """
        old = cls(**state)
        if old.kind == kind and old.total_steps == total_steps and old.budget_s == budget_s:
            return old
        # The rate of the last step taken (a finished curve's last step is small, not 0).
        return cls(kind, old.lr(max(step - 1, old.start_step), seconds), total_steps, step, budget_s, seconds)
