"""Learning-rate schedule: linear warmup, then cosine or linear decay to a floor.

The decay follows the run's progress: step / --steps, or under --time-budget the fraction of the run done
by whichever of --steps and the budget ends it first (`Phases.progress`), so a budgeted run reaches the
floor when its time is up, not at a step count it never gets to.
"""

from __future__ import annotations

import math


def learning_rate(
    step: int, *, lr: float, warmup: int, total: int, floor_ratio: float, kind: str, progress: float | None = None
) -> float:
    """LR for optimizer step `step` (0-based) of `total`; `progress` (0..1, under a time budget) drives the
    decay instead of the step count."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if progress is None:
        progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1 - progress
    return lr * (floor_ratio + (1 - floor_ratio) * shape)
