"""APR v2 reader: validates structure on open, loads tensors lazily and zero-copy from an mmap."""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from aprtool.container import constants as C
from aprtool.container.layout import (
    Header,
    TensorInfo,
    header_crc,
    logical_view,
    pad64,
    parse_index,
    parse_metadata,
    unpack_header,
)
from aprtool.errors import (
    AprError,
    ChecksumError,
    FormatError,
    MetadataError,
    NotAprError,
    TruncatedError,
)
from aprtool.paths import open_input

_TORCH_DTYPES = {
    "F32": "float32",
    "F16": "float16",
    "F64": "float64",
    "BF16": "bfloat16",
    "I32": "int32",
    "I64": "int64",
    "I8": "int8",
    "U8": "uint8",
}


def _region(name: str, start: int, end: int, limit: int) -> None:
    if end > limit:
        raise TruncatedError(f"{name}: needs bytes [{start}, {end}) but the file ends its data at byte {limit}")


def _tensor_records(metadata: dict[str, Any], names: set[str]) -> dict[str, dict[str, Any]]:
    """aprtool's per-tensor records, checked for shape; {} for files from other APR writers."""
    ours = metadata.get(C.APRTOOL_KEY)
    if ours is None:
        return {}
    if not isinstance(ours, dict) or not isinstance(ours.get("tensors"), dict):
        raise MetadataError(f"metadata.{C.APRTOOL_KEY}: must be an object with a 'tensors' object")
    records = ours["tensors"]
    for name, record in records.items():
        if name not in names:
            raise MetadataError(f"metadata.{C.APRTOOL_KEY}.tensors: record for unknown {name!r}")
        digest = record.get(C.CHECKSUM_ALGORITHM) if isinstance(record, dict) else None
        if not isinstance(digest, str) or len(digest) != 16:
            raise MetadataError(f"tensor {name!r}: record lacks a valid {C.CHECKSUM_ALGORITHM}")
    if records and set(records) != names:
        missing = sorted(names - set(records))[0]
        raise MetadataError(f"tensor {missing!r}: no record in metadata.{C.APRTOOL_KEY}.tensors")
    return records


