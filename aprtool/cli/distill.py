"""`aprtool distill`."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from aprtool.cli._common import (
    CORPUS_HELP,
    TEXT_FIELD_HELP,
    JsonOption,
    TensorboardOption,
    given_options,
    handle_errors,
)
from aprtool.cli._progress import NO_PLOT
from aprtool.cli._training import loop_options, run_training
from aprtool.cli.choices import Init, Mode, Size, TeacherDtype
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
@loop_options
def distill_command(
    ctx: typer.Context,
    teacher: Annotated[
        Path,
        typer.Option("--teacher", help="The teacher: .apr, an HF folder, safetensors with config.json, or .gguf."),
    ],
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
        str | None, opt("corpus", f"{CORPUS_HELP} Prepared shards must use the teacher's tokenizer.")
    ] = None,
    text_field: Annotated[str, opt("text_field", TEXT_FIELD_HELP)] = _DEFAULTS["text_field"],
    temperature: Annotated[float, opt("temperature", "Logit KD temperature T.")] = _DEFAULTS["temperature"],
    alpha: Annotated[float, opt("alpha", "Logit KD weight: alpha*KD*T^2 + (1-alpha)*CE.")] = _DEFAULTS["alpha"],
    keys_to_learn: Annotated[
        str | None,
        opt("keys_to_learn", "entire_block, or attention and/or ffn (comma-separated): what trains in each block."),
    ] = None,
    teacher_dtype: Annotated[
        TeacherDtype, opt("teacher_dtype", "Hold the teacher in this precision (bf16/f16 halve its memory).")
    ] = TeacherDtype(_DEFAULTS["teacher_dtype"]),
    seq_len: Annotated[int | None, opt("seq_len", "Tokens per sequence.")] = None,
    resume: Annotated[str | None, typer.Option(help="latest, or a checkpoint path: continue that run exactly.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Re-run a completed run, or replace another run in --out.")
    ] = False,
    tensorboard: TensorboardOption = False,
    as_json: JsonOption = False,
    **loop: Any,
) -> None:
    """Distill a teacher into a smaller student (logit KD or blockwise); leaves a verified OUT/model.apr.

    A run with the same fingerprint that already completed is skipped. The export is read back and
    checked against the trained student; a missing, empty, all-zero or untrained export exits 5.
    On SIGINT/SIGTERM it finishes the step, writes a checkpoint and exits 130/143.
    """
    from aprtool.distill import distill

    options = given_options(ctx, {**locals(), **loop}, _DEFAULTS)
    run_training(
        lambda update: distill(
            teacher, out, options, resume=resume, force=force, progress=update, tensorboard=tensorboard
        ),
        as_json,
        _render,
    )
