"""The embedded tokenizer.json (formats/APR.md section 3.2): written xz-compressed and base64-encoded as
`json_xz`, ~3.2x smaller than the JSON-escaped text for a 4,096-token BPE; `json` (the text) is still read.
The bytes are hostile until checked: the decoded size and the decoder's memory are bounded first.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import lzma
from typing import Any

from aprtool.container import constants as C
from aprtool.errors import FormatError

TEXT_KEY = "json"  # the tokenizer.json text itself (files written before json_xz)
PACKED_KEY = "json_xz"  # base64 (RFC 4648, padded) of one xz stream holding the tokenizer.json text
# Preset 6 is as small as 7-9 on BPE tokenizers, with 8 MiB of dictionary instead of 64; text gains from
# 4 literal-context bits and no position bits (1.4 % smaller on a 4,096-token tokenizer.json).
XZ_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6, "lc": 4, "lp": 0, "pb": 0}]
# The decoded text may be as large as the metadata may be; an xz stream's dictionary is at most this.
MAX_TEXT_BYTES = C.MAX_METADATA_SIZE
XZ_MEMLIMIT = 128 * 1024 * 1024


def has_embedded_text(info: Any) -> bool:
    """`info` (a tokenizer object) embeds its tokenizer.json, packed or not (or claims to: a value that is not
    a string is an embedded text `verified_text` refuses, never one to ignore)."""
    return isinstance(info, dict) and any(info.get(k) is not None for k in (TEXT_KEY, PACKED_KEY))


@functools.lru_cache(maxsize=4)  # checkpoints write the same tokenizer again and again
def _pack(text: str) -> str:
    packed = lzma.compress(text.encode("utf-8"), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, filters=XZ_FILTERS)
    return base64.b64encode(packed).decode("ascii")


def pack_tokenizer(metadata: dict[str, Any]) -> dict[str, Any]:
    """`metadata` with its tokenizer's `json` text stored as `json_xz` (other metadata unchanged)."""
    info = metadata.get(C.TOKENIZER_KEY)
    if not isinstance(info, dict) or not isinstance(info.get(TEXT_KEY), str):
        return metadata
    packed = {k: v for k, v in info.items() if k not in (TEXT_KEY, PACKED_KEY)}
    packed[PACKED_KEY] = _pack(info[TEXT_KEY])
    return {**metadata, C.TOKENIZER_KEY: packed}


def recorded_sha256(info: dict[str, Any]) -> str:
    """The sha256 of its tokenizer.json that a BPE tokenizer entry must record."""
    digest = info.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64:
        raise FormatError("tokenizer.sha256: a BPE tokenizer entry must record the sha256 of its tokenizer.json")
    return digest


def verified_text(info: dict[str, Any]) -> str | None:
    """The tokenizer.json text `info` embeds, checked against the `sha256` it records (None: no text)."""
    text = embedded_text(info)
    if text is None:
        return None
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != recorded_sha256(info):
        raise FormatError("tokenizer: the embedded tokenizer does not match the sha256 recorded for it")
    return text


def embedded_text(info: dict[str, Any]) -> str | None:
    """The tokenizer.json text `info` embeds (None if it embeds none), not yet checked against `sha256`."""
    text, packed = info.get(TEXT_KEY), info.get(PACKED_KEY)
    if text is not None and packed is not None:
        raise FormatError(f"tokenizer: both {TEXT_KEY!r} and {PACKED_KEY!r} are present; a file embeds one")
    if text is not None:
        if not isinstance(text, str):
            raise FormatError(f"tokenizer.{TEXT_KEY}: must be a string, found {type(text).__name__}")
        return text
    if packed is None:
        return None
    if not isinstance(packed, str):
        raise FormatError(f"tokenizer.{PACKED_KEY}: must be a string, found {type(packed).__name__}")
    return _unpack(packed)


def summarise_tokenizer(info: dict[str, Any]) -> dict[str, Any]:
    """`info` for display: the embedded text (under "json", packed or not) replaced by its size."""
    out = {k: v for k, v in info.items() if k not in (TEXT_KEY, PACKED_KEY)}
    try:
        text = embedded_text(info)
    except FormatError as exc:
        return out | {TEXT_KEY: f"<embedded tokenizer.json, unreadable: {exc}>"}
    if text is None:
        return out
    size = f"{len(text.encode('utf-8')):,} bytes"
    if isinstance(info.get(PACKED_KEY), str):
        size += f"; {len(info[PACKED_KEY]):,} in the file as xz + base64"
    return out | {TEXT_KEY: f"<embedded tokenizer.json, {size}>"}


def _unpack(packed: str) -> str:
    where = f"tokenizer.{PACKED_KEY}"
    try:
        data = base64.b64decode(packed.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise FormatError(f"{where}: not base64") from None
    decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT)
    try:
        raw = decoder.decompress(data, max_length=MAX_TEXT_BYTES + 1)
    except lzma.LZMAError as exc:
        raise FormatError(f"{where}: not a valid xz stream ({exc})") from None
    if len(raw) > MAX_TEXT_BYTES:
        raise FormatError(f"{where}: decodes to more than {MAX_TEXT_BYTES:,} bytes")
    if not decoder.eof:
        raise FormatError(f"{where}: the xz stream is truncated")
    if decoder.unused_data:
        raise FormatError(f"{where}: {len(decoder.unused_data):,} bytes follow the xz stream")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{where}: the tokenizer.json is not UTF-8 (byte {exc.start})") from None
