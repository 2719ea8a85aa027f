"""How many UTF-8 bytes of decoded text each token stands for: the denominator of bits per byte.

Read from the tokenizer's own definition (its tokenizer.json), for every kind it can be:
- byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM, aprtool's own): each character of a token is one byte
  through GPT-2's byte table;
- SentencePiece-style (Metaspace or a `▁` -> space decoder; BPE or Unigram): `▁` is the one space byte it
  stands for, `<0xNN>` byte-fallback tokens are one byte, other characters their UTF-8 bytes; the dummy
  prefix the tokenizer puts before each document (and its decoder strips again) is no byte of the text;
- special tokens (bos, eos, control, added special tokens) are zero bytes; added non-special tokens their
  content's bytes.
So the bytes of a document's tokens equal the UTF-8 bytes of the text they decode to (the tests check this
for each kind). A tokenizer whose decoding this cannot follow (WordPiece, ...) is refused, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from aprtool.errors import FormatError

SPACE = "\u2581"  # ▁
BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@dataclass(frozen=True)
class TokenBytes:
    lengths: np.ndarray  # int64: bytes each token id stands for
    prefixed: np.ndarray  # bool: starts with the dummy-prefix space, which is no byte right after a boundary
    boundary: np.ndarray  # bool: a special token (documents begin after one)

    def of(self, targets: np.ndarray, previous: np.ndarray) -> np.ndarray:
        """Bytes of each target token given the token before it (int64, same shape as `targets`)."""
        counts = self.lengths[targets]
        if self.prefixed.any():
            counts = counts - (self.prefixed[targets] & self.boundary[previous])
        return counts


def components(node: Any) -> list[dict[str, Any]]:
    """A normalizer / pre-tokenizer / decoder and the parts of its Sequence, flattened."""
    if not isinstance(node, dict):
        return []
    parts = node.get("pretokenizers") or node.get("decoders") or node.get("normalizers")
    if node.get("type") == "Sequence" and isinstance(parts, list):
        return [c for p in parts for c in components(p)]
    return [node]


def _dummy_prefix(data: dict[str, Any]) -> bool:
    """The tokenizer puts a `▁` before each document's text and its decoder strips it again."""
    for c in components(data.get("normalizer")):
        if c.get("type") == "Prepend" and c.get("prepend") == SPACE:
            return True
    for c in components(data.get("pre_tokenizer")):
        if c.get("type") == "Metaspace":
            return c.get("prepend_scheme", "always" if c.get("add_prefix_space", True) else "never") != "never"
    return False


def _vocab(model: dict[str, Any]) -> dict[str, int]:
    kind = model.get("type")
    if kind in ("BPE", "WordLevel") and isinstance(model.get("vocab"), dict):
        return model["vocab"]
    if kind == "Unigram" and isinstance(model.get("vocab"), list):
        return {entry[0]: i for i, entry in enumerate(model["vocab"]) if isinstance(entry, list) and entry}
    raise FormatError(f"tokenizer: a {str(kind)[:40]!r} model's bytes per token cannot be counted exactly")


def _spelling(data: dict[str, Any]) -> str:
    decoders = {c.get("type") for c in components(data.get("decoder"))}
    pre = {c.get("type") for c in components(data.get("pre_tokenizer"))}
    if "ByteLevel" in decoders or "ByteLevel" in pre:
        return "bytelevel"
    replaces = [c for c in components(data.get("decoder")) if c.get("type") == "Replace"]
    if "Metaspace" in decoders or any(c.get("content") == " " for c in replaces):
        return "metaspace"
    if decoders - {"Fuse", "Strip", "ByteFallback"}:
        raise FormatError(f"tokenizer: decoder {sorted(decoders)[0]!r:.40}'s bytes per token cannot be counted exactly")
    return "plain"


def token_bytes_of_json(text: str, size: int) -> TokenBytes:
    """The table for a tokenizer.json, for ids below `size` (a model's rows; ids past the tokenizer are 0)."""
    from aprtool.data.tokenizer import tokenizer_document
    from aprtool.interop.tokenizer_files import byte_to_unicode

    data = tokenizer_document(text)
    model = data["model"]
    spelling, fallback = _spelling(data), bool(model.get("byte_fallback"))
    unicode_to_byte = {ch: b for b, ch in byte_to_unicode().items()}
    lengths, prefixed, boundary = np.zeros(size, np.int64), np.zeros(size, bool), np.zeros(size, bool)
    for token, index in _vocab(model).items():
        if not isinstance(index, int) or not 0 <= index < size:
            continue
        if spelling == "bytelevel":
            lengths[index] = sum(1 if ch in unicode_to_byte else len(ch.encode()) for ch in token)
        elif fallback and BYTE_TOKEN.fullmatch(token):
            lengths[index] = 1
        else:
            lengths[index] = (
                len(token.replace(SPACE, " ").encode("utf-8"))
                if spelling == "metaspace"
                else len(token.encode("utf-8"))
            )
            prefixed[index] = spelling == "metaspace" and token.startswith(SPACE)
    for added in data.get("added_tokens") or []:
        index = added.get("id") if isinstance(added, dict) else None
        if isinstance(index, int) and 0 <= index < size:
            special = bool(added.get("special"))
            lengths[index] = 0 if special else len(str(added.get("content", "")).encode("utf-8"))
            prefixed[index], boundary[index] = False, special
    if not _dummy_prefix(data):
        prefixed[:] = False
    return TokenBytes(lengths, prefixed, boundary)


def token_bytes(tokenizer: Any, size: int | None = None) -> TokenBytes:
    """The table for any aprtool tokenizer (bytes, bpe, hf), sized to `size` ids (default: the tokenizer's)."""
    size = size or tokenizer.vocab_size
    if tokenizer.kind == "bytes":
        lengths = np.zeros(size, np.int64)
        lengths[:256] = 1
        boundary = np.zeros(size, bool)
        boundary[tokenizer.eos_id] = True
        return TokenBytes(lengths, np.zeros(size, bool), boundary)
    table = token_bytes_of_json(tokenizer.to_json(), size)
    for special in (getattr(tokenizer, "bos_id", None), tokenizer.eos_id):
        if special is not None and special < size:  # declared by the model, whatever the json says
            table.lengths[special], table.boundary[special], table.prefixed[special] = 0, True, False
    return table
