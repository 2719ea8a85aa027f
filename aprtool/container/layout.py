"""Encoding and decoding of the APR v2 regions: header, metadata JSON, tensor index.

Every parse function validates as it goes and raises a FormatError subclass naming the field.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

from aprtool.container import constants as C
from aprtool.container.tokenizer_text import has_embedded_text
from aprtool.errors import (
    MetadataError,
    NotAprError,
    TensorIndexError,
    UnknownDTypeError,
    UnsupportedVersionError,
    UsageError,
)

DTYPES_BY_CODE: dict[int, C.DType] = {d.code: d for d in C.PLAIN_DTYPES + C.ENCODED_DTYPES}
DTYPES_BY_NAME: dict[str, C.DType] = {d.name: d for d in C.PLAIN_DTYPES + C.ENCODED_DTYPES}


def dtype_for_code(code: int, where: str) -> C.DType:
    try:
        return DTYPES_BY_CODE[code]
    except KeyError:
        raise UnknownDTypeError(f"{where}: unknown dtype code {code}") from None


def pad64(n: int) -> int:
    return (n + C.ALIGNMENT - 1) // C.ALIGNMENT * C.ALIGNMENT


# ---------------------------------------------------------------- header


@dataclass(frozen=True)
class Header:
    version_major: int
    version_minor: int
    flags: int
    tensor_count: int
    metadata_offset: int
    metadata_size: int
    tensor_index_offset: int
    data_offset: int
    header_crc: int
    reserved: bytes = field(repr=False, default=bytes(20))

    @property
    def version(self) -> str:
        return f"{self.version_major}.{self.version_minor}"


def header_crc(raw: bytes) -> int:
    """CRC32 over the header with its own CRC field left out."""
    return zlib.crc32(raw[C.HEADER_CRC_END :], zlib.crc32(raw[: C.HEADER_CRC_OFFSET]))


def pack_header(
    *,
    flags: int,
    tensor_count: int,
    metadata_size: int,
    tensor_index_offset: int,
    data_offset: int,
) -> bytes:
    fields = (
        C.MAGIC,
        C.VERSION_MAJOR,
        C.VERSION_MINOR,
        flags,
        tensor_count,
        C.HEADER_SIZE,
        metadata_size,
        tensor_index_offset,
        data_offset,
    )
    raw = struct.pack(C.HEADER_STRUCT, *fields, 0, bytes(20))
    crc = header_crc(raw)
    return raw[: C.HEADER_CRC_OFFSET] + struct.pack("<I", crc) + raw[C.HEADER_CRC_END :]


def unpack_header(raw: bytes) -> Header:
    """Magic and version are checked here; offsets are checked against the file by the reader."""
    if len(raw) < C.HEADER_SIZE:
        raise NotAprError(f"header: {len(raw)} bytes, an APR v2 header has {C.HEADER_SIZE}")
    magic, major, minor, flags, count, md_off, md_size, idx_off, data_off, crc, reserved = struct.unpack(
        C.HEADER_STRUCT, raw[: C.HEADER_SIZE]
    )
    if magic != C.MAGIC:
        raise NotAprError(f"magic: expected {C.MAGIC!r}, found {magic!r}; not an APR file")
    if major != C.VERSION_MAJOR:
        raise UnsupportedVersionError(f"version: APR {major}.{minor} is not supported (this reader reads APR 2.x)")
    return Header(major, minor, flags, count, md_off, md_size, idx_off, data_off, crc, reserved)


# ---------------------------------------------------------------- metadata


def carries_tokenizer(metadata: dict[str, Any]) -> bool:
    """The metadata holds a complete tokenizer: aprtool's bytes tokenizer, or a BPE with its JSON."""
    tok = metadata.get(C.TOKENIZER_KEY)
    return isinstance(tok, dict) and (tok.get("kind") == "bytes" or has_embedded_text(tok))


def encode_metadata(metadata: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"metadata: cannot be written as strict JSON ({exc})") from None
    return text.encode("utf-8")


def reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json `object_pairs_hook`: a JSON object may not give a key twice (readers disagree on which wins)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise MetadataError(f"duplicate key {key[:60]!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise MetadataError(f"non-finite number {name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise MetadataError(f"number {text[:40]} overflows to infinity")
    return value


def _depth(value: Any, limit: int) -> int:
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            break
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def parse_metadata(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetadataError(f"metadata: invalid UTF-8 at byte {exc.start}") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=reject_duplicate_keys,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except MetadataError as exc:
        raise MetadataError(f"metadata: {exc}") from None
    except RecursionError:
        raise MetadataError("metadata: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, over-long integers
        raise MetadataError(f"metadata: invalid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise MetadataError(f"metadata: must be a JSON object, found {type(value).__name__}")
    if _depth(value, C.MAX_JSON_DEPTH) > C.MAX_JSON_DEPTH:
        raise MetadataError(f"metadata: JSON nested deeper than {C.MAX_JSON_DEPTH} levels")
    return value


# ---------------------------------------------------------------- tensor index


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: C.DType
    shape: tuple[int, ...]
    offset: int  # relative to the header's data_offset
    size: int  # stored bytes
    record: dict[str, Any] | None = None  # this tensor's entry under metadata["aprtool"]["tensors"]
    stored_dtype: C.DType | None = None  # the index's dtype when it differs from `dtype` (U8 for encoded)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def codec(self) -> str | None:
        return self.record.get("codec") if self.record and not self.dtype.itemsize else None


def check_shape(where: str, dtype: C.DType, shape: tuple[int, ...], size: int) -> None:
    """The shape agrees with the stored size (plain dtypes) and could exist as an array at all."""
    numel = math.prod(shape)  # python ints: a product of eight u64s cannot overflow
    if dtype.itemsize and numel * dtype.itemsize != size:
        raise TensorIndexError(f"{where}: size {size} != shape {list(shape)} x {dtype.itemsize} bytes ({dtype.name})")
    # no array of this shape can exist, even with 0 elements: numpy and torch address < 2**63 bytes
    if math.prod(d for d in shape if d) * max(dtype.itemsize, 1) >= 2**63:
        raise TensorIndexError(f"{where}: shape {list(shape)} is too large for any array")
    if not dtype.itemsize and numel and not size:
        raise TensorIndexError(f"{where}: encoded tensor with {numel} elements stores 0 bytes")


def logical_view(info: TensorInfo) -> TensorInfo:
    """An encoded tensor stored as U8 (section 5.1) as what it decodes to: the dtype and shape its record
    names, checked as an index entry's would be. Every other tensor is returned as it is."""
    record = info.record or {}
    if C.LOGICAL_DTYPE_KEY not in record and C.LOGICAL_SHAPE_KEY not in record:
        return info
    where = f"tensor {info.name!r}"
    name = record.get(C.LOGICAL_DTYPE_KEY)
    dtype = DTYPES_BY_NAME.get(name) if isinstance(name, str) else None
    if dtype is None or dtype.itemsize:
        raise MetadataError(f"{where}: {C.LOGICAL_DTYPE_KEY} {str(name)[:24]!r} is not an encoded dtype")
    if info.dtype.name != "U8" or len(info.shape) != 1:
        found = f"{info.dtype.name} {list(info.shape)}"
        raise TensorIndexError(f"{where}: an encoded tensor is stored as one-dimensional U8, found {found}")
    shape = record.get(C.LOGICAL_SHAPE_KEY)
    dims_ok = isinstance(shape, list) and all(type(d) is int and 0 <= d < 2**64 for d in shape)
    if not dims_ok or len(shape) > C.MAX_NDIM:
        raise MetadataError(f"{where}: {C.LOGICAL_SHAPE_KEY} must be a list of at most {C.MAX_NDIM} u64 dimensions")
    check_shape(where, dtype, tuple(shape), info.size)
    return replace(info, dtype=dtype, shape=tuple(shape), stored_dtype=info.dtype)


def encode_index_entry(name: bytes, code: int, shape: tuple[int, ...], offset: int, size: int) -> bytes:
    return b"".join(
        (
            struct.pack("<H", len(name)),
            name,
            struct.pack("<BB", code, len(shape)),
            struct.pack(f"<{len(shape)}Q", *shape),
            struct.pack("<QQ", offset, size),
        )
    )


def parse_index(raw: bytes | memoryview, count: int, data_len: int) -> list[TensorInfo]:
    """Parse `count` entries from the index region and check each against the data region size."""
    if count * C.MIN_INDEX_ENTRY > len(raw):
        raise TensorIndexError(f"tensor_count: {count} entries cannot fit in a {len(raw)}-byte tensor index")
    buf = bytes(raw)
    pos = 0
    tensors: list[TensorInfo] = []
    previous: bytes | None = None
    for i in range(count):
        where = f"tensor index entry {i}"
        if pos + 2 > len(buf):
            raise TensorIndexError(f"{where}: runs past the end of the tensor index")
        (name_len,) = struct.unpack_from("<H", buf, pos)
        pos += 2
        if name_len == 0 or name_len > C.MAX_NAME_BYTES:
            raise TensorIndexError(f"{where}: name_len {name_len} outside 1..{C.MAX_NAME_BYTES}")
        if pos + name_len + 2 > len(buf):
            raise TensorIndexError(f"{where}: runs past the end of the tensor index")
        name_bytes = buf[pos : pos + name_len]
        pos += name_len
        try:
            name = name_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise TensorIndexError(f"{where}: name is not valid UTF-8") from None
        where = f"tensor {name!r}"
        if previous is not None and name_bytes <= previous:
            kind = "duplicate" if name_bytes == previous else "unsorted"
            raise TensorIndexError(f"{where}: {kind} name (index must be sorted by name, unique)")
        previous = name_bytes
        code, ndim = struct.unpack_from("<BB", buf, pos)
        pos += 2
        dtype = dtype_for_code(code, where)
        if ndim > C.MAX_NDIM:
            raise TensorIndexError(f"{where}: ndim {ndim} exceeds {C.MAX_NDIM}")
        if pos + 8 * ndim + 16 > len(buf):
            raise TensorIndexError(f"{where}: runs past the end of the tensor index")
        shape = struct.unpack_from(f"<{ndim}Q", buf, pos)
        pos += 8 * ndim
        offset, size = struct.unpack_from("<QQ", buf, pos)
        pos += 16
        if offset % C.ALIGNMENT:
            raise TensorIndexError(f"{where}: offset {offset} is not {C.ALIGNMENT}-byte aligned")
        if offset > data_len or size > data_len - offset:
            raise TensorIndexError(
                f"{where}: bytes [{offset}, {offset + size}) lie past the end of the {data_len}-byte data section"
            )
        check_shape(where, dtype, shape, size)
        tensors.append(TensorInfo(name, dtype, tuple(shape), offset, size))
    if any(buf[pos:]):
        raise TensorIndexError("tensor index: non-zero bytes after the last entry")
    reach: TensorInfo | None = None  # the stored tensor that ends furthest so far
    for t in sorted((t for t in tensors if t.size), key=lambda t: t.offset):
        if reach is not None and t.offset < reach.offset + reach.size:
            raise TensorIndexError(f"tensor {t.name!r}: overlaps tensor {reach.name!r}")
        if reach is None or t.offset + t.size > reach.offset + reach.size:
            reach = t
    return tensors
