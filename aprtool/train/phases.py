"""Training phases as fractions of the budget actually available.

Progress p runs from 0 to 1: step / steps, or, with a time budget, the larger of that and
elapsed / budget, so phases scheduled "in the last 30%" happen even when the steps never would.
    warmup    the first --warmup-steps steps (linear ramp)
    stable    peak LR until p = 1 - warmdown_frac
    warmdown  linear decay to the floor over the last warmdown_frac
    swa / ema weight averaging over the last swa_frac (EMA with --ema DECAY instead of a plain mean)
    qat       int6 fake quantization of the weights `compress` quantizes, over the last qat_frac
"""

from __future__ import annotations

from dataclasses import dataclass

from aprtool.errors import UsageError


@dataclass(frozen=True)
class Phases:
    steps: int
    time_budget: float | None  # seconds
    warmup_steps: int
    warmdown_frac: float
    swa_frac: float
    ema: float
    qat_frac: float

    def progress(self, step: int, elapsed: float) -> float:
        p = step / self.steps
        if self.time_budget:
            p = max(p, elapsed / self.time_budget)
        return min(p, 1.0)

    def done(self, step: int, elapsed: float) -> bool:
        return step >= self.steps or bool(self.time_budget and elapsed >= self.time_budget)

    def configured(self) -> dict[str, float]:
        """Phase name -> the fraction of the budget it should take (for the fit check and logs)."""
        out = {}
        if self.warmdown_frac:
            out["warmdown"] = self.warmdown_frac
        if self.swa_frac:
            out["ema" if self.ema else "swa"] = self.swa_frac
        if self.qat_frac:
            out["qat"] = self.qat_frac
        return out

    def active(self, p: float) -> set[str]:
        return {name for name, frac in self.configured().items() if p >= 1.0 - frac}

    def lr_scale(self, step: int, p: float, floor_ratio: float) -> float | None:
        """Multiplier of the peak LR under warmup-stable-warmdown, or None when no warmdown is set
        (the classic step-based cosine/linear schedule applies)."""
        if not self.warmdown_frac:
            return None
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        start = 1.0 - self.warmdown_frac
        if p < start:
            return 1.0
        return floor_ratio + (1 - floor_ratio) * max(0.0, 1.0 - (p - start) / self.warmdown_frac)

    def fit_problems(self, step_seconds: float | None) -> list[str]:
        """Phases that cannot get a single step inside the budget."""
        problems = []
        for name, frac in self.configured().items():
            if not 0 < frac <= 1:
                raise UsageError(f"--{name}-frac {frac}: must be in (0, 1]")
            step_share = frac * self.steps
            if step_share < 1 and not self.time_budget:
                problems.append(f"phase {name} ({frac:.0%} of {self.steps} steps) gets less than one step")
            if self.time_budget and step_seconds and frac * self.time_budget < step_seconds:
                problems.append(
                    f"phase {name} ({frac:.0%} of {self.time_budget:g} s = {frac * self.time_budget:.2f} s) is "
                    f"shorter than one step ({step_seconds:.2f} s)"
                )
        if self.swa_frac and self.warmdown_frac and self.swa_frac > self.warmdown_frac:
            problems.append(f"swa/ema ({self.swa_frac:.0%}) starts before warmdown ({self.warmdown_frac:.0%})")
        return problems
