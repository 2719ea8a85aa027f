"""The mapping between APR model metadata and Hugging Face `LlamaConfig` (config.json)."""

from __future__ import annotations

from typing import Any

from aprtool.errors import IntegrityError

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


def apr_metadata_from_hf(config: dict[str, Any]) -> dict[str, Any]:
    """Model shape keys from a config.json (for safetensors import)."""
    out: dict[str, Any] = {}
    archs = config.get("architectures") or []
    if archs:
        out["architecture"] = archs[0]
    if "model_type" in config:
        out["model_type"] = config["model_type"]
    for apr, hf in APR_TO_HF.items():
        if hf in config:
            out[apr] = config[hf]
    if "tie_word_embeddings" in config:
        out["tie_word_embeddings"] = bool(config["tie_word_embeddings"])
    return out
