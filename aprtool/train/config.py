"""Training configuration: dataclasses whose every field is a CLI flag with the same name.

`LoopConfig` holds what every trainer shares (optimizer, schedule and phases, batch, evaluation and
early stopping, checkpoint cadence, logging); `TrainConfig` (pretrain) and `DistillConfig` add their own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Self

from aprtool.container.constants import DEFAULT_CLIP, DEFAULT_MIN_ELEMENTS
from aprtool.data.documents import DEFAULT_TEXT_FIELD
from aprtool.errors import UsageError

if TYPE_CHECKING:  # the model module imports torch; the CLI reads this file just for defaults
    from aprtool.model.config import LlamaConfig

SCHEDULES = ("cosine", "linear")
DEVICES = ("cpu", "cuda")
MODEL_FIELDS = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "rope_theta")

_POSITIVE = ("steps", "batch_size", "grad_accum", "eval_every", "eval_tokens", "log_every")
_NON_NEGATIVE = ("keep_last", "keep_epochs", "checkpoint_every", "warmup_steps", "patience", "min_evals", "min_epochs")


@dataclass(frozen=True)
class LoopConfig:
    """What the training engine reads: the same flags, defaults and checks for pretrain and distill."""

    # optimization
    steps: int = 300
    seq_len: int | None = None  # pretrain: 256; distill: None = the teacher's
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # decay floor, as a fraction of lr
    warmup_steps: int = 30
    schedule: str = "cosine"  # cosine | linear
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # distill blockwise: per block, so blocks stay independent
    seed: int = 0
    device: str = "cpu"
    # wall-clock budget and late phases (fractions of the budget actually available; see phases.py)
    time_budget: float | None = None  # seconds; with it, progress is measured in wall time
    warmdown_frac: float = 0.0  # > 0: warmup-stable-warmdown schedule, linear warmdown over this fraction
    swa_frac: float = 0.0  # average the weights over this last fraction (a plain mean, or EMA with --ema)
    ema: float = 0.0  # EMA decay for the averaging window (0: plain mean)
    qat_frac: float = 0.0  # int6 fake quantization over this last fraction
    qat_clip: str = DEFAULT_CLIP  # the clip `compress` will use
    qat_min_elements: int = DEFAULT_MIN_ELEMENTS  # the threshold `compress` will use
    strict: bool = False  # refuse to start when a configured phase cannot fit or the held-out set is short
    # evaluation and early stopping
    eval_every: int = 50
    eval_tokens: int = 32768  # the same held-out tokens every time, so evaluations are comparable
    patience: int = 5  # evaluations without a new best before stopping
    min_delta: float = 0.0  # an improvement must beat the best by more than this (nats/token)
    min_evals: int = 8  # early stopping may not fire before this many evaluations
    min_epochs: int = 0  # ... nor before this many passes over the training split
    # checkpoints and logging
    checkpoint_every: int = 0  # steps; 0: by wall time
    checkpoint_minutes: float = 10.0  # with checkpoint_every 0; 0: no periodic saves (the final one stays)
    keep_last: int = 5
    keep_epochs: int = 3  # epoch checkpoints kept (full training states); 0: none, the records stay
    log_every: int = 10

    def validate(self) -> Self:
        if self.schedule not in SCHEDULES:
            raise UsageError(f"--schedule {self.schedule!r}: choose {' or '.join(SCHEDULES)}")
        if self.device not in DEVICES:
            raise UsageError(f"--device {self.device!r}: choose {' or '.join(DEVICES)}")
        for name in _POSITIVE:
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive")
        if self.seq_len is not None and self.seq_len <= 0:
            raise UsageError("--seq-len must be positive")
        for name in _NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UsageError("--min-lr-ratio must be between 0 and 1")
        if self.lr <= 0:
            raise UsageError("--lr must be positive")
        if not self.checkpoint_minutes >= 0:  # also NaN
            raise UsageError("--checkpoint-minutes must be >= 0 (0: no periodic checkpoints)")
        if self.time_budget is not None and self.time_budget <= 0:
            raise UsageError("--time-budget must be positive (seconds)")
        for name in ("warmdown_frac", "swa_frac", "qat_frac"):
            if not 0 <= getattr(self, name) <= 1:
                raise UsageError(f"--{name.replace('_', '-')} must be between 0 and 1")
        if not 0 <= self.ema < 1:
            raise UsageError("--ema must be in [0, 1)")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise UsageError("--beta1 and --beta2 must be in [0, 1)")
        from aprtool.codecs.quant import Clip

        Clip.parse(self.qat_clip)
        if not self.grad_clip >= 0:
            raise UsageError(f"--grad-clip {self.grad_clip}: must be >= 0 (0 turns clipping off)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "training.config") -> Self:
        """From a checkpoint's JSON: every field's type is checked (exit 4 naming it)."""
        from aprtool.schema import from_json

        return from_json(cls, data, where)

    def merged(self, overrides: dict[str, Any]) -> Self:
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            raise UsageError(f"unknown option(s): {', '.join(unknown)}")
        return replace(self, **overrides)

    def with_budget(self, given: dict[str, Any]) -> Self:
        """A --time-budget without --steps: the budget, not a step count, ends the run."""
        if self.time_budget and "steps" not in given:
            return replace(self, steps=UNBOUNDED_STEPS)
        return self


UNBOUNDED_STEPS = 10**9  # --time-budget without --steps: the budget, never this count, ends the run
LOOP_FIELDS = tuple(f.name for f in fields(LoopConfig))


@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    # continued pretraining: a model of any format, whose architecture, tokenizer and weights the run starts from
    init: str | None = None
    # data
    corpus: str | None = None  # None: the embedded default corpus (the stdlib's sources)
    text_field: str = DEFAULT_TEXT_FIELD  # the documents' field in a parquet / jsonl corpus
    tokenizer: str = "bpe"  # bpe | bytes | a tokenizer.json or SentencePiece .model (read once, then embedded)
    vocab_size: int = 4096  # for bpe
    val_fraction: float = 0.05
    # model
    size: str = "small"
    hidden_size: int | None = None  # overrides of the preset
    num_layers: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    intermediate_size: int | None = None
    rope_theta: float | None = None
    tie_word_embeddings: bool = True
    seq_len: int = 256

    def validate(self) -> TrainConfig:
        from aprtool.model.config import PRESETS

        if self.size not in PRESETS:
            raise UsageError(f"--size {self.size!r}: choose from {', '.join(PRESETS)}")
        if not self.tokenizer:
            raise UsageError("--tokenizer: choose bpe, bytes, or a tokenizer.json / SentencePiece .model file")
        return super().validate()

    def model_config(self, vocab_size: int) -> LlamaConfig:
        from aprtool.model.config import PRESETS

        base = PRESETS[self.size]
        overrides = {name: getattr(self, name) for name in MODEL_FIELDS}
        return base.with_overrides(
            vocab_size=vocab_size,
            max_position_embeddings=max(base.max_position_embeddings, self.seq_len),
            tie_word_embeddings=self.tie_word_embeddings,
            **overrides,
        ).validate()


# What --init decides (the model's shape and its tokenizer): giving one of these with it is refused.
INIT_DECIDES = ("tokenizer", "vocab_size", "size", *MODEL_FIELDS, "tie_word_embeddings")
# Changing these would make a resumed run a different run: resume refuses, naming the field.
RESUME_LOCKED = (
    "init", "corpus", "text_field", "tokenizer", "vocab_size", "val_fraction", "size", *MODEL_FIELDS,
    "tie_word_embeddings", "seq_len", "batch_size", "grad_accum", "seed",
)  # fmt: skip


def resume_differences(saved: TrainConfig, wanted: TrainConfig) -> list[str]:
    return [
        f"{name}: checkpoint has {getattr(saved, name)!r}, requested {getattr(wanted, name)!r}"
        for name in RESUME_LOCKED
        if getattr(saved, name) != getattr(wanted, name)
    ]
