"""Tokenizers: plain bytes, byte-level BPE trained with Hugging Face `tokenizers`, or a model's own
tokenizer (`hf`: any tokenizer.json `tokenizers` loads, with the bos/eos the model declares).

Documents are framed by one boundary token, by the tokenizer's own rule: BOS before each document when the
tokenizer adds one (Llama 2/3, SentencePiece models), otherwise EOS after each (aprtool's own, GPT-2 style,
Qwen). `token_bytes` says how many UTF-8 bytes of decoded text each token stands for, for every kind.
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
KINDS = ("bpe", "bytes")  # what a training run can build (--tokenizer)
ENTRY_KINDS = (*KINDS, "hf")  # what a model or corpus may record; hf: a model's own tokenizer.json
TOKENIZER_FILE = "tokenizer.json"  # the one name a BPE tokenizer has beside a model or in a prepared corpus


class ByteTokenizer:
    """Token = byte value; 256 is the end-of-document token."""

    kind = "bytes"
    vocab_size = 257
    eos_id = 256
    top_id = 256  # the largest id encoding can produce: the model needs an embedding row for each

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if i < 256).decode("utf-8", errors="replace")

    def frame(self) -> tuple[list[int], list[int]]:
        """The tokens before and after each document."""
        return [], [self.eos_id]

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id, "file": None}


def parse_tokenizer(text: str, where: str) -> Any:
    """A `tokenizers.Tokenizer` from tokenizer.json text that may be hostile: one line naming `where` for text
    that is not a JSON object, and for what is known to abort the process inside `tokenizers` (0.23 panics,
    uncatchably, on a BPE whose continuing_subword_prefix a merge's second part does not start with)."""
    from tokenizers import Tokenizer

    from aprtool.paths import parse_json

    data = parse_json(text, where)
    if not isinstance(data, dict):
        raise FormatError(f"{where}: a tokenizer.json must be a JSON object")
    model = data.get("model")
    prefix = model.get("continuing_subword_prefix") if isinstance(model, dict) else None
    if isinstance(prefix, str) and prefix and isinstance(model.get("merges"), list):
        for merge in model["merges"]:
            second = merge.split(" ", 1)[-1] if isinstance(merge, str) else merge[-1] if merge else None
            if isinstance(second, str) and not second.startswith(prefix):
                raise FormatError(f"{where}: merge {str(merge)[:60]!r} does not continue with the model's "
                                  f"continuing_subword_prefix {prefix[:20]!r}")  # fmt: skip
    try:
        return Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises a plain Exception on bad JSON
        raise FormatError(f"{where}: not a tokenizers JSON file ({str(exc)[:200]})") from None


class BpeTokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenization, no normalization, so decoding is exact)."""

    kind = "bpe"

    def __init__(self, tokenizer: Any, text: str | None = None) -> None:
        self._tok, self._text = tokenizer, text  # text: as it was read (its sha256 identifies the tokenizer)
        self.vocab_size = tokenizer.get_vocab_size()
        self.top_id = max(tokenizer.get_vocab().values(), default=-1)
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
        tok = cls(parse_tokenizer(text, where), text)
        if tok.eos_id is None:
            raise FormatError(f"{where}: the tokenizer has no {EOS} token")
        return tok

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def frame(self) -> tuple[list[int], list[int]]:
        """The tokens before and after each document."""
        return [], [self.eos_id]

    def to_json(self) -> str:
        """The tokenizer.json text as it was read (a model's own), or as `tokenizers` writes it (trained here)."""
        return self._text if self._text is not None else self._tok.to_str()

    def save(self, path: Path) -> None:
        from aprtool.atomic import atomic_write_text

        atomic_write_text(path, self.to_json())

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id, "file": None}


class HfTokenizer(BpeTokenizer):
    """A model's own tokenizer.json (byte-level BPE, SentencePiece-style BPE or Unigram, ...) with the bos/eos
    ids and the add-bos rule the model declares. Encoding adds no special tokens: `frame` does."""

    kind = "hf"

    def __init__(self, tokenizer: Any, text: str, bos_id: int | None, eos_id: int | None, add_bos: bool) -> None:
        self._tok, self._text = tokenizer, text
        self.vocab_size = tokenizer.get_vocab_size()
        self.top_id = max(tokenizer.get_vocab().values(), default=-1)
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, add_bos

    @classmethod
    def from_entry(cls, text: str, info: dict[str, Any], where: str) -> HfTokenizer:
        add_bos = bool(info.get("add_bos", False))
        return cls(parse_tokenizer(text, where), text, info.get("bos_id"), info.get("eos_id"), add_bos)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def frame(self) -> tuple[list[int], list[int]]:
        if self.add_bos and self.bos_id is not None:
            return [self.bos_id], []
        if self.eos_id is None:
            raise FormatError("tokenizer: declares neither a BOS it adds nor an EOS, so documents cannot be separated")
        return [], [self.eos_id]

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "bos_id": self.bos_id, "eos_id": self.eos_id,
                "add_bos": self.add_bos, "file": None}  # fmt: skip


