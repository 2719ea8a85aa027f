"""The mapping between APR model metadata and a Hugging Face config.json of the Llama family.

`architecture_fields` reads the shape of any config.json leniently (for `inspect`); `family_metadata` is
the strict reading a model is built from: the architecture must be one aprtool's model carries, every
field it uses is type-checked, both rope layouts are read (`rope_theta`/`rope_scaling` at the top level,
or transformers 5's `rope_parameters`), and a field whose value would change the math in a way the model
does not carry (another activation, a sliding window on some layers, a quantized checkpoint) is refused
by name. `hf_config` writes the config.json of the original class back.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from aprtool.errors import IntegrityError, MetadataError
from aprtool.model.config import ARCHITECTURES, LlamaConfig

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
REQUIRED_HF = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "max_position_embeddings")  # fmt: skip
FLOAT_KEYS = ("rms_norm_eps", "rope_theta")
# transformers' defaults where a config.json may leave a field out
HF_DEFAULTS = {"rms_norm_eps": 1e-6, "rope_theta": 10000.0}
# How each class spells what differs from Llama: whether it reads head_dim, how attention_bias maps,
# and how a sliding window is configured.
FAMILY = {
    "LlamaForCausalLM": {"head_dim": True, "bias": "attention_bias", "mlp_bias": True, "window": None},
    "MistralForCausalLM": {"head_dim": True, "bias": None, "mlp_bias": False, "window": "sliding_window"},
    "Qwen2ForCausalLM": {"head_dim": False, "bias": "qkv", "mlp_bias": False, "window": "use_sliding_window"},
    "Qwen3ForCausalLM": {"head_dim": True, "bias": "attention_bias", "mlp_bias": False, "window": "use_sliding_window",
                         "qk_norm": True},
}  # fmt: skip


def _number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) if integer else math.isfinite(value)


def _architecture(config: dict[str, Any], where: str) -> str | None:
    archs = config.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise MetadataError(f"{where}: architectures must be a list of strings")
    return archs[0] if archs else None


def _rope_theta(config: dict[str, Any]) -> Any:
    params = config.get("rope_parameters")
    if config.get("rope_theta") is None and isinstance(params, dict):
        return params.get("rope_theta")
    return config.get("rope_theta")


def architecture_fields(config: Any, where: str = "config.json") -> dict[str, Any]:
    """Model shape keys from any config.json (for inspect and safetensors import), each type-checked (exit 4)."""
    if not isinstance(config, dict):
        raise MetadataError(f"{where}: must be a JSON object, found {type(config).__name__}")
    out: dict[str, Any] = {}
    if arch := _architecture(config, where):
        out["architecture"] = arch
    if "model_type" in config:
        if not isinstance(config["model_type"], str):
            raise MetadataError(f"{where}: model_type must be a string")
        out["model_type"] = config["model_type"]
    values = {**config, "rope_theta": _rope_theta(config)}
    for apr, hf in APR_TO_HF.items():
        if values.get(hf) is not None:
            if not _number(values[hf], integer=apr not in FLOAT_KEYS):
                kind = "a number" if apr in FLOAT_KEYS else "an integer"
                raise MetadataError(f"{where}: {hf} {values[hf]!r:.40} is not {kind}")
            out[apr] = values[hf]
    if "tie_word_embeddings" in config:
        if not isinstance(config["tie_word_embeddings"], bool):
            raise MetadataError(f"{where}: tie_word_embeddings must be true or false")
        out["tie_word_embeddings"] = config["tie_word_embeddings"]
    return out


def _rope_scaling(config: dict[str, Any], where: str) -> dict[str, Any] | None:
    """The rope scaling entry in APR's spelling, from either layout; both present and disagreeing is refused."""
    legacy = config.get("rope_scaling")
    params = config.get("rope_parameters")
    for key, value in (("rope_scaling", legacy), ("rope_parameters", params)):
        if value is not None and not isinstance(value, dict):
            raise MetadataError(f"{where}: {key} must be an object or null")
    entries = []
    for key, value in (("rope_scaling", legacy), ("rope_parameters", params)):
        if value:
            entry = {k: v for k, v in value.items() if k not in ("rope_theta", "type")}
            entry["rope_type"] = value.get("rope_type", value.get("type"))
            entries.append((key, entry))
    if len(entries) == 2 and entries[0][1] != entries[1][1]:
        raise MetadataError(f"{where}: rope_scaling and rope_parameters disagree; keep one")
    if not entries:
        return None
    key, entry = entries[0]
    if entry["rope_type"] in (None, "default"):
        extra = sorted(set(entry) - {"rope_type"})
        if extra:
            raise MetadataError(f"{where}: {key}.{extra[0]} is not supported with the default rope")
        return None
    known = {"rope_type", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
    extra = sorted(set(entry) - known)
    if extra:
        raise MetadataError(f"{where}: {key}.{extra[0]} is not supported (rope type {entry['rope_type']!r:.40})")
    return {"where": f"{where} {key}", **entry}


def _refuse_unsupported(config: dict[str, Any], arch: str, where: str) -> None:
    """Fields whose values change the math in ways the model does not carry, refused by name."""
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise MetadataError(f"{where}: hidden_act {act!r:.40} is not supported (silu only)")
    if config.get("quantization_config") is not None:
        raise MetadataError(f"{where}: quantization_config: a quantized checkpoint is not supported; give a float one")
    partial = config.get("partial_rotary_factor", 1.0)
    if partial != 1.0:
        raise MetadataError(f"{where}: partial_rotary_factor {partial!r:.40} is not supported (1.0 only)")
    if FAMILY[arch]["window"] == "use_sliding_window" and config.get("use_sliding_window"):
        raise MetadataError(f"{where}: use_sliding_window true (a window on some layers) is not supported")
    types = config.get("layer_types")
    sliding = types is not None and (not isinstance(types, list) or any(t != "full_attention" for t in types))
    if sliding and FAMILY[arch]["window"] != "sliding_window":
        raise MetadataError(f"{where}: layer_types other than full_attention are not supported")
    for key in ("mlp_bias", "attention_bias"):
        if key in config and not isinstance(config[key], bool):
            raise MetadataError(f"{where}: {key} must be true or false")
    if config.get("mlp_bias") and not FAMILY[arch]["mlp_bias"]:
        raise MetadataError(f"{where}: mlp_bias true is not part of {arch}")


def family_metadata(config: Any, where: str = "config.json") -> dict[str, Any]:
    """APR model metadata (LlamaConfig's fields) for a Llama-family config.json, checked strictly (exit 4)."""
    from aprtool.model.io import llama_config, rope_scaling

    fields = architecture_fields(config, where)
    arch = fields.get("architecture") or next(
        (a for a, t in ARCHITECTURES.items() if t == config.get("model_type")), None
    )
    if not isinstance(arch, str) or arch not in FAMILY:
        raise MetadataError(
            f"{where}: architecture {arch!r:.60} is not supported (supported: {', '.join(ARCHITECTURES)})"
        )
    missing = [key for key in REQUIRED_HF if config.get(key) is None]
    if missing:
        raise MetadataError(f"{where}: lacks {', '.join(missing)}")
    _refuse_unsupported(config, arch, where)
    family = FAMILY[arch]
    out = {**{k: HF_DEFAULTS[k] for k in FLOAT_KEYS}, **fields, "architecture": arch}
    out.setdefault("num_kv_heads", out["num_heads"])
    out["tie_word_embeddings"] = fields.get("tie_word_embeddings", False)
    head_dim = config.get("head_dim") if family["head_dim"] else None
    if head_dim is not None and head_dim != out["hidden_size"] // out["num_heads"]:
        out["head_dim"] = head_dim
    bias = config.get("attention_bias", False) if family["bias"] == "attention_bias" else family["bias"] == "qkv"
    out["qkv_bias"] = bool(bias)
    out["o_bias"] = bool(bias) and family["bias"] == "attention_bias"
    out["mlp_bias"] = bool(config.get("mlp_bias", False))
    out["qk_norm"] = bool(family.get("qk_norm", False))
    if family["window"] == "sliding_window" and config.get("sliding_window") is not None:
        out["sliding_window"] = config["sliding_window"]
    scaling = _rope_scaling(config, where)
    if scaling is not None:
        at = scaling.pop("where")
        out["rope_scaling"] = asdict(rope_scaling(scaling, at))
    return {"model_type": ARCHITECTURES[arch], **llama_config(out).to_metadata()}


def require_llama(metadata: dict[str, Any], target: str) -> None:
    """Exit 5 naming every field `target` needs and the metadata lacks."""
    arch = metadata.get("architecture")
    if arch is not None and (not isinstance(arch, str) or arch not in ARCHITECTURES):
        raise IntegrityError(f"--to {target}: architecture {arch!r:.60} is not one of {', '.join(ARCHITECTURES)}")
    missing = [k for k in ("architecture", *APR_TO_HF) if metadata.get(k) is None]
    if missing:
        raise IntegrityError(f"--to {target}: the model metadata lacks {', '.join(missing)}")


def hf_config(config: LlamaConfig, bos_id: int | None, eos_id: int | None, torch_dtype: str) -> dict[str, Any]:
    """config.json of the model's own class (Qwen2 stays Qwen2); refused (exit 5) where the class cannot
    express the model's options. Rope fields in the layout every transformers version reads."""
    arch, family = config.architecture, FAMILY[config.architecture]
    out: dict[str, Any] = {"architectures": [arch], "model_type": config.model_type}
    metadata = config.to_metadata()
    out |= {hf: metadata[apr] for apr, hf in APR_TO_HF.items()}
    if family["head_dim"]:
        out["head_dim"] = config.head_size
    elif config.head_dim is not None:
        raise IntegrityError(f"--to hf: {arch} has no head_dim; this model's heads are {config.head_size} wide")
    if family["bias"] == "attention_bias":
        if config.qkv_bias != config.o_bias:
            raise IntegrityError(f"--to hf: {arch}'s attention_bias covers q, k, v and o together")
        out["attention_bias"] = config.qkv_bias
    elif (config.qkv_bias, config.o_bias) != (family["bias"] == "qkv", False):
        raise IntegrityError(f"--to hf: {arch} cannot hold this model's attention biases")
    if family["mlp_bias"]:
        out["mlp_bias"] = config.mlp_bias
    elif config.mlp_bias:
        raise IntegrityError(f"--to hf: {arch} has no mlp_bias")
    if config.qk_norm != family.get("qk_norm", False):
        raise IntegrityError(f"--to hf: {arch} {'needs' if not config.qk_norm else 'has no'} q/k norms")
    if family["window"] == "sliding_window":
        out["sliding_window"] = config.sliding_window
    elif config.sliding_window is not None:
        raise IntegrityError(f"--to hf: {arch} has no model-wide sliding window")
    elif family["window"] == "use_sliding_window":
        out["use_sliding_window"] = False
    if config.rope_scaling is not None:
        out["rope_scaling"] = {k: v for k, v in metadata["rope_scaling"].items() if v is not None}
    out |= {"hidden_act": "silu", "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
            "tie_word_embeddings": config.tie_word_embeddings, "torch_dtype": torch_dtype}  # fmt: skip
    if bos_id is not None:
        out["bos_token_id"] = bos_id
    if eos_id is not None:
        out["eos_token_id"] = eos_id
    return out
