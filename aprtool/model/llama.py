"""A Llama-family decoder: RMSNorm, RoPE, SwiGLU, grouped-query attention, optional tied embeddings, and the
options that make it Mistral (sliding window), Qwen2 (q/k/v biases) or Qwen3 (q/k norm, explicit head_dim).

Module and parameter names follow Hugging Face's LlamaForCausalLM (`model.layers.N.self_attn.q_proj
.weight`, ...; Qwen3's `self_attn.q_norm.weight`) and the math follows transformers' (rotary embedding
with its `linear` and `llama3` scaling), so a checkpoint moves between aprtool and transformers without
renaming anything and gives the same logits.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aprtool.codecs.quant import Clip, torch_fake_quant
from aprtool.errors import UsageError
from aprtool.model.config import PRESETS, LlamaConfig, RopeScaling

LOGITS_AT_ONCE = 1 << 21  # scoring's output projection: 8 MB of logits a chunk (42 rows of a 49 k vocabulary)

__all__ = ["PRESETS", "LlamaConfig", "LlamaForCausalLM", "QATLinear"]


class QATLinear(nn.Linear):
    """nn.Linear whose weight goes through `compress`'s int6 quantizer (straight-through) while
    `qat` holds a clip setting. Same parameter names as nn.Linear, so checkpoints do not change."""

    qat: Clip | None = None

    def effective_weight(self) -> torch.Tensor:
        """The weight the layer multiplies by: fake-quantized under QAT."""
        return self.weight if self.qat is None else torch_fake_quant(self.weight, self.qat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


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


def scaled_inv_freq(inv_freq: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    """transformers' `linear` and `llama3` rope scaling of the inverse frequencies."""
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    context, low, high = scaling.original_max_position_embeddings, scaling.low_freq_factor, scaling.high_freq_factor
    wavelength = 2 * math.pi / inv_freq
    scaled = torch.where(wavelength > context / low, inv_freq / scaling.factor, inv_freq)
    smooth = (context / wavelength - low) / (high - low)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelength < context / high) & ~(wavelength > context / low)
    return torch.where(medium, smoothed, scaled)


def inv_freq(cfg: LlamaConfig, device: Any = None) -> torch.Tensor:
    d = cfg.head_size
    base = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, device=device).float() / d))
    return base if cfg.rope_scaling is None else scaled_inv_freq(base, cfg.rope_scaling)


def rope_tables(cfg: LlamaConfig, length: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = torch.outer(torch.arange(length, device=device).float(), inv_freq(cfg, device))
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        q, kv = cfg.num_heads * cfg.head_size, cfg.num_kv_heads * cfg.head_size
        self.q_proj = QATLinear(cfg.hidden_size, q, bias=cfg.qkv_bias)
        self.k_proj = QATLinear(cfg.hidden_size, kv, bias=cfg.qkv_bias)
        self.v_proj = QATLinear(cfg.hidden_size, kv, bias=cfg.qkv_bias)
        self.o_proj = QATLinear(q, cfg.hidden_size, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_size, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        c = self.cfg
        q = self.q_proj(x).view(b, t, c.num_heads, c.head_size)
        k = self.k_proj(x).view(b, t, c.num_kv_heads, c.head_size)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        if q.dtype != cos.dtype and not torch.is_autocast_enabled(q.device.type):  # a model held in half precision
            cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        v = self.v_proj(x).view(b, t, c.num_kv_heads, c.head_size).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if c.num_kv_heads != c.num_heads:
            rep = c.num_heads // c.num_kv_heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        if c.sliding_window is not None and t > c.sliding_window:
            i = torch.arange(t, device=x.device)
            allowed = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < c.sliding_window)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, c.num_heads * c.head_size))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = QATLinear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = QATLinear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = QATLinear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

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
        # On the meta device Embedding is given its tensor, so it skips normal_, which on meta imports torch's
        # Python meta kernels and sympy (75 MB resident); elsewhere it draws as always (seeded runs unchanged).
        shape = (cfg.vocab_size, cfg.hidden_size)
        meta = torch.empty(0).is_meta
        self.embed_tokens = nn.Embedding(*shape, _weight=torch.empty(shape) if meta else None)
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
            # A meta model (shapes only, weights read next) has nothing to draw (see LlamaModel).
            if isinstance(module, nn.Linear | nn.Embedding) and not module.weight.is_meta:
                nn.init.normal_(module.weight, mean=0.0, std=0.02)  # HF initializer_range
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

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
        return self.lm_head(self.final_hidden(x, start))

    def final_hidden(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """The normed last hidden state [batch, seq, hidden] from decoder layer `start`'s input x."""
        cos, sin = rope_tables(self.cfg, x.shape[1], x.device)
        for layer in self.model.layers[start:]:
            x = layer(x, cos, sin)
        return self.model.norm(x)

    @torch.no_grad()
    def token_losses(self, ids: torch.Tensor, targets: torch.Tensor, max_logits: int = LOGITS_AT_ONCE) -> torch.Tensor:
        """Cross-entropy (nats, float32, no gradient) of each target [batch, seq] after `ids`."""
        return self.losses_from_layer(self.embed(ids), targets, 0, max_logits)

    @torch.no_grad()
    def losses_from_layer(
        self, x: torch.Tensor, targets: torch.Tensor, start: int = 0, max_logits: int = LOGITS_AT_ONCE
    ) -> torch.Tensor:
        """`token_losses` from decoder layer `start`'s input x [batch, seq, hidden]. The output projection
        fills one reused buffer of at most `max_logits` logits at a time and the softmax runs in it in place:
        a 49 k vocabulary never holds a batch's logits (400 MB), and no chunk allocates anew (the allocator
        kept freed chunks' pages, so fresh ones grew the process by hundreds of MB)."""
        hidden = self.final_hidden(x, start).flatten(0, 1).float()
        flat, weight = targets.flatten(), self.lm_head.effective_weight().float()
        step = max(1, min(len(flat), max_logits // self.cfg.vocab_size))
        buffer, losses = torch.empty(step, self.cfg.vocab_size), torch.empty(len(flat))
        for i in range(0, len(flat), step):
            logits = torch.mm(hidden[i : i + step], weight.t(), out=buffer[: len(flat[i : i + step])])
            top = logits.amax(1, keepdim=True)
            picked = logits.gather(1, flat[i : i + step, None])
            total = logits.sub_(top).exp_().sum(1)
            losses[i : i + step] = total.log_().add_(top[:, 0]).sub_(picked[:, 0])
        return losses.view_as(targets)

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
