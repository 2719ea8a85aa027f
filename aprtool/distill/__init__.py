"""Distillation: a teacher's knowledge into a student, by logit KD or blockwise (bypass) distillation."""

from typing import Any

from aprtool.distill.config import DistillConfig

__all__ = ["DistillConfig", "distill"]


def __getattr__(name: str) -> Any:  # the loop imports torch: only when it is used (the CLI starts fast)
    if name == "distill":
        from aprtool.distill.loop import distill

        return distill
    raise AttributeError(f"module 'aprtool.distill' has no attribute {name!r}")
