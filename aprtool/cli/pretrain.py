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

from aprtool.cli._common import JsonOption, TensorboardOption, emit, given_options, handle_errors
from aprtool.cli._progress import NO_PLOT, training_progress
from aprtool.cli.choices import Device, Schedule, Size, TokenizerKind
from aprtool.text import markup_safe
from aprtool.train.config import TrainConfig

_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


EXAMPLES = """\b
Examples:
  aprtool pretrain --run-dir runs/tiny --size tiny --steps 200
  aprtool pretrain --run-dir runs/tiny --resume latest      # continue it exactly
  torchrun --nproc_per_node=2 -m aprtool pretrain --run-dir runs/ddp --time-budget 600
"""


def opt(name: str, help: str, *flags: str) -> Any:
    """An option named after its TrainConfig field, whose default it shows (a default of None depends on
    other options, which the help text says). On resume only the options given override the checkpoint."""
    names = flags or (f"--{name.replace('_', '-')}",)
    return typer.Option(*names, help=help, show_default=_DEFAULTS[name] is not None)


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
        table.add_row("curves", markup_safe(summary["curves"] or NO_PLOT))
        console.print(table)

    return render


@handle_errors
def pretrain_command(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Run directory (checkpoints, data, model).")] = Path(
        "runs/pretrain"
    ),
    corpus: Annotated[
        str | None, opt("corpus", "Directory of text files, or a prepared shard directory. Default: stdlib sources.")
    ] = None,
    tokenizer: Annotated[TokenizerKind, opt("tokenizer", "bpe (byte-level BPE) or bytes.")] = TokenizerKind(
        _DEFAULTS["tokenizer"]
    ),
    vocab_size: Annotated[int, opt("vocab_size", "BPE vocabulary size.")] = _DEFAULTS["vocab_size"],
    val_fraction: Annotated[float, opt("val_fraction", "Fraction of files held out.")] = _DEFAULTS["val_fraction"],
    size: Annotated[Size, opt("size", "Model preset: tiny, small, medium, large.")] = Size(_DEFAULTS["size"]),
    hidden_size: Annotated[int | None, opt("hidden_size", "Override the preset's hidden size.")] = None,
    num_layers: Annotated[int | None, opt("num_layers", "Override the preset's layer count.")] = None,
    num_heads: Annotated[int | None, opt("num_heads", "Override the preset's attention heads.")] = None,
    num_kv_heads: Annotated[int | None, opt("num_kv_heads", "Override the preset's KV heads (GQA).")] = None,
    intermediate_size: Annotated[int | None, opt("intermediate_size", "Override the preset's FFN width.")] = None,
    rope_theta: Annotated[float | None, opt("rope_theta", "Override RoPE base.")] = None,
    tie_word_embeddings: Annotated[
        bool, opt("tie_word_embeddings", "Share embedding and output weights.", "--tie/--no-tie")
    ] = _DEFAULTS["tie_word_embeddings"],
    steps: Annotated[int, opt("steps", "Optimizer steps.")] = _DEFAULTS["steps"],
    seq_len: Annotated[int, opt("seq_len", "Tokens per sequence.")] = _DEFAULTS["seq_len"],
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
    grad_clip: Annotated[float, opt("grad_clip", "Gradient norm clip; 0: none.")] = _DEFAULTS["grad_clip"],
    seed: Annotated[int, opt("seed", "Seed for initialization and data order.")] = _DEFAULTS["seed"],
    device: Annotated[Device, opt("device", "cpu or cuda (bf16 autocast on cuda).")] = Device(_DEFAULTS["device"]),
    time_budget: Annotated[
        float | None, opt("time_budget", "Wall-clock budget in seconds; phases become fractions of it.")
    ] = None,
    warmdown_frac: Annotated[
        float, opt("warmdown_frac", "Warmup-stable-warmdown: linear warmdown over this last fraction.")
    ] = _DEFAULTS["warmdown_frac"],
    swa_frac: Annotated[float, opt("swa_frac", "Average the weights over this last fraction.")] = _DEFAULTS["swa_frac"],
    ema: Annotated[float, opt("ema", "EMA decay for that averaging (0: plain mean, SWA).")] = _DEFAULTS["ema"],
    qat_frac: Annotated[
        float, opt("qat_frac", "Late QAT: int6 fake quantization over this last fraction.")
    ] = _DEFAULTS["qat_frac"],
    qat_clip: Annotated[str, opt("qat_clip", "Clip for QAT (use the one you will compress with).")] = _DEFAULTS[
        "qat_clip"
    ],
    qat_min_elements: Annotated[
        int, opt("qat_min_elements", "QAT only weights compress would quantize (this many elements).")
    ] = _DEFAULTS["qat_min_elements"],
    strict: Annotated[
        bool, opt("strict", "Refuse to train when a configured phase cannot fit.", "--strict/--no-strict")
    ] = _DEFAULTS["strict"],
    eval_every: Annotated[int, opt("eval_every", "Steps between held-out evaluations.")] = _DEFAULTS["eval_every"],
    eval_tokens: Annotated[int, opt("eval_tokens", "Held-out tokens per evaluation (fixed set).")] = _DEFAULTS[
        "eval_tokens"
    ],
    patience: Annotated[int, opt("patience", "Early stop after this many evals without a new best.")] = _DEFAULTS[
        "patience"
    ],
    min_delta: Annotated[float, opt("min_delta", "Improvement needed to count as a new best.")] = _DEFAULTS[
        "min_delta"
    ],
    min_evals: Annotated[int, opt("min_evals", "Evaluations before early stopping may fire.")] = _DEFAULTS["min_evals"],
    min_epochs: Annotated[
        int, opt("min_epochs", "Epochs (passes over the training split) before early stopping may fire.")
    ] = _DEFAULTS["min_epochs"],
    checkpoint_every: Annotated[
        int, opt("checkpoint_every", "Steps between step checkpoints; 0: every --checkpoint-minutes.")
    ] = _DEFAULTS["checkpoint_every"],
    checkpoint_minutes: Annotated[float, opt("checkpoint_minutes", "Wall-time checkpoint cadence.")] = _DEFAULTS[
        "checkpoint_minutes"
    ],
    keep_last: Annotated[int, opt("keep_last", "Step checkpoints to keep.")] = _DEFAULTS["keep_last"],
    keep_epochs: Annotated[
        int, opt("keep_epochs", "Epoch checkpoints to keep (0: none; every epoch's record stays).")
    ] = _DEFAULTS["keep_epochs"],
    log_every: Annotated[int, opt("log_every", "Steps per metrics.jsonl line.")] = _DEFAULTS["log_every"],
    resume: Annotated[str | None, typer.Option(help="latest, or a checkpoint path: continue that run exactly.")] = None,
    tensorboard: TensorboardOption = False,
    as_json: JsonOption = False,
) -> None:
    """Train a Llama-style model with crash-safe checkpoints; leaves a verified RUN_DIR/model.apr.

    With no --corpus it trains on the running Python's standard library sources. On SIGINT/SIGTERM
    it finishes the step, writes a checkpoint and exits 130/143 with the resume command.
    """
    from aprtool.train.loop import pretrain

    overrides = given_options(ctx, locals(), _DEFAULTS)
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 prints
    with training_progress(main_rank and not (as_json and sys.stderr.isatty())) as update:
        summary = pretrain(run_dir, overrides, resume=resume, progress=update, tensorboard=tensorboard)
    if main_rank:
        emit(summary, as_json, _render(summary))
