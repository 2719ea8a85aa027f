"""Which format a path holds, by content (magic), not by extension."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from aprtool.container.constants import MAGIC as APR_MAGIC
from aprtool.errors import FileAccessError, FormatError, NotAprError
from aprtool.paths import input_file, open_input

APR, SAFETENSORS, GGUF, HF, RUN = "apr", "safetensors", "gguf", "hf", "run"


def detect(path: str | os.PathLike[str]) -> str:
    """`apr`, `safetensors`, `gguf`, `hf` (a folder with config.json and safetensors) or `run` (an aprtool
    run directory, with ckpt/ or model.apr). Anything else is NotAprError (exit 4) or FileAccessError (3)."""
    path = Path(path)
    if path.is_dir():
        weights = any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()
        if (path / "config.json").is_file() and weights:
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
    if path.suffix == ".safetensors":  # no magic matched: the safetensors reader names what is wrong
        return SAFETENSORS
    raise NotAprError(f"{path}: not an APR, safetensors or GGUF file (unrecognised magic {head[:8]!r})")


def hf_shard_names(path: Path) -> list[str]:
    """model.safetensors, or the files `model.safetensors.index.json` names: plain names in this folder only."""
    from aprtool.paths import read_json_object
    from aprtool.text import printable

    index = path / "model.safetensors.index.json"
    if not index.exists():
        if not (path / "model.safetensors").is_file():
            raise FormatError(f"{path}: no model.safetensors and no model.safetensors.index.json")
        return ["model.safetensors"]
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise FormatError(f"{index}: weight_map must be an object")
    for name in weight_map.values():  # each value checked before any is compared, sorted or opened
        if not isinstance(name, str) or not name or any(c in name for c in "/\\\0") or name.startswith("."):
            raise FormatError(f"{index}: shard {printable(str(name))[:60]!r} is not a file name in this folder")
    return sorted(set(weight_map.values()))
