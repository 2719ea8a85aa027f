"""Crash-safe, streaming APR v2 writer."""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from aprtool.atomic import atomic_writer, write_error
from aprtool.container import constants as C
from aprtool.container.layout import (
    DTYPES_BY_NAME,
    carries_tokenizer,
    encode_index_entry,
    encode_metadata,
    pack_header,
    pad64,
)
from aprtool.container.tokenizer_text import pack_tokenizer
from aprtool.errors import FileAccessError, MetadataError, UsageError

_NUMPY_TO_APR = {
    "float32": "F32",
    "float16": "F16",
    "float64": "F64",
    "int32": "I32",
    "int64": "I64",
    "int8": "I8",
    "uint8": "U8",
}
_TORCH_TO_APR = {**_NUMPY_TO_APR, "bfloat16": "BF16"}


@dataclass(frozen=True)
class EncodedTensor:
    """A tensor already encoded by a codec: the writer stores `payload` as-is, as a U8 tensor whose record
    names `dtype` and `shape` (logical_dtype, logical_shape), so stock APR v2 readers can list it."""

    dtype: C.DType  # an encoded dtype (INT6_*), named in the record, never written to the index
    shape: tuple[int, ...]  # logical shape of the decoded tensor
    payload: bytes | memoryview
    record: dict[str, Any] = field(default_factory=dict)  # codec parameters, content digest


@dataclass(frozen=True)
class _Entry:
    name: str
    name_bytes: bytes
    dtype: C.DType
    shape: tuple[int, ...]
    data: memoryview  # flat bytes, zero-copy where the source allows
    record: dict[str, Any]
    encoded: bool = False  # an EncodedTensor, stored as U8 with its logical dtype and shape in `record`


def _as_bytes(array: np.ndarray) -> memoryview:
    flat = np.ascontiguousarray(array).reshape(-1)
    return memoryview(flat.view(np.uint8))


def _entry(name: str, value: Any) -> _Entry:
    if not isinstance(name, str) or not name:
        raise UsageError(f"tensor name {name!r}: must be a non-empty string")
    name_bytes = name.encode("utf-8")
    if len(name_bytes) > C.MAX_NAME_BYTES:
        raise UsageError(f"tensor {name[:40]!r}...: name longer than {C.MAX_NAME_BYTES} bytes")
    if isinstance(value, EncodedTensor):
        if value.dtype.code < C.ENCODED_DTYPE_MIN:
            raise UsageError(f"tensor {name!r}: encoded tensors need a dtype code >= 160")
        data = memoryview(value.payload).cast("B")
        logical = {C.LOGICAL_DTYPE_KEY: value.dtype.name, C.LOGICAL_SHAPE_KEY: [int(d) for d in value.shape]}
        record = {**value.record, **logical}
        return _Entry(name, name_bytes, DTYPES_BY_NAME["U8"], (data.nbytes,), data, record, encoded=True)
    if type(value).__module__.startswith("torch"):
        tensor = value.detach().cpu().contiguous()
        kind = str(tensor.dtype).removeprefix("torch.")
        if kind not in _TORCH_TO_APR:
            raise UsageError(f"tensor {name!r}: torch dtype {kind} cannot be stored in APR")
        dtype = DTYPES_BY_NAME[_TORCH_TO_APR[kind]]
        if kind == "bfloat16":
            import torch

            array = tensor.view(torch.int16).numpy()
        else:
            array = tensor.numpy()
        return _Entry(name, name_bytes, dtype, tuple(tensor.shape), _as_bytes(array), {})
    array = np.asarray(value)
    kind = array.dtype.name
    if kind not in _NUMPY_TO_APR:
        raise UsageError(f"tensor {name!r}: numpy dtype {kind} cannot be stored in APR")
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    dtype = DTYPES_BY_NAME[_NUMPY_TO_APR[kind]]
    return _Entry(name, name_bytes, dtype, tuple(array.shape), _as_bytes(array), {})


