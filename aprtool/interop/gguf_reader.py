"""Reading GGUF files that may be hostile: a bounded parser of the header, key-values and tensor infos.

GGUF v2/v3: magic "GGUF", u32 version, u64 tensor count, u64 key-value count; key-values (u64-length
string key, u32 type, value; arrays are u32 item type + u64 count + items); tensor infos (name, u32
n_dims, u64 dims, u32 ggml type, u64 offset); padding to `general.alignment` (default 32); the data.
Every count and length is checked against the bytes that remain before anything is read or allocated
(a claimed 2^40-item array in a 1 KB file is refused, not looped over), and every tensor's byte range
(ggml block sizes from the `gguf` package's table) against the data section: in bounds, aligned, no
overlaps. The `gguf` package's own reader maps whatever the header claims; this one checks first.
"""

from __future__ import annotations

import functools
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aprtool.container.constants import MAX_DECODED_ELEMENTS, MAX_NDIM
from aprtool.errors import FileAccessError, FormatError, LimitError, NotAprError, TruncatedError
from aprtool.memory import ensure_allocatable
from aprtool.paths import FileRanges, open_input

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_COUNT = 1_000_000  # tensors or key-values: far above any real file
MAX_STRING = 16 * 1024 * 1024
DEFAULT_ALIGNMENT = 32
# value type -> struct code for the scalar types (8 string, 9 array are handled apart)
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
FLOATS = {0: "<f4", 1: "<f2", 28: "<f8"}  # ggml types whose values numpy reads directly (F32, F16, F64)


