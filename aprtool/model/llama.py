"""A Llama-style decoder: RMSNorm, RoPE, SwiGLU, grouped-query attention, optional tied embeddings.

Module and parameter names follow Hugging Face's LlamaForCausalLM (`model.layers.N.self_attn.q_proj
.weight`, ...) and the math follows its default rotary embedding, so an aprtool checkpoint exports
to safetensors/transformers without renaming anything.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aprtool.codecs.quant import Clip, torch_fake_quant
from aprtool.errors import UsageError
from aprtool.model.config import PRESETS, LlamaConfig

__all__ = ["PRESETS", "LlamaConfig", "LlamaForCausalLM", "QATLinear"]


class QATLinear(nn.Linear):
    """nn.Linear whose weight goes through `compress`'s int6 quantizer (straight-through) while
    `qat` holds a clip setting. Same parameter names as nn.Linear, so checkpoints do not change."""

    qat: Clip | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.qat is None else torch_fake_quant(self.weight, self.qat)
        return F.linear(x, weight)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_tables(cfg: LlamaConfig, length: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, device=device).float() / cfg.head_dim))
    freqs = torch.outer(torch.arange(length, device=device).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        kv = cfg.num_kv_heads * cfg.head_dim
        self.q_proj = QATLinear(cfg.hidden_size, cfg.hidden_size, bias=False)
        self.k_proj = QATLinear(cfg.hidden_size, kv, bias=False)
        self.v_proj = QATLinear(cfg.hidden_size, kv, bias=False)
        self.o_proj = QATLinear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        c = self.cfg
        q = self.q_proj(x).view(b, t, c.num_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, c.num_kv_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, c.num_kv_heads, c.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if c.num_kv_heads != c.num_heads:
            rep = c.num_heads // c.num_kv_heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, c.hidden_size))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = QATLinear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = QATLinear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = QATLinear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        self.model = LlamaModel(cfg)
        self.lm_head = QATLinear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.qat_embedding: Clip | None = None
        self.reset_parameters()

    def set_qat(self, clip: Clip | None, min_elements: int) -> list[str]:
        """Fake-quantize (or stop) every weight `compress` would quantize: 2-D, >= min_elements.
        Returns the names of the weights it applies to."""
        names = []
        for name, module in self.named_modules():
            if isinstance(module, QATLinear):
                module.qat = clip if module.weight.numel() >= min_elements else None
                if module.qat is not None:
                    names.append(f"{name}.weight")
        embed = self.model.embed_tokens.weight
        self.qat_embedding = clip if embed.numel() >= min_elements else None
        if self.qat_embedding is not None:
            names.append("model.embed_tokens.weight")
        return sorted(set(names) & set(self.weights()))

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)  # HF initializer_range

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [batch, seq, vocab] for token ids [batch, seq]."""
        return self.from_layer(self.embed(ids))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The first decoder layer's input [batch, seq, hidden] for token ids [batch, seq]."""
        if ids.shape[1] > self.cfg.max_position_embeddings:
            raise UsageError(f"sequence of {ids.shape[1]} tokens exceeds max_position_embeddings")
        embed = self.model.embed_tokens.weight
        if self.qat_embedding is not None:
            embed = torch_fake_quant(embed, self.qat_embedding)
        return F.embedding(ids, embed)

    def from_layer(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Logits from decoder layer `start`'s input x [batch, seq, hidden]: the rest of `forward`."""
        cos, sin = rope_tables(self.cfg, x.shape[1], x.device)
        for layer in self.model.layers[start:]:
            x = layer(x, cos, sin)
        return self.lm_head(self.model.norm(x))

    def weights(self) -> dict[str, torch.Tensor]:
        """Parameters by HF name; the tied lm_head is left out, as transformers saves it."""
        out = dict(self.state_dict())
        if self.cfg.tie_word_embeddings:
            out.pop("lm_head.weight", None)
        return out

    def load_weights(self, tensors: dict[str, Any]) -> None:
        expected = set(self.weights())
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or extra:
            raise UsageError(f"weights do not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
        with torch.no_grad():
            for name, param in self.state_dict(keep_vars=True).items():
                if name in tensors:
                    param.copy_(torch.as_tensor(tensors[name]))
