"""`aprtool pretrain`."""

from __future__ import annotations

import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from aprtool.cli._common import JsonOption, emit, handle_errors
from aprtool.text import markup_safe
from aprtool.train.config import TrainConfig

_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def opt(name: str, help: str, *flags: str) -> Any:
    """An option whose default lives in TrainConfig (so a resumed run keeps its own values)."""
    default = _DEFAULTS[name]
    shown = "preset" if default is None and name != "corpus" else default
    return typer.Option(*(flags or (f"--{name.replace('_', '-')}",)), help=help, show_default=str(shown))


def _render(summary: dict[str, Any]):
    def render(console: Console) -> None:
        table = Table(title=f"pretrain: {markup_safe(summary['model'])}", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for key in (
            "params", "steps", "tokens_seen", "epochs_completed", "train_loss", "val_loss", "best_val_loss",
            "best_step", "stopped_early", "wall_seconds", "model_bytes", "latest",
        ):  # fmt: skip
            value = summary[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else markup_safe(value))
        console.print(table)

    return render


def _progress_printer(total_steps: int | None):
    """A rich progress bar on a terminal; nothing extra (the log lines) otherwise."""
    if not sys.stderr.isatty():
        return None, None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("step {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("loss {task.fields[loss]}  {task.fields[tps]} tok/s"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("train", total=total_steps, loss="-", tps="-")

    def update(record: dict[str, Any]) -> None:
        fields_ = {}
        if "loss" in record:
            fields_ = {"loss": f"{record['loss']:.3f}", "tps": f"{record['tokens_per_s']:.0f}"}
        bar.update(task, completed=record["step"], **fields_)

    return bar, update


@handle_errors
def pretrain_command(
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Run directory (checkpoints, data, model).")] = Path(
        "runs/pretrain"
    ),
    corpus: Annotated[
        str | None,
        opt("corpus", "Directory of text files, or a prepared shard directory. Default: stdlib sources."),
    ] = None,
    tokenizer: Annotated[str | None, opt("tokenizer", "bpe (byte-level BPE) or bytes.")] = None,
    vocab_size: Annotated[int | None, opt("vocab_size", "BPE vocabulary size.")] = None,
    val_fraction: Annotated[float | None, opt("val_fraction", "Fraction of files held out.")] = None,
    size: Annotated[str | None, opt("size", "Model preset: tiny, small, medium, large.")] = None,
    hidden_size: Annotated[int | None, opt("hidden_size", "Override the preset's hidden size.")] = None,
    num_layers: Annotated[int | None, opt("num_layers", "Override the preset's layer count.")] = None,
    num_heads: Annotated[int | None, opt("num_heads", "Override the preset's attention heads.")] = None,
    num_kv_heads: Annotated[int | None, opt("num_kv_heads", "Override the preset's KV heads (GQA).")] = None,
    intermediate_size: Annotated[int | None, opt("intermediate_size", "Override the preset's FFN width.")] = None,
    rope_theta: Annotated[float | None, opt("rope_theta", "Override RoPE base.")] = None,
    tie_word_embeddings: Annotated[
        bool | None, opt("tie_word_embeddings", "Share embedding and output weights.", "--tie/--no-tie")
    ] = None,
    steps: Annotated[int | None, opt("steps", "Optimizer steps.")] = None,
    seq_len: Annotated[int | None, opt("seq_len", "Tokens per sequence.")] = None,
    batch_size: Annotated[int | None, opt("batch_size", "Sequences per micro-batch.")] = None,
    grad_accum: Annotated[int | None, opt("grad_accum", "Micro-batches per optimizer step.")] = None,
    lr: Annotated[float | None, opt("lr", "Peak learning rate.")] = None,
    min_lr_ratio: Annotated[float | None, opt("min_lr_ratio", "Decay floor as a fraction of --lr.")] = None,
    warmup_steps: Annotated[int | None, opt("warmup_steps", "Linear warmup steps.")] = None,
    schedule: Annotated[str | None, opt("schedule", "Decay after warmup: cosine or linear.")] = None,
    weight_decay: Annotated[float | None, opt("weight_decay", "AdamW weight decay (matrices only).")] = None,
    grad_clip: Annotated[float | None, opt("grad_clip", "Gradient norm clip.")] = None,
    seed: Annotated[int | None, opt("seed", "Seed for initialization and data order.")] = None,
    device: Annotated[str | None, opt("device", "cpu or cuda (bf16 autocast on cuda).")] = None,
    time_budget: Annotated[
        float | None, opt("time_budget", "Wall-clock budget in seconds; phases become fractions of it.")
    ] = None,
    warmdown_frac: Annotated[
        float | None, opt("warmdown_frac", "Warmup-stable-warmdown: linear warmdown over this last fraction.")
    ] = None,
    swa_frac: Annotated[float | None, opt("swa_frac", "Average the weights over this last fraction.")] = None,
    ema: Annotated[float | None, opt("ema", "EMA decay for that averaging (0: plain mean, SWA).")] = None,
    qat_frac: Annotated[
        float | None, opt("qat_frac", "Late QAT: int6 fake quantization over this last fraction.")
    ] = None,
    qat_clip: Annotated[str | None, opt("qat_clip", "Clip for QAT (use the one you will compress with).")] = None,
    qat_min_elements: Annotated[
        int | None, opt("qat_min_elements", "QAT only weights compress would quantize (this many elements).")
    ] = None,
    strict: Annotated[
        bool | None, opt("strict", "Refuse to train when a configured phase cannot fit.", "--strict/--no-strict")
    ] = None,
    eval_every: Annotated[int | None, opt("eval_every", "Steps between held-out evaluations.")] = None,
    eval_tokens: Annotated[int | None, opt("eval_tokens", "Held-out tokens per evaluation (fixed set).")] = None,
    patience: Annotated[int | None, opt("patience", "Early stop after this many evals without a new best.")] = None,
    min_delta: Annotated[float | None, opt("min_delta", "Improvement needed to count as a new best.")] = None,
    min_evals: Annotated[int | None, opt("min_evals", "Evaluations before early stopping may fire.")] = None,
    checkpoint_every: Annotated[
        int | None, opt("checkpoint_every", "Steps between step checkpoints; 0: every --checkpoint-minutes.")
    ] = None,
    checkpoint_minutes: Annotated[float | None, opt("checkpoint_minutes", "Wall-time checkpoint cadence.")] = None,
    keep_last: Annotated[int | None, opt("keep_last", "Step checkpoints to keep.")] = None,
    log_every: Annotated[int | None, opt("log_every", "Steps per metrics.jsonl line.")] = None,
    resume: Annotated[str | None, typer.Option(help="latest, or a checkpoint path: continue that run exactly.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Train a Llama-style model with crash-safe checkpoints; leaves a verified RUN_DIR/model.apr.

    With no --corpus it trains on the running Python's standard library sources. On SIGINT/SIGTERM
    it finishes the step, writes a checkpoint and exits 130/143 with the resume command.
    """
    from aprtool.train.loop import pretrain

    given = locals()
    overrides = {k: given[k] for k in _DEFAULTS if given.get(k) is not None}
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 prints
    bar, update = _progress_printer(overrides.get("steps", _DEFAULTS["steps"])) if main_rank else (None, None)
    if bar is not None and not as_json:
        with bar:
            summary = pretrain(run_dir, overrides, resume=resume, progress=update)
    else:
        summary = pretrain(run_dir, overrides, resume=resume)
    if main_rank:
        emit(summary, as_json, _render(summary))
