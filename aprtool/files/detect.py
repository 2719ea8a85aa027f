"""Which format a path holds, by content (magic), not by extension."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from aprtool.container.constants import MAGIC as APR_MAGIC
from aprtool.errors import FileAccessError, NotAprError
from aprtool.paths import input_file, open_input

APR, SAFETENSORS, GGUF, HF, RUN = "apr", "safetensors", "gguf", "hf", "run"


def detect(path: str | os.PathLike[str]) -> str:
    """`apr`, `safetensors`, `gguf`, `hf` (a folder with config.json and safetensors) or `run` (an aprtool
    run directory, with ckpt/ or model.apr). Anything else is NotAprError (exit 4) or FileAccessError (3)."""
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
            return HF
        if (path / "ckpt").is_dir() or (path / "model.apr").is_file():
            return RUN
        raise NotAprError(f"{path}: a directory that is neither an HF model folder nor an aprtool run")
    if not path.exists() and not path.is_symlink():
        raise FileAccessError(f"{path}: no such file")
    with open_input(input_file(path)) as f:
        head = f.read(9)
    if head[:4] == APR_MAGIC:
        return APR
    if head[:4] == b"GGUF":
        return GGUF
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= os.path.getsize(path) - 8:
        return SAFETENSORS
    raise NotAprError(f"{path}: not an APR, safetensors or GGUF file (unrecognised magic {head[:8]!r})")
