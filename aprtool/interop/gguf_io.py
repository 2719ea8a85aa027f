"""GGUF and Hugging Face spellings of one Llama-family model: tensor names, llama.cpp's q/k row order, the
`ARCH.*` keys; GGUF output for llama.cpp through the `gguf` package's writer."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from aprtool.atomic import atomic_path
from aprtool.errors import FormatError, IntegrityError, MetadataError

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
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.bias": "ffn_gate.bias",
    "mlp.up_proj.bias": "ffn_up.bias",
    "mlp.down_proj.bias": "ffn_down.bias",
}
# general.architecture -> the Hugging Face class; only llama.cpp's `llama` permutes q/k rows (its converter
# does it for LlamaModel and the classes built on it, Mistral included, not for Qwen2/Qwen3)
GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
TO_GGUF_ARCHITECTURE = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
                        "Qwen3ForCausalLM": "qwen3"}  # fmt: skip
PERMUTED = ("llama",)
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


def _check_heads(weight: np.ndarray, heads: Any, what: str) -> None:
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise FormatError(f"{what}: head count {heads!r:.40} is not a positive integer")
    if weight.ndim < 1 or weight.shape[0] % (2 * heads):
        raise FormatError(f"{what}: {weight.shape[0] if weight.ndim else 0} rows do not split into {heads} heads")


def permute_for_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout for q/k rows: (heads, 2, head_dim/2, in) -> (heads, head_dim/2, 2, in)."""
    _check_heads(weight, heads, "q/k permutation")
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def unpermute_for_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of `permute_for_rope`: llama.cpp's rows back to Hugging Face's."""
    _check_heads(weight, heads, "q/k permutation")
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


def _rope_permuted(name: str, arch: Any) -> str | None:
    """`q_proj` / `k_proj` for a tensor llama.cpp stores with permuted rows in `arch`, else None."""
    if arch not in PERMUTED:
        return None
    for kind in ("q_proj", "k_proj"):
        if name.endswith((f"self_attn.{kind}.weight", f"self_attn.{kind}.bias")):
            return kind
    return None


class GgufAsHf:
    """A GGUF view seen with Hugging Face tensor names and row order (q/k un-permuted for `llama`, with the
    head counts of its keys, checked); names with no HF counterpart keep their llama.cpp names."""

    def __init__(self, view: Any) -> None:
        self.view, self.metadata, self.format, self.architecture = view, view.metadata, view.format, view.architecture
        self.file, self.path = view.file, view.path
        self.arch = view.file.metadata.get("general.architecture")
        self.names = {hf_name(n) or n: n for n in view.tensors}
        self.tensors = {hf: view.tensors[n] for hf, n in self.names.items()}
        self.heads = {"q_proj": view.architecture.get("num_heads"), "k_proj": view.architecture.get("num_kv_heads")}

    def values(self, name: str) -> np.ndarray | None:
        values = self.view.values(self.names[name])
        kind = _rope_permuted(name, self.arch)
        if values is not None and kind is not None:
            values = unpermute_for_rope(values, self.heads[kind])
        return values

    def close(self) -> None:
        self.view.close()


def _key(md: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = md.get(key, default)
    if value is None and default is None:
        raise MetadataError(f"GGUF {key}: missing")
    ok = isinstance(value, kind) and not isinstance(value, bool) or (kind is float and isinstance(value, int))
    if not ok:
        raise MetadataError(f"GGUF {key}: {value!r:.40} is not {'an integer' if kind is int else 'a number'}")
    return value


def gguf_family_metadata(md: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """APR model metadata for a GGUF's `ARCH.*` keys and tensors (HF names, HF shapes): what the keys do not
    say (the vocabulary, tying, biases, q/k norms) the tensors do. Unsupported keys are refused by name."""
    arch = md.get("general.architecture")
    if not isinstance(arch, str) or arch not in GGUF_ARCHITECTURES:
        raise MetadataError(
            f"GGUF general.architecture: {str(arch)[:40]!r} is not supported ({', '.join(GGUF_ARCHITECTURES)})"
        )
    heads = _key(md, f"{arch}.attention.head_count", int)
    out = {
        "architecture": GGUF_ARCHITECTURES[arch],
        "hidden_size": _key(md, f"{arch}.embedding_length", int),
        "num_layers": _key(md, f"{arch}.block_count", int),
        "intermediate_size": _key(md, f"{arch}.feed_forward_length", int),
        "num_heads": heads,
        "num_kv_heads": _key(md, f"{arch}.attention.head_count_kv", int, heads),
        "max_position_embeddings": _key(md, f"{arch}.context_length", int),
        "rms_norm_eps": float(_key(md, f"{arch}.attention.layer_norm_rms_epsilon", float)),
        "rope_theta": float(_key(md, f"{arch}.rope.freq_base", float, 10000.0)),
    }
    embed = shapes.get("model.embed_tokens.weight")
    if embed is None or len(embed) != 2:
        raise MetadataError("GGUF token_embd.weight: missing or not a matrix")
    out["vocab_size"] = embed[0]
    out["tie_word_embeddings"] = "lm_head.weight" not in shapes
    head_dim = _key(md, f"{arch}.attention.key_length", int, out["hidden_size"] // max(heads, 1))
    if head_dim != out["hidden_size"] // max(heads, 1) or out["hidden_size"] % max(heads, 1):
        out["head_dim"] = head_dim
    rotated = _key(md, f"{arch}.rope.dimension_count", int, head_dim)
    if rotated != head_dim:
        raise MetadataError(f"GGUF {arch}.rope.dimension_count: {rotated} of {head_dim} channels (partial rope)")
    scaling = md.get(f"{arch}.rope.scaling.type", "none")
    if scaling == "linear":
        out["rope_scaling"] = {"rope_type": "linear", "factor": _key(md, f"{arch}.rope.scaling.factor", float)}
    elif scaling != "none":
        raise MetadataError(f"GGUF {arch}.rope.scaling.type: {str(scaling)[:40]!r} is not supported (none, linear)")
    if "rope_freqs.weight" in shapes:
        raise MetadataError("GGUF rope_freqs.weight: per-frequency rope factors (Llama 3.1 scaling) are not supported")
    layer = "model.layers.0."
    out["qkv_bias"] = f"{layer}self_attn.q_proj.bias" in shapes
    out["o_bias"] = f"{layer}self_attn.o_proj.bias" in shapes
    out["mlp_bias"] = f"{layer}mlp.up_proj.bias" in shapes
    out["qk_norm"] = f"{layer}self_attn.q_norm.weight" in shapes
    return out


def _rope_freqs(config: Any) -> np.ndarray | None:
    """llama.cpp's `rope_freqs.weight` for llama3 rope scaling: each frequency's divisor."""
    if config.rope_scaling is None or config.rope_scaling.rope_type != "llama3":
        return None
    import torch

    from aprtool.model.llama import inv_freq

    base = 1.0 / (config.rope_theta ** (torch.arange(0, config.head_size, 2).float() / config.head_size))
    return (base / inv_freq(config)).numpy().astype(np.float32)


def _write_vocab(w: Any, vocab: dict[str, Any]) -> None:
    w.add_tokenizer_model(vocab["model"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    if vocab["model"] == "gpt2":
        w.add_tokenizer_pre(vocab["pre"])
        w.add_token_merges(vocab["merges"])
    else:
        w.add_token_scores(vocab["scores"])
        w.add_add_space_prefix(vocab["add_space_prefix"])
        if vocab["unk_id"] is not None:
            w.add_unk_token_id(vocab["unk_id"])
    if vocab["bos_id"] is not None:
        w.add_bos_token_id(vocab["bos_id"])
    if vocab["eos_id"] is not None:
        w.add_eos_token_id(vocab["eos_id"])
    w.add_add_bos_token(vocab["add_bos"])


def write_gguf(path: Path, tensors: dict[str, np.ndarray], config: Any, name: str, vocab: dict[str, Any]) -> int:
    """Write `path` atomically; returns its size. Tensors are float32/float16 numpy arrays by HF name;
    `config` the model's LlamaConfig (its architecture picks llama.cpp's, and whether q/k rows are permuted)."""
    import gguf

    arch = TO_GGUF_ARCHITECTURE[config.architecture]
    mapped: dict[str, tuple[str, np.ndarray]] = {}
    for hf, array in tensors.items():
        target = gguf_name(hf)
        if target in mapped:
            raise IntegrityError(f"--to gguf: {hf!r} and {mapped[target][0]!r} both map to {target!r}")
        kind = _rope_permuted(hf, arch)
        if kind is not None:
            array = permute_for_rope(array, config.num_heads if kind == "q_proj" else config.num_kv_heads)
        if array.ndim == 1:
            array = array.astype(np.float32)  # llama.cpp keeps norms and biases in f32
        mapped[target] = (hf, np.ascontiguousarray(array))
    freqs = _rope_freqs(config)
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch=arch)
        w.add_name(name)
        w.add_context_length(config.max_position_embeddings)
        w.add_embedding_length(config.hidden_size)
        w.add_feed_forward_length(config.intermediate_size)
        w.add_block_count(config.num_layers)
        w.add_head_count(config.num_heads)
        w.add_head_count_kv(config.num_kv_heads)
        w.add_key_length(config.head_size)
        w.add_value_length(config.head_size)
        w.add_layer_norm_rms_eps(config.rms_norm_eps)
        w.add_rope_freq_base(config.rope_theta)
        w.add_rope_dimension_count(config.head_size)
        if config.rope_scaling is not None and config.rope_scaling.rope_type == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(config.rope_scaling.factor)
        w.add_vocab_size(config.vocab_size)
        _write_vocab(w, vocab)
        for target, (_, array) in mapped.items():
            w.add_tensor(target, array)
        if freqs is not None:
            w.add_tensor("rope_freqs.weight", freqs)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path.stat().st_size
