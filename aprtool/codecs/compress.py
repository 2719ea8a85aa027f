"""`compress`: quantize once (int6), code losslessly, and compare every codec on the same symbols.

If the input is already quantized, compress *repacks*: it decodes with the old codec and encodes with
the new one, never re-quantizing, so the content digests of input and output are equal.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aprtool.codecs import tensor as enc
from aprtool.codecs.coders import CODERS, order0_entropy_bits
from aprtool.codecs.quant import DEFAULT_MIN_ELEMENTS, Clip, Quantized, quantize, relative_rmse
from aprtool.container import constants as C
from aprtool.container import open_apr, write_apr
from aprtool.container.reader import AprFile
from aprtool.data.tokenizer import embed_tokenizer
from aprtool.errors import UsageError
from aprtool.paths import input_file, output_path

DEFAULT_CLIP = "std:12.85"  # parameter-golf's setting for matrices: ~3.3 bits/weight after coding
QUANT_MODES = ("int6", "none")
PASSTHROUGH_MODES = ("f16", "keep")


@dataclass(frozen=True)
class CompressOptions:
    codec: str = "rans"
    quant: str = "int6"
    clip: str = DEFAULT_CLIP
    min_elements: int = DEFAULT_MIN_ELEMENTS
    passthrough: str = "f16"  # float tensors left unquantized: stored as fp16, or kept as they are
    compare: bool = True  # also code the symbols with every other codec for the comparison table
    force: bool = False  # replace an existing OUT (atomically); without it an existing OUT is refused

    def validate(self) -> Clip:
        enc.coder_for(self.codec)
        if self.quant not in QUANT_MODES:
            raise UsageError(f"--quant {self.quant!r}: choose from {', '.join(QUANT_MODES)}")
        if self.passthrough not in PASSTHROUGH_MODES:
            raise UsageError(f"--passthrough {self.passthrough!r}: choose from f16, keep")
        if self.min_elements < 0:
            raise UsageError("--min-elements must be >= 0")
        return Clip.parse(self.clip)


class _Source:
    """The input's tensors, from an APR file (plain or encoded) or a safetensors file."""

    def __init__(self, path: Path) -> None:
        self.file: AprFile | None = None
        if path.suffix == ".safetensors":
            from aprtool.interop.safetensors_io import read_safetensors

            self.arrays, self.metadata = read_safetensors(path)
            self.names = list(self.arrays)
        else:
            self.file = open_apr(path)
            self.metadata = dict(self.file.metadata)
            self.names = [n for n in self.file.names() if not n.startswith(C.TRAINING_PREFIX)]

    def encoded(self, name: str) -> bool:
        return self.file is not None and enc.is_encoded(self.file.info(name))

    def dtype_name(self, name: str) -> str:
        if self.file is not None:
            return self.file.info(name).dtype.name
        return _NUMPY_NAMES.get(self.arrays[name].dtype.name, self.arrays[name].dtype.name.upper())

    def array(self, name: str) -> np.ndarray:
        return self.file.numpy(name) if self.file is not None else self.arrays[name]

    def as_float32(self, name: str) -> np.ndarray:
        if self.file is not None and self.dtype_name(name) == "BF16":
            return enc.dequantize(self.file, name, np.float32)  # widens the stored bits exactly
        return np.asarray(self.array(name), np.float32)  # no copy for F32: a view of the mapping

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


_NUMPY_NAMES = {"float32": "F32", "float16": "F16", "float64": "F64"}
FLOATS = ("F32", "F16", "F64", "BF16")


def compress_file(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], options: CompressOptions | None = None
) -> dict[str, Any]:
    """Compress `src` (.apr or .safetensors) into `dst`; return the report (the CLI's --json)."""
    options = options or CompressOptions()
    clip = options.validate()
    src = input_file(src)
    dst = output_path(dst, force=options.force, inputs=[src])
    source = _Source(src)
    try:
        return _compress(src, dst, source, options, clip)
    finally:
        source.close()


def _quantize_one(weights: np.ndarray, clip: Clip, dtype_name: str) -> tuple[Quantized, dict[str, Any]]:
    q = quantize(weights, clip)
    _ = q.counts  # computed here, in parallel, for the entropy bound and the rANS table
    record = {
        "clip": str(clip),
        "rel_rmse": round(relative_rmse(weights, q.dequantize()), 6),
        "source_dtype": dtype_name,
    }
    return q, record


