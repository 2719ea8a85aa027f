"""`inspect` for every format: what a file is, what it holds, and (for checkpoints) where training was."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np

from aprtool.container import inspect_file
from aprtool.files.detect import APR, RUN, detect
from aprtool.files.views import open_view

TRAINING_FACTS = ("step", "epoch", "tokens_seen", "train_loss", "val_loss", "saved_at", "code_version")


def tensor_stats(values: np.ndarray | None) -> dict[str, Any] | None:
    """min/max/mean/std and the fraction of zeros, over finite values; NaN/Inf counted apart."""
    if values is None:
        return None
    with np.errstate(all="ignore"):  # signalling NaNs from a file must not print warnings
        return _stats(np.asarray(values, dtype=np.float32).reshape(-1))


def _stats(flat: np.ndarray) -> dict[str, Any]:
    finite = np.isfinite(flat)
    good = flat[finite] if not finite.all() else flat
    out: dict[str, Any] = {"nonfinite": int(flat.size - good.size)}
    if good.size:
        out |= {
            "min": float(good.min()),
            "max": float(good.max()),
            "mean": float(good.mean(dtype=np.float64)),
            "std": float(good.std(dtype=np.float64)),
            "zero_fraction": float(np.count_nonzero(good == 0) / flat.size),
        }
    return out


def training_facts(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """A checkpoint's training facts (None for a model file)."""
    training = metadata.get("training")
    if not isinstance(training, dict):
        return None
    facts = {k: training.get(k) for k in TRAINING_FACTS}
    state = training.get("state") if isinstance(training.get("state"), dict) else {}
    facts["phases"] = state.get("phases")
    facts["best_val_loss"] = state.get("best_val_loss")
    return facts


def _tensor_rows(view: Any, stats: bool, rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per tensor (APR's own rows, with offsets and checksums, are kept and extended)."""
    by_name = {r["name"]: r for r in rows or []}
    out = []
    for spec in view.tensors.values():
        row = by_name.get(spec.name) or {
            "name": spec.name, "dtype": spec.dtype, "shape": list(spec.shape), "stored_bytes": spec.stored_bytes
        }  # fmt: skip
        row["bits_per_weight"] = round(spec.stored_bytes * 8 / spec.numel, 4) if spec.numel else None
        if stats:
            row["stats"] = tensor_stats(view.values(spec.name))
        out.append(row)
    return out


def inspect_path(path: str | os.PathLike[str], *, stats: bool = False, checksums: bool = True) -> dict[str, Any]:
    """The `inspect --json` document for an APR, safetensors or GGUF file, an HF folder or a run directory."""
    kind = detect(path)
    if kind == RUN:
        from aprtool.train.runs import list_run

        return list_run(path)
    view = open_view(path)
    try:
        specs = view.tensors.values()
        groups = {
            "model": sum(not s.training_state for s in specs),
            "training_state": sum(s.training_state for s in specs),
        }
        if kind == APR:
            info = inspect_file(path, checksums=checksums)
            info["valid"] = info["checksum_valid"] is not False
        else:
            info = {"file": str(path), "format": view.format, "size_bytes": view.size_bytes, "valid": True,
                    "tensor_count": len(view.tensors), "metadata": view.metadata}  # fmt: skip
            info["param_count"] = sum(s.numel for s in specs if not s.training_state)
        info["architecture_fields"] = view.architecture
        info["dtypes"] = dict(Counter(s.dtype for s in specs))
        info["tensor_groups"] = groups
        info["training"] = training_facts(view.metadata) if kind == APR else None
        info["tensors"] = _tensor_rows(view, stats, info.get("tensors"))
        return info
    finally:
        view.close()
