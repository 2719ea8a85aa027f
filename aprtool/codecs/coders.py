"""Lossless coders for int6 symbols (int8, -31..31). Each is exact: decode(encode(x)) == x.

A decoder is told the symbol count n from the tensor's declared shape. Before decoding anything it
checks that the body can hold n symbols (raw: exactly n bytes; LZMA/zstd: at most MAX_EXPANSION x the
body; rANS: a table that counts exactly n and a stream long enough for what the table implies); then it
yields the symbols in chunks of at most CHUNK, so nothing the payload claims is allocated up front.
"""

from __future__ import annotations

import itertools
import lzma
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from aprtool.container.constants import MAX_EXPANSION
from aprtool.errors import IntegrityError

_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
ZSTD_LEVEL = 22
CHUNK = 1 << 22  # symbols per decoded chunk: bounds a decoder's working memory (~16 MiB for rANS)


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


def _raw_stream(body: memoryview, n: int) -> Iterator[np.ndarray]:
    if len(body) != n:
        raise DecodeError(f"raw body holds {len(body)} symbols, shape needs {n}")
    for start in range(0, n, CHUNK):
        yield np.frombuffer(body[start : start + CHUNK], dtype=np.int8)


def _check_expansion(dtype_name: str, body: memoryview, n: int, codec: str) -> None:
    if n > MAX_EXPANSION[dtype_name] * len(body):
        raise DecodeError(
            f"{codec} body of {len(body)} bytes cannot hold {n} symbols (at most {MAX_EXPANSION[dtype_name]}x)"
        )


# ---------------------------------------------------------------- lzma


def _lzma_encode(symbols: np.ndarray, counts: np.ndarray | None = None) -> bytes:
    return lzma.compress(_raw_encode(symbols), format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)


def _lzma_stream(body: memoryview, n: int) -> Iterator[np.ndarray]:
    _check_expansion("INT6_LZMA", body, n, "lzma")
    d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    fed = produced = 0
    try:
        while produced < n:
            pending = b""
            if d.needs_input and fed < len(body):  # the body is fed a chunk at a time: never copied whole
                pending = body[fed : fed + CHUNK]
                fed += len(pending)
            out = b"" if d.eof else d.decompress(pending, max_length=min(CHUNK, n - produced))
            if not out and d.needs_input and fed < len(body):
                continue
            if not out:
                raise DecodeError(f"lzma stream decodes to {produced} symbols, shape needs {n}")
            produced += len(out)
            yield np.frombuffer(out, dtype=np.int8)
        while not d.eof:  # the rest of the body may hold no further symbol
            more = body[fed : fed + CHUNK] if d.needs_input and fed < len(body) else b""
            fed += len(more)
            if d.decompress(more, max_length=1):
                raise DecodeError(f"lzma stream decodes to more than the {n} symbols the shape holds")
            if not more and fed >= len(body):  # all fed, and what was buffered decoded to nothing more
                break
    except lzma.LZMAError as exc:
        raise DecodeError(f"lzma stream is corrupt ({exc})") from None


# ---------------------------------------------------------------- row scales

# Row scales may be stored coded (formats/APR.md section 5): the fp16 values' high bytes, then their low
# bytes (exponents repeat, mantissas do not), as one raw LZMA2 stream. 30 % smaller than plain fp16 on the
# `tiny` model's 5,168 row scales; a writer keeps plain fp16 where coding does not pay.
_SCALE_FILTERS = [
    {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 20, "lc": 0, "lp": 0, "pb": 0}
]


def encode_scales(scales: np.ndarray) -> bytes:
    u = scales.astype("<f2").view("<u2")
    planes = np.concatenate([(u >> 8).astype(np.uint8), (u & 0xFF).astype(np.uint8)])
    return lzma.compress(planes.tobytes(), format=lzma.FORMAT_RAW, filters=_SCALE_FILTERS)


def decode_scales(data: memoryview, rows: int) -> np.ndarray:
    """`rows` fp16 scales from `encode_scales`' bytes; the output is bounded before anything is decoded."""
    n = 2 * rows
    if n > MAX_EXPANSION["INT6_LZMA"] * len(data):
        raise DecodeError(f"{len(data)} bytes of coded scales cannot hold {rows} row scales")
    d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_SCALE_FILTERS)
    try:
        out = d.decompress(bytes(data), max_length=n)
        more = b"" if d.eof else d.decompress(b"", max_length=1)
    except lzma.LZMAError as exc:
        raise DecodeError(f"coded scales are corrupt ({exc})") from None
    if len(out) != n or more:
        size = f"more than {n}" if more else str(len(out))
        raise DecodeError(f"coded scales decode to {size} bytes, {rows} rows need {n}")
    if d.unused_data:
        raise DecodeError(f"{len(d.unused_data)} bytes follow the coded scales")
    planes = np.frombuffer(out, dtype=np.uint8).astype(np.uint16)
    return ((planes[:rows] << 8) | planes[rows:]).astype("<u2").view("<f2")


# ---------------------------------------------------------------- zstd


def _zstd_encode(symbols: np.ndarray, counts: np.ndarray | None = None) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(_raw_encode(symbols))


