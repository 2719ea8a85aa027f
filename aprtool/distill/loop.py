"""`distill`: a teacher's knowledge into a student, through the training engine.

    load and verify the teacher -> configuration (fresh, or the checkpoint's) -> the teacher's data ->
    the student's plan and the run's fingerprint -> skip a completed run / refuse a foreign one ->
    build (or restore) the student, optimizer, RNG and data position -> Engine.train() with the
    distillation task (the teacher's targets under no_grad, the student's logit KD or blockwise loss)
    -> final checkpoint -> DIR/model.apr, read back and proven to hold the trained student.

The loop, checkpoints, evaluation, phases and multi-process training are the engine's (train/engine.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from aprtool.atomic import atomic_write_text, removed_if_refused
from aprtool.data.loader import BatchLoader, eval_windows
from aprtool.data.prepare import corpus_record
from aprtool.data.tokenizer import TOKENIZER_FILE, bpe_json, without_tokenizer_text
from aprtool.distill.config import DistillConfig, parse_keys, resume_differences
from aprtool.distill.losses import block_losses, logit_kd_loss, teacher_hidden_states
from aprtool.distill.models import LoadedModel, block_parameters, build_student, freeze, load_llama, plan_student
from aprtool.distill.run import DistillStatus, before_fresh_run, fingerprint, read_state, teacher_corpus
from aprtool.errors import FileAccessError, MetadataError, UsageError
from aprtool.model.io import model_metadata
from aprtool.model.llama import LlamaForCausalLM
from aprtool.paths import recorded_path_hint
from aprtool.train.checkpoint import Checkpoint, CheckpointDir, load_checkpoint
from aprtool.train.common import code_version, evaluate, seed_everything, stderr_log
from aprtool.train.distributed import Dist, init_distributed, shutdown
from aprtool.train.engine import Engine, RunState, Task, optimizer_and_state, run_facts
from aprtool.train.export import check_saved_model, export_trained, start_digests
from aprtool.train.metrics import MetricsLog, require_tensorboard
from aprtool.train.plot import try_plot
from aprtool.train.runs import write_run_config

CKPT_PREFIX = "ckpt-step-"


class Distillation(Task):
    """The student learns the teacher's logits (KD + label cross-entropy) or each block's output."""

    def __init__(self, student: LlamaForCausalLM, teacher: LlamaForCausalLM, cfg: DistillConfig) -> None:
        self.model, self.teacher, self.cfg = student, teacher, cfg
        self.blocks = block_parameters(student) if cfg.mode == "blockwise" else None

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        if self.blocks is None:
            with torch.no_grad():
                teacher_logits = self.teacher(x) if cfg.alpha > 0 else None
            loss, kd, ce = logit_kd_loss(self.model(x), teacher_logits, y, cfg.temperature, cfg.alpha)
            return loss, {"kd_loss": float(kd.detach()), "ce_loss": float(ce.detach())}
        per_block = block_losses(self.model, teacher_hidden_states(self.teacher, x))
        return torch.stack(per_block).sum(), {f"block.{i}": float(b.detach()) for i, b in enumerate(per_block)}

    def clip(self, params: list[torch.nn.Parameter], limit: float) -> float:
        if self.blocks is None:
            return super().clip(params, limit)
        # blockwise: each block clipped on its own, so the blocks stay independent
        return max((float(torch.nn.utils.clip_grad_norm_(b, limit)) for b in self.blocks if b), default=0.0)

    def nonfinite(self, loss: float, parts: dict[str, float]) -> str:
        if self.blocks is not None:
            bad = [(k.split(".")[1], v) for k, v in parts.items() if not math.isfinite(v)]
            return "non-finite loss in " + ", ".join(f"block {i} ({v})" for i, v in bad)
        return f"loss became {loss} (kd {parts.get('kd_loss')}, ce {parts.get('ce_loss')})"

    def log_fields(self, state: RunState, parts: dict[str, float]) -> dict[str, Any]:
        if self.blocks is None:
            return parts
        state.task["block_losses"] = [parts[f"block.{i}"] for i in range(len(self.blocks))]
        return {"block_losses": state.task["block_losses"]}

    def eval_note(self, state: RunState) -> str:
        blocks = state.task.get("block_losses")
        note = f"; block losses {', '.join(f'{v:.4g}' for v in blocks)}" if blocks else ""
        return f" (best {state.best_val_loss:.4f}, teacher {state.task['teacher_val_loss']:.4f}){note}"


def resolve(cfg: DistillConfig, teacher: LoadedModel) -> DistillConfig:
    """Fill the defaults that depend on the teacher, so the stored config says exactly what ran."""
    trained_seq_len = teacher.trained_with.seq_len or 256
    seq_len = cfg.seq_len or min(trained_seq_len, teacher.cfg.max_position_embeddings)
    init = cfg.init
    if cfg.student is None and init is None:
        init = "scratch" if cfg.student_size else "teacher"
    keys = ",".join(parse_keys(cfg.keys_to_learn)) if cfg.keys_to_learn is not None else None
    return replace(cfg, seq_len=seq_len, init=init, keys_to_learn=keys).validate()


def distill(
    teacher: str | Path,
    out: str | Path,
    options: dict[str, Any] | None = None,
    *,
    resume: str | None = None,
    force: bool = False,
    log: Callable[[str], None] = stderr_log,
    progress: Callable[[dict[str, Any]], None] | None = None,
    tensorboard: bool = False,
) -> dict[str, Any]:
    """Distill `teacher` into a student in `out`; return the summary. `options` are DistillConfig fields;
    on resume the checkpoint's config is the base and only the fields given here change (those that
    would alter the run are refused, naming the field). Under torchrun every rank trains, rank 0 writes."""
    out = Path(out)
    options = dict(options or {})
    if tensorboard:
        require_tensorboard()
    if force and resume is not None:
        raise UsageError("--force starts over and --resume continues: choose one")
    d = init_distributed(options.get("device", "cpu"))
    try:
        log = log if d.main else lambda _m: None
        return _distill(teacher, out, options, resume, force, log, progress, tensorboard, d)
    finally:
        shutdown(d)


def _configure(
    teach: LoadedModel, ckpts: CheckpointDir, options: dict[str, Any], resume: str | None, d: Dist
) -> tuple[DistillConfig, Checkpoint | None]:
    """The run's configuration, resolved against the teacher: fresh, or the checkpoint's."""
    if resume is None:
        return resolve(DistillConfig().merged(options).with_budget(options).validate(), teach), None
    if resume == "latest" and not ckpts.dir.is_dir():
        raise FileAccessError(f"--resume latest: {ckpts.dir} does not exist (nothing to resume)")
    ckpt = load_checkpoint(Path(d.from_main(str(ckpts.resolve(resume)))))  # every rank the same file
    if "fingerprint" not in ckpt.training:
        raise UsageError(f"--resume {ckpt.path}: not a distill checkpoint")
    if not isinstance(ckpt.training.get("teacher_sha256"), str):
        raise MetadataError(f"{ckpt.path}: training.teacher_sha256 is missing or not a string")
    saved = DistillConfig.from_dict(ckpt.training["config"])
    if saved.student is not None and "student" not in options:
        raise recorded_path_hint("this run started from student", saved.student, "--student")
    cfg = resolve(saved.merged(options).validate(), teach)
    differences = resume_differences(saved, cfg)
    if ckpt.training["teacher_sha256"] != teach.sha256:
        differences.append(f"teacher: checkpoint was trained from sha256 {ckpt.training['teacher_sha256'][:12]}…")
    if differences:
        raise UsageError(f"cannot resume {ckpt.path.name}: {'; '.join(differences)}")
    return cfg, ckpt


def _distill(teacher, out: Path, options, resume, force, log, progress, tensorboard, d: Dist) -> dict[str, Any]:
    ckpts = CheckpointDir(out / "ckpt", keep_last=5, log=log, prefix=CKPT_PREFIX)
    if resume is None:
        DistillConfig().merged(options).validate()  # bad options: before any work
    teach = load_llama(teacher, "teacher")
    cfg, ckpt = _configure(teach, ckpts, options, resume, d)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    ckpts.keep_last, ckpts.keep_epochs = cfg.keep_last, cfg.keep_epochs

    # --- data: the teacher's tokens (prepared by rank 0; every rank opens the same shards)
    resuming = (ckpt.training.get("data_fingerprint"), DistillConfig.from_dict(ckpt.training["config"]).corpus) \
        if ckpt is not None else None  # fmt: skip
    plan = plan_student(cfg, teach)  # a student that cannot be made is refused before any data is written
    if d.main:
        with removed_if_refused(out), removed_if_refused(out / "data"):
            out.mkdir(parents=True, exist_ok=True)
            teacher_corpus(options.get("corpus"), teach, out / "data", log, resume=resuming, text_field=cfg.text_field)
    d.barrier()
    corpus, corpus_origin = teacher_corpus(
        options.get("corpus"), teach, out / "data", log, resume=resuming, text_field=cfg.text_field
    )
    if ckpt is not None and ckpt.training.get("data_fingerprint") != corpus.fingerprint:
        raise UsageError(f"cannot resume {ckpt.path.name}: the corpus changed since the checkpoint was written")
    tok_info = dict(teach.tokenizer)
    if tok_info["kind"] != "bytes":  # the corpus's tokenizer.json, whose sha256 is the teacher's (checked above)
        tok_info |= {"file": TOKENIZER_FILE, "json": bpe_json(corpus.manifest["tokenizer"], corpus.directory)}
        if d.main:
            atomic_write_text(out / TOKENIZER_FILE, tok_info["json"])

    # --- the run's identity: skip a completed run, refuse to mix two runs
    run_id = fingerprint(cfg, teach, plan, corpus)
    model_path = out / "model.apr"
    if resume is None:
        action = d.from_main(_fresh_run_action(out, ckpts, run_id, plan, force, log) if d.main else None)
        if action == "skip":
            message = f"already completed (fingerprint {run_id[:16]}…); use --force to re-run"
            log(message)
            return {**read_state(out), "skipped": True, "message": message, "out": str(out), "model": str(model_path)}
        if action == "export-again":
            return _distill(teacher, out, options, "latest", False, log, progress, tensorboard, d)
    if d.main:
        ckpts.prepare()
    d.barrier()
    return _train(cfg, ckpt, teach, plan, run_id, corpus, corpus_origin, tok_info, ckpts, out, log, progress,
                  tensorboard, d)  # fmt: skip


def _fresh_run_action(out: Path, ckpts: CheckpointDir, run_id: str, plan: Any, force: bool, log: Any) -> str:
    with torch.device("meta"):
        expected_names = set(LlamaForCausalLM(plan.config).weights())
    check = lambda: check_saved_model(out / "model.apr", expected_names, plan.config.architecture)  # noqa: E731
    return before_fresh_run(out, ckpts, run_id, read_state(out), force, check, log)


def _build(cfg: DistillConfig, ckpt: Checkpoint | None, plan: Any, teach: LoadedModel, log: Any):
    """The student (restored on resume), what it learns, its optimizer, the loop state and SWA average."""
    seed_everything(cfg.seed)
    student = build_student(plan, teach, cfg.mode, log).to(cfg.device)
    learned = freeze(student, cfg.learned_keys)  # frozen parameters stay out of the optimizer
    optimizer, names, state, average = optimizer_and_state(student, cfg, ckpt, log)
    return student, learned, optimizer, names, state, average


def _train(cfg, ckpt, teach, plan, run_id, corpus, corpus_origin, tok_info, ckpts, out, log, progress, tensorboard,
           d: Dist) -> dict[str, Any]:  # fmt: skip
    """Build (or restore) the student, say the run's facts, train it with the engine, export it proven."""
    student, learned, optimizer, names, state, average = _build(cfg, ckpt, plan, teach, log)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[cfg.teacher_dtype]
    teacher_model = teach.model.to(cfg.device, dtype).eval().requires_grad_(False)
    metrics = MetricsLog(out, tensorboard=tensorboard and d.main)
    if d.main:
        metrics.start(state.step, fresh=ckpt is None)
    loader = BatchLoader(corpus.tokens("train"), cfg.seq_len, cfg.batch_size, cfg.seed, state.loader, d.rank, d.world)
    val_windows = eval_windows(corpus.tokens("val"), cfg.seq_len, cfg.eval_tokens)
    run_facts(cfg, loader, val_windows, d, log)
    if "teacher_val_loss" not in state.task:
        state.task["teacher_val_loss"] = evaluate(teacher_model, val_windows, cfg.batch_size, cfg.device)
        teacher_model.eval()  # evaluate() leaves a model in train mode
        log(f"teacher held-out loss {state.task['teacher_val_loss']:.4f}")
    learned_count = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    distillation = _describe(cfg, teach, plan, run_id, learned_count, corpus_origin)
    metadata = model_metadata(student, corpus_origin, tok_info, name="aprtool-distill") | {"distillation": distillation}
    resume_command = f"aprtool distill --teacher {teach.path} --run-dir {out} --resume latest"
    status = DistillStatus(out, "distill", run_id, teach, cfg.mode) if d.main else None
    try:
        if status is not None:
            write_run_config(out, "distill", cfg.to_dict(), model=student.cfg.to_metadata(), distillation=distillation,
                             tokenizer=without_tokenizer_text(tok_info), resumed_from=ckpt and ckpt.path.name,
                             world_size=d.world, aprtool_version=code_version())  # fmt: skip
            status.update(status="running", step=state.step, steps=cfg.steps,
                          last_checkpoint=ckpt.path.name if ckpt else None)  # fmt: skip
        log(
            f"distill ({cfg.mode}): student {learned_count:,} learned of {metadata['param_count']:,} parameters "
            f"(init {plan.init}), teacher {teach.metadata.get('param_count', 0):,}; fingerprint {run_id[:16]}…"
        )
        run_meta = {"config": cfg.to_dict(), "fingerprint": run_id, "teacher_sha256": teach.sha256,
                    "data_fingerprint": corpus.fingerprint, "tokenizer": without_tokenizer_text(tok_info)}  # fmt: skip
        task = Distillation(student, teacher_model, cfg)
        engine = Engine(cfg, task, optimizer, names, loader, val_windows, ckpts, metrics, status, d, log, progress,
                        state, metadata, run_meta, resume_command, average)  # fmt: skip
        start, start_step = start_digests(student, learned), state.step
        engine.train()
        averaged = engine.finish()
        checked = None
        if status is not None:
            summary = {**distillation, **_trained_facts(state, cfg, corpus.fingerprint), "averaged": averaged}
            latest = ckpts.latest()
            where = f"The trained student is in checkpoint {latest if latest else '(none written)'}."
            qat = engine.qat_record()
            final_meta = {**metadata, "distillation": summary, **({"qat": qat} if qat else {})}
            checked = export_trained(out / "model.apr", student, final_meta, start,
                                     state.step - start_step, log, where, role="student")  # fmt: skip
            final = ckpts.step_path(state.step)
            status.update(status="completed", step=state.step, final=final.name if latest == final else None,
                          model="model.apr", val_loss=state.val_loss,
                          teacher_val_loss=state.task["teacher_val_loss"])  # fmt: skip
    except BaseException as exc:
        if status is not None:
            status.ended(exc, resume_command)
        raise
    curves = try_plot(out) if d.main else None
    d.barrier()  # the last collective: no rank leaves while another works
    summary = _summary(out, run_id, cfg, plan, teach, metadata, distillation, state, start_step, checked, ckpts, d,
                       curves)  # fmt: skip
    read = corpus_record(corpus.manifest)
    return summary | {"epochs_completed": state.epochs_completed(loader.windows), "corpus": read}


