"""One read-only view of a model in any format a user holds: its tensors, architecture fields, values.

`open_view(path)` picks the reader by content (files.detect). Every view has `format`, `size_bytes`,
`metadata` (the format's own: APR metadata, safetensors `__metadata__`, GGUF key-values, config.json),
`architecture` (the shape fields, in APR's names), `tensors` (name -> TensorSpec, shapes row-major) and
`values(name)`: float32 values, int6 dequantized, or None where this reader cannot decode the type.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aprtool.container import constants as C
from aprtool.errors import FormatError
from aprtool.files.detect import APR, GGUF, HF, SAFETENSORS, detect, hf_shard_names

ARCH_KEYS = ("architecture", "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
             "num_kv_heads", "max_position_embeddings", "tie_word_embeddings")  # fmt: skip
GGUF_KEYS = {  # GGUF key (after "ARCH.") -> APR metadata key
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "block_count": "num_layers",
    "attention.head_count": "num_heads",
    "attention.head_count_kv": "num_kv_heads",
    "context_length": "max_position_embeddings",
    "vocab_size": "vocab_size",
}
BIG_LIST = 16  # GGUF arrays longer than this are summarised in `metadata`


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]
    stored_bytes: int
    codec: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def training_state(self) -> bool:
        return self.name.startswith(C.TRAINING_PREFIX)


class AprView:
    format = "APR v2"

    def __init__(self, path: Path) -> None:
        from aprtool.container import open_apr

        self.path, self.file = path, open_apr(path)
        self.size_bytes = self.file.size
        self.metadata = dict(self.file.metadata)
        self.architecture = {k: self.metadata[k] for k in ARCH_KEYS if k in self.metadata}
        self.tensors = {n: TensorSpec(n, t.dtype.name, t.shape, t.size, t.codec) for n, t in self.file.tensors.items()}

    def values(self, name: str) -> np.ndarray | None:
        from aprtool.codecs import dequantize

        return dequantize(self.file, name)

    def close(self) -> None:
        self.file.close()


class SafetensorsView:
    format = "safetensors"

    def __init__(self, path: Path) -> None:
        from aprtool.interop.safetensors_io import SafetensorsFile, imported_metadata

        self.path, self.file = path, SafetensorsFile(path)
        self.size_bytes = path.stat().st_size
        self.metadata = dict(self.file.metadata)
        imported = imported_metadata(self.file)
        self.architecture = {k: imported[k] for k in ARCH_KEYS if k in imported}
        self.tensors = {n: TensorSpec(n, e.dtype, e.shape, e.end - e.start) for n, e in self.file.entries.items()}

    def values(self, name: str) -> np.ndarray | None:
        with np.errstate(all="ignore"):
            return np.asarray(self.file.float32_or_stored(name), dtype=np.float32)

    def close(self) -> None:
        self.file.close()


class GgufView:
    format = "GGUF"

    def __init__(self, path: Path) -> None:
        from aprtool.interop.gguf_reader import GgufFile

        self.path, self.file = path, GgufFile(path)
        self.format = f"GGUF v{self.file.version}"
        self.size_bytes = self.file.size
        self.metadata = {
            k: (f"<{len(v):,} items>" if isinstance(v, list) and len(v) > BIG_LIST else v)
            for k, v in self.file.metadata.items()
        }
        arch = self.file.metadata.get("general.architecture")
        self.architecture: dict[str, Any] = {"architecture": arch} if isinstance(arch, str) else {}
        for key, apr_key in GGUF_KEYS.items():
            if f"{arch}.{key}" in self.file.metadata:
                self.architecture[apr_key] = self.file.metadata[f"{arch}.{key}"]
        tokens = self.file.metadata.get("tokenizer.ggml.tokens")
        if "vocab_size" not in self.architecture and isinstance(tokens, list):
            self.architecture["vocab_size"] = len(tokens)
        self.tensors = {
            n: TensorSpec(n, t.type_name, tuple(reversed(t.shape)), t.size) for n, t in self.file.tensors.items()
        }

    def values(self, name: str) -> np.ndarray | None:
        return self.file.values(name)

    def close(self) -> None:
        self.file.close()


class HfView:
    """A Hugging Face model folder: config.json plus model.safetensors or the shards its index names."""

    format = "Hugging Face folder"

    def __init__(self, path: Path) -> None:
        from aprtool.interop.hf_config import architecture_fields
        from aprtool.paths import read_json

        self.path = path
        self.metadata = read_json(path / "config.json")
        self.architecture = architecture_fields(self.metadata, str(path / "config.json"))
        self.shards = {name: SafetensorsView(path / name) for name in hf_shard_names(path)}
        self.size_bytes = sum(v.size_bytes for v in self.shards.values())
        self.tensors, self.shards_of = {}, {}
        for shard in self.shards.values():
            for name, spec in shard.tensors.items():
                if name in self.tensors:
                    raise FormatError(f"{path}: tensor {name[:80]!r} is in two shards")
                self.tensors[name], self.shards_of[name] = spec, shard

    def values(self, name: str) -> np.ndarray | None:
        return self.shards_of[name].values(name)

    def close(self) -> None:
        for shard in self.shards.values():
            shard.close()


VIEWS = {APR: AprView, SAFETENSORS: SafetensorsView, GGUF: GgufView, HF: HfView}


def open_view(path: str | os.PathLike[str]) -> AprView | SafetensorsView | GgufView | HfView:
    kind = detect(path)
    if kind not in VIEWS:
        raise FormatError(f"{path}: an aprtool run directory; use `aprtool runs {path}`")
    return VIEWS[kind](Path(path))
