"""Regenerate the conformance vectors: `python formats/make_vectors.py`.

Each vector is `vectors/NAME.apr` plus `vectors/NAME.inspect.json`, the `aprtool inspect --json`
output it must give (with "file" left out). tests/test_conformance.py checks that the writer still
produces these exact bytes and that inspect still reports exactly this.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VECTOR_DIR = HERE / "vectors"


def golden_v2() -> tuple[dict, dict, bool]:
    """Reconstruction of aprender's golden test model: 516 bytes, no aprtool records."""
    metadata = {
        "model_type": "linear_regression",
        "name": "golden-v2",
        "license": None,
        "data_source": None,
        "data_license": None,
        "version": "0.0.0-golden",
        "created_at": "1700000000",
        "total_size": 0,
        "param_count": 8,
    }
    tensors = {
        "bias": np.array([0.5], dtype=np.float32),
        "weights": np.arange(1, 9, dtype=np.float32),
    }
    return tensors, metadata, False


def all_dtypes() -> tuple[dict, dict, bool]:
    """Every plain dtype, a 0-d tensor, an empty tensor, a non-ASCII name; aprtool records on."""
    rng = np.random.default_rng(7)
    tensors = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((4,)).astype(np.float16),
        "f64": rng.standard_normal((2, 2, 2)).astype(np.float64),
        "bf16": np.array([0x3F80, 0xC000, 0x3E00], dtype=np.uint16),  # 1.0, -2.0, 0.125 as bits
        "i32": np.arange(-3, 3, dtype=np.int32).reshape(2, 3),
        "i64": np.array([2**40, -(2**40)], dtype=np.int64),
        "i8": np.array([-128, 0, 127], dtype=np.int8),
        "u8": np.arange(70, dtype=np.uint8),
        "scalar": np.array(3.25, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "größe": np.ones((2,), dtype=np.float32),
    }
    metadata = {"name": "all-dtypes", "architecture": "none", "created_at": "2026-01-01T00:00:00Z"}
    return tensors, metadata, True


def no_tensors() -> tuple[dict, dict, bool]:
    """A structurally valid file with zero tensors: inspect reads it, verify always fails it."""
    return {}, {"name": "no-tensors"}, True


def int6() -> tuple[dict, dict, bool]:
    """Encoded tensors (int6 rANS, int5 raw) beside a plain one: what `compress` writes (section 5.1)."""
    from aprtool.codecs import Clip, encode, quantize

    rng = np.random.default_rng(11)
    weight = (rng.standard_normal((4, 24)) * 0.02).astype(np.float32)
    rans = encode(quantize(weight, Clip.parse("std:12.85")), "rans", {"clip": "std:12.85", "source_dtype": "F32"})
    raw = encode(quantize(weight[:2], Clip.parse("absmax"), bits=5), "raw", {"clip": "absmax", "source_dtype": "F32"})
    tensors = {"w.rans": rans.tensor, "w.raw": raw.tensor, "norm": np.ones(4, dtype=np.float16)}
    return tensors, {"name": "int6", "architecture": "none"}, True


def int6_scales() -> tuple[dict, dict, bool]:
    """An int6 rANS tensor with enough rows that its scales are stored coded ("scales": "lzma-planes")."""
    from aprtool.codecs import Clip, encode, quantize

    rng = np.random.default_rng(12)
    weight = (rng.standard_normal((256, 4)) * np.linspace(0.01, 0.05, 256)[:, None]).astype(np.float32)
    coded = encode(quantize(weight, Clip.parse("absmax")), "rans", {"clip": "absmax", "source_dtype": "F32"})
    assert coded.tensor.record.get("scales") == "lzma-planes", coded.tensor.record
    return {"w": coded.tensor}, {"name": "int6-scales", "architecture": "none"}, True


# Written by aprtool before encoded tensors were stored as U8 (dtype codes 160-163 in the index): kept
# byte for byte so the reader for files already written stays tested.
FROZEN = [VECTOR_DIR / "int6-legacy.apr"]

VECTORS = {"golden-v2": golden_v2, "all-dtypes": all_dtypes, "no-tensors": no_tensors, "int6": int6,
           "int6-scales": int6_scales}  # fmt: skip


def write_vector(name: str, path: Path) -> None:
    from aprtool.container import write_apr

    tensors, metadata, records = VECTORS[name]()
    if name == "all-dtypes":  # BF16 is given as raw bits; store it under its own dtype code
        import torch

        tensors["bf16"] = torch.from_numpy(tensors["bf16"].view(np.int16)).view(torch.bfloat16)
    write_apr(path, tensors, metadata, tensor_records=records)


def expected_inspect(path: Path) -> dict:
    from aprtool.files.inspect import inspect_path

    info = json.loads(json.dumps(inspect_path(path)))  # as `inspect --json` prints it
    info.pop("file")
    return info


def main() -> None:
    VECTOR_DIR.mkdir(exist_ok=True)
    for name in VECTORS:
        path = VECTOR_DIR / f"{name}.apr"
        write_vector(name, path)
        text = json.dumps(expected_inspect(path), indent=2, ensure_ascii=False) + "\n"
        (VECTOR_DIR / f"{name}.inspect.json").write_text(text, encoding="utf-8")
        print(f"{path.relative_to(HERE)}: {path.stat().st_size} bytes", file=sys.stderr)
    for path in FROZEN:  # files of an older encoding are never rewritten; only what inspect says of them
        text = json.dumps(expected_inspect(path), indent=2, ensure_ascii=False) + "\n"
        path.with_suffix(".inspect.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
