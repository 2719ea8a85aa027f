"""`aprtool eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from aprtool.cli._common import CORPUS_HELP, JsonOption, TextFieldOption, emit, handle_errors
from aprtool.cli.choices import EvalSplit
from aprtool.data.documents import DEFAULT_TEXT_FIELD
from aprtool.text import markup_safe

EXAMPLES = """\b
Examples:
  aprtool eval run/model.apr --max-tokens 20000
  aprtool eval model.int6.apr --corpus run/data --json    # the same held-out tokens as training
  aprtool eval SmolLM-135M/ --corpus texts/ --split all   # an HF folder (or .gguf), all of texts/
  aprtool eval run/model.apr --corpus fineweb10B_sp1024/ --max-tokens 1000000   # the _val_ shards
  aprtool eval model.gguf --corpus dump.jsonl.gz --text-field content --split all
"""


def _render(r: dict[str, Any]):
    def render(console: Console) -> None:
        kind = f"{r['format']}, " + ("quantized, dequantized" if r["quantized"] else "float")
        text = "held-out" if r["split"] == "val" else "corpus"
        console.print(f"{markup_safe(r['model'])} ({kind}): {r['tokens']:,} {text} tokens, {r['bytes']:,} bytes")
        console.print(
            f"  loss {r['loss_nats_per_token']:.4f} nats/token | {r['bits_per_token']:.4f} bits/token | "
            f"[bold]{r['bits_per_byte']:.4f} bits/byte[/]"
        )

    return render


@handle_errors
def eval_command(
    model: Annotated[
        Path, typer.Argument(help="Model: .apr (float or int6), safetensors with config.json, HF folder, or .gguf.")
    ],
    corpus: Annotated[
        Path | None,
        typer.Option(help=f"{CORPUS_HELP} Default: the stdlib corpus's split."),
    ] = None,
    text_field: TextFieldOption = DEFAULT_TEXT_FIELD,
    max_tokens: Annotated[int | None, typer.Option(help="Score at most this many held-out tokens.")] = None,
    seq_len: Annotated[int | None, typer.Option(help="Window length (default: min(256, context)).")] = None,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 8,
    split: Annotated[
        EvalSplit,
        typer.Option(help="auto: the held-out split if the model records aprtool's training split, else all."),
    ] = EvalSplit.auto,
    as_json: JsonOption = False,
) -> None:
    """Loss (nats/token), bits per token and bits per byte of a model in any format.

    Bytes are the UTF-8 bytes of exactly the scored text, counted from the model's own tokenizer for every
    kind (byte-level BPE, SentencePiece). Documents are framed by the tokenizer's rule: a BOS before each
    when it adds one, else an EOS after each. Works on int6-compressed and GGUF-quantized files
    (dequantized), so `eval MODEL.apr` vs `eval MODEL.int6.apr` is the cost of quantization.
    """
    from aprtool.evaluate.bpb import evaluate_bpb

    result = evaluate_bpb(
        model,
        corpus=corpus,
        max_tokens=max_tokens,
        seq_len=seq_len,
        batch_size=batch_size,
        split=split.value,
        text_field=text_field,
    )
    emit(result, as_json, _render(result))
