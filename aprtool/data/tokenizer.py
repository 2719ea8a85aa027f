"""Tokenizers: plain bytes, or byte-level BPE trained with Hugging Face `tokenizers`.

Both decode exactly back to the text they encoded, so bits-per-byte can count real UTF-8 bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from aprtool.container.tokenizer_text import (
    PACKED_KEY,
    TEXT_KEY,
    has_embedded_text,
    recorded_sha256,
    verified_text,
)
from aprtool.errors import FormatError, UsageError

EOS = "<|endoftext|>"
KINDS = ("bpe", "bytes")
TOKENIZER_FILE = "tokenizer.json"  # the one name a BPE tokenizer has beside a model or in a prepared corpus


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
        from aprtool.paths import read_input

        return cls.from_json(read_input(path).decode("utf-8", errors="replace"), str(path))

    @classmethod
    def from_json(cls, text: str, where: str) -> BpeTokenizer:
        from tokenizers import Tokenizer

        try:
            tok = cls(Tokenizer.from_str(text))
        except Exception as exc:  # tokenizers raises a plain Exception on bad JSON
            raise FormatError(f"{where}: not a tokenizers JSON file ({str(exc)[:200]})") from None
        if tok.eos_id is None:
            raise FormatError(f"{where}: the tokenizer has no {EOS} token")
        return tok

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


def check_tokenizer_info(info: Any, where: str, max_vocab: int = 1 << 21) -> dict[str, Any]:
    """A tokenizer entry (a model's metadata, a corpus manifest): kind, vocab_size and eos_id checked."""
    from aprtool.errors import MetadataError

    if not isinstance(info, dict):
        raise MetadataError(f"{where}: must be an object, found {type(info).__name__}")
    if info.get("kind") not in KINDS:
        raise MetadataError(f"{where}.kind: {info.get('kind')!r:.40} is not one of {', '.join(KINDS)}")
    size, eos = info.get("vocab_size"), info.get("eos_id")
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= max_vocab:
        raise MetadataError(f"{where}.vocab_size: {size!r:.40} is not an integer in 1..{max_vocab:,}")
    if eos is not None and (not isinstance(eos, int) or isinstance(eos, bool) or not 0 <= eos < size):
        raise MetadataError(f"{where}.eos_id: {eos!r:.40} is not a token id below {size}")
    return info


def bpe_json(info: dict[str, Any], directory: Path) -> str:
    """The text of the BPE tokenizer `info` describes, checked against the sha256 `info` must record: the
    copy embedded in `info` (files written by aprtool since the tokenizer travels inside them),
    else DIRECTORY/tokenizer.json, whatever name `info` gives (a path inside a file is never opened)."""
    from aprtool.errors import FileAccessError
    from aprtool.paths import read_input

    digest = recorded_sha256(info)
    embedded = verified_text(info)
    if embedded is not None:
        return embedded
    path = directory / TOKENIZER_FILE
    try:
        data = read_input(path)
    except FileAccessError as exc:
        raise FileAccessError(
            f"tokenizer: the file does not embed its BPE tokenizer and {exc}; put the training run's "
            f"{TOKENIZER_FILE} beside it (`aprtool export FILE -o NEW.apr --to apr` then embeds it)"
        ) from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise FormatError(f"tokenizer: {path} does not match the sha256 recorded for it")
    return data.decode("utf-8", errors="replace")


def load_tokenizer(info: dict[str, Any], directory: Path) -> ByteTokenizer | BpeTokenizer:
    """The tokenizer a manifest or a model's metadata describes (see `bpe_json` for BPE)."""
    kind = info.get("kind")
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "bpe":
        return BpeTokenizer.from_json(bpe_json(info, directory), str(directory / TOKENIZER_FILE))
    raise FormatError(f"tokenizer.kind: {str(kind)[:40]!r} is not one of {', '.join(KINDS)}")


def embed_tokenizer(metadata: dict[str, Any], path: Path) -> tuple[dict[str, Any], str | None]:
    """`metadata` with its BPE tokenizer embedded (read from the file itself, else the sidecar beside
    `path`), and a warning when there is none to embed. Files without a tokenizer entry pass unchanged."""
    from aprtool.container.constants import TOKENIZER_KEY
    from aprtool.errors import AprError

    info = metadata.get(TOKENIZER_KEY)
    if not isinstance(info, dict) or info.get("kind") != "bpe" or has_embedded_text(info):
        return metadata, None
    try:
        text = bpe_json(info, path.parent)
    except AprError as exc:
        return metadata, f"{exc}; the output has no tokenizer"
    return {**metadata, TOKENIZER_KEY: {**info, "json": text}}, None


def without_tokenizer_text(info: dict[str, Any]) -> dict[str, Any]:
    """A tokenizer entry without the embedded JSON (for records that only need to identify it)."""
    return {k: v for k, v in info.items() if k not in (TEXT_KEY, PACKED_KEY)}
