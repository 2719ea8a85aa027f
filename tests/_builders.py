"""Byte-level helpers for the malformed-file, fuzz and bit-flip tests.

Written from formats/APR.md, independently of aprtool's own layout code, so that a drift between the
reader and the spec shows up here instead of being shared. Every helper works on a `bytearray` holding
a whole file; `fix_crcs` recomputes both the header CRC and the footer CRC after a patch, so a test can
prove that a structural check (not a checksum) catches the defect it plants.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aprtool

HEADER_SIZE = 64
FOOTER_SIZE = 4

# name -> (offset, struct code); little-endian, packed without padding (spec §2)
HEADER_FIELDS: dict[str, tuple[int, str]] = {
    "magic": (0, "4s"),
    "version_major": (4, "B"),
    "version_minor": (5, "B"),
    "flags": (6, "H"),
    "tensor_count": (8, "I"),
    "metadata_offset": (12, "Q"),
    "metadata_size": (20, "I"),
    "tensor_index_offset": (24, "Q"),
    "data_offset": (32, "Q"),
    "header_crc": (40, "I"),
    "reserved": (44, "20s"),
}
NUMERIC_HEADER_FIELDS = [n for n, (_, code) in HEADER_FIELDS.items() if not code.endswith("s")]
FIELD_BITS = {"B": 8, "H": 16, "I": 32, "Q": 64}


def pad64(n: int) -> int:
    return (n + 63) // 64 * 64


def header_crc(buf: bytes | bytearray) -> int:
    return zlib.crc32(bytes(buf[44:64]), zlib.crc32(bytes(buf[:40])))


def fix_crcs(buf: bytearray) -> bytearray:
    """Recompute the header CRC (if there is a whole header) and the footer CRC, in place."""
    if len(buf) >= HEADER_SIZE:
        struct.pack_into("<I", buf, 40, header_crc(buf))
    if len(buf) >= FOOTER_SIZE:
        buf[-FOOTER_SIZE:] = struct.pack("<I", zlib.crc32(bytes(buf[:-FOOTER_SIZE])))
    return buf


def get_header(buf: bytes | bytearray, name: str) -> Any:
    offset, code = HEADER_FIELDS[name]
    return struct.unpack_from("<" + code, buf, offset)[0]


def set_header(buf: bytearray, name: str, value: Any) -> bytearray:
    offset, code = HEADER_FIELDS[name]
    struct.pack_into("<" + code, buf, offset, value)
    return buf


def metadata_bytes(buf: bytes | bytearray) -> bytes:
    return bytes(buf[HEADER_SIZE : HEADER_SIZE + get_header(buf, "metadata_size")])


def data_start(buf: bytes | bytearray) -> int:
    return get_header(buf, "data_offset")


@dataclass(frozen=True)
class Entry:
    """One parsed index entry with the absolute file position of each of its fields."""

    pos: int
    name: bytes
    dtype: int
    dims: tuple[int, ...]
    offset: int
    size: int

    @property
    def ndim(self) -> int:
        return len(self.dims)

    def field_pos(self, field: str, j: int = 0) -> int:
        after_name = self.pos + 2 + len(self.name)
        return {
            "name_len": self.pos,
            "name": self.pos + 2,
            "dtype": after_name,
            "ndim": after_name + 1,
            "dim": after_name + 2 + 8 * j,
            "offset": after_name + 2 + 8 * self.ndim,
            "size": after_name + 2 + 8 * self.ndim + 8,
        }[field]


ENTRY_FIELD_CODES = {"name_len": "H", "dtype": "B", "ndim": "B", "dim": "Q", "offset": "Q", "size": "Q"}


def entries(buf: bytes | bytearray) -> list[Entry]:
    """Parse the index of a well-formed file (no validation: use it before you break things)."""
    pos = get_header(buf, "tensor_index_offset")
    out = []
    for _ in range(get_header(buf, "tensor_count")):
        (name_len,) = struct.unpack_from("<H", buf, pos)
        name = bytes(buf[pos + 2 : pos + 2 + name_len])
        dtype, ndim = struct.unpack_from("<BB", buf, pos + 2 + name_len)
        dims = struct.unpack_from(f"<{ndim}Q", buf, pos + 4 + name_len)
        offset, size = struct.unpack_from("<QQ", buf, pos + 4 + name_len + 8 * ndim)
        out.append(Entry(pos, name, dtype, tuple(dims), offset, size))
        pos += 4 + name_len + 8 * ndim + 16
    return out


def entry(buf: bytes | bytearray, name: str) -> Entry:
    for e in entries(buf):
        if e.name == name.encode():
            return e
    raise KeyError(name)


def set_entry(buf: bytearray, name: str, field: str, value: Any, j: int = 0) -> bytearray:
    """Overwrite one field of the named tensor's index entry (in place, same length)."""
    e = entry(buf, name)
    pos = e.field_pos(field, j)
    if field == "name":
        assert len(value) == len(e.name), "renaming in place needs a name of the same length"
        buf[pos : pos + len(value)] = value
    else:
        struct.pack_into("<" + ENTRY_FIELD_CODES[field], buf, pos, value)
    return buf


def patch_metadata(buf: bytearray, old: bytes, new: bytes) -> bytearray:
    """Replace the one occurrence of `old` in the metadata JSON by `new` of the same length."""
    assert len(old) == len(new)
    text = metadata_bytes(buf)
    assert text.count(old) == 1, (old, text)
    at = HEADER_SIZE + text.index(old)
    buf[at : at + len(old)] = new
    return buf


def replace_metadata(buf: bytes | bytearray, new: bytes) -> bytearray:
    """The same file with other metadata bytes: sizes and offsets moved to match, CRCs recomputed."""
    old_index = get_header(buf, "tensor_index_offset")
    new_index = HEADER_SIZE + pad64(len(new))
    out = bytearray(buf[:HEADER_SIZE])
    set_header(out, "metadata_size", len(new))
    set_header(out, "tensor_index_offset", new_index)
    set_header(out, "data_offset", get_header(buf, "data_offset") - old_index + new_index)
    out += new + bytes(new_index - HEADER_SIZE - len(new))
    out += buf[old_index:]
    return fix_crcs(out)


def valid_bytes(path: Path, tensors: dict[str, Any], metadata: dict[str, Any] | None = None, **kw) -> bytes:
    """Write a real file with aprtool.write_apr and return its bytes."""
    aprtool.write_apr(path, tensors, metadata, **kw)
    return path.read_bytes()


def write(path: Path, buf: bytes | bytearray) -> Path:
    """Replace the file (new inode, so no earlier mapping of the old file sees the new bytes)."""
    path.unlink(missing_ok=True)
    path.write_bytes(bytes(buf))
    return path
