"""`aprtool distill`."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from aprtool.cli._common import JsonOption, TensorboardOption, emit, given_options, handle_errors
from aprtool.cli._progress import NO_PLOT, training_progress
from aprtool.cli.choices import Device, Init, Mode, Schedule, Size
from aprtool.distill.config import DistillConfig
from aprtool.text import markup_safe

_DEFAULTS = {f.name: f.default for f in fields(DistillConfig)}
_AUTO = {  # defaults decided at run time
    "student": "none",
    "student_size": "none",
    "init": "teacher; scratch with --student-size",
    "corpus": "the teacher's data",
    "keys_to_learn": "blockwise: entire_block; logits: every parameter",
}


EXAMPLES = """\b
Examples:
  aprtool distill --teacher runs/small/model.apr --run-dir runs/student --student-layers 2
  aprtool distill --teacher runs/small/model.apr --run-dir runs/bw --mode blockwise --student-intermediate-size 344
"""


def opt(name: str, help: str) -> Any:
    """An option named after its DistillConfig field, whose default it shows; defaults decided at run time
    are said in the help text. On resume only the options given override the checkpoint."""
    default = _DEFAULTS[name]
    if default is None:
        help = f"{help} Default: {_AUTO.get(name, 'the teacher' + chr(39) + 's')}."
    return typer.Option(f"--{name.replace('_', '-')}", help=help, show_default=default is not None)


def _render(summary: dict[str, Any]):
    def render(console: Console) -> None:
        if summary.get("skipped"):
            console.print(markup_safe(summary["message"]))
            return
        table = Table(title=f"distill ({summary['mode']}): {markup_safe(summary['model'])}", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for key in (
            "init", "keys_to_learn", "teacher_params", "params", "learned_params", "steps", "tokens_seen",
            "train_loss", "val_loss", "teacher_val_loss", "block_losses", "exported_tensors", "wall_seconds",
            "model_bytes", "latest", "fingerprint",
        ):  # fmt: skip
            value = summary[key]
            if isinstance(value, float):
                value = f"{value:.4f}"
            elif isinstance(value, list) and value and isinstance(value[0], float):
                value = ", ".join(f"{v:.4g}" for v in value)
            table.add_row(key, markup_safe(value))
        table.add_row("curves", markup_safe(summary["curves"] or NO_PLOT))
        console.print(table)

    return render


@handle_errors
def distill_command(
    ctx: typer.Context,
    teacher: Annotated[Path, typer.Option("--teacher", help="The teacher: an aprtool Llama .apr (pretrain output).")],
    out: Annotated[Path, typer.Option("--run-dir", "--out", help="Run directory: checkpoints, state.json, model.apr.")],
    student: Annotated[str | None, opt("student", "Start from this student .apr (same tokenizer) as it is.")] = None,
    student_size: Annotated[Size | None, opt("student_size", "A preset student trained from scratch.")] = None,
    init: Annotated[Init | None, opt("init", "teacher (copy what fits) or scratch.")] = None,
    student_layers: Annotated[
        int | None, opt("student_layers", "Student layers; from the teacher: layer i takes teacher layer i*L//N.")
    ] = None,
    student_intermediate_size: Annotated[
        int | None, opt("student_intermediate_size", "Student FFN width; from the teacher: its first M channels.")
    ] = None,
    student_heads: Annotated[int | None, opt("student_heads", "Student attention heads.")] = None,
    student_kv_heads: Annotated[
        int | None, opt("student_kv_heads", "Student KV heads; from the teacher: adjacent heads mean-pooled.")
    ] = None,
    mode: Annotated[Mode, opt("mode", "logits (whole-model KD) or blockwise (per-block local).")] = Mode(
        _DEFAULTS["mode"]
    ),
    corpus: Annotated[
        str | None, opt("corpus", "Text directory or prepared shards; must use the teacher's tokenizer.")
    ] = None,
    steps: Annotated[int, opt("steps", "Optimizer steps.")] = _DEFAULTS["steps"],
    temperature: Annotated[float, opt("temperature", "Logit KD temperature T.")] = _DEFAULTS["temperature"],
    alpha: Annotated[float, opt("alpha", "Logit KD weight: alpha*KD*T^2 + (1-alpha)*CE.")] = _DEFAULTS["alpha"],
    keys_to_learn: Annotated[
        str | None,
        opt("keys_to_learn", "entire_block, or attention and/or ffn (comma-separated): what trains in each block."),
    ] = None,
    seq_len: Annotated[int | None, opt("seq_len", "Tokens per sequence.")] = None,
    batch_size: Annotated[int, opt("batch_size", "Sequences per micro-batch.")] = _DEFAULTS["batch_size"],
    grad_accum: Annotated[int, opt("grad_accum", "Micro-batches per optimizer step.")] = _DEFAULTS["grad_accum"],
    lr: Annotated[float, opt("lr", "Peak learning rate.")] = _DEFAULTS["lr"],
    min_lr_ratio: Annotated[float, opt("min_lr_ratio", "Decay floor as a fraction of --lr.")] = _DEFAULTS[
        "min_lr_ratio"
    ],
    warmup_steps: Annotated[int, opt("warmup_steps", "Linear warmup steps.")] = _DEFAULTS["warmup_steps"],
    schedule: Annotated[Schedule, opt("schedule", "Decay after warmup: cosine or linear.")] = Schedule(
        _DEFAULTS["schedule"]
    ),
    weight_decay: Annotated[float, opt("weight_decay", "AdamW weight decay (matrices only).")] = _DEFAULTS[
        "weight_decay"
    ],
    grad_clip: Annotated[float, opt("grad_clip", "Gradient norm clip (per block if blockwise); 0: none.")] = _DEFAULTS[
        "grad_clip"
    ],
    seed: Annotated[int, opt("seed", "Seed for initialization and data order.")] = _DEFAULTS["seed"],
    device: Annotated[Device, opt("device", "cpu or cuda (bf16 autocast on cuda).")] = Device(_DEFAULTS["device"]),
    eval_every: Annotated[int, opt("eval_every", "Steps between held-out evaluations of the student.")] = _DEFAULTS[
        "eval_every"
    ],
    eval_tokens: Annotated[int, opt("eval_tokens", "Held-out tokens per evaluation (fixed set).")] = _DEFAULTS[
        "eval_tokens"
    ],
    checkpoint_every: Annotated[
        int, opt("checkpoint_every", "Steps between ckpt-step-NNNNNN.apr checkpoints; 0: by wall time.")
    ] = _DEFAULTS["checkpoint_every"],
    checkpoint_minutes: Annotated[
        float, opt("checkpoint_minutes", "Wall-time checkpoint cadence (with --checkpoint-every 0).")
    ] = _DEFAULTS["checkpoint_minutes"],
    keep_last: Annotated[int, opt("keep_last", "Step checkpoints to keep.")] = _DEFAULTS["keep_last"],
    log_every: Annotated[int, opt("log_every", "Steps per metrics.jsonl line.")] = _DEFAULTS["log_every"],
    resume: Annotated[str | None, typer.Option(help="latest, or a checkpoint path: continue that run exactly.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Re-run a completed run, or replace another run in --out.")
    ] = False,
    tensorboard: TensorboardOption = False,
    as_json: JsonOption = False,
) -> None:
    """Distill a teacher into a smaller student (logit KD or blockwise); leaves a verified OUT/model.apr.

    A run with the same fingerprint that already completed is skipped. The export is read back and
    checked against the trained student; a missing, empty, all-zero or untrained export exits 5.
    On SIGINT/SIGTERM it finishes the step, writes a checkpoint and exits 130/143.
    """
    from aprtool.distill import distill

    options = given_options(ctx, locals(), _DEFAULTS)
    with training_progress(not (as_json and sys.stderr.isatty())) as update:
        summary = distill(teacher, out, options, resume=resume, force=force, progress=update, tensorboard=tensorboard)
    emit(summary, as_json, _render(summary))