def _trained_facts(state: RunState, cfg: DistillConfig, data_fingerprint: str) -> dict[str, Any]:
    return {
        "steps": state.step,
        "tokens_seen": state.tokens_seen,
        "train_loss": state.train_loss,
        "val_loss": state.val_loss,
        "teacher_val_loss": state.task["teacher_val_loss"],
        "best_val_loss": state.best_val_loss,
        "best_step": state.best_step,
        "block_losses": state.task.get("block_losses"),
        "config": cfg.to_dict(),
        "data_fingerprint": data_fingerprint,
    }


def _describe(cfg: DistillConfig, teach: LoadedModel, plan: Any, run_id: str, learned: int, origin: str) -> dict:
    """The `distillation` metadata every file of the run carries."""
    return {
        "mode": cfg.mode,
        "fingerprint": run_id,
        "teacher": {"file": str(teach.path), "sha256": teach.sha256, "param_count": teach.metadata.get("param_count")},
        **{k: v for k, v in plan.describe().items() if k != "config"},
        "keys_to_learn": list(cfg.learned_keys) if cfg.learned_keys else "all",
        "learned_params": learned,
        "temperature": cfg.temperature if cfg.mode == "logits" else None,
        "alpha": cfg.alpha if cfg.mode == "logits" else None,
        "corpus": origin,
    }


