"""Encoded int6 tensors inside an APR file: payload layout, content digest, encode and decode.

Payload (every codec): the row scales, rows x fp16 (LE) or coded (record `scales`, `scale_bytes`), then
the codec's body holding rows x cols symbols.
The metadata record carries the codec, the quantization settings and `content_xxh3_128`, a digest
of the decoded content (shape, symbols, scales) that stays the same whatever codec stores it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from aprtool.codecs.coders import CODERS, DecodeError, decode_scales, encode_scales
from aprtool.codecs.quant import Quantized, as_rows, levels_for
from aprtool.container import constants as C
from aprtool.container.layout import DTYPES_BY_NAME, TensorInfo
from aprtool.container.reader import AprFile
from aprtool.container.writer import EncodedTensor
from aprtool.errors import IntegrityError, LimitError, UsageError
from aprtool.memory import ensure_allocatable

QUANT_NAMES = {f"int{b}": b for b in C.QUANT_BITS}  # a record's `quant`: the symbols' width
CODEC_BY_DTYPE = {c.dtype_name: name for name, c in CODERS.items()}


def content_digest(q: Quantized) -> str:
    """XXH3-128 of shape, symbols and scales: the same whatever codec stores them (~10 GB/s)."""
    h = xxhash.xxh3_128()
    h.update(json.dumps({"quant": f"int{q.bits}", "shape": list(q.shape)}).encode())
    h.update(np.ascontiguousarray(q.symbols, dtype=np.int8))  # hashed in place, not copied
    h.update(np.ascontiguousarray(q.scales, dtype="<f2"))
    return h.hexdigest()


def coder_for(name: str):
    try:
        return CODERS[name]
    except KeyError:
        raise UsageError(f"--codec {name!r}: unknown codec (choose from {', '.join(CODERS)})") from None


@dataclass(frozen=True)
class Encoded:
    tensor: EncodedTensor
    encode_seconds: float


def encode(q: Quantized, codec: str, record: dict[str, Any]) -> Encoded:
    """Code `q` losslessly with `codec`; `record` keeps quantization facts (clip, rel_rmse, ...)."""
    coder = coder_for(codec)
    start = time.perf_counter()
    body = coder.encode(q.symbols, q.counts)
    seconds = time.perf_counter() - start
    scales, how = q.scales.astype("<f2").tobytes(), {}
    coded = encode_scales(q.scales) if codec != "raw" else scales  # raw stays one plain byte per symbol
    if len(coded) < len(scales):
        scales, how = coded, {C.SCALES_KEY: C.SCALE_CODING, C.SCALE_BYTES_KEY: len(coded)}
    payload = scales + body
    full = {
        **{k: v for k, v in record.items() if k not in (C.SCALES_KEY, C.SCALE_BYTES_KEY)},  # a repack codes anew
        "codec": codec,
        "quant": f"int{q.bits}",
        "rows": int(q.symbols.shape[0]),
        "content_xxh3_128": content_digest(q),
        **how,
    }
    return Encoded(EncodedTensor(DTYPES_BY_NAME[coder.dtype_name], q.shape, payload, full), seconds)


def body_of(tensor: EncodedTensor) -> memoryview:
    """The codec's body of a tensor `encode` made: its payload after the row scales."""
    start = tensor.record.get(C.SCALE_BYTES_KEY, 2 * int(tensor.record["rows"]))
    return memoryview(tensor.payload)[start:]


def is_encoded(info: TensorInfo) -> bool:
    return info.dtype.name in CODEC_BY_DTYPE


@dataclass(frozen=True)
class _Plan:
    """An encoded tensor whose claims have been checked: it can be decoded without surprises."""

    codec: str
    rows: int
    cols: int
    scales: np.ndarray
    body: memoryview
    record: dict[str, Any]
    bits: int


def _plan(f: AprFile, name: str, verify: bool) -> _Plan:
    """Every check that needs no decoding: the record, the declared shape against the reader's limits
    and the payload, and the scales. The stored checksum is checked first, so a flipped byte is caught
    before anything is interpreted."""
    info = f.info(name)
    if not is_encoded(info):
        raise UsageError(f"tensor {name!r}: {info.dtype.name} is not an encoded tensor")
    record = info.record or {}
    codec = CODEC_BY_DTYPE[info.dtype.name]
    if record.get("codec") != codec:
        raise DecodeError(f"tensor {name!r}: record says {record.get('codec')!r}, dtype says {codec!r}")
    bits = QUANT_NAMES.get(record.get("quant")) if isinstance(record.get("quant"), str) else None
    if bits is None:
        raise DecodeError(f"tensor {name!r}: record quant {str(record.get('quant'))[:20]!r} is not int4..int8")
    if not info.shape:
        raise DecodeError(f"tensor {name!r}: an encoded tensor needs at least one dimension (rows)")
    if info.numel > C.MAX_DECODED_ELEMENTS:
        raise LimitError(f"tensor {name!r}: shape {list(info.shape)} exceeds {C.MAX_DECODED_ELEMENTS:,} elements")
    payload = f.raw(name, verify=verify)
    rows, cols = as_rows(info.shape)
    if record.get("rows") != rows:
        raise DecodeError(f"tensor {name!r}: record rows {str(record.get('rows'))[:20]!r}, shape has {rows}")
    scales, used = _scales(name, record, payload, rows)
    bad = int(np.count_nonzero(~np.isfinite(scales) | (scales < 0)))
    if bad:
        raise DecodeError(f"tensor {name!r}: {bad} row scale(s) are NaN, infinite or negative")
    return _Plan(codec, rows, cols, scales, payload[used:], record, bits)