def _zstd_stream(body: memoryview, n: int) -> Iterator[np.ndarray]:
    import zstandard

    data = body  # read in place: a large body is never copied
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"zstd frame is corrupt ({exc})") from None
    if declared != n:
        raise DecodeError(f"zstd frame declares {declared} symbols, shape needs {n}")
    _check_expansion("INT6_ZSTD", body, n, "zstd")
    produced = 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False)
        while produced < n:
            out = reader.read(min(CHUNK, n - produced))
            if not out:
                raise DecodeError(f"zstd frame decodes to {produced} symbols, shape needs {n}")
            produced += len(out)
            yield np.frombuffer(out, dtype=np.int8)
        if reader.read(1):
            raise DecodeError(f"zstd frame decodes to more than the {n} symbols the shape holds")
    except zstandard.ZstdError as exc:
        raise DecodeError(f"zstd frame is corrupt or has trailing bytes ({exc})") from None


# ---------------------------------------------------------------- rANS
# Body: i8 lowest symbol, u8 alphabet size K, K LEB128 counts, then the ANS words (u32 LE).
# The exact counts are the model: encoder and decoder build the same Categorical from them.

RANS_PRECISION = 24  # constriction's Categorical: every symbol with a count gets >= 2^-24 of the range
ANS_STATE_BITS = 64  # the coder's state, flushed into the words: a stream may be this much shorter


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


def rans_min_bits(counts: list[int]) -> float:
    """Fewest bits any rANS stream of these symbols can have: their empirical entropy (no model beats
    it), and at least 2^-24 of the range held by each other used symbol (the leaky model's floor)."""
    n = sum(counts)
    used = [c for c in counts if c]
    if len(used) < 2:
        return 0.0
    entropy = -sum(c * math.log2(c / n) for c in used)
    top = max(used) * -math.log2(1 - (len(used) - 1) * 2.0**-RANS_PRECISION)
    return max(entropy, top)


def _rans_stream(body: memoryview, n: int) -> Iterator[np.ndarray]:
    import constriction

    if len(body) < 2:
        raise DecodeError("rANS body is shorter than its 2-byte header")
    lo = int(np.frombuffer(body[:1], dtype=np.int8)[0])
    k = body[1]
    if n == 0:
        if k or len(body) != 2:
            raise DecodeError("rANS body has a table but the shape holds no symbols")
        return
    if k == 0 or lo + k - 1 > 127:
        raise DecodeError(f"rANS alphabet [{lo}, {lo + k - 1}] is invalid")
    counts, pos = _read_leb128(body, 2, k)
    if sum(counts) != n:
        raise DecodeError(f"rANS table counts {sum(counts)} symbols, shape needs {n}")
    if k == 1:
        if pos != len(body):
            raise DecodeError("rANS body has data after a single-symbol table")
        for start in range(0, n, CHUNK):
            yield np.full(min(CHUNK, n - start), lo, dtype=np.int8)
        return
    words = body[pos:]
    if len(words) % 4 or not words:
        raise DecodeError("rANS word stream is not a whole number of 32-bit words")
    need = rans_min_bits(counts) - ANS_STATE_BITS
    if 8 * len(words) < need:
        raise DecodeError(f"rANS stream has {8 * len(words)} bits; its table's {n} symbols need at least {need:.0f}")
    try:
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(words, dtype="<u4").astype(np.uint32, copy=False))
    except ValueError as exc:  # e.g. a stream that ends in a zero word cannot come from an encoder
        raise DecodeError(f"rANS stream is invalid ({exc})") from None
    model = _model(np.asarray(counts))
    for start in range(0, n, CHUNK):
        try:
            flat = coder.decode(model, min(CHUNK, n - start))
        except Exception as exc:  # constriction raises plain exceptions on impossible streams
            raise DecodeError(f"rANS stream is corrupt ({exc})") from None
        yield (flat + lo).astype(np.int8)
    if not coder.is_empty():
        raise DecodeError("rANS stream has words left after the declared symbols")


@dataclass(frozen=True)
class Coder:
    name: str
    dtype_name: str  # the APR dtype this codec's tensors are stored under
    encode: Callable[..., bytes]  # (symbols, counts=None): counts from symbol_counts, if already known
    stream: Callable[[memoryview, int], Iterator[np.ndarray]]  # (body, n): checked first, then chunks

    def decode(self, body: memoryview, n: int) -> np.ndarray:
        """All n symbols in one int8 array (allocated once the body has been checked)."""
        chunks = self.stream(body, n)
        first = next(chunks, None)  # the stream's own checks run before the first chunk
        out = np.empty(n, dtype=np.int8)
        pos = 0
        for chunk in itertools.chain([first] if first is not None else [], chunks):
            if pos + len(chunk) > n:
                raise DecodeError(f"{self.name} body decodes to more than the {n} symbols the shape holds")
            out[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        if pos != n:
            raise DecodeError(f"{self.name} body decodes to {pos} symbols, shape needs {n}")
        return out


CODERS: dict[str, Coder] = {
    "rans": Coder("rans", "INT6_RANS", _rans_encode, _rans_stream),
    "lzma": Coder("lzma", "INT6_LZMA", _lzma_encode, _lzma_stream),
    "zstd": Coder("zstd", "INT6_ZSTD", _zstd_encode, _zstd_stream),
    "raw": Coder("raw", "INT6_RAW", _raw_encode, _raw_stream),
}
