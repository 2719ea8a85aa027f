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
import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aprtool.container import verify_file, write_apr
from aprtool.container.verify import VerifyReport
from aprtool.errors import IntegrityError, MetadataError
from aprtool.memory import ensure_allocatable
from aprtool.model.config import ARCHITECTURES, DEFAULT_ARCHITECTURE, ROPE_TYPES, RopeScaling
from aprtool.model.llama import LlamaConfig, LlamaForCausalLM

ARCHITECTURE = DEFAULT_ARCHITECTURE  # what aprtool's own runs train
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
OPTIONAL_INTS = {"head_dim": 1 << 12, "sliding_window": 1 << 24}  # absent or null: not set
FLOAT_RANGES = {"rope_theta": (0.0, 1e12), "rms_norm_eps": (0.0, 1.0)}  # exclusive bounds
FLAGS = ("qkv_bias", "o_bias", "mlp_bias", "qk_norm")  # absent: false (files written before they existed)
REQUIRED = (*INT_LIMITS, *FLOAT_RANGES, "tie_word_embeddings")


def _int_value(value: Any, where: str, limit: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise MetadataError(f"{where}: {value!r:.40} is not an integer")
    if not 1 <= value <= limit:
        raise MetadataError(f"{where}: {value} is outside 1..{limit:,}")
    return value


def _float_value(value: Any, where: str, low: float, high: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not low < value < high:
        raise MetadataError(f"{where}: {value!r:.40} is not a number in ({low:g}, {high:g})")
    return float(value)


def _flag(metadata: dict[str, Any], key: str) -> bool:
    value = metadata.get(key, False)
    if not isinstance(value, bool):
        raise MetadataError(f"metadata.{key}: {value!r:.40} is not true or false")
    return value


def rope_scaling(value: Any, where: str) -> RopeScaling | None:
    """A rope scaling entry (None, or `rope_type` linear/llama3 with its numbers), every field checked."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MetadataError(f"{where}: must be an object or null, found {type(value).__name__}")
    kind = value.get("rope_type")
    if kind == "default":
        return None
    if kind not in ROPE_TYPES:
        raise MetadataError(f"{where}.rope_type: {kind!r:.40} is not supported (default, {', '.join(ROPE_TYPES)})")
    factor = _float_value(value.get("factor"), f"{where}.factor", 0.0, 1e6)
    if kind == "linear":
        return RopeScaling("linear", factor)
    low = _float_value(value.get("low_freq_factor"), f"{where}.low_freq_factor", 0.0, 1e6)
    high = _float_value(value.get("high_freq_factor"), f"{where}.high_freq_factor", low, 1e6)
    context = _int_value(
        value.get("original_max_position_embeddings"), f"{where}.original_max_position_embeddings", 1 << 24
    )
    return RopeScaling("llama3", factor, low, high, context)


def llama_config(metadata: dict[str, Any]) -> LlamaConfig:
    """The architecture the metadata describes, every field checked (MetadataError, exit 4)."""
    arch = metadata.get("architecture")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise MetadataError(
            f"metadata.architecture: {arch!r:.60} is not supported (supported: {', '.join(ARCHITECTURES)})"
        )
    missing = [key for key in REQUIRED if key not in metadata]
    if missing:
        raise MetadataError(f"metadata lacks {', '.join(missing)}")
    ints = {key: _int_value(metadata[key], f"metadata.{key}", limit) for key, limit in INT_LIMITS.items()}
    optional = {
        key: None if metadata.get(key) is None else _int_value(metadata[key], f"metadata.{key}", limit)
        for key, limit in OPTIONAL_INTS.items()
    }
    floats = {key: _float_value(metadata[key], f"metadata.{key}", *FLOAT_RANGES[key]) for key in FLOAT_RANGES}
    tie = metadata["tie_word_embeddings"]
    if not isinstance(tie, bool):
        raise MetadataError(f"metadata.tie_word_embeddings: {tie!r:.40} is not true or false")
    hidden, heads, kv, head_dim = ints["hidden_size"], ints["num_heads"], ints["num_kv_heads"], optional["head_dim"]
    if head_dim is None and (hidden % heads or (hidden // heads) % 2):
        raise MetadataError(f"metadata.num_heads: {heads} does not split hidden_size {hidden} into even head sizes")
    if head_dim is not None and head_dim % 2:
        raise MetadataError(f"metadata.head_dim: {head_dim} is odd; RoPE rotates pairs of channels")
    if heads % kv:
        raise MetadataError(f"metadata.num_kv_heads: {kv} does not divide num_heads {heads}")
    return LlamaConfig(
        **ints, **floats, **optional, tie_word_embeddings=tie, architecture=arch,
        **{key: _flag(metadata, key) for key in FLAGS},
        rope_scaling=rope_scaling(metadata.get("rope_scaling"), "metadata.rope_scaling"),
    )  # fmt: skip


def expected_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every weight the architecture has, with its shape (built on the meta device: nothing allocated)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return {name: tuple(t.shape) for name, t in model.weights().items()}


def check_tensors(config: LlamaConfig, shapes: dict[str, tuple[int, ...]], floats: set[str]) -> None:
    """The file holds exactly the architecture's weights (`shapes`), each a float (`floats`: names of the
    float or int6 tensors) of the right shape."""
    expected = expected_shapes(config)
    missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing or extra:
        what = (f"lacks {missing[0]!r}" if missing else f"has unexpected {extra[0]!r}") + (
            f" (and {len(missing) + len(extra) - 1} more differences)" if len(missing) + len(extra) > 1 else ""
        )
        raise MetadataError(f"tensors do not match the metadata's {config.architecture}: the file {what}")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise MetadataError(
                f"tensor {name!r}: shape {list(shapes[name])}, the metadata's model needs {list(shape)}"
            )
        if name not in floats:
            raise MetadataError(f"tensor {name!r}: an integer tensor cannot be a weight")


@dataclass
class ModelFile:
    """What was opened: the model's metadata (APR spelling, tokenizer entry included) and architecture, the
    format it came in, whether its weights were quantized, and how many parameters it has."""

    path: Path
    metadata: dict[str, Any]
    config: LlamaConfig
    format: str = "apr"
    quantized: bool = False
    param_count: int = 0


def load_model(path: str | os.PathLike[str], *, share_file_pages: bool = False) -> tuple[LlamaForCausalLM, ModelFile]:
    """The model in float32 from a file of any format `model.sources` opens (APR, safetensors with
    config.json, an HF folder, GGUF), every weight dequantized, checksums verified on the way.

    Each weight the reader decodes becomes the parameter itself (no second copy). A float32 weight read in
    place from the file is copied unless `share_file_pages`: then the parameter is the file's copy-on-write
    mapping, so a model that is only read (eval, compress) costs its file's pages once and no more. A
    trainer copies: a run of days should not depend on a file that may be rewritten under it."""
    from aprtool.model.sources import open_source

    with open_source(path) as source:
        largest = max(math.prod(s) for s in source.shapes.values())
        ensure_allocatable(4 * source.param_count + 9 * largest, f"{path}: the model in float32")
        with torch.device("meta"):  # no random initialization of weights that are overwritten next
            model = LlamaForCausalLM(source.config)
        for name in source.shapes:
            values = source.float32(name)
            if not share_file_pages and _file_backed(values) or not _adoptable(values):
                values = np.array(values, dtype=np.float32, order="C")
            module_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(module_name), leaf, torch.nn.Parameter(torch.from_numpy(values)))
        if source.config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        info = ModelFile(Path(path), source.metadata, source.config, source.format, source.quantized,
                         source.param_count)  # fmt: skip
    return model.eval(), info


def _adoptable(values: np.ndarray) -> bool:
    flags = values.flags
    return values.dtype == np.float32 and flags.c_contiguous and flags.aligned and flags.writeable


def _file_backed(values: np.ndarray) -> bool:
    """Whether the array's memory is a file mapping (followed through views to the buffer that owns it)."""
    base: Any = values
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return isinstance(base, mmap.mmap)


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
    if config is not None and tokenizer.top_id >= config.vocab_size:
        raise MetadataError(
            f"metadata.tokenizer: the tokenizer has token id {tokenizer.top_id}, beyond the model's "
            f"{config.vocab_size} embedding rows"
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
        "model_type": m.model_type,
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
    report = verify_file(path, expect_tensors=expect_tensors, require=[("architecture", metadata["architecture"])])
    if not report.valid:
        raise IntegrityError(f"{path}: final model does not verify: {'; '.join(report.errors)}")
    return report
