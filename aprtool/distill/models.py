"""Teacher and student: loading aprtool Llama files, building the student, choosing what it learns.

Student initialization from the teacher (`--init teacher`, the default unless --student-size):
  - layers: student layer i is teacher layer floor(i * L / N) (N student layers of the teacher's L), so
    N = L/2 takes every other layer (0, 2, 4, ...), N = L copies them all;
  - FFN narrower (`--student-intermediate-size M`): the first M channels, i.e. rows [:M] of gate_proj and
    up_proj and columns [:, :M] of down_proj;
  - fewer KV heads (`--student-kv-heads K`, same head size): groups of adjacent teacher KV heads are
    mean-pooled, as when a multi-head checkpoint is converted to grouped-query attention;
  - embeddings, norms and lm_head are copied; a tensor no rule fits (e.g. other head sizes) keeps its
    fresh initialization, and the log names it.
In blockwise mode the embeddings, the final norm and lm_head always come from the teacher and do not
train, whatever the student's init, so the student's blocks work on the teacher's hidden states.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aprtool.container import verify_file
from aprtool.distill.config import KEY_PARTS, DistillConfig
from aprtool.errors import (
    AprError,
    UsageError,
)
from aprtool.files.detect import APR, detect
from aprtool.model.io import load_model, tokenizer_info
from aprtool.model.llama import PRESETS, LlamaConfig, LlamaForCausalLM
from aprtool.model.sources import model_digest
from aprtool.schema import from_json

# --keys-to-learn: the parameters of each decoder layer that each key trains
OUTER = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")  # not in any block


@dataclass
class LoadedModel:
    path: Path
    model: LlamaForCausalLM
    metadata: dict[str, Any]
    sha256: str
    format: str = "apr"

    @property
    def cfg(self) -> LlamaConfig:
        return self.model.cfg

    @property
    def tokenizer(self) -> dict[str, Any]:
        return self.metadata["tokenizer"]

    @property
    def trained_with(self) -> TrainedWith:
        """What the training recorded (a model's training_summary, a checkpoint's training), type-checked."""
        training = self.metadata.get("training_summary") or self.metadata.get("training") or {}
        config = training.get("config") if isinstance(training, dict) else None
        where = "metadata.training_summary.config"
        return from_json(TrainedWith, config, where) if isinstance(config, dict) else TrainedWith()

    @property
    def run_dir(self) -> Path | None:
        """The pretrain run directory an aprtool model belongs to (RUN_DIR/model.apr or RUN_DIR/ckpt/*.apr);
        None for a model of another format, which no aprtool run made."""
        if self.format != "apr":
            return None
        return self.path.parent.parent if self.path.parent.name == "ckpt" else self.path.parent


@dataclass(frozen=True)
class TrainedWith:
    """The few facts of a teacher's training that distill uses as defaults."""

    seq_len: int | None = None
    val_fraction: float = 0.05
    corpus: str | None = None  # shown to the user, never opened: they pass it as --corpus


def load_llama(path: str | Path, role: str) -> LoadedModel:
    """A Llama-family model with its tokenizer, as float32: an aprtool file (a `pretrain` model or checkpoint,
    verified first) or any format `model.sources` opens (an HF folder, safetensors with config.json, GGUF)."""
    path = Path(path)
    if detect(path) == APR:
        report = verify_file(path)
        if not report.valid:
            raise report.error(f"--{role} {path}")
    try:
        model, info = load_model(path)
        if tokenizer_info(info.metadata, info.config) is None:
            raise UsageError("the model has no tokenizer (an HF folder needs tokenizer.json)")
    except AprError as exc:
        raise type(exc)(f"--{role} {path}: {exc}") from None
    return LoadedModel(path, model, info.metadata, model_digest(path), info.format)


def tokenizer_differences(teacher: dict[str, Any], other: dict[str, Any], other_role: str) -> list[str]:
    keys = ["kind", "vocab_size"] + (["sha256"] if teacher.get("kind") in ("bpe", "hf") else [])
    return [
        f"tokenizer {k}: teacher {teacher.get(k)!r}, {other_role} {other.get(k)!r}"
        for k in keys
        if teacher.get(k) != other.get(k)
    ]


@dataclass
class StudentPlan:
    """What the student is before any tensor exists: its shape and where its initial values come from."""

    config: LlamaConfig
    init: str  # teacher | scratch | file
    layer_map: list[int] | None = None  # teacher init: student layer i <- teacher layer layer_map[i]
    source: LoadedModel | None = None  # --student FILE

    def describe(self) -> dict[str, Any]:
        return {
            "init": self.init,
            "layer_map": self.layer_map,
            "student_file": str(self.source.path) if self.source else None,
            "student_sha256": self.source.sha256 if self.source else None,
            "config": self.config.to_metadata(),
        }


def plan_student(cfg: DistillConfig, teacher: LoadedModel) -> StudentPlan:
    t = teacher.cfg
    seq_len = cfg.seq_len or 0
    shape = {
        "num_layers": cfg.student_layers,
        "intermediate_size": cfg.student_intermediate_size,
        "num_heads": cfg.student_heads,
        "num_kv_heads": cfg.student_kv_heads,
    }
    if cfg.student is not None:
        source = load_llama(cfg.student, "student")
        differences = tokenizer_differences(teacher.tokenizer, source.tokenizer, "student")
        if differences:
            raise UsageError(
                f"--student {cfg.student}: teacher and student must share the tokenizer; {'; '.join(differences)}"
            )
        plan = StudentPlan(source.cfg, "file", source=source)
    elif cfg.init == "scratch":
        base = PRESETS[cfg.student_size] if cfg.student_size else t
        config = base.with_overrides(
            vocab_size=t.vocab_size,
            tie_word_embeddings=t.tie_word_embeddings,
            max_position_embeddings=max(base.max_position_embeddings, seq_len),
            **shape,
        ).validate()
        plan = StudentPlan(config, "scratch")
    else:
        config = t.with_overrides(**shape).validate()
        if config.num_layers > t.num_layers:
            raise UsageError(f"--student-layers {config.num_layers}: the teacher has only {t.num_layers}")
        if config.intermediate_size > t.intermediate_size:
            raise UsageError(
                f"--student-intermediate-size {config.intermediate_size} is wider than the teacher's "
                f"{t.intermediate_size}: initialize it with --init scratch"
            )
        if config.hidden_size != t.hidden_size:
            raise UsageError("a student initialized from the teacher has the teacher's hidden size")
        layer_map = [i * t.num_layers // config.num_layers for i in range(config.num_layers)]
        plan = StudentPlan(config, "teacher", layer_map=layer_map)
    s = plan.config
    if s.vocab_size != t.vocab_size:
        raise UsageError(f"student vocab_size {s.vocab_size} differs from the teacher's {t.vocab_size}")
    for who, c in (("teacher", t), ("student", s)):
        if seq_len > c.max_position_embeddings:
            raise UsageError(
                f"--seq-len {seq_len} exceeds the {who}'s max_position_embeddings {c.max_position_embeddings}"
            )
    if cfg.mode == "blockwise":
        if (s.hidden_size, s.num_layers) != (t.hidden_size, t.num_layers):
            raise UsageError(
                f"--mode blockwise: student block i learns teacher block i on the teacher's hidden states, so the "
                f"student needs the teacher's hidden_size and num_layers ({t.hidden_size}, {t.num_layers}); it has "
                f"({s.hidden_size}, {s.num_layers}). FFN width and attention heads may differ."
            )
        if s.tie_word_embeddings and not t.tie_word_embeddings:
            raise UsageError("--mode blockwise: a tied student cannot take an untied teacher's lm_head")
    return plan


def _adapt(name: str, src: torch.Tensor, shape: torch.Size, t: LlamaConfig, s: LlamaConfig) -> torch.Tensor | None:
    """The teacher tensor `src` fitted to the student's `shape`, or None when no rule applies."""
    if src.shape == shape:
        return src
    if name.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight")) and src.shape[1] == shape[1]:
        return src[: shape[0]]
    if name.endswith("mlp.down_proj.weight") and src.shape[0] == shape[0]:
        return src[:, : shape[1]]
    if (
        name.endswith(("self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.k_proj.bias",
                       "self_attn.v_proj.bias"))
        and t.head_size == s.head_size
        and t.num_kv_heads % s.num_kv_heads == 0
    ):  # fmt: skip
        group = t.num_kv_heads // s.num_kv_heads
        return src.view(s.num_kv_heads, group, t.head_size, *src.shape[1:]).mean(1).reshape(shape)
    return None


def build_student(plan: StudentPlan, teacher: LoadedModel, mode: str, log: Any) -> LlamaForCausalLM:
    """The student with its initial values (call after seeding: fresh tensors come from the RNG)."""
    student = LlamaForCausalLM(plan.config)
    teacher_sd = teacher.model.state_dict()
    fresh = []
    with torch.no_grad():
        if plan.init == "file":
            student.load_weights(plan.source.model.weights())
        elif plan.init == "teacher":
            for name, param in student.state_dict(keep_vars=True).items():
                source_name = name
                if name.startswith("model.layers."):
                    index, rest = name[len("model.layers.") :].split(".", 1)
                    source_name = f"model.layers.{plan.layer_map[int(index)]}.{rest}"
                value = _adapt(name, teacher_sd[source_name], param.shape, teacher.cfg, plan.config)
                if value is None:
                    fresh.append(name)
                else:
                    param.copy_(value)
        if mode == "blockwise":  # the blocks learn on the teacher's hidden states: same embeddings and head
            for name, param in student.state_dict(keep_vars=True).items():
                if name in OUTER:
                    param.copy_(teacher_sd[name])
    if fresh:
        log(f"student init: {len(fresh)} tensor(s) have no teacher counterpart and start fresh: {', '.join(fresh)}")
    return student


def freeze(student: LlamaForCausalLM, keys: tuple[str, ...] | None) -> list[str]:
    """requires_grad False for every parameter outside `keys` (None: everything learns); returns the learners."""
    prefixes = tuple(p for k in keys for p in KEY_PARTS[k]) if keys is not None else None
    learned = []
    for name, param in student.named_parameters():
        learn = prefixes is None or (
            name.startswith("model.layers.") and name[len("model.layers.") :].split(".", 1)[1].startswith(prefixes)
        )
        param.requires_grad_(learn)
        if learn:
            learned.append(name)
    return learned


def block_parameters(student: LlamaForCausalLM) -> list[list[torch.nn.Parameter]]:
    """The learning parameters of each decoder layer (blockwise clips each block on its own)."""
    return [[p for p in layer.parameters() if p.requires_grad] for layer in student.model.layers]