def _compress(src: Path, dst: Path, source: _Source, options: CompressOptions, clip: Clip) -> dict[str, Any]:
    out: dict[str, Any] = {}  # what gets written: arrays and EncodedTensors
    quantized: dict[str, tuple[Quantized, dict[str, Any]]] = {}  # symbols + record, per quantized tensor
    rows: dict[str, dict[str, Any]] = {}  # the report's per-tensor lines
    repack = any(source.encoded(n) for n in source.names)
    to_quantize: list[str] = []

    # 1. decide, per tensor: repack (decode the old codec), quantize, or pass through
    for name in source.names:
        if source.encoded(name):
            q = enc.decode(source.file, name)
            record = {
                k: v for k, v in source.file.info(name).record.items() if k in ("clip", "rel_rmse", "source_dtype")
            }
            quantized[name] = (q, record)
            rows[name] = {"name": name, "shape": list(q.shape), "action": "repack", **record}
            continue
        array, dtype_name = source.array(name), source.dtype_name(name)
        is_float = dtype_name in FLOATS
        min_size = max(options.min_elements, 1)
        if not repack and options.quant == "int6" and array.ndim >= 2 and array.size >= min_size:
            if not is_float:
                raise UsageError(f"tensor {name!r}: {dtype_name} is an integer tensor and cannot be int6-quantized")
            to_quantize.append(name)
            continue
        stored = array
        if not repack and options.quant == "int6" and options.passthrough == "f16" and dtype_name in FLOATS[:3]:
            stored = np.asarray(array).astype(np.float16)
        out[name] = stored
        err = relative_rmse(array, stored) if dtype_name in FLOATS[:3] else 0.0
        rows[name] = {"name": name, "shape": list(np.shape(array)), "action": "passthrough", "rel_rmse": round(err, 6)}

    # 2. quantize (numpy releases the GIL: one thread per core)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        jobs = {n: pool.submit(_quantize_one, source.as_float32(n), clip, source.dtype_name(n)) for n in to_quantize}
        for name, job in jobs.items():
            q, record = job.result()
            quantized[name] = (q, record)
            rows[name] = {"name": name, "shape": list(q.shape), "action": "int6", **record}

    # 3. code the same symbols with the chosen codec (and, to compare, every other one)
    codecs = list(CODERS) if options.compare else [options.codec]
    stats = {c: {"bytes": 0, "encode_s": 0.0, "decode_s": 0.0} for c in codecs}
    entropy_bytes, weights = 0.0, 0
    for name, (q, record) in quantized.items():
        n = q.symbols.size
        weights += n
        bits = order0_entropy_bits(q.symbols, q.counts)
        entropy_bytes += bits / 8 + 2 * q.symbols.shape[0]
        rows[name]["entropy_bits_per_weight"] = round(bits / n, 4) if n else 0.0
        for codec in codecs:
            encoded = enc.encode(q, codec, record)
            payload = encoded.tensor.payload
            stats[codec]["bytes"] += len(payload)
            stats[codec]["encode_s"] += encoded.encode_seconds
            if options.compare:  # time the decoder, and prove the round trip while at it
                start = time.perf_counter()
                decoded = CODERS[codec].decode(memoryview(payload)[2 * q.symbols.shape[0] :], n)
                stats[codec]["decode_s"] += time.perf_counter() - start
                if not np.array_equal(decoded, q.symbols.reshape(-1)):
                    raise AssertionError(f"codec {codec} failed to round-trip tensor {name!r}")
            if codec == options.codec:
                out[name] = encoded.tensor
                rows[name]["stored_bytes"] = len(payload)

    # 4. write, and report
    metadata, warning = embed_tokenizer(source.metadata, src)
    result = write_apr(dst, {n: out[n] for n in source.names}, metadata)
    warnings = [warning] if warning else []
    table = {}
    for codec, s in stats.items():
        mb = weights / 1e6
        table[codec] = {
            "bytes": s["bytes"],
            "bits_per_weight": round(s["bytes"] * 8 / weights, 4) if weights else 0.0,
            "over_entropy_pct": round((s["bytes"] / entropy_bytes - 1) * 100, 4) if entropy_bytes else 0.0,
            "encode_mb_s": round(mb / s["encode_s"], 2) if s["encode_s"] else None,
            "decode_mb_s": round(mb / s["decode_s"], 2) if s["decode_s"] else None,
        }
    return {
        "input": str(src),
        "output": str(dst),
        "input_bytes": src.stat().st_size,
        "output_bytes": result.size_bytes,
        "mode": "repack" if repack else options.quant,
        "codec": options.codec,
        "clip": None if repack else str(clip),
        "params": sum(int(np.prod(r["shape"])) for r in rows.values()),
        "quantized_params": weights,
        "raw_float_bytes": 4 * weights,
        "entropy_bound_bytes": round(entropy_bytes),
        "codecs": table,
        "tensors": [rows[n] for n in source.names],
        "warnings": warnings,
    }
