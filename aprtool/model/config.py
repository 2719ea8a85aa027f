"""The Llama family's shape: one dataclass with options, and the presets (no torch, so the CLI can list them).

One model carries every supported architecture; the options say where they differ from Llama:
Mistral's sliding window, Qwen2's q/k/v biases, Qwen3's per-head q/k RMSNorm and explicit head_dim,
Llama 3's rope scaling. Names follow Hugging Face's config.json where one exists.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from aprtool.errors import UsageError

# The Hugging Face class of each supported architecture and its `model_type`.
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
DEFAULT_ARCHITECTURE = "LlamaForCausalLM"
ROPE_TYPES = ("linear", "llama3")  # besides "default" (no scaling)
# Where a family member differs from Llama; None or False is Llama's choice.
OPTIONS = ("head_dim", "qkv_bias", "o_bias", "mlp_bias", "qk_norm", "rope_scaling", "sliding_window")


@dataclass(frozen=True)
class RopeScaling:
    """Rotary-frequency scaling: `linear` divides every frequency by `factor`; `llama3` (Llama 3.1) keeps
    the high frequencies, divides the low ones by `factor` and blends in between."""

    rope_type: str
    factor: float
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: int = 4
    intermediate_size: int = 688
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    architecture: str = DEFAULT_ARCHITECTURE
    head_dim: int | None = None  # None: hidden_size / num_heads (see head_size)
    qkv_bias: bool = False  # q/k/v projections have biases (Qwen2; Llama's attention_bias)
    o_bias: bool = False  # the output projection has one (Llama's attention_bias)
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm over each head of q and k before the rotation (Qwen3)
    rope_scaling: RopeScaling | None = None
    sliding_window: int | None = None  # a token sees at most this many positions, itself included (Mistral)

    def validate(self) -> LlamaConfig:
        if self.architecture not in ARCHITECTURES:
            raise UsageError(f"architecture {self.architecture!r:.60} is not one of {', '.join(ARCHITECTURES)}")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise UsageError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise UsageError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        if self.head_size % 2:
            raise UsageError(f"head_dim {self.head_size} must be even for RoPE")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
                raise UsageError(f"{f.name} must be positive, got {value}")
        return self

    @property
    def head_size(self) -> int:
        """Each attention head's width: `head_dim` when the config sets it, else hidden_size / num_heads."""
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def model_type(self) -> str:
        return ARCHITECTURES[self.architecture]

    def to_metadata(self) -> dict[str, Any]:
        """Every field, except the options left at their defaults (a Llama file reads as it always did)."""
        out = asdict(self)
        for name in OPTIONS:
            if out[name] is None or out[name] is False:
                del out[name]
        return out

    def with_overrides(self, **overrides: Any) -> LlamaConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


# Sizes: `tiny` for tests, `small` runs the default job on a laptop CPU in minutes, larger ones want a GPU.
PRESETS: dict[str, LlamaConfig] = {
    "tiny": LlamaConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=172,
                        max_position_embeddings=128),
    "small": LlamaConfig(),
    "medium": LlamaConfig(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1376,
                          max_position_embeddings=512),
    "large": LlamaConfig(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4, intermediate_size=2048,
                         max_position_embeddings=1024),
}  # fmt: skip
