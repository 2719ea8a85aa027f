"""One training loop for `pretrain` and `distill`, readable top to bottom (nanoGPT's train.py and
torchtitan's Trainer.train are the models).

    Engine.train(), for each step:
        phases begin (warmdown, SWA/EMA, late QAT) -> learning rate -> micro-batches through the task's
        loss (gradient accumulation; gradients averaged across ranks) -> clip -> AdamW -> weight
        average -> the log interval -> epoch ends (held-out loss measured there) -> evaluation,
        best.apr, early stopping -> a checkpoint when due (steps or wall time) or on SIGINT/SIGTERM
    Engine.finish(): the final checkpoint, the averaged weights, then the export, read back and proven.

What differs between the commands is a `Task`: how a micro-batch becomes a loss, how gradients are
clipped, the extra numbers of a log line and of a checkpoint. Only rank 0 writes files; every decision
that could differ between ranks goes through a collective (train.distributed). There is no
placeholder-loss path: every step's loss comes from a real batch, and a non-finite one stops the run.
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

from aprtool.codecs.quant import Clip
from aprtool.data.loader import BatchLoader, LoaderState
from aprtool.errors import IntegrityError, UsageError
from aprtool.model.llama import LlamaForCausalLM
from aprtool.schema import from_json
from aprtool.train.checkpoint import Checkpoint, CheckpointDir, restore_training, try_save
from aprtool.train.common import (
    WRAP_WARN_EPOCHS,
    autocast,
    catch_signals,
    clip_limit,
    code_version,
    corpus_wrap_warning,
    eval_shortfall,
    evaluate,
    interrupted,
    param_groups,
)
from aprtool.train.config import UNBOUNDED_STEPS, LoopConfig
from aprtool.train.distributed import Dist
from aprtool.train.metrics import MetricsLog
from aprtool.train.phases import Phases
from aprtool.train.runs import RunStatus
from aprtool.train.schedule import learning_rate

AVG_PREFIX = "__training__.average."  # the SWA/EMA weights travel in checkpoints, never in model.apr


@dataclass
class RunState:
    """Everything besides tensors that a resumed run needs to continue bit for bit."""

    step: int = 0
    tokens_seen: int = 0
    loader: LoaderState = field(default_factory=LoaderState)
    epochs_saved: int = 0  # epochs whose end has been recorded
    wall_seconds: float = 0.0
    log_loss: float = 0.0  # sums over the current log interval
    log_steps: int = 0
    log_grad_max: float = 0.0
    log_clips: int = 0  # steps whose gradient norm exceeded --grad-clip
    log_parts: dict[str, float] = field(default_factory=dict)  # the task's loss parts, summed
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
    task: dict[str, Any] = field(default_factory=dict)  # what the task keeps (teacher loss, block losses)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["loader"] = {"epoch": self.loader.epoch, "cursor": self.loader.cursor}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunState:
        """From a checkpoint's JSON: every field's type is checked (exit 4 naming it)."""
        return from_json(cls, d, "training.state")

    def epochs_completed(self, windows: int) -> int:
        return self.loader.epoch + (self.loader.cursor == windows)


class Task:
    """What a trainer supplies to the engine; the defaults are plain language-model training."""

    model: LlamaForCausalLM

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """One micro-batch's mean loss (to backpropagate) and its named parts (for the log)."""
        raise NotImplementedError

    def clip(self, params: list[torch.nn.Parameter], limit: float) -> float:
        """Clip the gradients; return the norm measured before clipping."""
        return float(torch.nn.utils.clip_grad_norm_(params, limit))

    def nonfinite(self, loss: float, parts: dict[str, float]) -> str:
        return f"loss became {loss}"

    def log_fields(self, state: RunState, parts: dict[str, float]) -> dict[str, Any]:
        """Extra fields of a metrics line from the interval's mean loss parts."""
        return parts

    def eval_note(self, state: RunState) -> str:
        return f" (best {state.best_val_loss:.4f})"

    def training_meta(self) -> dict[str, Any]:
        """Extra keys of every checkpoint's `training` metadata (the run's identity)."""
        return {}


def fold_into_average(average: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], count: int, ema: float):
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