def encode_documents(texts: list[str], tokenizer: Any) -> np.ndarray:
    """The documents as one token stream (int64), each framed by the tokenizer's boundary tokens."""
    before, after = tokenizer.frame()
    ids: list[int] = []
    for doc in tokenizer.encode_batch(texts):
        ids.extend(before)
        ids.extend(int(i) for i in doc)
        ids.extend(after)
    return np.asarray(ids, dtype=np.int64)


def tokenizer_document(text: str, where: str = "tokenizer") -> dict[str, Any]:
    """An embedded tokenizer.json parsed and its structure checked (an object, a `model` object, added tokens
    with integer ids and string contents), before anything reads a field of it."""
    from aprtool.paths import parse_json

    data = parse_json(text, where)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise FormatError(f"{where}: not a tokenizers JSON document (an object with a `model` object)")
    added = data.get("added_tokens") or []
    if not isinstance(added, list) or not all(
        isinstance(t, dict) and type(t.get("id")) is int and isinstance(t.get("content"), str) for t in added
    ):
        raise FormatError(f"{where}: added_tokens must be objects with an integer id and a string content")
    return data


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_tokenizer_info(info: Any, where: str, max_vocab: int = 1 << 21) -> dict[str, Any]:
    """A tokenizer entry (a model's metadata, a corpus manifest): kind, vocab_size and eos_id checked."""
    from aprtool.errors import MetadataError

    if not isinstance(info, dict):
        raise MetadataError(f"{where}: must be an object, found {type(info).__name__}")
    if info.get("kind") not in ENTRY_KINDS:
        raise MetadataError(f"{where}.kind: {info.get('kind')!r:.40} is not one of {', '.join(ENTRY_KINDS)}")
    size = info.get("vocab_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= max_vocab:
        raise MetadataError(f"{where}.vocab_size: {size!r:.40} is not an integer in 1..{max_vocab:,}")
    for key in ("eos_id", "bos_id"):
        value = info.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < size):
            raise MetadataError(f"{where}.{key}: {value!r:.40} is not a token id below {size}")
    if not isinstance(info.get("add_bos", False), bool):
        raise MetadataError(f"{where}.add_bos: must be true or false")
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
    """The tokenizer a manifest or a model's metadata describes (see `bpe_json` for BPE and hf)."""
    kind = info.get("kind")
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "bpe":
        return BpeTokenizer.from_json(bpe_json(info, directory), str(directory / TOKENIZER_FILE))
    if kind == "hf":
        return HfTokenizer.from_entry(bpe_json(info, directory), info, "tokenizer")
    raise FormatError(f"tokenizer.kind: {str(kind)[:40]!r} is not one of {', '.join(ENTRY_KINDS)}")


def embed_tokenizer(metadata: dict[str, Any], path: Path) -> tuple[dict[str, Any], str | None]:
    """`metadata` with its BPE tokenizer embedded (read from the file itself, else the sidecar beside
    `path`), and a warning when there is none to embed. Files without a tokenizer entry pass unchanged."""
    from aprtool.container.constants import TOKENIZER_KEY
    from aprtool.errors import AprError

    info = metadata.get(TOKENIZER_KEY)
    if isinstance(info, dict) and has_embedded_text(info):
        verified_text(info)  # a text that does not match its sha256 is never carried into a new file
        return metadata, None
    if not isinstance(info, dict) or info.get("kind") not in ("bpe", "hf"):
        return metadata, None
    try:
        text = bpe_json(info, path.parent)
    except AprError as exc:
        return metadata, f"{exc}; the output has no tokenizer"
    return {**metadata, TOKENIZER_KEY: {**info, "json": text}}, None


def without_tokenizer_text(info: dict[str, Any]) -> dict[str, Any]:
    """A tokenizer entry without the embedded JSON (for records that only need to identify it)."""
    return {k: v for k, v in info.items() if k not in (TEXT_KEY, PACKED_KEY)}
