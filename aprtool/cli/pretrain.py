"""`aprtool pretrain`."""

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
from aprtool.cli.choices import Size
from aprtool.text import markup_safe
from aprtool.train.config import TrainConfig

_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


EXAMPLES = """\b
Examples:
  aprtool pretrain --run-dir runs/tiny --size tiny --steps 200
  aprtool pretrain --run-dir runs/tiny --resume latest      # continue it exactly
  aprtool pretrain --run-dir runs/ft --init SmolLM-135M/ --corpus texts/ --steps 500 --lr 3e-4
  aprtool pretrain --run-dir runs/pq --corpus dump/ --text-field content --tokenizer sp1024.model
  aprtool pretrain --run-dir runs/golf --corpus fineweb10B_sp1024/ --tokenizer fineweb_1024_bpe.model
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
@loop_options
def pretrain_command(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Run directory (checkpoints, data, model).")] = Path(
        "runs/pretrain"
    ),
    init: Annotated[
        str | None,
        opt(
            "init",
            "Continue from this model (.apr, HF folder, safetensors+config.json, .gguf): its architecture, "
            "tokenizer and weights; the corpus is tokenized with its tokenizer.",
        ),
    ] = None,
    corpus: Annotated[str | None, opt("corpus", f"{CORPUS_HELP} Default: stdlib sources.")] = None,
    text_field: Annotated[str, opt("text_field", TEXT_FIELD_HELP)] = _DEFAULTS["text_field"],
    tokenizer: Annotated[
        str,
        opt(
            "tokenizer",
            "bpe (byte-level BPE trained on the corpus), bytes, or a tokenizer.json / SentencePiece "
            ".model file (or a folder with tokenizer.json) to use as it is.",
        ),
    ] = _DEFAULTS["tokenizer"],
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
    seq_len: Annotated[int, opt("seq_len", "Tokens per sequence.")] = _DEFAULTS["seq_len"],
    resume: Annotated[str | None, typer.Option(help="latest, or a checkpoint path: continue that run exactly.")] = None,
    tensorboard: TensorboardOption = False,
    as_json: JsonOption = False,
    **loop: Any,
) -> None:
    """Train a Llama-style model with crash-safe checkpoints; leaves a verified RUN_DIR/model.apr.

    With no --corpus it trains on the running Python's standard library sources. On SIGINT/SIGTERM
    it finishes the step, writes a checkpoint and exits 130/143 with the resume command.
    """
    from aprtool.train.loop import pretrain

    overrides = given_options(ctx, {**locals(), **loop}, _DEFAULTS)
    run_training(lambda update: pretrain(run_dir, overrides, resume=resume, progress=update, tensorboard=tensorboard),
                 as_json, _render)  # fmt: skip
