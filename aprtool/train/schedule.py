"""Learning-rate schedule: linear warmup, then cosine or linear decay to a floor."""

from __future__ import annotations

import math


def learning_rate(step: int, *, lr: float, warmup: int, total: int, floor_ratio: float, kind: str) -> float:
    """LR for optimizer step `step` (0-based) of `total`."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1 - progress
    return lr * (floor_ratio + (1 - floor_ratio) * shape)
