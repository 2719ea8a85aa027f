"""`diff A B`: what differs between two models, in any formats (APR float or int6, safetensors, GGUF, HF).

Tensors are matched by name (a GGUF's llama.cpp names are mapped back to Hugging Face's and its q/k
rows un-permuted, so an export can be compared with its source), then compared by shape, dtype and
values (max absolute and relative difference, cosine similarity), one tensor pair in memory at a time.
A and B are the same when they hold the same tensor names and shapes and every value is within `atol`;
dtype and metadata differences are reported without making them different (int6 vs float is the point
of comparing an artifact with its model).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from aprtool.container import constants as C
from aprtool.container.tokenizer_text import PACKED_KEY, TEXT_KEY
from aprtool.errors import UsageError
from aprtool.files.views import GgufView, open_view
from aprtool.interop.gguf_io import GgufAsHf


def compare_values(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a64, b64 = a.astype(np.float64).reshape(-1), b.astype(np.float64).reshape(-1)
    with np.errstate(all="ignore"):
        delta = np.abs(a64 - b64)
        scale = float(np.abs(a64).max()) if a64.size else 0.0
        norms = float(np.linalg.norm(a64) * np.linalg.norm(b64))
        return {
            "max_abs": float(delta.max()) if delta.size else 0.0,
            "max_rel": float(delta.max() / scale) if delta.size and scale else 0.0,
            "cosine": float(a64 @ b64 / norms) if norms else (1.0 if not delta.any() else 0.0),
        }


def _metadata_changes(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    skip = {"aprtool"}  # per-tensor checksums describe each file's bytes
    keys = sorted((set(a) | set(b)) - skip)

    def canon(key: str, value: Any) -> str:
        if key == C.TOKENIZER_KEY and isinstance(value, dict):  # its sha256 names the text, packed or not
            value = {k: v for k, v in value.items() if k not in (TEXT_KEY, PACKED_KEY)}
        return json.dumps(value, sort_keys=True, default=str)

    return [k for k in keys if k not in a or k not in b or canon(k, a[k]) != canon(k, b[k])]


def _comparable_metadata(va: Any, vb: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two files of one format: their metadata. Of two formats (whose key vocabularies differ): the shape
    fields both report, in APR's names (the architecture's own name is spelled per format)."""
    if va.format.split()[0] == vb.format.split()[0]:
        return va.metadata, vb.metadata
    shared = (set(va.architecture) & set(vb.architecture)) - {"architecture"}
    return {k: va.architecture[k] for k in shared}, {k: vb.architecture[k] for k in shared}


def _tensor_pair(name: str, va: Any, vb: Any, atol: float) -> dict[str, Any] | None:
    sa, sb = va.tensors[name], vb.tensors[name]
    row: dict[str, Any] = {"name": name}
    if sa.shape != sb.shape:
        return row | {"shape": [list(sa.shape), list(sb.shape)], "different": True}
    if sa.dtype != sb.dtype:
        row["dtype"] = [sa.dtype, sb.dtype]
    a, b = va.values(name), vb.values(name)
    if a is None or b is None:
        return row | {"compared": False, "different": False} if "dtype" in row else None
    stats = compare_values(a, b)
    different = not stats["max_abs"] <= atol  # NaN counts as different
    if not different and "dtype" not in row:
        return None
    return row | stats | {"different": different}


def diff_paths(a: str | os.PathLike[str], b: str | os.PathLike[str], *, atol: float = 0.0) -> dict[str, Any]:
    """The `diff --json` document; `same` is what the exit code reports."""
    if not atol >= 0:
        raise UsageError(f"--atol {atol}: must be >= 0")
    va, vb = open_view(a), open_view(b)
    try:
        va, vb = (GgufAsHf(v) if isinstance(v, GgufView) else v for v in (va, vb))
        common = [n for n in va.tensors if n in vb.tensors]
        rows = [r for r in (_tensor_pair(n, va, vb, atol) for n in common) if r is not None]
        only_a = sorted(set(va.tensors) - set(vb.tensors))
        only_b = sorted(set(vb.tensors) - set(va.tensors))
        return {
            "a": str(a),
            "b": str(b),
            "formats": [va.format, vb.format],
            "atol": atol,
            "same": not only_a and not only_b and not any(r["different"] for r in rows),
            "only_in_a": only_a,
            "only_in_b": only_b,
            "tensors": rows,
            "compared": len(common),
            "metadata_changed": _metadata_changes(*_comparable_metadata(va, vb)),
        }
    finally:
        va.close()
        vb.close()
