"""Reading .safetensors files that may be hostile (never pickle).

The format is an 8-byte little-endian header length, a JSON header, then one byte buffer. The header is
checked here before any tensor is touched: its length against the file and a ceiling, the JSON (an
object, no duplicate keys), every entry's dtype, shape and offsets (in bounds, exactly the dtype's size,
and together covering the buffer without holes or overlaps, as the format requires), and `__metadata__`
(strings to strings). Tensors are then views of private mappings of their own byte ranges (the file is never
mapped whole). F8 tensors, which APR cannot hold, are widened exactly to float32; dtypes with no APR
counterpart are refused.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aprtool.container import constants as C
from aprtool.container.layout import reject_duplicate_keys
from aprtool.errors import FormatError, MetadataError, TruncatedError
from aprtool.paths import FileRanges, open_input

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
META_KEY = "aprtool_metadata"  # __metadata__ key under which aprtool keeps the APR metadata, as JSON

# safetensors dtype -> numpy dtype of the stored bytes (BF16 and F8 are read as raw bits)
STORED = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "F8_E4M3": "u1", "F8_E5M2": "u1",
    "I64": "<i8", "I32": "<i4", "I8": "i1", "U8": "u1",
}  # fmt: skip
NO_APR_TYPE = ("I16", "U16", "U32", "U64", "BOOL", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64")


def _f8_table(exponent_bits: int, bias: int, ieee_specials: bool) -> np.ndarray:
    """float32 value of every F8 bit pattern (E4M3 is the 'fn' variant: no infinities, NaN at 0x7F/0xFF)."""
    mantissa_bits = 7 - exponent_bits
    table = np.empty(256, np.float32)
    for byte in range(256):
        sign = -1.0 if byte & 0x80 else 1.0
        e, m = (byte >> mantissa_bits) & ((1 << exponent_bits) - 1), byte & ((1 << mantissa_bits) - 1)
        top = (1 << exponent_bits) - 1
        if ieee_specials and e == top:
            value = math.inf if m == 0 else math.nan
        elif not ieee_specials and e == top and m == (1 << mantissa_bits) - 1:
            value = math.nan
        elif e == 0:
            value = m / (1 << mantissa_bits) * 2.0 ** (1 - bias)
        else:
            value = (1 + m / (1 << mantissa_bits)) * 2.0 ** (e - bias)
        table[byte] = sign * value
    return table


F8_TABLES = {"F8_E4M3": _f8_table(4, 7, False), "F8_E5M2": _f8_table(5, 15, True)}


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offsets
    end: int


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)


def _entry(name: str, spec: Any, buffer_start: int, buffer_len: int) -> Entry:
    where = f"tensor {name[:80]!r}"
    if not isinstance(spec, dict):
        raise FormatError(f"{where}: header entry is not an object")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if not isinstance(dtype, str):
        raise FormatError(f"{where}: dtype must be a string")
    if dtype in NO_APR_TYPE:
        raise FormatError(f"{where}: dtype {dtype} has no APR counterpart; convert it to F32, F16 or BF16 first")
    if dtype not in STORED:
        raise FormatError(f"{where}: unknown dtype {str(dtype)[:20]!r}")
    if not _int_list(shape) or any(d < 0 for d in shape) or len(shape) > C.MAX_NDIM:
        raise FormatError(f"{where}: shape must be at most {C.MAX_NDIM} non-negative integers")
    itemsize = np.dtype(STORED[dtype]).itemsize
    # an empty tensor's other dimensions still bound any array of its shape, widened to float64 at most
    if math.prod(d for d in shape if d) * 8 >= 2**63:
        raise FormatError(f"{where}: shape {shape} is too large for any array")
    if not _int_list(offsets) or len(offsets) != 2 or not 0 <= offsets[0] <= offsets[1] <= buffer_len:
        raise FormatError(f"{where}: data_offsets {str(offsets)[:60]} lie outside the {buffer_len}-byte buffer")
    if offsets[1] - offsets[0] != math.prod(shape) * itemsize:
        raise FormatError(f"{where}: {offsets[1] - offsets[0]} bytes for shape {shape} of {dtype}")
    return Entry(name, dtype, tuple(shape), buffer_start + offsets[0], buffer_start + offsets[1])


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise MetadataError("__metadata__: must map strings to strings")
    return value


class SafetensorsFile:
    """An open, checked .safetensors file. `array(name)` returns the stored values (BF16 as raw bits)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        with open_input(self.path) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise TruncatedError(f"{self.path}: {size} bytes, a safetensors file has at least 8")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise FormatError(f"{self.path}: header of {n} bytes exceeds the file or {MAX_HEADER_BYTES:,}")
            raw = f.read(n)
            self._ranges = FileRanges(f, self.path, writable=True)
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=reject_duplicate_keys)
        except MetadataError as exc:
            raise MetadataError(f"{self.path}: {exc}") from None
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise FormatError(f"{self.path}: header is not valid JSON ({str(exc)[:80]})") from None
        if not isinstance(header, dict):
            raise FormatError(f"{self.path}: header is not a JSON object")
        try:
            self.metadata = _metadata(header.pop("__metadata__", None))
            entries = [_entry(k, v, 8 + n, size - 8 - n) for k, v in header.items()]
        except FormatError as exc:
            raise type(exc)(f"{self.path}: {exc}") from None
        self._check_coverage(entries, 8 + n, size)
        self.entries = {e.name: e for e in entries}

    def _check_coverage(self, entries: list[Entry], start: int, size: int) -> None:
        cursor = start
        for e in sorted(entries, key=lambda e: (e.start, e.end)):
            if e.start != cursor:
                kind = "overlaps another tensor" if e.start < cursor else "leaves a hole before it"
                raise FormatError(f"{self.path}: tensor {e.name[:80]!r} {kind} (the buffer must be covered exactly)")
            cursor = e.end
        if cursor != size:
            raise FormatError(f"{self.path}: {size - cursor} bytes after the last tensor")

    def array(self, name: str) -> np.ndarray:
        e = self.entries[name]
        dtype = np.dtype(STORED[e.dtype])
        count = (e.end - e.start) // dtype.itemsize
        if not count:
            return np.zeros(e.shape, dtype)
        view = self._ranges.view(e.start, e.end - e.start, f"tensor {name[:80]!r}")
        return np.frombuffer(view, dtype).reshape(e.shape)

    def close(self) -> None:
        self._ranges.close()

    def float32_or_stored(self, name: str) -> np.ndarray:
        """F8 and BF16 widened exactly to float32; every other dtype as stored."""
        dtype, values = self.entries[name].dtype, self.array(name)
        if dtype in F8_TABLES:
            return F8_TABLES[dtype][values]
        if dtype == "BF16":
            return (values.astype(np.uint32) << 16).view(np.float32)
        return values


def imported_metadata(f: SafetensorsFile) -> dict[str, Any]:
    """The APR metadata an import gets: aprtool's own (under META_KEY, an object by APR's metadata rules)
    or the string map, plus the model keys of a `config.json` beside the file (type-checked)."""
    from aprtool.container.layout import parse_metadata
    from aprtool.interop.hf_config import architecture_fields
    from aprtool.paths import read_json_object

    if META_KEY in f.metadata:
        metadata = parse_metadata(f.metadata[META_KEY].encode("utf-8"))
    else:
        metadata = {k: v for k, v in f.metadata.items() if k != "format"}
    config = f.path.with_name("config.json")
    if os.path.lexists(config):
        hf = read_json_object(config)
        metadata = {**architecture_fields(hf, str(config)), **metadata, "hf_config": hf}
    return metadata


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """All tensors as numpy (BF16 and F8 widened exactly to float32) and the imported metadata."""
    f = SafetensorsFile(path)
    return {name: f.float32_or_stored(name) for name in f.entries}, imported_metadata(f)
