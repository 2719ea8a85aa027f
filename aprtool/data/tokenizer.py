"""Tokenizers: plain bytes, or byte-level BPE trained with Hugging Face `tokenizers`.

Both decode exactly back to the text they encoded, so bits-per-byte can count real UTF-8 bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from aprtool.errors import FormatError, UsageError

EOS = "<|endoftext|>"
KINDS = ("bpe", "bytes")


class ByteTokenizer:
    """Token = byte value; 256 is the end-of-document token."""

    kind = "bytes"
    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if i < 256).decode("utf-8", errors="replace")

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id, "file": None}


class BpeTokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenization, no normalization, so decoding is exact)."""

    kind = "bpe"

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        self.eos_id = tokenizer.token_to_id(EOS)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BpeTokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if not 300 <= vocab_size <= 65535:
            raise UsageError(f"--vocab-size {vocab_size}: byte-level BPE needs 300..65535")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: Path) -> BpeTokenizer:
        from tokenizers import Tokenizer

        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as exc:  # tokenizers raises a plain Exception on bad JSON
            raise FormatError(f"{path}: not a tokenizers JSON file ({exc})") from None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def save(self, path: Path) -> None:
        from aprtool.atomic import atomic_write_text

        atomic_write_text(path, self._tok.to_str())

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id, "file": None}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_tokenizer(info: dict[str, Any], directory: Path) -> ByteTokenizer | BpeTokenizer:
    """The tokenizer a manifest or a model's metadata describes; BPE files are checked by sha256."""
    kind = info.get("kind")
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "bpe":
        path = directory / info["file"]
        if not path.is_file():
            raise FormatError(f"tokenizer: {path} is missing")
        if info.get("sha256") and file_sha256(path) != info["sha256"]:
            raise FormatError(f"tokenizer: {path} does not match the sha256 recorded for it")
        return BpeTokenizer.load(path)
    raise FormatError(f"tokenizer: unknown kind {kind!r}")
