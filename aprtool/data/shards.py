"""Token shards: uint16 tokens behind a small self-describing header; a split is read through memory
maps (ShardedTokens) and written as documents stream in (ShardWriter).

aprtool's header (32 bytes, little-endian): magic b"APRTOKS\\0", u32 version (1), u32 bytes per token (2),
u32 vocab_size, u32 reserved (0), u64 token count. Tokens follow, nothing after them.

modded-nanogpt / parameter-golf shards (`fineweb_train_000001.bin`) are read too: 256 little-endian int32
(magic 20240520, version 1, token count, the rest unused), then uint16 ids; they record no vocabulary.
"""

from __future__ import annotations

import bisect
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from aprtool.atomic import atomic_writer
from aprtool.errors import FormatError, TruncatedError, UsageError
from aprtool.paths import open_input

MAGIC = b"APRTOKS\0"
VERSION = 1
HEADER = struct.Struct("<8sIIIIQ")


def write_shard(path: Path, tokens: np.ndarray, vocab_size: int) -> None:
    tokens = np.ascontiguousarray(tokens, dtype="<u2")
    with atomic_writer(path) as f:
        f.write(HEADER.pack(MAGIC, VERSION, 2, vocab_size, 0, tokens.size))
        f.write(memoryview(tokens).cast("B"))


NANOGPT_MAGIC, NANOGPT_VERSION = 20240520, 1
NANOGPT_HEADER = struct.Struct("<256i")


def read_shard(path: Path) -> tuple[np.ndarray, int | None]:
    """(tokens as a read-only memmap, vocab_size; None for a modded-nanogpt shard), after checking the
    header against the file."""
    with open_input(path) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(NANOGPT_HEADER.size)
    if len(head) >= 4 and int.from_bytes(head[:4], "little") == NANOGPT_MAGIC:
        return _nanogpt_tokens(path, head, size), None
    head = head[: HEADER.size]
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


def _nanogpt_tokens(path: Path, head: bytes, size: int) -> np.ndarray:
    if len(head) < NANOGPT_HEADER.size:
        raise TruncatedError(f"{path}: modded-nanogpt shard header is {len(head)} bytes, needs {NANOGPT_HEADER.size}")
    _, version, count = NANOGPT_HEADER.unpack(head)[:3]
    if version != NANOGPT_VERSION:
        raise FormatError(f"{path}: modded-nanogpt shard version {version} is not supported (1)")
    if count < 0 or size != NANOGPT_HEADER.size + 2 * count:
        raise TruncatedError(f"{path}: shard header says {count} tokens, the file holds "
                             f"{(size - NANOGPT_HEADER.size) / 2:g}")  # fmt: skip
    if count == 0:
        return np.zeros(0, np.uint16)
    return np.memmap(path, dtype="<u2", mode="r", offset=NANOGPT_HEADER.size, shape=(count,))


def nanogpt_shards(directory: Path) -> dict[str, list[Path]] | None:
    """A directory's modded-nanogpt shards by side (`*_train_*.bin`, `*_val_*.bin`, sorted by name), or None
    when it holds none."""
    if not directory.is_dir():
        return None
    found = {side: sorted(p for p in directory.glob(f"*_{side}_*.bin") if p.is_file()) for side in ("train", "val")}
    if not any(found.values()):
        return None
    for side, paths in found.items():
        if not paths:
            raise UsageError(
                f"--corpus {directory}: token shards for train and val are needed, found no *_{side}_*.bin"
            )
    return found


def checked_nanogpt(paths: list[Path], vocab_size: int, whose: str) -> list[np.ndarray]:
    """The shards' tokens (memory-mapped), each checked to hold only ids below `vocab_size` (`whose`
    vocabulary: the tokenizer's, the model's), else exit 4 naming the file."""
    shards = []
    for path in paths:
        tokens, _ = read_shard(path)
        if (top := max_token(tokens)) >= vocab_size:
            raise FormatError(f"{path}: holds token id {top}, not below {whose} vocabulary of {vocab_size:,} "
                              "(the shards were made with another tokenizer)")  # fmt: skip
        shards.append(tokens)
    return shards


def max_token(tokens: np.ndarray, chunk: int = 1 << 24) -> int:
    """The largest id in a (memory-mapped) shard, a chunk at a time; -1 when empty."""
    return max((int(tokens[i : i + chunk].max()) for i in range(0, len(tokens), chunk)), default=-1)


class ShardedTokens:
    """A split's tokens across its shards, each memory-mapped: `len()` and slices, without ever
    holding the split in memory. A slice that crosses a shard boundary is the only copy made."""

    def __init__(self, shards: list[np.ndarray]) -> None:
        self._shards = [s for s in shards if len(s)]
        self._starts = [0]
        for shard in self._shards:
            self._starts.append(self._starts[-1] + len(shard))

    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def shards(self) -> list[np.ndarray]:
        return list(self._shards)

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("ShardedTokens takes slices")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("ShardedTokens slices have step 1")
        pieces = []
        i = bisect.bisect_right(self._starts, start) - 1
        while start < stop:
            offset = self._starts[i]
            end = min(stop, self._starts[i + 1])
            pieces.append(self._shards[i][start - offset : end - offset])
            start, i = end, i + 1
        if not pieces:
            return np.zeros(0, np.uint16)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """The whole split in memory (for the held-out split's scoring, never for training)."""
        whole = self[0 : len(self)]
        return whole.astype(dtype) if dtype is not None else np.array(whole)


MAX_VOCAB = 1 << 16  # token ids are stored in 16 bits


class ShardWriter:
    """Token shards of at most `shard_tokens` tokens written as documents stream in: documents in order,
    each framed by the tokenizer's boundary tokens (`frame`: before, after); only the current shard is held
    in memory."""

    def __init__(self, directory: Path, split: str, frame: tuple[list[int], list[int]], vocab_size: int,
                 shard_tokens: int) -> None:  # fmt: skip
        if vocab_size > MAX_VOCAB:
            raise UsageError(f"a vocabulary of {vocab_size:,} tokens does not fit token shards' 16-bit ids")
        self.directory, self.split, self.vocab_size, self.shard_tokens = directory, split, vocab_size, shard_tokens
        self._start = np.array(frame[0], np.uint16)
        self._end = np.array(frame[1], np.uint16)
        self._pending: list[np.ndarray] = []
        self._pending_tokens = 0
        self.shards: list[dict[str, Any]] = []
        self.documents = 0

    def add(self, doc: Any) -> None:
        for part in (self._start, np.asarray(doc, np.uint16), self._end):
            self._pending.append(part)
            self._pending_tokens += part.size
        self.documents += 1
        while self._pending_tokens >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def close(self) -> list[dict[str, Any]]:
        """Write what is left (an empty split still gets one empty shard); returns the shard list."""
        if self._pending_tokens or not self.shards:
            self._flush(self._pending_tokens)
        return self.shards

    def _flush(self, count: int) -> None:
        stream = np.concatenate(self._pending) if self._pending else np.zeros(0, np.uint16)
        chunk, rest = stream[:count], stream[count:]
        name = f"{self.split}-{len(self.shards):04d}.tok"
        write_shard(self.directory / name, chunk, self.vocab_size)
        self.shards.append({"file": name, "tokens": int(chunk.size)})
        self._pending, self._pending_tokens = ([rest] if rest.size else []), int(rest.size)
