"""Opening a Llama model file: the one place where a file's metadata becomes a model.

Metadata is checked before anything is built (exit 4 naming the field): every architecture field's type,
range and a sane upper limit, then every tensor the architecture needs against the file's index, by
name and exact shape, without allocating. Only then are weights decoded, one tensor at a time, after a
check that the memory they take is available. The tokenizer comes from beside the file under the fixed
name `tokenizer.json`, checked by the sha256 the metadata records: a path written in a file is never
opened.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from aprtool.container import constants as C
from aprtool.container import open_apr, verify_file, write_apr
from aprtool.container.layout import TensorInfo
from aprtool.container.reader import AprFile
from aprtool.container.verify import VerifyReport
from aprtool.errors import IntegrityError, MetadataError
from aprtool.memory import ensure_allocatable
from aprtool.model.llama import LlamaConfig, LlamaForCausalLM

ARCHITECTURE = "LlamaForCausalLM"
# Far above any published model, far below what would exhaust memory on a claim alone.
INT_LIMITS = {
    "vocab_size": 1 << 21,
    "hidden_size": 1 << 16,
    "num_layers": 1 << 10,
    "num_heads": 1 << 10,
    "num_kv_heads": 1 << 10,
    "intermediate_size": 1 << 18,
    "max_position_embeddings": 1 << 24,
}
FLOAT_RANGES = {"rope_theta": (0.0, 1e12), "rms_norm_eps": (0.0, 1.0)}  # exclusive bounds


def _int_field(metadata: dict[str, Any], key: str) -> int:
    value = metadata[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise MetadataError(f"metadata.{key}: {value!r:.40} is not an integer")
    if not 1 <= value <= INT_LIMITS[key]:
        raise MetadataError(f"metadata.{key}: {value} is outside 1..{INT_LIMITS[key]:,}")
    return value


def _float_field(metadata: dict[str, Any], key: str) -> float:
    value = metadata[key]
    low, high = FLOAT_RANGES[key]
    if not isinstance(value, int | float) or isinstance(value, bool) or not low < value < high:
        raise MetadataError(f"metadata.{key}: {value!r:.40} is not a number in ({low:g}, {high:g})")
    return float(value)


def llama_config(metadata: dict[str, Any]) -> LlamaConfig:
    """The architecture the metadata describes, every field checked (MetadataError, exit 4)."""
    arch = metadata.get("architecture")
    if arch != ARCHITECTURE:
        raise MetadataError(f"metadata.architecture: {arch!r:.60} is not {ARCHITECTURE!r}")
    missing = [f.name for f in fields(LlamaConfig) if f.name not in metadata]
    if missing:
        raise MetadataError(f"metadata lacks {', '.join(missing)}")
    ints = {key: _int_field(metadata, key) for key in INT_LIMITS}
    floats = {key: _float_field(metadata, key) for key in FLOAT_RANGES}
    tie = metadata["tie_word_embeddings"]
    if not isinstance(tie, bool):
        raise MetadataError(f"metadata.tie_word_embeddings: {tie!r:.40} is not true or false")
    hidden, heads, kv = ints["hidden_size"], ints["num_heads"], ints["num_kv_heads"]
    if hidden % heads or (hidden // heads) % 2:
        raise MetadataError(f"metadata.num_heads: {heads} does not split hidden_size {hidden} into even head sizes")
    if heads % kv:
        raise MetadataError(f"metadata.num_kv_heads: {kv} does not divide num_heads {heads}")
    return LlamaConfig(**ints, **floats, tie_word_embeddings=tie)


def expected_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every weight the architecture has, with its shape (built on the meta device: nothing allocated)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return {name: tuple(t.shape) for name, t in model.weights().items()}


def model_tensors(f: AprFile) -> dict[str, TensorInfo]:
    return {n: t for n, t in f.tensors.items() if not n.startswith(C.TRAINING_PREFIX)}


def check_tensors(config: LlamaConfig, shapes: dict[str, tuple[int, ...]], floats: set[str]) -> None:
    """The file holds exactly the architecture's weights (`shapes`), each a float (`floats`: names of the
    float or int6 tensors) of the right shape."""
    expected = expected_shapes(config)
    missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing or extra:
        what = (f"lacks {missing[0]!r}" if missing else f"has unexpected {extra[0]!r}") + (
            f" (and {len(missing) + len(extra) - 1} more differences)" if len(missing) + len(extra) > 1 else ""
        )
        raise MetadataError(f"tensors do not match the metadata's {ARCHITECTURE}: the file {what}")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise MetadataError(
                f"tensor {name!r}: shape {list(shapes[name])}, the metadata's model needs {list(shape)}"
            )
        if name not in floats:
            raise MetadataError(f"tensor {name!r}: an integer tensor cannot be a weight")


@dataclass
class ModelFile:
    """A checked Llama model file (or checkpoint): its metadata, architecture and model tensors."""

    path: Path
    metadata: dict[str, Any]
    config: LlamaConfig
    tensors: dict[str, TensorInfo]

    @property
    def quantized(self) -> bool:
        return any(t.dtype.code >= C.ENCODED_DTYPE_MIN for t in self.tensors.values())

    @property
    def param_count(self) -> int:
        return sum(t.numel for t in self.tensors.values())


def read_model(f: AprFile) -> ModelFile:
    """Check an open file's metadata and tensors against each other (no tensor is read)."""
    config = llama_config(f.metadata)
    tensors = model_tensors(f)
    check_tensors(config, {n: t.shape for n, t in tensors.items()}, {n for n, t in tensors.items() if t.dtype.is_float})
    return ModelFile(f.path, dict(f.metadata), config, tensors)


