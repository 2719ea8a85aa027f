"""A small, deterministic Llama-shaped model for the README's main job (until `pretrain` lands).

python -m aprtool.demo OUT.apr
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from aprtool.container import write_apr

DEMO_CONFIG = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "vocab_size": 256,
    "intermediate_size": 172,
    "max_position_embeddings": 128,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
}


def demo_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = DEMO_CONFIG
    h, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = h // c["num_heads"] * c["num_kv_heads"]

    def w(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(v, h), "model.norm.weight": np.ones(h, np.float32)}
    for i in range(c["num_layers"]):
        p = f"model.layers.{i}."
        tensors |= {
            p + "input_layernorm.weight": np.ones(h, np.float32),
            p + "post_attention_layernorm.weight": np.ones(h, np.float32),
            p + "self_attn.q_proj.weight": w(h, h),
            p + "self_attn.k_proj.weight": w(kv, h),
            p + "self_attn.v_proj.weight": w(kv, h),
            p + "self_attn.o_proj.weight": w(h, h),
            p + "mlp.gate_proj.weight": w(f, h),
            p + "mlp.up_proj.weight": w(f, h),
            p + "mlp.down_proj.weight": w(h, f),
        }
    return tensors


def write_demo(path: str | Path) -> Path:
    tensors = demo_tensors()
    metadata = {
        "name": "aprtool-demo",
        "architecture": "LlamaForCausalLM",
        "model_type": "llama",
        "param_count": int(sum(t.size for t in tensors.values())),
        "created_at": "2026-01-01T00:00:00Z",
        "license": None,
        "data_source": None,
        "data_license": None,
        "tie_word_embeddings": True,
        **DEMO_CONFIG,
    }
    return write_apr(path, tensors, metadata).path


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/demo.apr")
    out.parent.mkdir(parents=True, exist_ok=True)
    print(write_demo(out))