def _summary(out, run_id, cfg, plan, teach, metadata, distillation, state, start_step, checked, ckpts, d,
             curves) -> dict[str, Any]:  # fmt: skip
    model_path = out / "model.apr"
    latest = ckpts.latest()
    return {
        "out": str(out),
        "model": str(model_path),
        "model_bytes": model_path.stat().st_size,
        "skipped": False,
        "fingerprint": run_id,
        "mode": cfg.mode,
        "init": plan.init,
        "keys_to_learn": distillation["keys_to_learn"],
        "teacher": str(teach.path),
        "teacher_params": teach.metadata.get("param_count"),
        "params": metadata["param_count"],
        "learned_params": distillation["learned_params"],
        "steps": state.step,
        "trained_steps": state.step - start_step,
        "tokens_seen": state.tokens_seen,
        "train_loss": state.train_loss,
        "val_loss": state.val_loss,
        "teacher_val_loss": state.task["teacher_val_loss"],
        "best_val_loss": state.best_val_loss,
        "best_step": state.best_step,
        "block_losses": state.task.get("block_losses"),
        "exported_tensors": checked["tensors"] if checked else None,  # rank 0 exports
        "wall_seconds": round(state.wall_seconds, 2),
        "stopped_early": state.stopped_early,
        "world_size": d.world,
        "latest": latest.name if latest else None,
        "curves": curves,
    }