@functools.cache
def dequantizable(ggml_type: int) -> bool:
    """gguf-py can turn this ggml type into float values (F32, F16, BF16 and the block-quantized types): asked by
    dequantizing one zero block, since gguf-py answers NotImplementedError for the rest."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    qtype = GGMLQuantizationType(ggml_type)
    if ggml_type in FLOATS:
        return True
    if qtype.name in ("I8", "I16", "I32", "I64"):  # integers, not weights
        return False
    try:
        dequantize(np.zeros(GGML_QUANT_SIZES[qtype][1], np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


@dataclass(frozen=True)
class GgufTensor:
    name: str
    ggml_type: int
    type_name: str
    shape: tuple[int, ...]  # ggml order: innermost dimension first
    start: int  # absolute file offsets
    size: int


class _Cursor:
    """Reads the head in order from the open file: each length is checked against the bytes left first."""

    def __init__(self, f: Any, size: int, path: Path) -> None:
        self.f, self.size, self.pos, self.path = f, size, 0, path

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise TruncatedError(f"{self.path}: {what} needs {n} bytes at byte {self.pos}, the file ends first")
        try:
            data = self.f.read(n)
        except OSError as exc:
            raise FileAccessError(f"{self.path}: cannot read {what} ({exc.strerror or exc})") from None
        if len(data) != n:
            raise TruncatedError(f"{self.path}: {what}: the file ended while it was read")
        self.pos += n
        return data

    def unpack(self, code: str, what: str) -> Any:
        return struct.unpack("<" + code, self.take(struct.calcsize("<" + code), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("Q", what)
        if n > MAX_STRING:
            raise FormatError(f"{self.path}: {what} of {n} bytes exceeds {MAX_STRING:,}")
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{self.path}: {what} is not valid UTF-8") from None

    def count(self, what: str, min_item: int) -> int:
        n = self.unpack("Q", what)
        if n > MAX_COUNT * 64 or n * min_item > self.size - self.pos:
            raise FormatError(f"{self.path}: {what} {n} cannot fit in the {self.size - self.pos} bytes left")
        return n


def _value(cur: _Cursor, kind: int, key: str, depth: int = 0) -> Any:
    if kind in SCALARS:
        return cur.unpack(SCALARS[kind], f"value of {key!r}")
    if kind == STRING:
        return cur.string(f"value of {key!r}")
    if kind == ARRAY and depth == 0:
        item = cur.unpack("I", f"array type of {key!r}")
        size = struct.calcsize("<" + SCALARS[item]) if item in SCALARS else 8
        n = cur.count(f"array length of {key!r}", size)
        if item in SCALARS:  # numbers: one read, no per-item Python work
            return np.frombuffer(cur.take(n * size, f"array {key!r}"), dtype="<" + SCALARS[item]).tolist()
        return [_value(cur, item, key, depth + 1) for _ in range(n)]
    raise FormatError(f"{cur.path}: key {key[:80]!r} has unknown value type {kind}")


class GgufFile:
    """A checked GGUF file: `metadata` (key -> value) and `tensors` (name -> GgufTensor)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        with open_input(self.path) as f:
            self.size = os.fstat(f.fileno()).st_size
            if self.size < 24:
                raise TruncatedError(f"{self.path}: {self.size} bytes, a GGUF file has at least 24")
            self._ranges = FileRanges(f, self.path)
            self._read_head(_Cursor(f, self.size, self.path))

    def _read_head(self, cur: _Cursor) -> None:
        if cur.take(4, "magic") != MAGIC:
            raise NotAprError(f"{self.path}: not a GGUF file (magic)")
        self.version = cur.unpack("I", "version")
        if self.version not in VERSIONS:
            raise FormatError(f"{self.path}: GGUF version {self.version} is not supported (2 or 3)")
        n_tensors, n_kv = cur.unpack("Q", "tensor count"), cur.unpack("Q", "key-value count")
        if n_tensors > MAX_COUNT or n_kv > MAX_COUNT:
            raise FormatError(f"{self.path}: {n_tensors} tensors / {n_kv} key-values exceed {MAX_COUNT:,}")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string("key")
            if key in self.metadata:
                raise FormatError(f"{self.path}: key {key[:80]!r} appears twice")
            self.metadata[key] = _value(cur, cur.unpack("I", f"type of {key!r}"), key)
        infos = [self._info(cur) for _ in range(n_tensors)]
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or isinstance(alignment, bool) or not 1 <= alignment <= 1 << 20:
            raise FormatError(f"{self.path}: general.alignment {alignment!r:.40} is not a sane integer")
        self.alignment = alignment
        self.data_start = -(-cur.pos // alignment) * alignment
        self.tensors = self._place(infos)

    def _info(self, cur: _Cursor) -> tuple[str, int, tuple[int, ...], int]:
        from gguf.constants import GGMLQuantizationType

        name = cur.string("tensor name")
        ndim = cur.unpack("I", f"n_dims of {name!r}")
        if ndim > MAX_NDIM:
            raise FormatError(f"{self.path}: tensor {name[:80]!r} has {ndim} dimensions (at most {MAX_NDIM})")
        shape = tuple(cur.unpack("Q", f"dims of {name!r}") for _ in range(ndim))
        if math.prod(d for d in shape if d) > MAX_DECODED_ELEMENTS:  # even beside a zero dim: numpy refuses it
            raise LimitError(
                f"{self.path}: tensor {name[:80]!r} shape {list(shape)} exceeds {MAX_DECODED_ELEMENTS:,} elements"
            )
        kind = cur.unpack("I", f"type of {name!r}")
        if kind not in GGMLQuantizationType._value2member_map_:
            raise FormatError(f"{self.path}: tensor {name[:80]!r} has unknown ggml type {kind}")
        return name, kind, shape, cur.unpack("Q", f"offset of {name!r}")

    def _place(self, infos: list[tuple[str, int, tuple[int, ...], int]]) -> dict[str, GgufTensor]:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        tensors: dict[str, GgufTensor] = {}
        data_len = self.size - self.data_start
        for name, kind, shape, offset in infos:
            where = f"{self.path}: tensor {name[:80]!r}"
            if name in tensors:
                raise FormatError(f"{where} appears twice")
            qtype = GGMLQuantizationType(kind)
            block, block_bytes = GGML_QUANT_SIZES[qtype]
            numel = math.prod(shape)
            if shape and shape[0] % block:
                raise FormatError(
                    f"{where}: first dimension {shape[0]} is not a multiple of {qtype.name}'s block {block}"
                )
            size = numel // block * block_bytes
            if offset % self.alignment or offset > data_len or size > data_len - offset:
                raise FormatError(
                    f"{where}: bytes [{offset}, {offset + size}) do not fit the {data_len}-byte data section"
                )
            tensors[name] = GgufTensor(name, kind, qtype.name, shape, self.data_start + offset, size)
        spans = sorted((t for t in tensors.values() if t.size), key=lambda t: t.start)
        for a, b in zip(spans, spans[1:], strict=False):
            if b.start < a.start + a.size:
                raise FormatError(f"{self.path}: tensor {b.name[:80]!r} overlaps tensor {a.name[:80]!r}")
        return tensors

    def values(self, name: str) -> np.ndarray | None:
        """float32 values (row-major, outermost dimension first) of a float or quantized tensor, dequantized by
        gguf-py one tensor at a time; None for integer types and types gguf-py cannot dequantize."""
        from gguf.constants import GGMLQuantizationType
        from gguf.quants import dequantize

        t = self.tensors[name]
        shape = tuple(reversed(t.shape))
        if t.ggml_type in FLOATS:
            flat = np.frombuffer(self._bytes(t), dtype=FLOATS[t.ggml_type], count=math.prod(t.shape))
            return flat.astype(np.float32).reshape(shape)
        if not dequantizable(t.ggml_type):
            return None
        ensure_allocatable(4 * math.prod(t.shape) + t.size, f"{self.path}: tensor {name[:80]!r} dequantized")
        raw = np.frombuffer(self._bytes(t), dtype=np.uint8, count=t.size)
        return np.asarray(dequantize(raw, GGMLQuantizationType(t.ggml_type)), np.float32).reshape(shape)

    def _bytes(self, t: GgufTensor) -> memoryview:
        return self._ranges.view(t.start, t.size, f"tensor {t.name[:80]!r}")

    def close(self) -> None:
        self._ranges.close()

    def __enter__(self) -> GgufFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
