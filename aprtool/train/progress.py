"""Where a run stands and when it should end: what the progress bar and the plain log lines show.

The trainers report events to a `progress` callback: `start` (the step the run starts or resumes at,
the planned steps, the time budget, the wall time already spent), `step` after every optimizer step,
and `log` with each metrics.jsonl record. `RunProgress` turns them into a fraction done and an ETA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aprtool.train.config import UNBOUNDED_STEPS


@dataclass
class RunProgress:
    """A run ends at `total_steps` or when `time_budget` seconds are spent, whichever comes first.

    The rate is measured from the step this process started at, so a resumed run's ETA is its own and
    not diluted by the steps an earlier process made."""

    total_steps: int
    time_budget: float | None = None
    start_step: int = 0
    start_wall: float = 0.0
    step: int = 0
    wall: float = 0.0

    @classmethod
    def from_start(cls, event: dict[str, Any]) -> RunProgress:
        step, wall = int(event["step"]), float(event.get("wall_seconds") or 0.0)
        return cls(int(event["total_steps"]), event.get("time_budget"), step, wall, step, wall)

    def update(self, step: int, wall_seconds: float) -> None:
        self.step, self.wall = step, wall_seconds

    @property
    def steps_text(self) -> str:
        return steps_text(self.step, self.total_steps)

    @property
    def fraction(self) -> float:
        done = self.step / self.total_steps if self.total_steps else 1.0
        if self.time_budget:
            done = max(done, self.wall / self.time_budget)
        return min(done, 1.0)

    @property
    def seconds_per_step(self) -> float | None:
        steps = self.step - self.start_step
        return (self.wall - self.start_wall) / steps if steps > 0 else None

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left: by the measured rate, capped by what is left of the time budget."""
        per_step = self.seconds_per_step
        left = None if per_step is None else max(self.total_steps - self.step, 0) * per_step
        if self.time_budget:
            budget_left = max(self.time_budget - self.wall, 0.0)
            left = budget_left if left is None else min(left, budget_left)
        return left


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def steps_text(step: int, total_steps: int) -> str:
    """`step/total`, or the steps done alone when a time budget, not a step count, ends the run."""
    return f"{step}/{total_steps}" if total_steps < UNBOUNDED_STEPS else f"{step}"


def log_line(record: dict[str, Any], progress: RunProgress) -> str:
    """The plain line printed every --log-every steps when stderr is not a terminal."""
    parts = [f"step {steps_text(record['step'], progress.total_steps)}"]
    if progress.time_budget:
        parts.append(f"{progress.fraction:.0%} of {format_duration(progress.time_budget)}")
    if "loss" in record:
        parts += [f"loss {record['loss']:.4f}", f"lr {record['lr']:.3g}", f"{record['tokens_per_s']:,.0f} tok/s"]
    if record.get("val_loss") is not None:
        parts.append(f"val_loss {record['val_loss']:.4f}")
    parts.append(f"ETA {format_duration(progress.eta_seconds)}")
    return "  ".join(parts)
