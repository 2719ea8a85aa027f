"""GGUF output for llama.cpp, through the `gguf` package's writer."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from aprtool.atomic import atomic_path
from aprtool.errors import IntegrityError

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_name(name: str) -> str:
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    match = _LAYER.match(name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"blk.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    raise IntegrityError(f"--to gguf: tensor {name!r} has no llama.cpp name")


def permute_for_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout for q/k rows: (heads, 2, head_dim/2, in) -> (heads, head_dim/2, 2, in)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def unpermute_for_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of `permute_for_rope`: llama.cpp's rows back to Hugging Face's."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


_FROM_GGUF = {v: k for k, v in _TOP_NAMES.items()}
_LAYER_FROM_GGUF = {v: k for k, v in _LAYER_NAMES.items()}
_GGUF_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")


def hf_name(name: str) -> str | None:
    """The Hugging Face name of a llama.cpp tensor name (None if it has none)."""
    if name in _FROM_GGUF:
        return _FROM_GGUF[name]
    match = _GGUF_LAYER.match(name)
    if match and match.group(2) in _LAYER_FROM_GGUF:
        return f"model.layers.{match.group(1)}.{_LAYER_FROM_GGUF[match.group(2)]}"
    return None


def write_gguf(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, Any], vocab: dict[str, Any]) -> int:
    """Write `path` atomically; returns its size. Tensors are float32/float16 numpy arrays."""
    import gguf

    mapped: dict[str, tuple[str, np.ndarray]] = {}
    for name, array in tensors.items():
        target = gguf_name(name)
        if target in mapped:
            raise IntegrityError(f"--to gguf: {name!r} and {mapped[target][0]!r} both map to {target!r}")
        if name.endswith("q_proj.weight"):
            array = permute_for_rope(array, metadata["num_heads"])
        elif name.endswith("k_proj.weight"):
            array = permute_for_rope(array, metadata["num_kv_heads"])
        if array.ndim == 1:
            array = array.astype(np.float32)  # llama.cpp keeps norms in f32
        mapped[target] = (name, np.ascontiguousarray(array))

    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch="llama")
        w.add_name(str(metadata.get("name", "aprtool-model")))
        w.add_context_length(int(metadata["max_position_embeddings"]))
        w.add_embedding_length(int(metadata["hidden_size"]))
        w.add_feed_forward_length(int(metadata["intermediate_size"]))
        w.add_block_count(int(metadata["num_layers"]))
        w.add_head_count(int(metadata["num_heads"]))
        w.add_head_count_kv(int(metadata["num_kv_heads"]))
        w.add_layer_norm_rms_eps(float(metadata["rms_norm_eps"]))
        w.add_rope_freq_base(float(metadata["rope_theta"]))
        w.add_rope_dimension_count(int(metadata["hidden_size"]) // int(metadata["num_heads"]))
        w.add_vocab_size(int(metadata["vocab_size"]))
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(vocab["tokens"])
        w.add_token_types(vocab["types"])
        w.add_token_merges(vocab["merges"])
        if vocab["eos_id"] is not None:
            w.add_eos_token_id(vocab["eos_id"])
            w.add_bos_token_id(vocab["eos_id"])
        for target, (_, array) in mapped.items():
            w.add_tensor(target, array)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path.stat().st_size