def warn_or_refuse(problems: list[str | None], strict: bool, log: Callable[[str], None]) -> None:
    problems = [p for p in problems if p]
    for problem in problems:
        log(f"WARNING: {problem}")
    if problems and strict:
        raise UsageError(f"--strict: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


def run_facts(cfg: LoopConfig, loader: BatchLoader, val_windows: torch.Tensor, d: Dist, log: Callable) -> None:
    """Said at start: a plan that wraps the corpus too often, a held-out split short of --eval-tokens
    (refused with --strict)."""
    planned = None if cfg.time_budget else cfg.steps  # a budget's step count is not known in advance
    windows_per_step = cfg.batch_size * cfg.grad_accum * d.world
    wrap = planned and corpus_wrap_warning(planned, windows_per_step, loader.windows, cfg.seq_len)
    warn_or_refuse([wrap], False, log)
    warn_or_refuse([eval_shortfall(len(val_windows), cfg.seq_len, cfg.eval_tokens)], cfg.strict, log)


def schedule_text(cfg: LoopConfig) -> str:
    """Which learning-rate schedule runs, and what drives it (said at start)."""
    kind = f"warmup-stable-warmdown (last {cfg.warmdown_frac:.0%})" if cfg.warmdown_frac else f"{cfg.schedule} decay"
    floor = f"to {cfg.min_lr_ratio:g}x of lr {cfg.lr:g}"
    if not cfg.time_budget:
        return f"{kind} {floor} over {cfg.steps:,} steps"
    if cfg.steps >= UNBOUNDED_STEPS:
        return f"{kind} {floor} over the {cfg.time_budget:g} s time budget"
    return f"{kind} {floor} over whichever ends the run first: {cfg.steps:,} steps or {cfg.time_budget:g} s"


@dataclass
class Engine:
    cfg: LoopConfig
    task: Task
    optimizer: torch.optim.Optimizer
    names: list[str]  # the optimizer's parameter names, in its order
    loader: BatchLoader
    val_windows: torch.Tensor
    ckpts: CheckpointDir
    metrics: MetricsLog
    status: RunStatus | None  # None on ranks other than 0
    d: Dist
    log: Callable[[str], None]
    progress: Callable[[dict[str, Any]], None] | None
    state: RunState
    metadata: dict[str, Any]  # the model's metadata, in every checkpoint
    run_meta: dict[str, Any]  # config, data fingerprint, tokenizer: in every checkpoint's `training`
    resume_command: str
    average: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.model = self.task.model
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.phases = Phases(cfg.steps, cfg.time_budget, cfg.warmup_steps, cfg.warmdown_frac, cfg.swa_frac, cfg.ema,
                             cfg.qat_frac)  # fmt: skip
        self.step_tokens = cfg.batch_size * cfg.seq_len * cfg.grad_accum * self.d.world
        if "qat" in self.state.phases:
            self.model.set_qat(Clip.parse(cfg.qat_clip), cfg.qat_min_elements)
        warn_or_refuse(self.phases.fit_problems(None), cfg.strict, self.log)

    # --- the loop

    def train(self) -> RunState:
        cfg, state, d = self.cfg, self.state, self.d
        self.started = time.monotonic() - state.wall_seconds
        self.last_ckpt = time.monotonic()
        self.interval_start, self.interval_tokens = time.monotonic(), 0
        self._emit({"event": "start", "step": state.step, "total_steps": cfg.steps, "time_budget": cfg.time_budget,
                    "wall_seconds": state.wall_seconds})  # fmt: skip
        self.log(f"schedule: {schedule_text(cfg)}")
        caught, restore_signals = catch_signals()
        fit_checked = False
        try:
            self.model.train()
            while not self.phases.done(state.step, state.wall_seconds) and not state.stopped_early:
                lr = self._begin_step()
                first_step_at = time.monotonic()
                loss, parts, grad_norm = self._optimizer_step(lr)
                if cfg.time_budget and not fit_checked:  # one step's duration tells which phases can fit
                    warn_or_refuse(self.phases.fit_problems(time.monotonic() - first_step_at), cfg.strict, self.log)
                    fit_checked = True
                self._account(loss, parts, grad_norm)
                finished = self.phases.done(state.step, state.wall_seconds)
                self._emit({"event": "step", "step": state.step, "wall_seconds": state.wall_seconds})
                record = self._log_interval(lr) if state.step % cfg.log_every == 0 or finished else {}
                self._end_epochs(lr)
                if state.step % cfg.eval_every == 0 or finished:
                    record = {**record, **self._evaluate()}
                if record and d.main:
                    self.metrics.write(record)
                    self._emit({"event": "log", **record})
                self._checkpoint_if_due(caught)
        except BaseException:
            self.ckpts.finish()  # the status file names the newest verified checkpoint
            raise
        finally:
            self.ckpts.finish()
            self.metrics.close()
            restore_signals()
        return state

    def _begin_step(self) -> float:
        """Phases that begin at this step, then the step's learning rate (set on the optimizer)."""
        cfg, state = self.cfg, self.state
        p = self.phases.progress(state.step, self.d.max(time.monotonic() - self.started))  # one clock for all ranks
        for name in sorted(self.phases.active(p) - set(state.phases)):
            state.phases[name] = {"step": state.step + 1, "seconds": round(time.monotonic() - self.started, 3)}
            self.log(f"phase {name} starts at step {state.step + 1} ({p:.0%} of the budget)")
            if name == "qat":
                quantized = self.model.set_qat(Clip.parse(cfg.qat_clip), cfg.qat_min_elements)
                self.log(f"late QAT: {len(quantized)} weights now pass through int6 fake quantization")
        scale = self.phases.lr_scale(state.step, p, cfg.min_lr_ratio)
        lr = cfg.lr * scale if scale is not None else learning_rate(
            state.step, lr=cfg.lr, warmup=cfg.warmup_steps, total=cfg.steps, floor_ratio=cfg.min_lr_ratio,
            kind=cfg.schedule, progress=p if cfg.time_budget else None,
        )  # fmt: skip
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def _optimizer_step(self, lr: float) -> tuple[float, dict[str, float], float]:
        """Accumulate the micro-batches' gradients, average them across ranks, clip, step."""
        cfg, d = self.cfg, self.d
        step_loss, parts = 0.0, {}
        for _ in range(cfg.grad_accum):
            x, y = self.loader.next_batch()
            with autocast(cfg.device):
                loss, micro = self.task.loss(x.to(cfg.device), y.to(cfg.device))
            (loss / cfg.grad_accum).backward()
            step_loss += float(loss.detach()) / cfg.grad_accum
            for k, v in micro.items():
                parts[k] = parts.get(k, 0.0) + v / cfg.grad_accum
        d.average_gradients(self.params)
        step_loss = d.mean(step_loss)  # the global batch's loss
        parts = {k: d.mean(v) for k, v in parts.items()}
        if not math.isfinite(step_loss):
            latest = self.ckpts.latest()
            raise IntegrityError(
                f"{self.task.nonfinite(step_loss, parts)} at step {self.state.step + 1}; the last good checkpoint "
                f"is {latest.name if latest else 'none'}"
            )
        grad_norm = self.task.clip(self.params, clip_limit(cfg.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        if {"swa", "ema"} & set(self.state.phases):
            fold_into_average(self.average, self.model.weights(), self.state.averaged_steps, cfg.ema)
            self.state.averaged_steps += 1
        return step_loss, parts, grad_norm

    def _account(self, loss: float, parts: dict[str, float], grad_norm: float) -> None:
        state = self.state
        state.tokens_seen += self.step_tokens
        self.interval_tokens += self.step_tokens
        state.log_loss += loss
        state.log_steps += 1
        for k, v in parts.items():
            state.log_parts[k] = state.log_parts.get(k, 0.0) + v
        state.log_grad_max = max(state.log_grad_max, grad_norm)
        state.log_clips += int(grad_norm > clip_limit(self.cfg.grad_clip))  # this step's gradient was scaled down
        state.epoch_loss += loss
        state.epoch_steps += 1
        state.epoch_grad_max = max(state.epoch_grad_max, grad_norm)
        state.wall_seconds = self.d.max(time.monotonic() - self.started)

    def _log_interval(self, lr: float) -> dict[str, Any]:
        """The interval's metrics line; the sums start over."""
        state, now = self.state, time.monotonic()
        n = state.log_steps
        state.train_loss = state.log_loss / n
        record = {
            "step": state.step, "loss": state.train_loss, "lr": lr, "grad_norm_max": state.log_grad_max,
            "clip_count": state.log_clips, "tokens_seen": state.tokens_seen, "epoch": state.loader.epoch,
            "tokens_per_s": self.interval_tokens / max(now - self.interval_start, 1e-9),
            "wall_seconds": state.wall_seconds, "phases": {k: v["step"] for k, v in state.phases.items()},
            **self.task.log_fields(state, {k: v / n for k, v in state.log_parts.items()}),
        }  # fmt: skip
        state.log_loss, state.log_steps, state.log_grad_max, state.log_clips, state.log_parts = 0.0, 0, 0.0, 0, {}
        self.interval_start, self.interval_tokens = now, 0
        return record

    def _end_epochs(self, lr: float) -> None:
        """Each epoch that ended in this step: its held-out loss, measured now, its record, its checkpoint."""
        state = self.state
        while state.epochs_saved < state.epochs_completed(self.loader.windows):
            state.epochs_saved += 1
            state.val_loss = self._held_out_loss()
            record = {
                "epoch": state.epochs_saved, "step": state.step,
                "train_loss": state.epoch_loss / max(state.epoch_steps, 1), "val_loss": state.val_loss,
                "best": self._track_best(), "lr": lr,
                "tokens_seen": state.tokens_seen, "tokens": state.tokens_seen - state.epoch_start_tokens,
                "wall_seconds": state.wall_seconds, "epoch_seconds": state.wall_seconds - state.epoch_start_wall,
                "grad_norm_max": state.epoch_grad_max,
            }  # fmt: skip
            state.epoch_loss, state.epoch_steps, state.epoch_grad_max = 0.0, 0, 0.0
            state.epoch_start_tokens, state.epoch_start_wall = state.tokens_seen, state.wall_seconds
            if self.d.main:  # the record first: retention after the checkpoint reads it to spare the best epoch
                name = f"epoch-{state.epochs_saved:03d}.metadata.json"
                try_save(name, lambda r=record: self.ckpts.write_record(r["epoch"], r), self.log)
                if self.cfg.keep_epochs:
                    self.checkpoint(self.ckpts.epoch_path(state.epochs_saved), pointer=False)
            self.log(f"epoch {state.epochs_saved} completed at step {state.step}")
            if self.cfg.time_budget and state.epochs_saved == WRAP_WARN_EPOCHS + 1:  # a budget has no plan to warn of
                self.log(
                    f"WARNING: the run has now read the training split {state.epochs_saved} times "
                    f"({self.loader.windows * self.cfg.seq_len:,} tokens per epoch) within --time-budget: a "
                    "corpus repeated this often is memorized; use a larger --corpus or a shorter budget"
                )

    def _track_best(self) -> bool:
        """One best for every held-out measurement on the fixed windows, periodic and epoch-end alike: a
        loss lower than the best so far by more than --min-delta becomes best_val_loss, best_step and best.apr.
        True if this one is it."""
        state = self.state
        if state.best_step == state.step and state.best_val_loss == state.val_loss:
            return True  # this step's loss was measured already (an epoch ended at a periodic evaluation)
        if state.best_val_loss is not None and not state.val_loss < state.best_val_loss - self.cfg.min_delta:
            return False
        state.best_val_loss, state.best_step = state.val_loss, state.step
        self.checkpoint(self.ckpts.best_path, pointer=False)
        return True

    def _held_out_loss(self) -> float:
        return evaluate(self.model, self.val_windows, self.cfg.batch_size, self.cfg.device)

    def _evaluate(self) -> dict[str, Any]:
        """The held-out loss; a new best is saved as best.apr; early stopping once settled and patient."""
        cfg, state = self.cfg, self.state
        state.val_loss = self._held_out_loss()
        state.evals += 1
        if self._track_best():
            state.evals_since_best = 0
        else:
            state.evals_since_best += 1
            settled = state.step > cfg.warmup_steps and state.loader.epoch >= cfg.min_epochs
            if settled and state.evals >= cfg.min_evals and state.evals_since_best >= cfg.patience:
                state.stopped_early = self.d.from_main(True)
                self.log(
                    f"early stop at step {state.step}: no improvement over {state.best_val_loss:.4f} "
                    f"(step {state.best_step}) in {state.evals_since_best} evaluations"
                )
        self.log(f"step {state.step}: val_loss {state.val_loss:.4f}{self.task.eval_note(state)}")
        return {"step": state.step, "val_loss": state.val_loss}

    def _checkpoint_if_due(self, caught: list[int]) -> None:
        cfg, state, d = self.cfg, self.state, self.d
        due = (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0) or (
            not cfg.checkpoint_every
            and cfg.checkpoint_minutes > 0
            and time.monotonic() - self.last_ckpt >= cfg.checkpoint_minutes * 60
        )
        stop = d.any(bool(caught))  # a signal on any rank stops every rank after this same step
        due = d.from_main(bool(due)) if d.world > 1 else due
        if due or stop:
            self.checkpoint(self.ckpts.step_path(state.step))
            self.last_ckpt = time.monotonic()
        if stop:
            raise interrupted(caught[0] if caught else signal.SIGTERM, state.step, self.ckpts.step_path(state.step),
                              self.resume_command)  # fmt: skip

    # --- checkpoints and the end

    def training_meta(self) -> dict[str, Any]:
        state = self.state
        return {
            "step": state.step,
            "epoch": state.epochs_completed(self.loader.windows),
            "tokens_seen": state.tokens_seen,
            "train_loss": state.train_loss,
            "val_loss": state.val_loss,
            **self.run_meta,
            **self.task.training_meta(),
            "code_version": code_version(),
            "state": state.to_dict(),
        }

    def checkpoint(self, path: Path, *, pointer: bool = True) -> None:
        """Snapshot the state now (rank 0); it is written, fsynced and verified in the background."""
        if not self.d.main:
            return
        tensors = {**self.model.weights(), **{AVG_PREFIX + n: t for n, t in self.average.items()}}
        status, step = self.status, self.state.step
        on_saved = (lambda p: status.update(step=step, last_checkpoint=p.name)) if status else None
        self.ckpts.save(path, tensors, self.optimizer, self.names, self.training_meta(), self.metadata,
                        pointer=pointer, on_saved=on_saved)  # fmt: skip

    def qat_record(self) -> dict[str, Any] | None:
        """The grid late QAT trained the weights for, for the model's metadata (`qat`): `compress` uses
        this clip by default, since the weights were trained to sit on it."""
        began = self.state.phases.get("qat")
        if began is None:
            return None
        return {"clip": self.cfg.qat_clip, "min_elements": self.cfg.qat_min_elements, "bits": 6,
                "from_step": int(began["step"])}  # fmt: skip

    def finish(self) -> dict[str, Any] | None:
        """After the loop: the final checkpoint, then the averaged weights (SWA/EMA) put in the model.
        Returns what was averaged, or None."""
        state = self.state
        final = self.ckpts.step_path(state.step)
        self.ckpts.finish()  # a save of this very step may still be in flight
        if self.d.main and not final.exists():
            self.checkpoint(final)
            self.ckpts.finish()
        self.model.set_qat(None, 0)  # the exported weights are float; `compress` quantizes them the same way
        if not (self.average and state.averaged_steps):
            return None
        dtype = next(self.model.parameters()).dtype
        self.model.load_weights({n: t.to(dtype) for n, t in self.average.items()})
        averaged = {"kind": "ema" if self.cfg.ema else "swa", "steps": state.averaged_steps}
        state.val_loss = self._held_out_loss()
        self.log(f"final weights: {averaged['kind']} average of {state.averaged_steps} steps, "
                 f"val_loss {state.val_loss:.4f}")  # fmt: skip
        return averaged

    def _emit(self, event: dict[str, Any]) -> None:
        if self.progress and self.d.main:
            self.progress(event)


def optimizer_and_state(model: LlamaForCausalLM, cfg: LoopConfig, ckpt: Checkpoint | None, log: Callable):
    """AdamW over the model's trainable parameters, the loop state and the SWA/EMA average: fresh, or
    restored from `ckpt` (weights, optimizer moments, RNG states, data position). Returns
    (optimizer, parameter names in its order, state, average)."""
    groups, names = param_groups(model, cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    if ckpt is None:
        return optimizer, names, RunState(), {}
    state = RunState.from_dict(restore_training(ckpt, model, optimizer, names))
    average = {
        k[len(AVG_PREFIX) :]: torch.from_numpy(np.array(v))
        for k, v in ckpt.optimizer["tensors"].items()
        if k.startswith(AVG_PREFIX)
    }
    log(f"resumed from {ckpt.path.name} at step {state.step}")
    return optimizer, names, state, average
