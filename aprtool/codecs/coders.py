"""Lossless coders for int6 symbols (int8, -31..31). Each is exact: decode(encode(x)) == x.

Every decoder is told the symbol count from the tensor's declared shape and never produces or
allocates more than that, whatever the payload says.
"""

from __future__ import annotations

import lzma
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from aprtool.errors import IntegrityError

_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
ZSTD_LEVEL = 22


class DecodeError(IntegrityError):
    """A payload that passed its checksum but does not decode to the declared symbols."""


def symbol_counts(symbols: np.ndarray) -> np.ndarray:
    """Occurrences of each int8 value, indexed by value + 128."""
    flat = np.ascontiguousarray(symbols).reshape(-1).view(np.uint8)
    even = flat[: flat.size // 2 * 2]
    # Count byte pairs (half as many elements to widen), then add up both halves of each pair.
    pairs = np.bincount(even.view(np.uint16), minlength=65536).reshape(256, 256)
    counts = pairs.sum(axis=0) + pairs.sum(axis=1)
    if flat.size % 2:
        counts[flat[-1]] += 1
    return np.roll(counts, 128)  # the uint8 view puts -128..-1 at 128..255


def order0_entropy_bits(symbols: np.ndarray, counts: np.ndarray | None = None) -> float:
    """Total order-0 (i.i.d.) entropy of the symbols in bits: n x H(empirical distribution)."""
    counts = symbol_counts(symbols) if counts is None else counts
    counts = counts[counts > 0].astype(np.float64)
    n = counts.sum()
    if n == 0:
        return 0.0
    return float(-(counts * np.log2(counts / n)).sum())


# ---------------------------------------------------------------- raw


def _raw_encode(symbols: np.ndarray, counts: np.ndarray | None = None) -> bytes:
    return symbols.astype(np.int8, copy=False).tobytes()


def _raw_decode(body: memoryview, n: int) -> np.ndarray:
    if len(body) != n:
        raise DecodeError(f"raw body holds {len(body)} symbols, shape needs {n}")
    return np.frombuffer(body, dtype=np.int8).copy()


# ---------------------------------------------------------------- lzma


def _lzma_encode(symbols: np.ndarray, counts: np.ndarray | None = None) -> bytes:
    return lzma.compress(_raw_encode(symbols), format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)


def _lzma_decode(body: memoryview, n: int) -> np.ndarray:
    d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    try:
        out = d.decompress(bytes(body), max_length=n + 1)  # one more than allowed reveals excess
    except lzma.LZMAError as exc:
        raise DecodeError(f"lzma stream is corrupt ({exc})") from None
    if len(out) != n:
        raise DecodeError(f"lzma stream decodes to {len(out)} symbols, shape needs {n}")
    return np.frombuffer(out, dtype=np.int8).copy()


# ---------------------------------------------------------------- zstd


def _zstd_encode(symbols: np.ndarray, counts: np.ndarray | None = None) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(_raw_encode(symbols))


def _zstd_decode(body: memoryview, n: int) -> np.ndarray:
    import zstandard

    data = bytes(body)
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"zstd frame is corrupt ({exc})") from None
    if declared != n:
        raise DecodeError(f"zstd frame declares {declared} symbols, shape needs {n}")
    try:
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=n)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"zstd frame is corrupt ({exc})") from None
    if len(out) != n:
        raise DecodeError(f"zstd frame decodes to {len(out)} symbols, shape needs {n}")
    return np.frombuffer(out, dtype=np.int8).copy()


# ---------------------------------------------------------------- rANS
# Body: i8 lowest symbol, u8 alphabet size K, K LEB128 counts, then the ANS words (u32 LE).
# The exact counts are the model: encoder and decoder build the same Categorical from them.


def _leb128(values: np.ndarray) -> bytes:
    out = bytearray()
    for v in values.tolist():
        while True:
            byte = v & 0x7F
            v >>= 7
            out.append(byte | (0x80 if v else 0))
            if not v:
                break
    return bytes(out)


def _read_leb128(buf: memoryview, pos: int, count: int) -> tuple[list[int], int]:
    values = []
    for _ in range(count):
        value = shift = 0
        while True:
            if pos >= len(buf) or shift > 35:
                raise DecodeError("rANS frequency table is truncated or malformed")
            byte = buf[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        values.append(value)
    return values, pos


def _model(counts: np.ndarray):
    import constriction

    probs = counts.astype(np.float64) / counts.sum()
    return constriction.stream.model.Categorical(probs, perfect=False)


def _rans_encode(symbols: np.ndarray, counts: np.ndarray | None = None) -> bytes:
    import constriction

    if symbols.size == 0:
        return bytes([0, 0])
    all_counts = symbol_counts(symbols) if counts is None else counts
    used = np.flatnonzero(all_counts)
    lo, hi = int(used[0]) - 128, int(used[-1]) - 128
    counts = all_counts[lo + 128 : hi + 129]
    head = np.int8(lo).tobytes() + bytes([hi - lo + 1]) + _leb128(counts)
    if hi == lo:  # a single symbol costs no bits at all
        return head
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(np.subtract(symbols.reshape(-1), lo, dtype=np.int32), _model(counts))
    return head + coder.get_compressed().astype("<u4").tobytes()


def _rans_decode(body: memoryview, n: int) -> np.ndarray:
    import constriction

    if len(body) < 2:
        raise DecodeError("rANS body is shorter than its 2-byte header")
    lo = int(np.frombuffer(body[:1], dtype=np.int8)[0])
    k = body[1]
    if n == 0:
        if k:
            raise DecodeError("rANS body has a table but the shape holds no symbols")
        return np.zeros(0, np.int8)
    if k == 0 or lo + k - 1 > 127:
        raise DecodeError(f"rANS alphabet [{lo}, {lo + k - 1}] is invalid")
    counts, pos = _read_leb128(body, 2, k)
    if sum(counts) != n:
        raise DecodeError(f"rANS table counts {sum(counts)} symbols, shape needs {n}")
    if k == 1:
        if pos != len(body):
            raise DecodeError("rANS body has data after a single-symbol table")
        return np.full(n, lo, dtype=np.int8)
    words = body[pos:]
    if len(words) % 4 or not words:
        raise DecodeError("rANS word stream is not a whole number of 32-bit words")
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(words, dtype="<u4").astype(np.uint32))
    try:
        flat = coder.decode(_model(np.asarray(counts)), n)
    except Exception as exc:  # constriction raises plain exceptions on impossible streams
        raise DecodeError(f"rANS stream is corrupt ({exc})") from None
    if not coder.is_empty():
        raise DecodeError("rANS stream has words left after the declared symbols")
    return (flat + lo).astype(np.int8)


@dataclass(frozen=True)
class Coder:
    name: str
    dtype_name: str  # the APR dtype this codec's tensors are stored under
    encode: Callable[..., bytes]  # (symbols, counts=None): counts from symbol_counts, if already known
    decode: Callable[[memoryview, int], np.ndarray]


CODERS: dict[str, Coder] = {
    "rans": Coder("rans", "INT6_RANS", _rans_encode, _rans_decode),
    "lzma": Coder("lzma", "INT6_LZMA", _lzma_encode, _lzma_decode),
    "zstd": Coder("zstd", "INT6_ZSTD", _zstd_encode, _zstd_decode),
    "raw": Coder("raw", "INT6_RAW", _raw_encode, _raw_decode),
}