def load_model(path: str | os.PathLike[str]) -> tuple[LlamaForCausalLM, ModelFile]:
    """The model in float32, int6 tensors dequantized, checksums verified on the way."""
    from aprtool.codecs import dequantize

    with open_apr(path) as f:
        info = read_model(f)
        largest = max(t.numel for t in info.tensors.values())
        ensure_allocatable(4 * info.param_count + 9 * largest, f"{path}: the model in float32")
        model = LlamaForCausalLM(info.config)
        params = model.state_dict(keep_vars=True)
        with torch.no_grad():
            for name in info.tensors:
                params[name].copy_(torch.from_numpy(dequantize(f, name)))
    return model.eval(), info


def training_val_fraction(metadata: dict[str, Any]) -> float:
    """The held-out fraction the model's training used (default 0.05), checked."""
    summary = metadata.get("training_summary") or metadata.get("training") or {}
    config = summary.get("config") if isinstance(summary, dict) else None
    value = config.get("val_fraction", 0.05) if isinstance(config, dict) else 0.05
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 1 or math.isnan(value):
        raise MetadataError(f"metadata.training_summary.config.val_fraction: {value!r:.40} is not in (0, 1)")
    return float(value)


def tokenizer_info(metadata: dict[str, Any], config: LlamaConfig | None = None) -> dict[str, Any] | None:
    """The metadata's tokenizer entry, checked (None if the file names no tokenizer)."""
    from aprtool.data.tokenizer import check_tokenizer_info

    info = metadata.get("tokenizer")
    if info is None:
        return None
    limit = config.vocab_size if config is not None else INT_LIMITS["vocab_size"]
    return check_tokenizer_info(info, "metadata.tokenizer", limit)


def load_tokenizer_for(metadata: dict[str, Any], path: Path, config: LlamaConfig | None = None) -> Any:
    """The model's tokenizer (bytes, or BPE from `tokenizer.json` beside `path`), agreeing with the metadata."""
    from aprtool.data.tokenizer import load_tokenizer
    from aprtool.errors import UsageError

    info = tokenizer_info(metadata, config)
    if info is None:
        raise UsageError(f"{path}: the model names no tokenizer; this command needs one")
    tokenizer = load_tokenizer(info, path.parent)
    if tokenizer.vocab_size != info["vocab_size"] or tokenizer.eos_id != info.get("eos_id", tokenizer.eos_id):
        raise MetadataError(
            f"metadata.tokenizer: records vocab_size {info['vocab_size']}, eos_id {info.get('eos_id')}; "
            f"the tokenizer has {tokenizer.vocab_size}, {tokenizer.eos_id}"
        )
    return tokenizer


def model_metadata(
    model: LlamaForCausalLM, data_source: str | None, tokenizer: dict[str, Any], *, name: str = "aprtool-pretrain"
) -> dict[str, Any]:
    """The model file's metadata: the shape keys come from LlamaConfig; None as data_source is the default corpus."""
    from aprtool import __version__

    m = model.cfg
    return {
        "name": name,
        "architecture": "LlamaForCausalLM",
        "model_type": "llama",
        "param_count": sum(t.numel() for t in model.weights().values()),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "license": None,
        "data_source": data_source or "python-stdlib",
        "data_license": None,
        **m.to_metadata(),
        "tokenizer": tokenizer,
        "aprtool_version": __version__,
    }


def write_model(
    path: Path, weights: dict[str, torch.Tensor], metadata: dict[str, Any], expect_tensors: int
) -> VerifyReport:
    """Write the weights-only model atomically and verify it before anyone reports success."""
    write_apr(path, weights, metadata)
    report = verify_file(path, expect_tensors=expect_tensors, require=[("architecture", "LlamaForCausalLM")])
    if not report.valid:
        raise IntegrityError(f"{path}: final model does not verify: {'; '.join(report.errors)}")
    return report
