"""`pretrain`: the training loop, top to bottom.

    prepare data -> build (or restore) model, optimizer, RNG and data position -> for each step:
    forward/backward (gradient accumulation), clip, AdamW, log, evaluate, checkpoint -> write
    RUN_DIR/model.apr (weights only) and verify it.

There is no placeholder-loss path: every step's loss comes from a real batch; the loader wraps
around the corpus and counts epochs; a non-finite loss stops the run with an error.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from aprtool.atomic import atomic_write_text
from aprtool.codecs.quant import Clip
from aprtool.data.loader import BatchLoader, LoaderState, eval_windows
from aprtool.data.prepare import MANIFEST, PreparedCorpus, load_prepared, prepare_corpus
from aprtool.data.tokenizer import TOKENIZER_FILE, bpe_json, without_tokenizer_text
from aprtool.errors import FileAccessError, IntegrityError, UsageError
from aprtool.model.io import model_metadata, write_model
from aprtool.model.llama import LlamaForCausalLM
from aprtool.paths import recorded_path_hint
from aprtool.schema import from_json
from aprtool.train.checkpoint import (
    CheckpointDir,
    load_checkpoint,
    restore_training,
    try_save,
)
from aprtool.train.common import (
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
from aprtool.train.config import TrainConfig, resume_differences
from aprtool.train.distributed import Dist, init_distributed, shutdown
from aprtool.train.metrics import MetricsLog, require_tensorboard
from aprtool.train.phases import Phases
from aprtool.train.plot import try_plot
from aprtool.train.runs import RunStatus, write_run_config
from aprtool.train.schedule import learning_rate


@dataclass
class RunState:
    """Everything besides tensors that a resumed run needs to continue bit for bit."""

    step: int = 0
    tokens_seen: int = 0
    loader: LoaderState = field(default_factory=LoaderState)
    epochs_saved: int = 0  # epoch checkpoints written so far
    wall_seconds: float = 0.0
    log_loss: float = 0.0  # sums over the current log interval
    log_steps: int = 0
    log_grad_max: float = 0.0
    log_clips: int = 0  # steps whose gradient norm exceeded --grad-clip
    epoch_loss: float = 0.0  # sums over the current epoch
    epoch_steps: int = 0
    epoch_grad_max: float = 0.0
    epoch_start_tokens: int = 0  # tokens_seen and wall_seconds when the current epoch began
    epoch_start_wall: float = 0.0
    train_loss: float | None = None  # last logged mean
    val_loss: float | None = None
    best_val_loss: float | None = None
    best_step: int | None = None
    evals: int = 0
    evals_since_best: int = 0
    stopped_early: bool = False
    phases: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> {step, seconds} it began
    averaged_steps: int = 0  # steps folded into the SWA/EMA average

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["loader"] = {"epoch": self.loader.epoch, "cursor": self.loader.cursor}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunState:
        """From a checkpoint's JSON: every field's type is checked (exit 4 naming it)."""
        return from_json(cls, d, "training.state")


AVG_PREFIX = "__training__.average."  # the SWA/EMA weights travel in checkpoints, never in model.apr


def _warn_or_refuse(problems: list[str], strict: bool, log: Callable[[str], None]) -> None:
    for problem in problems:
        log(f"WARNING: {problem}")
    if problems and strict:
        raise UsageError(f"--strict: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


def _fold_into_average(average: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], count: int, ema: float):
    """SWA: running mean of the weights; EMA: average = ema * average + (1 - ema) * weights."""
    with torch.no_grad():
        for name, w in weights.items():
            w = w.detach().float().cpu()
            if name not in average:
                average[name] = w.clone()
            elif ema:
                average[name].mul_(ema).add_(w, alpha=1 - ema)
            else:
                average[name].add_(w - average[name], alpha=1 / (count + 1))


def pretrain(
    run_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    *,
    resume: str | None = None,
    log: Callable[[str], None] = stderr_log,
    progress: Callable[[dict[str, Any]], None] | None = None,
    tensorboard: bool = False,
) -> dict[str, Any]:
    """Train; return the summary. `overrides` are TrainConfig fields; on resume the checkpoint's
    config is the base and only the fields given here change (those that would alter the run's
    math are refused, naming the field). `progress` receives start/step/log events (train.progress);
    `tensorboard` also writes the metrics as TensorBoard event files."""
    run_dir = Path(run_dir)
    overrides = dict(overrides or {})
    if tensorboard:
        require_tensorboard()
    d = init_distributed(overrides.get("device", "cpu"))
    status = RunStatus(run_dir, "pretrain")
    try:
        log = log if d.main else lambda _m: None
        return _pretrain(run_dir, overrides, resume, log, progress, tensorboard, status if d.main else None, d)
    except BaseException as exc:
        if d.main:
            status.ended(exc, f"aprtool pretrain --run-dir {run_dir} --resume latest")
        raise
    finally:
        shutdown(d)


def _pretrain(run_dir, overrides, resume, log, progress, tensorboard, status, d: Dist) -> dict[str, Any]:
    ckpts = CheckpointDir(run_dir / "ckpt", keep_last=5, log=log)

    # --- configuration (fresh, or from the checkpoint being resumed)
    ckpt = None
    if resume is not None:
        if not ckpts.dir.is_dir() and resume == "latest":
            raise FileAccessError(f"--resume latest: {ckpts.dir} does not exist (nothing to resume)")
        ckpt = load_checkpoint(Path(d.from_main(str(ckpts.resolve(resume)))))  # every rank the same file
        saved = TrainConfig.from_dict(ckpt.training["config"])
        cfg = saved.merged(overrides).validate()
        differences = resume_differences(saved, cfg)
        if differences:
            raise UsageError(f"cannot resume {ckpt.path.name}: {'; '.join(differences)}")
    else:
        if overrides.get("time_budget") and "steps" not in overrides:
            overrides["steps"] = 10**9  # the budget, not a step count, ends this run
        cfg = TrainConfig().merged(overrides).validate()
        existing = ckpts.step_files() if ckpts.dir.is_dir() else []
        if existing or (ckpts.dir / "latest").exists():
            raise UsageError(
                f"{run_dir} already holds a run ({len(existing)} step checkpoints); continue it with "
                "--resume latest, or choose another --run-dir"
            )
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    ckpts.keep_last, ckpts.keep_epochs = cfg.keep_last, cfg.keep_epochs
    d.barrier()  # every rank has checked the run directory before rank 0 touches it
    resuming = ckpt.training.get("data_fingerprint") if ckpt is not None else None
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpts.prepare()
        _prepare_data(cfg, run_dir, log, overrides.get("corpus"), resuming)
    d.barrier()

    # --- data (prepared by rank 0 above; every rank opens the same shards)
    corpus = _prepare_data(cfg, run_dir, log, overrides.get("corpus"), resuming)
    if ckpt is not None and resuming != corpus.fingerprint:
        raise UsageError(f"cannot resume {ckpt.path.name}: the corpus changed since the checkpoint was written")
    tok_info = dict(corpus.manifest["tokenizer"])
    if tok_info["kind"] == "bpe":  # embedded in every file the run writes; the sidecar is for other tools
        tok_info |= {"file": TOKENIZER_FILE, "json": bpe_json(tok_info, corpus.directory)}
        if d.main:
            atomic_write_text(run_dir / TOKENIZER_FILE, tok_info["json"])
    val_windows = eval_windows(corpus.tokens("val"), cfg.seq_len, cfg.eval_tokens)

    # --- model, optimizer, state
    seed_everything(cfg.seed)
    model = LlamaForCausalLM(cfg.model_config(tok_info["vocab_size"])).to(cfg.device)
    groups, names = param_groups(model, cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    state = RunState()
    metrics = MetricsLog(run_dir, tensorboard=tensorboard and d.main)
    if ckpt is not None:
        state = RunState.from_dict(restore_training(ckpt, model, optimizer, names))
        log(f"resumed from {ckpt.path.name} at step {state.step}")
    if d.main:
        metrics.start(state.step)
    if d.from_main(state.step) != state.step:
        raise IntegrityError("ranks disagree on the resume step")
    loader = BatchLoader(corpus.tokens("train"), cfg.seq_len, cfg.batch_size, cfg.seed, state.loader, d.rank, d.world)
    wrap = (
        None
        if cfg.time_budget
        else corpus_wrap_warning(  # a budget's step count is not known in advance
            cfg.steps, cfg.batch_size * cfg.grad_accum * d.world, loader.windows, cfg.seq_len
        )
    )
    _warn_or_refuse([wrap] if wrap else [], False, log)
    shortfall = eval_shortfall(len(val_windows), cfg.seq_len, cfg.eval_tokens)
    _warn_or_refuse([shortfall] if shortfall else [], cfg.strict, log)
    net = torch.nn.parallel.DistributedDataParallel(model) if d.world > 1 else model
    metadata = model_metadata(model, cfg.corpus, tok_info)
    params = [p for g in groups for p in g["params"]]
    if d.main:
        write_run_config(run_dir, "pretrain", cfg.to_dict(), model=model.cfg.to_metadata(), world_size=d.world,
                         tokenizer=without_tokenizer_text(tok_info), resumed_from=ckpt and ckpt.path.name,
                         aprtool_version=code_version())  # fmt: skip
        status.update(status="running", step=state.step, steps=cfg.steps, time_budget=cfg.time_budget,
                      last_checkpoint=ckpt.path.name if ckpt else None)  # fmt: skip

    def training_meta() -> dict[str, Any]:
        return {
            "step": state.step,
            "epoch": state.loader.epoch + (state.loader.cursor == loader.windows),  # epochs completed
            "tokens_seen": state.tokens_seen,
            "train_loss": state.train_loss,
            "val_loss": state.val_loss,
            "config": cfg.to_dict(),
            "data_fingerprint": corpus.fingerprint,
            "tokenizer": without_tokenizer_text(tok_info),  # the text itself is in the model metadata
            "code_version": code_version(),
            "state": state.to_dict(),
        }

    def end_epoch(lr: float) -> dict[str, Any]:
        """The epoch's record, its held-out loss measured now, at the epoch's end."""
        state.val_loss = evaluate(model, val_windows, cfg.batch_size, cfg.device)
        best = state.best_val_loss is None or state.val_loss < state.best_val_loss
        record = {
            "epoch": state.epochs_saved, "step": state.step, "train_loss": state.epoch_loss / max(state.epoch_steps, 1),
            "val_loss": state.val_loss, "best": best, "lr": lr, "tokens_seen": state.tokens_seen,
            "tokens": state.tokens_seen - state.epoch_start_tokens, "wall_seconds": state.wall_seconds,
            "epoch_seconds": state.wall_seconds - state.epoch_start_wall, "grad_norm_max": state.epoch_grad_max,
        }  # fmt: skip
        state.epoch_loss, state.epoch_steps, state.epoch_grad_max = 0.0, 0, 0.0
        state.epoch_start_tokens, state.epoch_start_wall = state.tokens_seen, state.wall_seconds
        return record

    def checkpoint(path: Path, *, pointer: bool = True) -> bool:
        if not d.main:
            return False
        tensors = {**model.weights(), **{AVG_PREFIX + n: t for n, t in average.items()}}
        saved = ckpts.save(path, tensors, optimizer, names, training_meta(), metadata, pointer=pointer)
        status.update(step=state.step, last_checkpoint=path.name if saved else status.fields.get("last_checkpoint"))
        return saved

    # --- phases: warmdown, weight averaging, late QAT, as fractions of the budget actually available
    phases = Phases(cfg.steps, cfg.time_budget, cfg.warmup_steps, cfg.warmdown_frac, cfg.swa_frac, cfg.ema,
                    cfg.qat_frac)  # fmt: skip
    average: dict[str, torch.Tensor] = {}
    if ckpt is not None:
        saved = ckpt.optimizer["tensors"]
        average = {
            k[len(AVG_PREFIX) :]: torch.from_numpy(np.array(v)) for k, v in saved.items() if k.startswith(AVG_PREFIX)
        }
    if "qat" in state.phases:
        model.set_qat(Clip.parse(cfg.qat_clip), cfg.qat_min_elements)
    _warn_or_refuse(phases.fit_problems(None), cfg.strict, log)

    # --- signals: finish the step, checkpoint, exit 130/143
    started = time.monotonic() - state.wall_seconds
    last_ckpt = time.monotonic()
    if progress:
        progress({"event": "start", "step": state.step, "total_steps": cfg.steps, "time_budget": cfg.time_budget,
                  "wall_seconds": state.wall_seconds})  # fmt: skip
    interval_start, interval_tokens = time.monotonic(), 0
    caught, restore_signals = catch_signals()
    try:
        model.train()
        first_step_at: float | None = None
        fit_checked = False
        while not phases.done(state.step, state.wall_seconds) and not state.stopped_early:
            p = phases.progress(state.step, d.max(time.monotonic() - started))  # one clock for all ranks
            for name in sorted(phases.active(p) - set(state.phases)):
                state.phases[name] = {"step": state.step + 1, "seconds": round(time.monotonic() - started, 3)}
                log(f"phase {name} starts at step {state.step + 1} ({p:.0%} of the budget)")
                if name == "qat":
                    quantized = model.set_qat(Clip.parse(cfg.qat_clip), cfg.qat_min_elements)
                    log(f"late QAT: {len(quantized)} weights now pass through int6 fake quantization")
            scale = phases.lr_scale(state.step, p, cfg.min_lr_ratio)
            lr = cfg.lr * scale if scale is not None else learning_rate(
                state.step, lr=cfg.lr, warmup=cfg.warmup_steps, total=cfg.steps,
                floor_ratio=cfg.min_lr_ratio, kind=cfg.schedule,
            )  # fmt: skip
            first_step_at = first_step_at or time.monotonic()
            for g in optimizer.param_groups:
                g["lr"] = lr
            step_loss = 0.0
            for _ in range(cfg.grad_accum):
                x, y = loader.next_batch()
                x, y = x.to(cfg.device), y.to(cfg.device)
                with autocast(cfg.device):
                    logits = net(x)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten()) / cfg.grad_accum
                loss.backward()
                step_loss += float(loss.detach())
            step_loss = d.mean(step_loss)  # the global batch's loss (gradients are averaged by DDP)
            if not math.isfinite(step_loss):
                raise IntegrityError(
                    f"loss became {step_loss} at step {state.step + 1}; the last good checkpoint is "
                    f"{ckpts.latest().name if ckpts.latest() else 'none'}"
                )
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip_limit(cfg.grad_clip)))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            if {"swa", "ema"} & set(state.phases):
                _fold_into_average(average, model.weights(), state.averaged_steps, cfg.ema)
                state.averaged_steps += 1
            if cfg.time_budget and not fit_checked:  # one step's duration tells which phases can fit
                _warn_or_refuse(phases.fit_problems(time.monotonic() - first_step_at), cfg.strict, log)
                fit_checked = True
            tokens = cfg.batch_size * cfg.seq_len * cfg.grad_accum * d.world
            state.tokens_seen += tokens
            interval_tokens += tokens
            state.log_loss += step_loss
            state.log_steps += 1
            state.log_grad_max = max(state.log_grad_max, grad_norm)
            state.log_clips += int(grad_norm > clip_limit(cfg.grad_clip))  # this step's gradient was scaled down
            state.epoch_loss += step_loss
            state.epoch_steps += 1
            state.epoch_grad_max = max(state.epoch_grad_max, grad_norm)
            state.wall_seconds = d.max(time.monotonic() - started)
            finished = phases.done(state.step, state.wall_seconds)
            if progress:
                progress({"event": "step", "step": state.step, "wall_seconds": state.wall_seconds})
            record: dict[str, Any] = {}

            if state.step % cfg.log_every == 0 or finished:
                now = time.monotonic()
                state.train_loss = state.log_loss / state.log_steps
                record = {
                    "step": state.step, "loss": state.train_loss, "lr": lr, "grad_norm_max": state.log_grad_max,
                    "clip_count": state.log_clips,
                    "tokens_seen": state.tokens_seen, "epoch": state.loader.epoch,
                    "tokens_per_s": interval_tokens / max(now - interval_start, 1e-9),
                    "wall_seconds": state.wall_seconds, "phases": {k: v["step"] for k, v in state.phases.items()},
                }  # fmt: skip
                state.log_loss, state.log_steps, state.log_grad_max, state.log_clips = 0.0, 0, 0.0, 0
                interval_start, interval_tokens = now, 0

            completed = state.loader.epoch + (1 if state.loader.cursor == loader.windows else 0)
            while state.epochs_saved < completed:
                state.epochs_saved += 1
                sidecar = end_epoch(lr)
                if d.main and (cfg.keep_epochs == 0 or checkpoint(ckpts.epoch_path(state.epochs_saved), pointer=False)):
                    try_save(
                        f"epoch-{state.epochs_saved:03d}.metadata.json",
                        lambda s=sidecar: ckpts.write_sidecar(s["epoch"], s),
                        log,
                    )
                log(f"epoch {state.epochs_saved} completed at step {state.step}")

            if state.step % cfg.eval_every == 0 or finished:
                state.val_loss = evaluate(model, val_windows, cfg.batch_size, cfg.device)
                state.evals += 1
                record = {**record, "step": state.step, "val_loss": state.val_loss}
                if state.best_val_loss is None or state.val_loss < state.best_val_loss - cfg.min_delta:
                    state.best_val_loss, state.best_step, state.evals_since_best = (
                        state.val_loss,
                        state.step,
                        0,
                    )
                    checkpoint(ckpts.best_path, pointer=False)
                else:
                    state.evals_since_best += 1
                    settled = state.step > cfg.warmup_steps and state.loader.epoch >= cfg.min_epochs
                    if settled and state.evals >= cfg.min_evals and state.evals_since_best >= cfg.patience:
                        state.stopped_early = d.from_main(True)
                        log(
                            f"early stop at step {state.step}: no improvement over {state.best_val_loss:.4f} "
                            f"(step {state.best_step}) in {state.evals_since_best} evaluations"
                        )
                log(f"step {state.step}: val_loss {state.val_loss:.4f} (best {state.best_val_loss:.4f})")

            if record and d.main:
                metrics.write(record)
                if progress:
                    progress({"event": "log", **record})

            due = (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0) or (
                not cfg.checkpoint_every and time.monotonic() - last_ckpt >= cfg.checkpoint_minutes * 60
            )
            stop = d.any(bool(caught))  # a signal on any rank stops every rank after this same step
            due = d.from_main(bool(due)) if d.world > 1 else due
            if due or stop:
                checkpoint(ckpts.step_path(state.step))
                last_ckpt = time.monotonic()
            if stop:
                raise interrupted(
                    caught[0] if caught else signal.SIGTERM, state.step, ckpts.step_path(state.step),
                    f"aprtool pretrain --run-dir {run_dir} --resume latest",
                )  # fmt: skip
    finally:
        ckpts.finish()
        metrics.close()
        restore_signals()

    # --- the end: a final checkpoint, then the weights-only model, verified before reporting success
    final_ckpt = ckpts.step_path(state.step)
    if d.main and not final_ckpt.exists():
        checkpoint(final_ckpt)
        ckpts.finish()
    model.set_qat(None, 0)  # the exported weights are float; `compress` quantizes them the same way
    averaged = None
    if average and state.averaged_steps:
        model.load_weights({n: t.to(next(model.parameters()).dtype) for n, t in average.items()})
        averaged = {"kind": "ema" if cfg.ema else "swa", "steps": state.averaged_steps}
        state.val_loss = evaluate(model, val_windows, cfg.batch_size, cfg.device)
        log(f"final weights: {averaged['kind']} average of {state.averaged_steps} steps, val_loss {state.val_loss:.4f}")
    model_path = run_dir / "model.apr"
    weights = model.weights()
    summary_meta = training_meta() | {"state": None, "phases": state.phases, "averaged": averaged}
    if d.main:
        write_model(model_path, weights, {**metadata, "training_summary": summary_meta}, len(weights))
        status.update(status="completed", step=state.step, model=model_path.name, val_loss=state.val_loss,
                      stopped_early=state.stopped_early)  # fmt: skip
    curves = try_plot(run_dir) if d.main else None
    d.barrier()  # the last collective: no rank leaves (and tears the process group down) while another works
    return {
        "run_dir": str(run_dir),
        "model": str(model_path),
        "model_bytes": model_path.stat().st_size,
        "params": metadata["param_count"],
        "steps": state.step,
        "tokens_seen": state.tokens_seen,
        "epochs_completed": state.loader.epoch + (1 if state.loader.cursor == loader.windows else 0),
        "train_loss": state.train_loss,
        "val_loss": state.val_loss,
        "best_val_loss": state.best_val_loss,
        "best_step": state.best_step,
        "stopped_early": state.stopped_early,
        "wall_seconds": round(state.wall_seconds, 2),
        "checkpoints": sorted(p.name for p in ckpts.dir.glob("*.apr")),
        "latest": ckpts.latest().name if ckpts.latest() else None,
        "phases": state.phases,
        "averaged": averaged,
        "world_size": d.world,
        "curves": curves,
    }


def _prepare_data(
    cfg: TrainConfig, run_dir: Path, log: Callable[[str], None], corpus_arg: str | None, resuming: str | None
) -> PreparedCorpus:
    """Tokenize the corpus into RUN_DIR/data, or reuse what is there (same source and settings).

    On resume (`resuming`: the checkpoint's data fingerprint) without --corpus, the run's own RUN_DIR/data
    is used; a corpus path the checkpoint records is named for the user to pass, never opened."""
    if resuming is not None and corpus_arg is None:
        data = run_dir / "data"
        if (data / MANIFEST).is_file() and load_prepared(data).fingerprint == resuming:
            return load_prepared(data)
        if cfg.corpus is not None:
            raise recorded_path_hint("the checkpoint was trained on corpus", cfg.corpus, "--corpus")
    return prepare_corpus(
        Path(cfg.corpus) if cfg.corpus else None,
        run_dir / "data",
        tokenizer=cfg.tokenizer,
        vocab_size=cfg.vocab_size,
        val_fraction=cfg.val_fraction,
        log=log,
    )