def _scales(name: str, record: dict[str, Any], payload: memoryview, rows: int) -> tuple[np.ndarray, int]:
    """The row scales at the start of the payload (plain fp16, or coded: section 5) and their bytes."""
    how = record.get(C.SCALES_KEY, "f16")
    if how == "f16":
        if len(payload) < 2 * rows:
            raise DecodeError(f"tensor {name!r}: payload of {len(payload)} bytes is too short for {rows} row scales")
        return np.frombuffer(payload[: 2 * rows], dtype="<f2").astype(np.float16), 2 * rows
    if how != C.SCALE_CODING:
        raise DecodeError(f"tensor {name!r}: record scales {str(how)[:20]!r} is not f16 or {C.SCALE_CODING}")
    size = record.get(C.SCALE_BYTES_KEY)
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= len(payload):
        raise DecodeError(f"tensor {name!r}: record scale_bytes {str(size)[:20]!r} is not 1..{len(payload)}")
    try:
        return decode_scales(payload[:size], rows).astype(np.float16), size
    except DecodeError as exc:
        raise DecodeError(f"tensor {name!r}: {exc}") from None


def _symbols_in_range(name: str, chunk: np.ndarray, bits: int) -> None:
    levels = levels_for(bits)
    if chunk.size and (chunk.min() < -levels or chunk.max() > levels):
        raise DecodeError(f"tensor {name!r}: symbols outside -{levels}..{levels} (int{bits})")


def _stream(f: AprFile, name: str, plan: _Plan, out: np.ndarray | None) -> str:
    """Decode `plan` chunk by chunk, each checked for range, hashed and (with `out`) stored: the content
    digest of what it decodes to. Memory beyond `out` stays at a few chunks whatever the tensor's size."""
    n = plan.rows * plan.cols
    h = xxhash.xxh3_128()
    h.update(json.dumps({"quant": f"int{plan.bits}", "shape": list(f.info(name).shape)}).encode())
    produced = 0
    try:
        for chunk in CODERS[plan.codec].stream(plan.body, n):
            if produced + chunk.size > n:
                raise DecodeError(f"decodes to more than the {n} symbols the shape holds")
            _symbols_in_range(name, chunk, plan.bits)
            h.update(chunk)
            if out is not None:
                out[produced : produced + chunk.size] = chunk
            produced += chunk.size
    except DecodeError as exc:
        raise DecodeError(f"tensor {name!r}: {exc}") from None
    if produced != n:
        raise DecodeError(f"tensor {name!r}: decodes to {produced} symbols, shape needs {n}")
    h.update(plan.scales.astype("<f2", copy=False))
    return h.hexdigest()


def _check_digest(name: str, plan: _Plan, digest: str) -> None:
    if digest != plan.record.get("content_xxh3_128"):
        raise DecodeError(f"tensor {name!r}: decoded content digest differs from content_xxh3_128")


def decode(f: AprFile, name: str, *, verify: bool = True) -> Quantized:
    """Decode an encoded tensor to symbols + scales, checking its content digest as it streams (the symbols
    are the only tensor-sized allocation: no copy is made to hash them)."""
    plan = _plan(f, name, verify)
    n = plan.rows * plan.cols
    ensure_allocatable(n, f"tensor {name!r} ({n:,} int6 symbols)")
    symbols = np.empty(n, dtype=np.int8)
    digest = _stream(f, name, plan, symbols)
    if verify:
        _check_digest(name, plan, digest)
    return Quantized(symbols.reshape(plan.rows, plan.cols), plan.scales, tuple(f.info(name).shape), plan.bits)


def check_encoded(f: AprFile, name: str) -> None:
    """verify --deep for one encoded tensor: decode it chunk by chunk and compare the content digest.
    Memory stays at a few chunks whatever the tensor's size; raises DecodeError/LimitError on failure."""
    plan = _plan(f, name, verify=True)
    _check_digest(name, plan, _stream(f, name, plan, None))


def dequantize(f: AprFile, name: str, dtype: Any = np.float32) -> np.ndarray:
    """Any tensor as a float array: encoded tensors decoded and dequantized, plain ones copied."""
    info = f.info(name)
    if is_encoded(info):
        q = decode(f, name)
        ensure_allocatable(info.numel * (4 + np.dtype(dtype).itemsize), f"tensor {name!r} (dequantized)")
        return q.dequantize(dtype)
    values = f.numpy(name)
    if info.dtype.name == "BF16":  # stored as raw bits: widen to float32 exactly
        values = (values.astype(np.uint32) << 16).view(np.float32)
    try:
        with np.errstate(over="raise", invalid="ignore"):  # NaN stays NaN; finite must stay finite
            return np.array(values, dtype=dtype)
    except FloatingPointError:
        wide = f"{info.dtype.name} values beyond the range of {np.dtype(dtype)}"
        raise IntegrityError(f"tensor {name!r}: {wide}") from None
