"""Encoded int6 tensors inside an APR file: payload layout, content digest, encode and decode.

Payload (every codec): rows x fp16 scales (LE), then the codec's body holding rows x cols symbols.
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

from aprtool.codecs.coders import CODERS, DecodeError
from aprtool.codecs.quant import Quantized, as_rows
from aprtool.container.layout import DTYPES_BY_NAME, TensorInfo
from aprtool.container.reader import AprFile
from aprtool.container.writer import EncodedTensor
from aprtool.errors import UsageError

QUANT_NAME = "int6"
CODEC_BY_DTYPE = {c.dtype_name: name for name, c in CODERS.items()}


def content_digest(q: Quantized) -> str:
    """XXH3-128 of shape, symbols and scales: the same whatever codec stores them (~10 GB/s)."""
    h = xxhash.xxh3_128()
    h.update(json.dumps({"quant": QUANT_NAME, "shape": list(q.shape)}).encode())
    h.update(q.symbols.astype(np.int8, copy=False).tobytes())
    h.update(q.scales.astype("<f2", copy=False).tobytes())
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
    payload = q.scales.astype("<f2").tobytes() + body
    full = {
        **record,
        "codec": codec,
        "quant": QUANT_NAME,
        "rows": int(q.symbols.shape[0]),
        "content_xxh3_128": content_digest(q),
    }
    return Encoded(EncodedTensor(DTYPES_BY_NAME[coder.dtype_name], q.shape, payload, full), seconds)


def is_encoded(info: TensorInfo) -> bool:
    return info.dtype.name in CODEC_BY_DTYPE


def decode(f: AprFile, name: str, *, verify: bool = True) -> Quantized:
    """Decode an encoded tensor to symbols + scales. The stored checksum is checked first, so a
    flipped byte is caught before any decoding is attempted; then the content digest is checked."""
    info = f.info(name)
    if not is_encoded(info):
        raise UsageError(f"tensor {name!r}: {info.dtype.name} is not an encoded tensor")
    record = info.record or {}
    codec = CODEC_BY_DTYPE[info.dtype.name]
    if record.get("codec") != codec or record.get("quant") != QUANT_NAME:
        raise DecodeError(f"tensor {name!r}: record says {record.get('codec')!r}, dtype says {codec!r}")
    payload = f.raw(name, verify=verify)
    rows, cols = as_rows(info.shape)
    if record.get("rows") != rows or len(payload) < 2 * rows:
        raise DecodeError(f"tensor {name!r}: payload too short for {rows} row scales")
    scales = np.frombuffer(payload[: 2 * rows], dtype="<f2").astype(np.float16)
    try:
        symbols = CODERS[codec].decode(payload[2 * rows :], rows * cols)
    except DecodeError as exc:
        raise DecodeError(f"tensor {name!r}: {exc}") from None
    if symbols.size and (symbols.min() < -31 or symbols.max() > 31):
        raise DecodeError(f"tensor {name!r}: symbols outside -31..31")
    q = Quantized(symbols.reshape(rows, cols), scales, tuple(info.shape))
    if verify and content_digest(q) != record.get("content_xxh3_128"):
        raise DecodeError(f"tensor {name!r}: decoded content digest differs from content_xxh3_128")
    return q


def dequantize(f: AprFile, name: str, dtype: Any = np.float32) -> np.ndarray:
    """Any tensor as a float array: encoded tensors decoded and dequantized, plain ones copied."""
    info = f.info(name)
    if is_encoded(info):
        return decode(f, name).dequantize(dtype)
    values = f.numpy(name)
    if info.dtype.name == "BF16":  # stored as raw bits: widen to float32 exactly
        values = (values.astype(np.uint32) << 16).view(np.float32)
    return np.array(values, dtype=dtype)