def _entries(tensors: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> list[_Entry]:
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    entries = [_entry(name, value) for name, value in items]
    entries.sort(key=lambda e: e.name_bytes)
    for a, b in zip(entries, entries[1:], strict=False):
        if a.name_bytes == b.name_bytes:
            raise UsageError(f"tensor {a.name!r}: name given twice")
    if len(entries) > C.MAX_TENSOR_COUNT:
        raise UsageError(f"tensor_count: {len(entries)} exceeds {C.MAX_TENSOR_COUNT}")
    return entries


@dataclass(frozen=True)
class WriteResult:
    path: Path
    size_bytes: int
    tensor_count: int
    footer_crc: int


def write_apr(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Any] | Iterable[tuple[str, Any]],
    metadata: Mapping[str, Any] | None = None,
    *,
    tensor_records: bool = True,
) -> WriteResult:
    """Write tensors (numpy arrays, torch tensors or EncodedTensor) and metadata to `path`.

    The file appears atomically: it is written to a temp file in the same directory, fsynced,
    renamed over `path`, and the directory is fsynced. Tensor data is streamed, never concatenated.
    With `tensor_records` (the default) each tensor's xxh3_64 checksum is stored in the metadata
    under "aprtool"; without it the output is a plain APR v2 file such as aprender writes.
    """
    path = Path(path)
    entries = _entries(tensors)
    meta = pack_tokenizer(dict(metadata or {}))  # the tokenizer.json travels xz-compressed (section 3.2)
    if tensor_records:
        records = {e.name: {C.CHECKSUM_ALGORITHM: xxhash.xxh3_64_hexdigest(e.data), **e.record} for e in entries}
        existing = meta.get(C.APRTOOL_KEY)
        if existing is not None and not isinstance(existing, dict):  # e.g. a safetensors __metadata__ string
            raise MetadataError(f"metadata.{C.APRTOOL_KEY}: reserved for aprtool's tensor records, found "
                                f"{type(existing).__name__}")  # fmt: skip
        aprtool_meta = dict(existing or {})
        aprtool_meta.update(records_version=C.RECORDS_VERSION, checksum=C.CHECKSUM_ALGORITHM)
        aprtool_meta["tensors"] = records
        meta[C.APRTOOL_KEY] = aprtool_meta
    elif any(e.record for e in entries):
        raise UsageError("encoded tensors need tensor_records=True to store their codec records")
    metadata_bytes = encode_metadata(meta)
    if len(metadata_bytes) > C.MAX_METADATA_SIZE:
        raise UsageError(f"metadata: {len(metadata_bytes)} bytes exceeds {C.MAX_METADATA_SIZE}")

    offsets, cursor = [], 0
    for e in entries:
        offsets.append(cursor)
        cursor += pad64(e.data.nbytes)
    index = b"".join(
        encode_index_entry(e.name_bytes, e.dtype.code, e.shape, off, e.data.nbytes)
        for e, off in zip(entries, offsets, strict=True)
    )
    index_offset = C.HEADER_SIZE + pad64(len(metadata_bytes))
    data_offset = index_offset + pad64(len(index))
    flags = C.FLAG_ROW_MAJOR
    if any(e.encoded for e in entries):
        flags |= C.FLAG_QUANTIZED
    if carries_tokenizer(meta):
        flags |= C.FLAG_HAS_VOCAB
    header = pack_header(
        flags=flags,
        tensor_count=len(entries),
        metadata_size=len(metadata_bytes),
        tensor_index_offset=index_offset,
        data_offset=data_offset,
    )

    crc = 0
    try:
        with atomic_writer(path) as f:

            def put(chunk: bytes | memoryview) -> None:
                nonlocal crc
                f.write(chunk)
                crc = zlib.crc32(chunk, crc)

            put(header)
            put(metadata_bytes + bytes(pad64(len(metadata_bytes)) - len(metadata_bytes)))
            put(index + bytes(pad64(len(index)) - len(index)))
            for e in entries:
                put(e.data)
                put(bytes(pad64(e.data.nbytes) - e.data.nbytes))
            f.write(crc.to_bytes(4, "little"))
            size = f.tell()
    except OSError as exc:
        raise write_error(path, exc) or FileAccessError(f"{path}: cannot write ({exc})") from None
    return WriteResult(path, size, len(entries), crc)
