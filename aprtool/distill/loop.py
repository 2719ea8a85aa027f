"""`distill`: the loop, top to bottom.

    load and verify the teacher -> configuration (fresh, or the checkpoint's) -> the teacher's data ->
    the student's plan and the run's fingerprint -> skip a completed run / refuse a foreign one ->
    build (or restore) the student, optimizer, RNG and data position -> for each step: the teacher's
    targets under no_grad, the student's loss (logit KD or blockwise), clip, AdamW, log, evaluate,
    checkpoint -> final checkpoint -> DIR/model.apr, read back and proven to hold the trained student.

The checkpoint machinery, data pipeline, model, evaluation and schedule are pretrain's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from aprtool.atomic import atomic_write_text
from aprtool.data.loader import BatchLoader, eval_windows
from aprtool.data.tokenizer import TOKENIZER_FILE, bpe_json, without_tokenizer_text
from aprtool.distill.config import DistillConfig, parse_keys, resume_differences
from aprtool.distill.final import check_saved_model, export_student, start_digests
from aprtool.distill.losses import block_losses, logit_kd_loss, teacher_hidden_states
from aprtool.distill.models import LoadedModel, block_parameters, build_student, freeze, load_llama, plan_student
from aprtool.distill.run import (
    before_fresh_run,
    fingerprint,
    read_state,
    teacher_corpus,
    write_state,
)
from aprtool.errors import FileAccessError, IntegrityError, MetadataError, UsageError
from aprtool.model.io import model_metadata
from aprtool.model.llama import LlamaForCausalLM
from aprtool.paths import recorded_path_hint
from aprtool.train.checkpoint import CheckpointDir, load_checkpoint, restore_training
from aprtool.train.common import (
    TrainingInterrupted,
    autocast,
    catch_signals,
    clip_limit,
    code_version,
    corpus_wrap_warning,
    eval_shortfall,
    evaluate,
    interrupted,
    param_groups,
    seed_everything,
    stderr_log,
)
from aprtool.train.loop import RunState
from aprtool.train.metrics import MetricsLog, require_tensorboard
from aprtool.train.plot import try_plot
from aprtool.train.runs import write_run_config
from aprtool.train.schedule import learning_rate

CKPT_PREFIX = "ckpt-step-"


@dataclass
class DistillState(RunState):
    """pretrain's resume state plus the distillation accumulators (the epoch/early-stop fields stay unused)."""

    log_kd: float = 0.0
    log_ce: float = 0.0
    log_blocks: list[float] = field(default_factory=list)  # per-block loss sums over the log interval
    block_losses: list[float] | None = None  # last logged per-block means
    teacher_val_loss: float | None = None


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
    would alter the run are refused, naming the field)."""
    out = Path(out)
    options = dict(options or {})
    if tensorboard:
        require_tensorboard()
    if force and resume is not None:
        raise UsageError("--force starts over and --resume continues: choose one")
    ckpts = CheckpointDir(out / "ckpt", keep_last=5, log=log, prefix=CKPT_PREFIX)
    fresh = DistillConfig().merged(options).validate() if resume is None else None  # bad options: before any work
    teach = load_llama(teacher, "teacher")

    # --- configuration (fresh, or from the checkpoint being resumed)
    ckpt = None
    if fresh is None:
        if resume == "latest" and not ckpts.dir.is_dir():
            raise FileAccessError(f"--resume latest: {ckpts.dir} does not exist (nothing to resume)")
        ckpt = load_checkpoint(ckpts.resolve(resume))
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
    else:
        cfg = resolve(fresh, teach)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    ckpts.keep_last = cfg.keep_last

    # --- data: the teacher's tokens
    out.mkdir(parents=True, exist_ok=True)
    resuming_data = (ckpt.training.get("data_fingerprint"), saved.corpus) if ckpt is not None else None
    corpus, corpus_origin = teacher_corpus(options.get("corpus"), teach, out / "data", log, resume=resuming_data)
    if ckpt is not None and ckpt.training.get("data_fingerprint") != corpus.fingerprint:
        raise UsageError(f"cannot resume {ckpt.path.name}: the corpus changed since the checkpoint was written")
    tok_info = dict(teach.tokenizer)
    if tok_info["kind"] == "bpe":  # the corpus's tokenizer.json, whose sha256 is the teacher's (checked above)
        tok_info |= {"file": TOKENIZER_FILE, "json": bpe_json(corpus.manifest["tokenizer"], corpus.directory)}
        atomic_write_text(out / TOKENIZER_FILE, tok_info["json"])

    # --- the student's plan and the run's identity: skip a completed run, refuse to mix two runs
    plan = plan_student(cfg, teach)
    run_id = fingerprint(cfg, teach, plan, corpus)
    model_path = out / "model.apr"
    with torch.device("meta"):
        expected_names = set(LlamaForCausalLM(plan.config).weights())
    if resume is None:
        previous = read_state(out)
        action = before_fresh_run(
            out, ckpts, run_id, previous, force, lambda: check_saved_model(model_path, expected_names), log
        )
        if action == "skip":
            message = f"already completed (fingerprint {run_id[:16]}…); use --force to re-run"
            log(message)
            return {**previous, "skipped": True, "message": message, "out": str(out), "model": str(model_path)}
        if action == "export-again":
            return distill(teacher, out, options, resume="latest", log=log, progress=progress, tensorboard=tensorboard)
    ckpts.prepare()

    # --- student, teacher, optimizer, state
    seed_everything(cfg.seed)
    student = build_student(plan, teach, cfg.mode, log).to(cfg.device)
    learned = freeze(student, cfg.learned_keys)
    teacher_model = teach.model.to(cfg.device).eval().requires_grad_(False)
    groups, names = param_groups(student, cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    params = [p for g in groups for p in g["params"]]
    blocks = block_parameters(student)
    state = DistillState(log_blocks=[0.0] * plan.config.num_layers)
    metrics = MetricsLog(out, tensorboard=tensorboard)
    if ckpt is not None:
        state = DistillState.from_dict(restore_training(ckpt, student, optimizer, names))
        log(f"resumed from {ckpt.path.name} at step {state.step}")
    metrics.start(state.step, fresh=ckpt is None)
    start = start_digests(student, learned)
    start_step = state.step
    loader = BatchLoader(corpus.tokens("train"), cfg.seq_len, cfg.batch_size, cfg.seed, state.loader)
    val_windows = eval_windows(corpus.tokens("val"), cfg.seq_len, cfg.eval_tokens)
    warnings = (
        corpus_wrap_warning(cfg.steps, cfg.batch_size * cfg.grad_accum, loader.windows, cfg.seq_len),
        eval_shortfall(len(val_windows), cfg.seq_len, cfg.eval_tokens),
    )
    for warning in filter(None, warnings):
        log(f"WARNING: {warning}")
    if state.teacher_val_loss is None:
        state.teacher_val_loss = evaluate(teacher_model, val_windows, cfg.batch_size, cfg.device)
        teacher_model.eval()  # evaluate() leaves a model in train mode
        log(f"teacher held-out loss {state.teacher_val_loss:.4f}")
    learned_count = sum(p.numel() for p in params)
    distillation = {
        "mode": cfg.mode,
        "fingerprint": run_id,
        "teacher": {"file": str(teach.path), "sha256": teach.sha256, "param_count": teach.metadata.get("param_count")},
        **{k: v for k, v in plan.describe().items() if k != "config"},
        "keys_to_learn": list(cfg.learned_keys) if cfg.learned_keys else "all",
        "learned_params": learned_count,
        "temperature": cfg.temperature if cfg.mode == "logits" else None,
        "alpha": cfg.alpha if cfg.mode == "logits" else None,
        "corpus": corpus_origin,
    }
    metadata = {
        **model_metadata(student, corpus_origin, tok_info, name="aprtool-distill"),
        "distillation": distillation,
    }
    write_run_config(out, "distill", cfg.to_dict(), model=student.cfg.to_metadata(), distillation=distillation,
                     tokenizer=without_tokenizer_text(tok_info), resumed_from=ckpt and ckpt.path.name,
                     aprtool_version=code_version())  # fmt: skip

    def training_meta() -> dict[str, Any]:
        return {
            "step": state.step,
            "epoch": state.loader.epoch,
            "tokens_seen": state.tokens_seen,
            "train_loss": state.train_loss,
            "val_loss": state.val_loss,
            "config": cfg.to_dict(),
            "fingerprint": run_id,
            "teacher_sha256": teach.sha256,
            "data_fingerprint": corpus.fingerprint,
            "tokenizer": without_tokenizer_text(tok_info),
            "code_version": code_version(),
            "state": state.to_dict(),
        }

    def checkpoint(path: Path, *, pointer: bool = True) -> bool:
        saved = ckpts.save(path, student.weights(), optimizer, names, training_meta(), metadata, pointer=pointer)
        record_state("running")  # the step, and the newest verified checkpoint, follow the run
        return saved

    def record_state(status: str, *, final: Path | None = None, model: str | None = None, **extra: Any) -> None:
        latest = ckpts.latest()
        write_state(
            out, status=status, fingerprint=run_id, teacher={"path": str(teach.path), "sha256": teach.sha256},
            mode=cfg.mode, step=state.step, steps=cfg.steps, model=model,
            checkpoints={"latest": latest.name if latest else None, "final": final.name if final else None}, **extra,
        )  # fmt: skip

    record_state("running")
    resume_command = f"aprtool distill --teacher {teach.path} --run-dir {out} --resume latest"
    log(
        f"distill ({cfg.mode}): student {learned_count:,} learned of {metadata['param_count']:,} parameters "
        f"(init {plan.init}), teacher {teach.metadata.get('param_count', 0):,}; fingerprint {run_id[:16]}…"
    )

    # --- the loop; signals finish the step, checkpoint and exit 130/143
    started = time.monotonic() - state.wall_seconds
    last_ckpt = time.monotonic()
    interval_start, interval_tokens = time.monotonic(), 0
    if progress:
        progress({"event": "start", "step": state.step, "total_steps": cfg.steps, "time_budget": None,
                  "wall_seconds": state.wall_seconds})  # fmt: skip
    caught, restore_signals = catch_signals()
    try:
        student.train()
        while state.step < cfg.steps:
            lr = learning_rate(
                state.step, lr=cfg.lr, warmup=cfg.warmup_steps, total=cfg.steps,
                floor_ratio=cfg.min_lr_ratio, kind=cfg.schedule,
            )  # fmt: skip
            for g in optimizer.param_groups:
                g["lr"] = lr
            step_loss, step_kd, step_ce = 0.0, 0.0, 0.0
            step_blocks = [0.0] * len(blocks)
            for _ in range(cfg.grad_accum):
                x, y = loader.next_batch()
                x, y = x.to(cfg.device), y.to(cfg.device)
                with autocast(cfg.device):
                    if cfg.mode == "logits":
                        with torch.no_grad():
                            teacher_logits = teacher_model(x) if cfg.alpha > 0 else None
                        loss, kd, ce = logit_kd_loss(student(x), teacher_logits, y, cfg.temperature, cfg.alpha)
                        step_kd += float(kd.detach()) / cfg.grad_accum
                        step_ce += float(ce.detach()) / cfg.grad_accum
                    else:
                        per_block = block_losses(student, teacher_hidden_states(teacher_model, x))
                        loss = torch.stack(per_block).sum()
                        for i, b in enumerate(per_block):
                            step_blocks[i] += float(b.detach()) / cfg.grad_accum
                (loss / cfg.grad_accum).backward()
                step_loss += float(loss.detach()) / cfg.grad_accum
            if not math.isfinite(step_loss):
                last = ckpts.latest()
                where = f"the last good checkpoint is {last.name if last else 'none'}"
                if cfg.mode == "blockwise":
                    bad = ", ".join(f"block {i} ({v})" for i, v in enumerate(step_blocks) if not math.isfinite(v))
                    raise IntegrityError(f"non-finite loss in {bad} at step {state.step + 1}; {where}")
                raise IntegrityError(
                    f"loss became {step_loss} (kd {step_kd}, ce {step_ce}) at step {state.step + 1}; {where}"
                )
            if cfg.mode == "blockwise":  # each block clipped on its own: blocks stay independent
                limit = clip_limit(cfg.grad_clip)
                grad_norm = max((float(torch.nn.utils.clip_grad_norm_(b, limit)) for b in blocks if b), default=0.0)
            else:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip_limit(cfg.grad_clip)))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            tokens = cfg.batch_size * cfg.seq_len * cfg.grad_accum
            state.tokens_seen += tokens
            interval_tokens += tokens
            state.log_loss += step_loss
            state.log_kd += step_kd
            state.log_ce += step_ce
            state.log_blocks = [a + b for a, b in zip(state.log_blocks, step_blocks, strict=True)]
            state.log_steps += 1
            state.log_grad_max = max(state.log_grad_max, grad_norm)
            state.log_clips += int(grad_norm > clip_limit(cfg.grad_clip))  # this step's gradient was scaled down
            state.wall_seconds = time.monotonic() - started
            if progress:
                progress({"event": "step", "step": state.step, "wall_seconds": state.wall_seconds})
            record: dict[str, Any] = {}

            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                now = time.monotonic()
                n = state.log_steps
                state.train_loss = state.log_loss / n
                record = {
                    "step": state.step, "loss": state.train_loss, "lr": lr, "grad_norm_max": state.log_grad_max,
                    "clip_count": state.log_clips,
                    "tokens_seen": state.tokens_seen, "epoch": state.loader.epoch,
                    "tokens_per_s": interval_tokens / max(now - interval_start, 1e-9),
                    "wall_seconds": state.wall_seconds,
                }  # fmt: skip
                if cfg.mode == "logits":
                    record |= {"kd_loss": state.log_kd / n, "ce_loss": state.log_ce / n}
                else:
                    state.block_losses = [v / n for v in state.log_blocks]
                    record["block_losses"] = state.block_losses
                state.log_loss, state.log_kd, state.log_ce, state.log_steps, state.log_grad_max = 0.0, 0.0, 0.0, 0, 0.0
                state.log_clips = 0
                state.log_blocks = [0.0] * len(blocks)
                interval_start, interval_tokens = now, 0

            if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
                state.val_loss = evaluate(student, val_windows, cfg.batch_size, cfg.device)
                state.evals += 1
                if state.best_val_loss is None or state.val_loss < state.best_val_loss:
                    state.best_val_loss, state.best_step = state.val_loss, state.step
                    checkpoint(ckpts.best_path, pointer=False)  # the lowest held-out loss so far
                record = {**record, "step": state.step, "val_loss": state.val_loss}
                blocks_note = ""
                if state.block_losses is not None:
                    blocks_note = "; block losses " + ", ".join(f"{v:.4g}" for v in state.block_losses)
                log(
                    f"step {state.step}: student val_loss {state.val_loss:.4f} "
                    f"(teacher {state.teacher_val_loss:.4f}){blocks_note}"
                )

            if record:
                metrics.write(record)
                if progress:
                    progress({"event": "log", **record})

            due = (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0) or (
                not cfg.checkpoint_every and time.monotonic() - last_ckpt >= cfg.checkpoint_minutes * 60
            )
            if due or caught:
                checkpoint(ckpts.step_path(state.step))
                last_ckpt = time.monotonic()
            if caught:
                raise interrupted(caught[0], state.step, ckpts.step_path(state.step), resume_command)
    except BaseException as exc:
        ckpts.finish()  # so that state.json names the newest verified checkpoint
        if isinstance(exc, TrainingInterrupted):
            record_state("interrupted", reason=str(exc), resume=resume_command)
        else:
            record_state("failed", error=str(exc) or type(exc).__name__)
        raise
    finally:
        ckpts.finish()
        metrics.close()
        restore_signals()

    # --- the end: a final checkpoint (the trained student's safe copy), then the export, proven
    final_ckpt = ckpts.step_path(state.step)
    if not final_ckpt.exists():
        checkpoint(final_ckpt)
        ckpts.finish()
    summary_meta = {
        **distillation,
        "steps": state.step,
        "tokens_seen": state.tokens_seen,
        "train_loss": state.train_loss,
        "val_loss": state.val_loss,
        "teacher_val_loss": state.teacher_val_loss,
        "best_val_loss": state.best_val_loss,
        "best_step": state.best_step,
        "block_losses": state.block_losses,
        "config": cfg.to_dict(),
        "data_fingerprint": corpus.fingerprint,
    }
    latest = ckpts.latest()
    where = f"The trained student is in checkpoint {latest if latest else '(none written)'}."
    try:
        checked = export_student(
            model_path, student, {**metadata, "distillation": summary_meta}, start, state.step - start_step, log, where
        )
    except BaseException as exc:
        record_state("failed", error=str(exc) or type(exc).__name__)
        raise
    record_state(
        "completed", final=final_ckpt if latest == final_ckpt else None, model=model_path.name,
        val_loss=state.val_loss, teacher_val_loss=state.teacher_val_loss,
    )  # fmt: skip
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
        "learned_params": learned_count,
        "steps": state.step,
        "trained_steps": state.step - start_step,
        "tokens_seen": state.tokens_seen,
        "train_loss": state.train_loss,
        "val_loss": state.val_loss,
        "teacher_val_loss": state.teacher_val_loss,
        "best_val_loss": state.best_val_loss,
        "best_step": state.best_step,
        "block_losses": state.block_losses,
        "exported_tensors": checked["tensors"],
        "wall_seconds": round(state.wall_seconds, 2),
        "latest": latest.name if latest else None,
        "curves": try_plot(out),
    }
