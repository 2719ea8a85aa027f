"""`eval`: loss in nats/token, bits/token and bits/byte, for a model in any format (APR float or int6,
safetensors with config.json, an HF folder, GGUF).

Bits per byte = total cross-entropy in bits / the UTF-8 bytes of exactly the tokens that were scored. Each
token's bytes come from the tokenizer's own definition (`data.token_bytes`: byte-level tokens through the
byte table, SentencePiece's `▁` as a space and `<0xNN>` as one byte, special tokens none), so the byte total
equals the length of the decoded scored text for every kind of tokenizer.

Which text: `split="auto"` scores the held-out split when the model records aprtool's training split (a
model aprtool trained), otherwise all of the corpus (a model aprtool did not train has no split on record).
Documents are framed as the tokenizer's own rule says (`frame`: a BOS before each, or an EOS after each).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aprtool.data.corpus import EVAL_SPLITS
from aprtool.data.documents import DEFAULT_TEXT_FIELD, SIDES, Documents
from aprtool.data.prepare import MANIFEST, load_prepared
from aprtool.data.shards import ShardedTokens, checked_nanogpt, nanogpt_shards
from aprtool.data.token_bytes import token_bytes
from aprtool.data.tokenizer import encode_documents
from aprtool.errors import UsageError
from aprtool.model.io import load_model, load_tokenizer_for, training_val_fraction


def chosen_split(split: str, metadata: dict[str, Any]) -> str:
    """`val` or `all` for `split` (auto: val when the model records aprtool's training split)."""
    if split not in EVAL_SPLITS:
        raise UsageError(f"--split {split!r}: choose from {', '.join(EVAL_SPLITS)}")
    if split != "auto":
        return split
    trained = any(metadata.get(k) for k in ("training_summary", "training", "distillation"))
    return "val" if trained else "all"


def held_out_tokens(corpus: Path | None, tokenizer: Any, metadata: dict[str, Any], split: str = "val",
                    text_field: str = DEFAULT_TEXT_FIELD) -> Any:  # fmt: skip
    """The tokens scored (an array, or memory-mapped shards to slice): the prepared val shards (`all`: train
    and val); the `_val_` shards of a modded-nanogpt directory (`all`: every shard; ids checked below the
    model's vocabulary); or the held-out side of a text or record corpus (the split pretrain made, by the same
    rule; `all`: every document), tokenized with the model's tokenizer."""
    sides = SIDES if split == "all" else ("val",)
    if corpus is not None and (corpus / MANIFEST).is_file():
        prepared = load_prepared(corpus)
        ours, theirs = metadata.get("tokenizer", {}), prepared.manifest["tokenizer"]
        for key in ("kind", "vocab_size", "sha256"):
            if ours.get(key) != theirs.get(key):
                raise UsageError(f"--corpus {corpus}: its tokenizer {key} {theirs.get(key)!r} is not the model's")
        return ShardedTokens([t for side in sides for t in prepared.tokens(side).shards])
    if corpus is not None and (found := nanogpt_shards(corpus)) is not None:
        return ShardedTokens(checked_nanogpt([p for s in sides for p in found[s]], tokenizer.vocab_size, "the model's"))
    documents = Documents.open(corpus, text_field)
    return encode_documents(list(documents.texts(training_val_fraction(metadata), sides)), tokenizer)


def evaluate_bpb(
    model_path: str | os.PathLike[str],
    *,
    corpus: str | os.PathLike[str] | None = None,
    max_tokens: int | None = None,
    seq_len: int | None = None,
    batch_size: int = 8,
    per_window: bool = False,
    split: str = "auto",
    text_field: str = DEFAULT_TEXT_FIELD,
) -> dict[str, Any]:
    """Bits per byte of the model on held-out tokens, each scored once in windows of `seq_len`. With
    `per_window`, also each window's bits and bytes (`window_bits`, `window_bytes`): what a paired
    comparison or a bootstrap of two models on the same text needs."""
    model_path = Path(model_path)
    model, info = load_model(model_path, share_file_pages=True)
    metadata, quantized = info.metadata, info.quantized
    tokenizer = load_tokenizer_for(metadata, model_path, info.config)
    split = chosen_split(split, metadata)
    tokens = held_out_tokens(Path(corpus) if corpus else None, tokenizer, metadata, split, text_field)
    seq_len = seq_len or min(model.cfg.max_position_embeddings, 256)
    if max_tokens is not None:
        tokens = tokens[: max_tokens + 1]
    tokens = np.asarray(tokens, dtype=np.int64)
    windows = (len(tokens) - 1) // seq_len
    if windows < 1:
        raise UsageError(f"the {split} text has {len(tokens)} tokens: not enough for one window of {seq_len + 1}")
    used = tokens[: windows * seq_len + 1]
    targets = used[1:]  # every token but the first is scored exactly once
    target_bytes = token_bytes(tokenizer, model.cfg.vocab_size).of(targets, used[:-1])
    total_bytes = int(target_bytes.sum())
    window_nats: list[float] = []
    with torch.no_grad():
        for start in range(0, windows, batch_size):
            rows = range(start, min(start + batch_size, windows))
            batch = torch.from_numpy(np.stack([used[i * seq_len : i * seq_len + seq_len + 1] for i in rows]))
            losses = model.token_losses(batch[:, :-1], batch[:, 1:])
            window_nats.extend(losses.double().sum(1).tolist())
    nats = math.fsum(window_nats)
    loss = nats / len(targets)
    result = {
        "model": str(model_path),
        "format": info.format,
        "quantized": quantized,
        "split": split,
        "tokenizer": metadata["tokenizer"]["kind"],
        "tokens": int(len(targets)),
        "bytes": total_bytes,
        "loss_nats_per_token": loss,
        "bits_per_token": loss / math.log(2),
        "bits_per_byte": nats / math.log(2) / total_bytes,
        "bytes_per_token": total_bytes / len(targets),
        "seq_len": seq_len,
    }
    if per_window:
        result |= {"window_bits": [n / math.log(2) for n in window_nats],
                   "window_bytes": [int(b) for b in target_bytes.reshape(windows, seq_len).sum(1)]}  # fmt: skip
    return result
