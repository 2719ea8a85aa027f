"""The mapping between APR model metadata and Hugging Face `LlamaConfig` (config.json)."""

from __future__ import annotations

import math
from typing import Any

from aprtool.errors import IntegrityError, MetadataError

# APR metadata key -> config.json key
APR_TO_HF = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "max_position_embeddings": "max_position_embeddings",
    "rms_norm_eps": "rms_norm_eps",
    "rope_theta": "rope_theta",
}
REQUIRED = tuple(APR_TO_HF)
LLAMA = "LlamaForCausalLM"


def require_llama(metadata: dict[str, Any], target: str) -> None:
    """Exit 5 naming every field `target` needs and the metadata lacks."""
    arch = metadata.get("architecture")
    if arch not in (None, LLAMA):
        raise IntegrityError(f"--to {target}: architecture {arch!r} is not {LLAMA}")
    missing = [k for k in ("architecture", *REQUIRED) if metadata.get(k) is None]
    if missing:
        raise IntegrityError(f"--to {target}: the model metadata lacks {', '.join(missing)}")


def hf_config(metadata: dict[str, Any], eos_id: int | None, torch_dtype: str) -> dict[str, Any]:
    config = {
        "architectures": [LLAMA],
        "model_type": "llama",
        **{hf: metadata[apr] for apr, hf in APR_TO_HF.items()},
        "head_dim": metadata["hidden_size"] // metadata["num_heads"],
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": bool(metadata.get("tie_word_embeddings", False)),
        "torch_dtype": torch_dtype,
        "use_cache": True,
    }
    if eos_id is not None:
        config["eos_token_id"] = eos_id
        config["bos_token_id"] = eos_id
    return config


FLOAT_KEYS = ("rms_norm_eps", "rope_theta")


def _number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) if integer else math.isfinite(value)


def apr_metadata_from_hf(config: Any, where: str = "config.json") -> dict[str, Any]:
    """Model shape keys from a config.json (for safetensors import), each type-checked (exit 4)."""
    if not isinstance(config, dict):
        raise MetadataError(f"{where}: must be a JSON object, found {type(config).__name__}")
    out: dict[str, Any] = {}
    archs = config.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise MetadataError(f"{where}: architectures must be a list of strings")
    if archs:
        out["architecture"] = archs[0]
    if "model_type" in config:
        if not isinstance(config["model_type"], str):
            raise MetadataError(f"{where}: model_type must be a string")
        out["model_type"] = config["model_type"]
    for apr, hf in APR_TO_HF.items():
        if hf in config and config[hf] is not None:
            if not _number(config[hf], integer=apr not in FLOAT_KEYS):
                kind = "a number" if apr in FLOAT_KEYS else "an integer"
                raise MetadataError(f"{where}: {hf} {config[hf]!r:.40} is not {kind}")
            out[apr] = config[hf]
    if "tie_word_embeddings" in config:
        if not isinstance(config["tie_word_embeddings"], bool):
            raise MetadataError(f"{where}: tie_word_embeddings must be true or false")
        out["tie_word_embeddings"] = config["tie_word_embeddings"]
    return out
