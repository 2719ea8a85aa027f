"""Read .safetensors files (never pickle) as numpy arrays plus their string metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from aprtool.errors import FileAccessError, FormatError


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """All tensors as numpy (bf16 widened exactly to float32) and the `__metadata__` map."""
    import torch
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileAccessError(f"{path}: no such file")
    tensors: dict[str, np.ndarray] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                t = f.get_tensor(name)
                tensors[name] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    except (SafetensorError, json.JSONDecodeError, ValueError, OSError) as exc:
        raise FormatError(f"{path}: not a valid safetensors file ({exc})") from None
    return tensors, metadata
