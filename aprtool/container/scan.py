"""One streaming pass over a file: footer CRC, per-tensor checksums, and content gates.

Memory stays bounded (a few chunk buffers) whatever the file size. The CRC runs in a worker thread
(zlib releases the GIL) while the main thread hashes tensors and checks their values.
"""

from __future__ import annotations

import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import xxhash

from aprtool.container import constants as C
from aprtool.container.layout import TensorInfo, pad64
from aprtool.container.reader import AprFile

CHUNK = 8 * 1024 * 1024  # a multiple of 64, so tensor slices stay element-aligned
_BUFFERS = 3


@dataclass
class TensorScan:
    digest: str = ""
    nonfinite: int = 0
    nonzero: bool = False


@dataclass
class ScanResult:
    footer_crc: int
    tensors: dict[str, TensorScan] = field(default_factory=dict)


class _Crc:
    def __init__(self) -> None:
        self.value = 0

    def update(self, chunk: memoryview) -> None:
        self.value = zlib.crc32(chunk, self.value)


# float dtype -> (unsigned view, exponent mask, everything but the sign): all exponent bits set is Inf/NaN
_FLOAT_BITS = {
    "F16": ("<u2", 0x7C00, 0x7FFF),
    "BF16": ("<u2", 0x7F80, 0x7FFF),
    "F32": ("<u4", 0x7F800000, 0x7FFFFFFF),
    "F64": ("<u8", 0x7FF0000000000000, 0x7FFFFFFFFFFFFFFF),
}


def count_nonfinite(data: np.ndarray | memoryview, dtype_name: str) -> int:
    """NaN/Inf values in a float tensor's stored bytes (BF16 as its raw bits), counted as verify counts them;
    0 for a type that is not a float."""
    if dtype_name not in _FLOAT_BITS:
        return 0
    view, exponent, _ = _FLOAT_BITS[dtype_name]
    bits = np.frombuffer(data, dtype=view) if isinstance(data, memoryview) else np.ascontiguousarray(data).view(view)
    return int(np.count_nonzero((bits & np.array(exponent, dtype=view)) == exponent))


def _content(info: TensorInfo, part: memoryview, state: TensorScan) -> None:
    """Count non-finite values and note any non-zero value (-0.0 counts as zero). Done on the bit
    patterns: no float arithmetic, so a signaling NaN in a file cannot raise a floating-point warning."""
    if info.dtype.name in _FLOAT_BITS:
        view, _, unsigned = _FLOAT_BITS[info.dtype.name]
        bits = np.frombuffer(part, dtype=view)
        state.nonfinite += count_nonfinite(part, info.dtype.name)
        state.nonzero = state.nonzero or bool((bits & np.array(unsigned, dtype=view)).any())
    elif not state.nonzero:
        state.nonzero = bool(np.frombuffer(part, dtype=np.uint8).any())


def scan_file(f: AprFile, *, content: bool = True, chunk_size: int = CHUNK) -> ScanResult:
    """Stream the whole file once. `content` adds NaN/Inf counts and all-zero detection."""
    end = f.size - C.FOOTER_SIZE
    chunk_size = min(chunk_size, pad64(end))  # a small file needs no 3 x 8 MiB of zeroed buffers
    spans = sorted(
        ((f.absolute_offset(t), t) for t in f.tensors.values() if t.size),
        key=lambda s: s[0],
    )
    states = {name: TensorScan() for name in f.tensors}
    hashers = {t.name: xxhash.xxh3_64() for _, t in spans}
    buffers = [bytearray(chunk_size) for _ in range(_BUFFERS)]
    pending: list[Future[None] | None] = [None] * _BUFFERS
    crc = _Crc()
    handle = f._file  # the reader's own descriptor: no second open, no mmap of the whole file
    handle.seek(0)
    pos, turn, first = 0, 0, 0  # first: index of the first span that may still overlap
    with ThreadPoolExecutor(max_workers=1) as worker:
        while pos < end:
            slot = turn % _BUFFERS
            if pending[slot] is not None:
                pending[slot].result()
            buf = memoryview(buffers[slot])[: min(chunk_size, end - pos)]
            got = handle.readinto(buf)
            if got != len(buf):
                raise OSError(f"short read at byte {pos}")
            pending[slot] = worker.submit(crc.update, buf)
            stop = pos + len(buf)
            while first < len(spans) and spans[first][0] + spans[first][1].size <= pos:
                first += 1
            i = first
            while i < len(spans) and spans[i][0] < stop:
                start, info = spans[i]
                lo, hi = max(start, pos), min(start + info.size, stop)
                if lo < hi:
                    part = buf[lo - pos : hi - pos]
                    hashers[info.name].update(part)
                    if content and info.dtype.itemsize:
                        _content(info, part, states[info.name])
                i += 1
            pos = stop
            turn += 1
        for future in pending:
            if future is not None:
                future.result()
    for name, hasher in hashers.items():
        states[name].digest = hasher.hexdigest()
    for state in states.values():
        if not state.digest:
            state.digest = xxhash.xxh3_64_hexdigest(b"")
    return ScanResult(footer_crc=crc.value, tensors=states)
