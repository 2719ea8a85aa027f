"""`compress`: quantize once (int6), code losslessly, and compare every codec on the same symbols.

If the input is already quantized, compress *repacks*: it decodes with the old codec and encodes with
the new one, never re-quantizing, so the content digests of input and output are equal.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aprtool.codecs import tensor as enc
from aprtool.codecs.coders import CODERS, order0_entropy_bits
from aprtool.codecs.quant import DEFAULT_MIN_ELEMENTS, Clip, Quantized, quantize, relative_rmse
from aprtool.container import constants as C
from aprtool.container import open_apr, write_apr
from aprtool.errors import UsageError

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

    def validate(self) -> Clip:
        enc.coder_for(self.codec)
        if self.quant not in QUANT_MODES:
            raise UsageError(f"--quant {self.quant!r}: choose from {', '.join(QUANT_MODES)}")
        if self.passthrough not in PASSTHROUGH_MODES:
            raise UsageError(f"--passthrough {self.passthrough!r}: choose from f16, keep")
        if self.min_elements < 0:
            raise UsageError("--min-elements must be >= 0")
        return Clip.parse(self.clip)


def _load_input(path: Path) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """(plain tensors as numpy, metadata, open AprFile or None). Encoded tensors stay in the file."""
    if path.suffix == ".safetensors":
        from aprtool.interop.safetensors_io import read_safetensors

        tensors, metadata = read_safetensors(path)
        return tensors, metadata, None
    f = open_apr(path)
    tensors = {n: f for n in f.names() if not n.startswith(C.TRAINING_PREFIX)}
    return tensors, dict(f.metadata), f


def _as_float(f: Any, name: str) -> np.ndarray:
    return enc.dequantize(f, name, np.float32)


def compress_file(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], options: CompressOptions | None = None
) -> dict[str, Any]:
    """Compress `src` (.apr or .safetensors) into `dst`; return the report (the CLI's --json)."""
    options = options or CompressOptions()
    clip = options.validate()
    src, dst = Path(src), Path(dst)
    if not src.exists():
        from aprtool.errors import FileAccessError

        raise FileAccessError(f"{src}: no such file")
    tensors, metadata, f = _load_input(src)
    try:
        return _compress(src, dst, tensors, metadata, f, options, clip)
    finally:
        if f is not None:
            f.close()


def _compress(src, dst, tensors, metadata, f, options, clip) -> dict[str, Any]:
    out: dict[str, Any] = {}
    symbols: dict[str, tuple[Quantized, dict[str, Any]]] = {}  # quantized tensors and their records
    rows: list[dict[str, Any]] = []
    repack = f is not None and any(enc.is_encoded(f.info(n)) for n in tensors)
    for name, value in tensors.items():
        info = f.info(name) if f is not None else None
        if info is not None and enc.is_encoded(info):
            q = enc.decode(f, name)
            keep = ("clip", "rel_rmse", "source_dtype")
            record = {k: info.record[k] for k in keep if k in info.record}
            symbols[name] = (q, record)
            rows.append({"name": name, "shape": list(q.shape), "action": "repack", **record})
            continue
        if info is not None:
            array = f.numpy(name)
            dtype_name = info.dtype.name
        else:
            array = value
            dtype_name = {"float32": "F32", "float16": "F16", "float64": "F64"}.get(
                array.dtype.name, array.dtype.name.upper()
            )
        is_float = dtype_name in ("F32", "F16", "F64", "BF16")
        wants_quant = (
            not repack and options.quant == "int6" and array.ndim >= 2 and array.size >= max(options.min_elements, 1)
        )
        if wants_quant and not is_float:
            raise UsageError(f"tensor {name!r}: {dtype_name} is an integer tensor and cannot be int6-quantized")
        if wants_quant:
            weights = _as_float(f, name) if info is not None else np.asarray(array, np.float32)
            q = quantize(weights, clip)
            record = {
                "clip": str(clip),
                "rel_rmse": round(relative_rmse(weights, q.dequantize()), 6),
                "source_dtype": dtype_name,
            }
            symbols[name] = (q, record)
            rows.append({"name": name, "shape": list(q.shape), "action": "int6", **record})
            continue
        stored = array
        to_f16 = not repack and options.quant == "int6" and options.passthrough == "f16"
        if to_f16 and is_float and dtype_name != "BF16":
            stored = np.asarray(array).astype(np.float16)
        out[name] = stored
        err = relative_rmse(array, stored) if is_float and dtype_name != "BF16" else 0.0
        rows.append({"name": name, "shape": list(np.shape(array)), "action": "passthrough", "rel_rmse": round(err, 6)})

    codecs = list(CODERS) if options.compare else [options.codec]
    stats = {c: {"bytes": 0, "encode_s": 0.0, "decode_s": 0.0} for c in codecs}
    entropy_bytes = 0.0
    weights = 0
    for name, (q, record) in symbols.items():
        n = q.symbols.size
        weights += n
        bits = order0_entropy_bits(q.symbols)
        entropy_bytes += bits / 8 + 2 * q.symbols.shape[0]
        row = next(r for r in rows if r["name"] == name)
        row["entropy_bits_per_weight"] = round(bits / n, 4) if n else 0.0
        for codec in codecs:
            encoded = enc.encode(q, codec, record)
            payload = encoded.tensor.payload
            stats[codec]["bytes"] += len(payload)
            stats[codec]["encode_s"] += encoded.encode_seconds
            if options.compare:  # time the decoder, and prove the round trip while at it
                start = time.perf_counter()
                body = memoryview(payload)[2 * q.symbols.shape[0] :]
                decoded = CODERS[codec].decode(body, n)
                stats[codec]["decode_s"] += time.perf_counter() - start
                if not np.array_equal(decoded, q.symbols.reshape(-1)):
                    raise AssertionError(f"codec {codec} failed to round-trip tensor {name!r}")
            if codec == options.codec:
                out[name] = encoded.tensor
                row["stored_bytes"] = len(payload)

    result = write_apr(dst, out, metadata)
    params = sum(int(np.prod(r["shape"])) for r in rows)
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
        "mode": "repack" if repack else ("int6" if options.quant == "int6" else "none"),
        "codec": options.codec,
        "clip": str(clip) if not repack else None,
        "params": params,
        "quantized_params": weights,
        "raw_float_bytes": 4 * weights,
        "entropy_bound_bytes": round(entropy_bytes),
        "codecs": table,
        "tensors": rows,
    }
