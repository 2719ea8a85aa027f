"""The Llama architecture's shape: one dataclass and the presets (no torch, so the CLI can list them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from aprtool.errors import UsageError


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

    def validate(self) -> LlamaConfig:
        if self.hidden_size % self.num_heads:
            raise UsageError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise UsageError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        if (self.hidden_size // self.num_heads) % 2:
            raise UsageError("head_dim (hidden_size / num_heads) must be even for RoPE")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
                raise UsageError(f"{f.name} must be positive, got {value}")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_metadata(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> LlamaConfig:
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(metadata))
        if missing:
            raise UsageError(f"model metadata lacks {', '.join(missing)}")
        return cls(**{k: metadata[k] for k in names}).validate()

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
