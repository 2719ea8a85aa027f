"""The options `pretrain` and `distill` share (LoopConfig's fields), declared once.

`@loop_options` adds them to a command's signature, which Typer reads; the command receives them in
`**loop`. Each is named after its field, shows the field's default, and on resume overrides the
checkpoint only when it was given (cli._common.given_options).
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import fields
from enum import Enum
from typing import Annotated, Any

import typer

from aprtool.cli._common import emit
from aprtool.cli._progress import training_progress
from aprtool.cli.choices import Device, Schedule
from aprtool.train.config import LoopConfig

DEFAULTS = {f.name: f.default for f in fields(LoopConfig)}

# field -> (type, help[, flags]); in the order --help lists them
LOOP_OPTIONS: dict[str, tuple[Any, ...]] = {
    "steps": (int, "Optimizer steps."),
    "batch_size": (int, "Sequences per micro-batch."),
    "grad_accum": (int, "Micro-batches per optimizer step."),
    "lr": (float, "Peak learning rate."),
    "min_lr_ratio": (float, "Decay floor as a fraction of --lr."),
    "warmup_steps": (int, "Linear warmup steps."),
    "schedule": (Schedule, "Decay after warmup: cosine or linear."),
    "weight_decay": (float, "AdamW weight decay (matrices only)."),
    "beta1": (float, "AdamW beta1 (first-moment decay)."),
    "beta2": (float, "AdamW beta2 (second-moment decay)."),
    "grad_clip": (float, "Gradient norm clip (distill --mode blockwise: per block); 0: none."),
    "seed": (int, "Seed for initialization and data order."),
    "device": (Device, "cpu or cuda (bf16 autocast on cuda)."),
    "time_budget": (float | None, "Wall-clock budget in seconds; phases become fractions of it."),
    "warmdown_frac": (float, "Warmup-stable-warmdown: linear warmdown over this last fraction."),
    "swa_frac": (float, "Average the weights over this last fraction."),
    "ema": (float, "EMA decay for that averaging (0: plain mean, SWA)."),
    "qat_frac": (float, "Late QAT: int6 fake quantization over this last fraction."),
    "qat_clip": (str, "Clip for QAT (use the one you will compress with)."),
    "qat_min_elements": (int, "QAT only weights compress would quantize (this many elements)."),
    "strict": (bool, "Refuse to train when a phase cannot fit or the held-out split is short.", "--strict/--no-strict"),
    "eval_every": (int, "Steps between held-out evaluations."),
    "eval_tokens": (int, "Held-out tokens per evaluation (fixed set)."),
    "patience": (int, "Early stop after this many evals without a new best."),
    "min_delta": (float, "Improvement needed to count as a new best."),
    "min_evals": (int, "Evaluations before early stopping may fire."),
    "min_epochs": (int, "Epochs (passes over the training split) before early stopping may fire."),
    "checkpoint_every": (int, "Steps between step checkpoints; 0: every --checkpoint-minutes."),
    "checkpoint_minutes": (
        float,
        "Wall-time checkpoint cadence; 0 (with --checkpoint-every 0): no periodic checkpoints.",
    ),
    "keep_last": (int, "Step checkpoints to keep."),
    "keep_epochs": (int, "Epoch checkpoints to keep (0: none; every epoch's record stays)."),
    "log_every": (int, "Steps per metrics.jsonl line."),
}
_FIRST_AFTER = ("resume", "force", "tensorboard", "as_json")  # the loop options are listed before these


def run_training(
    train: Callable[[Callable[[dict[str, Any]], None]], dict[str, Any]], as_json: bool, render: Any
) -> None:
    """Run `train(progress)` with a progress bar on a terminal and print its summary. Under torchrun only
    rank 0 shows progress and prints, so the output is one document whatever the world size."""
    main_rank = int(os.environ.get("RANK", "0")) == 0
    with training_progress(main_rank and not (as_json and sys.stderr.isatty())) as update:
        summary = train(update)
    if main_rank:
        emit(summary, as_json, render(summary))


def _parameter(name: str, kind: Any, help: str, *flags: str) -> inspect.Parameter:
    default = DEFAULTS[name]
    option = typer.Option(*(flags or (f"--{name.replace('_', '-')}",)), help=help, show_default=default is not None)
    if isinstance(kind, type) and issubclass(kind, Enum):
        default = kind(default)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[kind, option], default=default)


def loop_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give `func` (whose last parameter is `**loop`) the shared options, as Typer sees them."""
    signature = inspect.signature(func, eval_str=True)
    own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    split = next((i for i, p in enumerate(own) if p.name in _FIRST_AFTER), len(own))
    shared = [_parameter(name, *spec) for name, spec in LOOP_OPTIONS.items()]
    keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[split:]]

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    command.__signature__ = signature.replace(parameters=[*own[:split], *shared, *keyword])  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}  # type: ignore[attr-defined]
    return command