class AprFile:
    """An open APR v2 file. Use `open_apr()`; close it (or use `with`) when done.

    Opening reads the header, metadata and index only. `numpy(name)` / `torch(name)` return
    zero-copy views into a private (copy-on-write) mapping, verifying the tensor's stored checksum
    on first access unless `verify=False`.
    """

    def __init__(self, path: str | os.PathLike[str], *, check_header_crc: bool = True) -> None:
        self.path = Path(path)
        self._file = open_input(self.path)  # regular files only: a FIFO or device would block or never end
        self._mmap: mmap.mmap | None = None
        self._verified: set[str] = set()
        try:
            self._parse(check_header_crc)
        except BaseException:
            self.close()
            raise

    # -- structure ---------------------------------------------------------------------------

    def _read(self, start: int, length: int) -> bytes:
        self._file.seek(start)
        data = self._file.read(length)
        if len(data) != length:
            raise TruncatedError(f"{self.path}: short read at byte {start}")
        return data

    def _parse(self, check_header_crc: bool) -> None:
        self.size = os.fstat(self._file.fileno()).st_size
        head = self._read(0, min(self.size, C.HEADER_SIZE))
        if len(head) >= 4 and head[:4] != C.MAGIC:
            raise NotAprError(f"magic: expected {C.MAGIC!r}, found {head[:4]!r}; not an APR file")
        if self.size < C.HEADER_SIZE + C.FOOTER_SIZE:
            raise TruncatedError(
                f"header: file is {self.size} bytes, an APR v2 file has at least {C.HEADER_SIZE + C.FOOTER_SIZE}"
            )
        self.header: Header = unpack_header(head)
        self.header_raw = head
        h = self.header
        self.header_crc_valid = header_crc(head) == h.header_crc
        if check_header_crc and not self.header_crc_valid:
            raise ChecksumError(f"header_crc: stored {h.header_crc:08x}, computed {header_crc(head):08x}")
        if any(h.reserved):
            raise FormatError("header: reserved bytes 44..64 must be zero")
        if not h.flags & C.FLAG_ROW_MAJOR:
            raise FormatError("flags: row-major bit 0x0400 is not set (column-major is unsupported)")
        if h.metadata_offset != C.HEADER_SIZE:
            raise FormatError(f"metadata_offset: {h.metadata_offset}, must be {C.HEADER_SIZE}")
        if h.metadata_size > C.MAX_METADATA_SIZE:
            raise MetadataError(f"metadata_size: {h.metadata_size} bytes exceeds the {C.MAX_METADATA_SIZE} limit")
        if h.tensor_count > C.MAX_TENSOR_COUNT:
            raise FormatError(f"tensor_count: {h.tensor_count} exceeds {C.MAX_TENSOR_COUNT}")
        end = self.size - C.FOOTER_SIZE
        index_start = C.HEADER_SIZE + pad64(h.metadata_size)
        _region("metadata", C.HEADER_SIZE, index_start, end)
        if h.tensor_index_offset != index_start:
            raise FormatError(
                f"tensor_index_offset: {h.tensor_index_offset}, must be {index_start} (64 + metadata padded to 64)"
            )
        if h.data_offset % C.ALIGNMENT or h.data_offset < index_start:
            raise FormatError(f"data_offset: {h.data_offset} must be {C.ALIGNMENT}-aligned and >= {index_start}")
        _region("tensor index", index_start, h.data_offset, end)

        padded = self._read(C.HEADER_SIZE, index_start - C.HEADER_SIZE)
        if any(padded[h.metadata_size :]):
            raise MetadataError("metadata: non-zero bytes in its padding")
        self.metadata: dict[str, Any] = parse_metadata(padded[: h.metadata_size])

        data_len = end - h.data_offset
        index_raw = self._read(index_start, h.data_offset - index_start)
        infos = parse_index(index_raw, h.tensor_count, data_len)
        stored_end = max((pad64(t.offset + t.size) for t in infos), default=0)
        if data_len < stored_end:
            raise TruncatedError(f"data: {data_len} bytes, the tensor index needs {stored_end}")
        if data_len > stored_end:
            raise FormatError(f"data: {data_len - stored_end} unexpected bytes after the last tensor")
        records = _tensor_records(self.metadata, {t.name for t in infos})
        self.tensors: dict[str, TensorInfo] = {
            t.name: logical_view(TensorInfo(t.name, t.dtype, t.shape, t.offset, t.size, records.get(t.name)))
            for t in infos
        }
        has_encoded = any(t.dtype.code >= C.ENCODED_DTYPE_MIN for t in self.tensors.values())
        if has_encoded != bool(h.flags & C.FLAG_QUANTIZED):
            raise FormatError("flags: quantized bit 0x0020 disagrees with the tensors' dtypes")
        self.has_tensor_records = bool(records)
        (self.stored_footer_crc,) = struct.unpack("<I", self._read(end, C.FOOTER_SIZE))

    # -- tensors -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def names(self) -> list[str]:
        return list(self.tensors)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise AprError(f"tensor {name!r}: not in {self.path.name}") from None

    def absolute_offset(self, info: TensorInfo) -> int:
        return self.header.data_offset + info.offset

    def _map(self) -> mmap.mmap:
        if self._mmap is None:
            self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._mmap

    def raw(self, name: str, *, verify: bool = True) -> memoryview:
        """The tensor's stored bytes, zero-copy."""
        info = self.info(name)
        start = self.absolute_offset(info)
        view = memoryview(self._map())[start : start + info.size]
        if verify and name not in self._verified:
            self.check_tensor(info, view)
        return view

    def check_tensor(self, info: TensorInfo, view: memoryview) -> None:
        if info.record is not None:
            got = xxhash.xxh3_64_hexdigest(view)
            want = info.record[C.CHECKSUM_ALGORITHM]
            if got != want:
                raise ChecksumError(
                    f"tensor {info.name!r}: stored-bytes checksum mismatch "
                    f"({C.CHECKSUM_ALGORITHM} stored {want}, computed {got})"
                )
        self._verified.add(info.name)

    def numpy(self, name: str, *, verify: bool = True) -> np.ndarray:
        """Zero-copy numpy view. BF16 comes back as its raw uint16 bit patterns."""
        info = self.info(name)
        if not info.dtype.itemsize:
            raise AprError(f"tensor {name!r}: {info.dtype.name} is encoded; decode it with aprtool.codecs")
        view = self.raw(name, verify=verify)
        return np.frombuffer(view, dtype=info.dtype.numpy).reshape(info.shape)

    def torch(self, name: str, *, verify: bool = True) -> Any:
        """Zero-copy torch tensor (bf16 included) sharing the file's private mapping."""
        import torch

        info = self.info(name)
        if not info.dtype.itemsize:
            raise AprError(f"tensor {name!r}: {info.dtype.name} is encoded; decode it with aprtool.codecs")
        view = self.raw(name, verify=verify)
        dtype = getattr(torch, _TORCH_DTYPES[info.dtype.name])
        if info.numel == 0:
            return torch.empty(info.shape, dtype=dtype)
        return torch.frombuffer(view, dtype=dtype).reshape(info.shape)

    def close(self) -> None:
        if self._mmap is not None:
            # views handed out may still use it; then the mapping goes when they do
            with contextlib.suppress(BufferError):
                self._mmap.close()
            self._mmap = None
        self._file.close()

    def __enter__(self) -> AprFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_apr(path: str | os.PathLike[str], *, check_header_crc: bool = True) -> AprFile:
    return AprFile(path, check_header_crc=check_header_crc)


def load_apr(path: str | os.PathLike[str], *, verify: bool = True) -> dict[str, np.ndarray]:
    """Every plain tensor as a numpy view (checksums verified on the way)."""
    with open_apr(path) as f:
        return {n: f.numpy(n, verify=verify) for n in f.names()}
