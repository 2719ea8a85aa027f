"""`eval`: held-out loss in nats/token, bits/token and bits/byte, for float or int6 APR models.

Bits per byte = total cross-entropy in bits / the UTF-8 bytes of exactly the tokens that were scored.
Each token's bytes come from the tokenizer's own vocabulary (byte-level BPE tokens are byte strings;
special tokens such as the end-of-document token have none), so the byte total equals the length of
the decoded scored text: no leading space counted twice, no byte-fallback token counted as 3 bytes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from aprtool.data.corpus import default_corpus_files, default_corpus_root, read_text, split_by_file, text_files
from aprtool.data.prepare import MANIFEST, load_prepared
from aprtool.data.tokenizer import BpeTokenizer, ByteTokenizer
from aprtool.errors import FileAccessError, UsageError
from aprtool.model.io import load_model, load_tokenizer_for, training_val_fraction


def token_byte_lengths(tokenizer: ByteTokenizer | BpeTokenizer) -> np.ndarray:
    """UTF-8 byte length of every token id (0 for special tokens)."""
    if isinstance(tokenizer, ByteTokenizer):
        lengths = np.ones(tokenizer.vocab_size, np.int64)
        lengths[tokenizer.eos_id] = 0
        return lengths
    from aprtool.interop.tokenizer_files import byte_to_unicode

    unicode_to_byte = {ch: b for b, ch in byte_to_unicode().items()}
    raw = json.loads(tokenizer._tok.to_str())
    special = {t["id"] for t in raw.get("added_tokens", [])}
    lengths = np.zeros(tokenizer.vocab_size, np.int64)
    for token, index in raw["model"]["vocab"].items():
        if index not in special:
            lengths[index] = sum(1 for ch in token if ch in unicode_to_byte)
    return lengths


def held_out_tokens(corpus: Path | None, tokenizer: Any, metadata: dict[str, Any]) -> np.ndarray:
    """The held-out split's tokens: the prepared val shards, or the file-level split of a text corpus
    (the same split pretrain made, by the same rule) tokenized with the model's tokenizer."""
    if corpus is not None and (corpus / MANIFEST).is_file():
        prepared = load_prepared(corpus)
        ours, theirs = metadata.get("tokenizer", {}), prepared.manifest["tokenizer"]
        for key in ("kind", "vocab_size", "sha256"):
            if ours.get(key) != theirs.get(key):
                raise UsageError(f"--corpus {corpus}: its tokenizer {key} {theirs.get(key)!r} is not the model's")
        return np.asarray(prepared.tokens("val"), dtype=np.int64)
    if corpus is not None and not corpus.is_dir():
        raise FileAccessError(f"--corpus {corpus}: not a directory")
    root = default_corpus_root() if corpus is None else corpus
    files = default_corpus_files() if corpus is None else text_files(corpus)
    _, val = split_by_file(files, root, training_val_fraction(metadata))
    docs = [t for p in val if (t := read_text(p))]
    ids: list[int] = []
    for doc in tokenizer.encode_batch(docs):
        ids.extend(int(i) for i in doc)
        ids.append(tokenizer.eos_id)
    return np.asarray(ids, dtype=np.int64)


def evaluate_bpb(
    model_path: str | os.PathLike[str],
    *,
    corpus: str | os.PathLike[str] | None = None,
    max_tokens: int | None = None,
    seq_len: int | None = None,
    batch_size: int = 8,
    per_window: bool = False,
) -> dict[str, Any]:
    """Bits per byte of the model on held-out tokens, each scored once in windows of `seq_len`. With
    `per_window`, also each window's bits and bytes (`window_bits`, `window_bytes`): what a paired
    comparison or a bootstrap of two models on the same text needs."""
    model_path = Path(model_path)
    model, info = load_model(model_path)
    metadata, quantized = info.metadata, info.quantized
    tokenizer = load_tokenizer_for(metadata, model_path, info.config)
    tokens = held_out_tokens(Path(corpus) if corpus else None, tokenizer, metadata)
    seq_len = seq_len or min(model.cfg.max_position_embeddings, 256)
    if max_tokens is not None:
        tokens = tokens[: max_tokens + 1]
    windows = (len(tokens) - 1) // seq_len
    if windows < 1:
        raise UsageError(f"held-out split has {len(tokens)} tokens: not enough for one window of {seq_len + 1}")
    used = tokens[: windows * seq_len + 1]
    targets = used[1:]  # every token but the first is scored exactly once
    lengths = token_byte_lengths(tokenizer)
    total_bytes = int(lengths[targets].sum())
    window_nats: list[float] = []
    with torch.no_grad():
        for start in range(0, windows, batch_size):
            rows = range(start, min(start + batch_size, windows))
            batch = torch.from_numpy(np.stack([used[i * seq_len : i * seq_len + seq_len + 1] for i in rows]))
            logits = model(batch[:, :-1])
            losses = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
            window_nats.extend(losses.view(len(rows), -1).double().sum(1).tolist())
    nats = math.fsum(window_nats)
    loss = nats / len(targets)
    result = {
        "model": str(model_path),
        "quantized": quantized,
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
                   "window_bytes": [int(b) for b in lengths[targets].reshape(windows, seq_len).sum(1)]}  # fmt: skip
    return result
