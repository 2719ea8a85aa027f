"""Token shards: uint16 tokens behind a small self-describing header.

Header (32 bytes, little-endian): magic b"APRTOKS\\0", u32 version (1), u32 bytes per token (2),
u32 vocab_size, u32 reserved (0), u64 token count. Tokens follow, nothing after them.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from aprtool.atomic import atomic_writer
from aprtool.errors import FormatError, TruncatedError
from aprtool.paths import open_input

MAGIC = b"APRTOKS\0"
VERSION = 1
HEADER = struct.Struct("<8sIIIIQ")


def write_shard(path: Path, tokens: np.ndarray, vocab_size: int) -> None:
    tokens = np.ascontiguousarray(tokens, dtype="<u2")
    with atomic_writer(path) as f:
        f.write(HEADER.pack(MAGIC, VERSION, 2, vocab_size, 0, tokens.size))
        f.write(memoryview(tokens).cast("B"))


def read_shard(path: Path) -> tuple[np.ndarray, int]:
    """(tokens as a read-only memmap, vocab_size), after checking the header against the file."""
    with open_input(path) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(HEADER.size)
    if len(head) < HEADER.size:
        raise TruncatedError(f"{path}: shard header is {len(head)} bytes, needs {HEADER.size}")
    magic, version, width, vocab, _, count = HEADER.unpack(head)
    if magic != MAGIC:
        raise FormatError(f"{path}: not a token shard (magic {magic!r})")
    if version != VERSION or width != 2:
        raise FormatError(f"{path}: shard version {version} / {width}-byte tokens is not supported")
    if size != HEADER.size + 2 * count:
        raise TruncatedError(f"{path}: shard declares {count} tokens but holds {(size - HEADER.size) // 2}")
    if count == 0:
        return np.zeros(0, np.uint16), vocab
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER.size, shape=(count,)), vocab
