"""Distillation configuration: one dataclass, every field a CLI flag with the same name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aprtool.data.documents import DEFAULT_TEXT_FIELD
from aprtool.errors import UsageError
from aprtool.train.config import LoopConfig

MODES = ("logits", "blockwise")
TEACHER_DTYPES = ("f32", "bf16", "f16")  # --teacher-dtype: half precision halves a large teacher's memory
INITS = ("teacher", "scratch")
KEYS = ("entire_block", "attention", "ffn")  # --keys-to-learn values, in their canonical order
KEY_PARTS = {  # the decoder-layer parameter prefixes each key trains
    "entire_block": ("self_attn.", "input_layernorm.", "mlp.", "post_attention_layernorm."),
    "attention": ("self_attn.", "input_layernorm."),
    "ffn": ("mlp.", "post_attention_layernorm."),
}


@dataclass(frozen=True)
class DistillConfig(LoopConfig):
    """The student and the distillation; optimizer, schedule, evaluation and checkpoints are LoopConfig's."""

    # the student: a file, a preset from scratch, or (default) built from the teacher
    student: str | None = None  # an aprtool Llama .apr to start from, used as is
    student_size: str | None = None  # a preset (tiny, small, ...), initialized from scratch
    init: str | None = None  # teacher | scratch; None: scratch with --student-size, else teacher
    student_layers: int | None = None  # teacher init: layers i*L//N of the teacher's L
    student_intermediate_size: int | None = None  # teacher init: the first M FFN channels
    student_heads: int | None = None
    student_kv_heads: int | None = None  # teacher init: adjacent KV heads mean-pooled
    # distillation
    mode: str = "logits"  # logits | blockwise
    temperature: float = 1.0  # T = 2 did worse in docs/performance.md's short runs
    alpha: float = 0.5  # weight of the KD term; 1 - alpha weighs cross-entropy on the labels
    keys_to_learn: str | None = None  # None: blockwise entire_block; logits every parameter
    teacher_dtype: str = "f32"  # f32 | bf16 | f16: the teacher's weights and forward pass
    # data (None: the teacher's prepared data, else the default corpus with the teacher's tokenizer)
    corpus: str | None = None
    text_field: str = DEFAULT_TEXT_FIELD  # the documents' field in a parquet / jsonl corpus

    def validate(self) -> DistillConfig:
        from aprtool.model.config import PRESETS

        if self.mode not in MODES:
            raise UsageError(f"--mode {self.mode!r}: choose logits or blockwise")
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise UsageError(f"--teacher-dtype {self.teacher_dtype!r}: choose from {', '.join(TEACHER_DTYPES)}")
        if self.init is not None and self.init not in INITS:
            raise UsageError(f"--init {self.init!r}: choose teacher or scratch")
        if self.student is not None:
            given = [f"--{n.replace('_', '-')}" for n in STUDENT_SHAPE if getattr(self, n) is not None]
            if given or self.init is not None:
                raise UsageError(f"--student is used as it is: drop {', '.join(given or ['--init'])}")
        if self.student_size is not None:
            if self.student_size not in PRESETS:
                raise UsageError(f"--student-size {self.student_size!r}: choose from {', '.join(PRESETS)}")
            if self.init == "teacher":
                raise UsageError("--student-size builds a student from scratch: drop --init teacher")
        if not self.temperature > 0:
            raise UsageError(f"--temperature {self.temperature}: must be positive")
        if not 0 <= self.alpha <= 1:
            raise UsageError(f"--alpha {self.alpha}: must be between 0 and 1")
        if self.keys_to_learn is not None:
            parse_keys(self.keys_to_learn)
        for name in STUDENT_SHAPE:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive")
        return super().validate()

    @property
    def learned_keys(self) -> tuple[str, ...] | None:
        """The sub-blocks that train; None: every parameter (logit KD without --keys-to-learn)."""
        if self.keys_to_learn is not None:
            return parse_keys(self.keys_to_learn)
        return ("entire_block",) if self.mode == "blockwise" else None


STUDENT_SHAPE = ("student_layers", "student_intermediate_size", "student_heads", "student_kv_heads")

# Fields that do not change what is trained: left out of the run's fingerprint, free to change on
# resume. Paths are represented by content instead (the teacher's and student's sha256, the data's
# fingerprint), so moving a file does not make it another run.
NOT_IDENTITY = ("student", "corpus", "eval_every", "eval_tokens", "checkpoint_every", "checkpoint_minutes", "keep_last",
                "keep_epochs", "log_every", "strict")  # fmt: skip


def parse_keys(text: str) -> tuple[str, ...]:
    """`attention,ffn` -> ('attention', 'ffn'); unknown names and entire_block mixed with others are errors."""
    given = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in given if k not in KEYS]
    if not given or unknown:
        raise UsageError(f"--keys-to-learn {text!r}: choose from {', '.join(KEYS)} (comma-separated)")
    if "entire_block" in given and len(set(given)) > 1:
        raise UsageError("--keys-to-learn: entire_block already includes attention and ffn; do not mix them")
    return tuple(k for k in KEYS if k in given)


def identity(cfg: DistillConfig) -> dict[str, Any]:
    """What decides the run, resolved: `--mode blockwise` and `--mode blockwise --keys-to-learn
    entire_block` are the same run (the default spelled out)."""
    out = {k: v for k, v in cfg.to_dict().items() if k not in NOT_IDENTITY}
    keys = cfg.learned_keys
    out["keys_to_learn"] = ",".join(resolved_keys(keys)) if keys is not None else None
    return out


def resolved_keys(keys: tuple[str, ...]) -> tuple[str, ...]:
    """The keys by what they train: `attention,ffn` trains exactly `entire_block`'s parameters, so it is
    the same run (other spellings were already one canonical form each)."""
    parts = {p for k in keys for p in KEY_PARTS[k]}
    return ("entire_block",) if parts == set(KEY_PARTS["entire_block"]) else keys


def resume_differences(saved: DistillConfig, wanted: DistillConfig) -> list[str]:
    a, b = identity(saved), identity(wanted)
    return [f"{name}: checkpoint has {a[name]!r}, requested {b[name]!r}" for name in a if a[name] != b[name]]
