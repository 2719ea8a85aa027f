"""`aprtool distill`."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from aprtool.cli._common import JsonOption, emit, handle_errors
from aprtool.cli.pretrain import _progress_printer
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


def opt(name: str, help: str) -> Any:
    """An option whose default lives in DistillConfig (so a resumed run keeps its own values)."""
    default = _DEFAULTS[name]
    shown = _AUTO.get(name, "teacher's" if default is None else default)
    return typer.Option(f"--{name.replace('_', '-')}", help=help, show_default=str(shown))


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
        console.print(table)

    return render


@handle_errors
def distill_command(
    teacher: Annotated[Path, typer.Option("--teacher", help="The teacher: an aprtool Llama .apr (pretrain output).")],
    out: Annotated[Path, typer.Option("--out", help="Run directory: checkpoints, state.json, model.apr.")],
    student: Annotated[str | None, opt("student", "Start from this student .apr (same tokenizer) as it is.")] = None,
    student_size: Annotated[str | None, opt("student_size", "A preset student trained from scratch.")] = None,
    init: Annotated[str | None, opt("init", "teacher (copy what fits) or scratch.")] = None,
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
    mode: Annotated[str | None, opt("mode", "logits (whole-model KD) or blockwise (per-block local).")] = None,
    corpus: Annotated[
        str | None, opt("corpus", "Text directory or prepared shards; must use the teacher's tokenizer.")
    ] = None,
    steps: Annotated[int | None, opt("steps", "Optimizer steps.")] = None,
    temperature: Annotated[float | None, opt("temperature", "Logit KD temperature T.")] = None,
    alpha: Annotated[float | None, opt("alpha", "Logit KD weight: alpha*KD*T^2 + (1-alpha)*CE.")] = None,
    keys_to_learn: Annotated[
        str | None,
        opt("keys_to_learn", "entire_block, or attention and/or ffn (comma-separated): what trains in each block."),
    ] = None,
    seq_len: Annotated[int | None, opt("seq_len", "Tokens per sequence.")] = None,
    batch_size: Annotated[int | None, opt("batch_size", "Sequences per micro-batch.")] = None,
    grad_accum: Annotated[int | None, opt("grad_accum", "Micro-batches per optimizer step.")] = None,
    lr: Annotated[float | None, opt("lr", "Peak learning rate.")] = None,
    min_lr_ratio: Annotated[float | None, opt("min_lr_ratio", "Decay floor as a fraction of --lr.")] = None,
    warmup_steps: Annotated[int | None, opt("warmup_steps", "Linear warmup steps.")] = None,
    schedule: Annotated[str | None, opt("schedule", "Decay after warmup: cosine or linear.")] = None,
    weight_decay: Annotated[float | None, opt("weight_decay", "AdamW weight decay (matrices only).")] = None,
    grad_clip: Annotated[float | None, opt("grad_clip", "Gradient norm clip (per block in blockwise mode).")] = None,
    seed: Annotated[int | None, opt("seed", "Seed for initialization and data order.")] = None,
    device: Annotated[str | None, opt("device", "cpu or cuda (bf16 autocast on cuda).")] = None,
    eval_every: Annotated[int | None, opt("eval_every", "Steps between held-out evaluations of the student.")] = None,
    eval_tokens: Annotated[int | None, opt("eval_tokens", "Held-out tokens per evaluation (fixed set).")] = None,
    checkpoint_every: Annotated[
        int | None, opt("checkpoint_every", "Steps between ckpt-step-NNNNNN.apr checkpoints; 0: none.")
    ] = None,
    keep_last: Annotated[int | None, opt("keep_last", "Step checkpoints to keep.")] = None,
    log_every: Annotated[int | None, opt("log_every", "Steps per metrics.jsonl line.")] = None,
    resume: Annotated[str | None, typer.Option(help="latest, or a checkpoint path: continue that run exactly.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Re-run a completed run, or replace another run in --out.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Distill a teacher into a smaller student (logit KD or blockwise); leaves a verified OUT/model.apr.

    A run with the same fingerprint that already completed is skipped. The export is read back and
    checked against the trained student; a missing, empty, all-zero or untrained export exits 5.
    On SIGINT/SIGTERM it finishes the step, writes a checkpoint and exits 130/143.
    """
    from aprtool.distill import distill

    given = locals()
    options = {k: given[k] for k in _DEFAULTS if given.get(k) is not None}
    bar, update = _progress_printer(options.get("steps", _DEFAULTS["steps"]))
    if bar is not None and not as_json:
        with bar:
            summary = distill(teacher, out, options, resume=resume, force=force, progress=update)
    else:
        summary = distill(teacher, out, options, resume=resume, force=force)
    emit(summary, as_json, _render(summary))
