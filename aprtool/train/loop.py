"""`pretrain`: a language model on a prepared corpus, through the training engine.

    configuration (fresh, or the checkpoint's) -> data prepared by rank 0 -> model, optimizer, state
    (restored on resume) -> Engine.train() -> final checkpoint -> RUN_DIR/model.apr, read back and
    proven to hold the trained weights.

The loop itself, checkpoints, evaluation and phases are the engine's (train/engine.py), shared with distill.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from aprtool.atomic import atomic_write_text
from aprtool.data.loader import BatchLoader, eval_windows
from aprtool.data.prepare import MANIFEST, PreparedCorpus, corpus_record, load_prepared, prepare_corpus
from aprtool.data.tokenizer import KINDS, TOKENIZER_FILE, bpe_json, without_tokenizer_text
from aprtool.errors import FileAccessError, IntegrityError, UsageError
from aprtool.interop.tokenizer_files import open_tokenizer
from aprtool.model.config import LlamaConfig
from aprtool.model.io import llama_config, load_model, load_tokenizer_for, model_metadata
from aprtool.model.llama import LlamaForCausalLM
from aprtool.model.sources import model_digest
from aprtool.paths import recorded_path_hint
from aprtool.train.checkpoint import Checkpoint, CheckpointDir, load_checkpoint
from aprtool.train.common import code_version, seed_everything, stderr_log
from aprtool.train.config import INIT_DECIDES, TrainConfig, resume_differences
from aprtool.train.distributed import Dist, init_distributed, shutdown
from aprtool.train.engine import Engine, Task, optimizer_and_state, run_facts
from aprtool.train.export import export_trained, start_digests
from aprtool.train.metrics import MetricsLog, require_tensorboard
from aprtool.train.plot import try_plot
from aprtool.train.runs import RunStatus, write_run_config


class LanguageModeling(Task):
    """Next-token cross-entropy on the corpus."""

    def __init__(self, model: LlamaForCausalLM) -> None:
        self.model = model

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.model(x)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten()), {}


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
    resume_command = _resume_command(run_dir)
    try:
        log = log if d.main else lambda _m: None
        return _pretrain(run_dir, overrides, resume, log, progress, tensorboard, status if d.main else None, d)
    except BaseException as exc:
        if d.main:
            status.ended(exc, resume_command)
        raise
    finally:
        shutdown(d)


def _resume_command(run_dir: Path) -> str:
    return f"aprtool pretrain --run-dir {run_dir} --resume latest"


def _configure(
    run_dir: Path, ckpts: CheckpointDir, overrides: dict[str, Any], resume: str | None, d: Dist
) -> tuple[TrainConfig, Checkpoint | None]:
    """The run's configuration: fresh (refusing a directory that holds a run), or the checkpoint's."""
    if resume is None:
        if "init" in overrides:
            decided = [f"--{k.replace('_', '-')}" for k in INIT_DECIDES if k in overrides]
            if decided:
                raise UsageError(f"--init takes the model's shape and tokenizer: drop {', '.join(decided)}")
        cfg = TrainConfig().merged(overrides).with_budget(overrides).validate()
        existing = ckpts.step_files() if ckpts.dir.is_dir() else []
        if existing or (ckpts.dir / "latest").exists():
            raise UsageError(
                f"{run_dir} already holds a run ({len(existing)} step checkpoints); continue it with "
                "--resume latest, or choose another --run-dir"
            )
        return cfg, None
    if not ckpts.dir.is_dir() and resume == "latest":
        raise FileAccessError(f"--resume latest: {ckpts.dir} does not exist (nothing to resume)")
    ckpt = load_checkpoint(Path(d.from_main(str(ckpts.resolve(resume)))))  # every rank the same file
    saved = TrainConfig.from_dict(ckpt.training["config"])
    cfg = saved.merged(overrides).validate()
    differences = resume_differences(saved, cfg)
    if differences:
        raise UsageError(f"cannot resume {ckpt.path.name}: {'; '.join(differences)}")
    return cfg, ckpt


def _pretrain(run_dir, overrides, resume, log, progress, tensorboard, status, d: Dist) -> dict[str, Any]:
    ckpts = CheckpointDir(run_dir / "ckpt", keep_last=5, log=log)
    cfg, ckpt = _configure(run_dir, ckpts, overrides, resume, d)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    ckpts.keep_last, ckpts.keep_epochs = cfg.keep_last, cfg.keep_epochs
    d.barrier()  # every rank has checked the run directory before rank 0 touches it
    init = _initial_model(cfg, ckpt, log)
    tokenizer = init.tokenizer if init is not None else None
    corpus, tok_info = _data(cfg, ckpt, ckpts, run_dir, overrides.get("corpus"), log, d, tokenizer)
    model, optimizer, names, state, average = _build(cfg, ckpt, tok_info["vocab_size"], log, d, init)
    metrics = MetricsLog(run_dir, tensorboard=tensorboard and d.main)
    if d.main:
        metrics.start(state.step)
    loader = BatchLoader(corpus.tokens("train"), cfg.seq_len, cfg.batch_size, cfg.seed, state.loader, d.rank, d.world)
    val_windows = eval_windows(corpus.tokens("val"), cfg.seq_len, cfg.eval_tokens)
    run_facts(cfg, loader, val_windows, d, log)
    metadata = model_metadata(model, cfg.corpus, tok_info)
    if init is not None:
        metadata["init"] = init.record
    if status is not None:
        write_run_config(run_dir, "pretrain", cfg.to_dict(), model=model.cfg.to_metadata(), world_size=d.world,
                         tokenizer=without_tokenizer_text(tok_info), resumed_from=ckpt and ckpt.path.name,
                         aprtool_version=code_version())  # fmt: skip
        status.update(status="running", step=state.step, steps=cfg.steps, time_budget=cfg.time_budget,
                      last_checkpoint=ckpt.path.name if ckpt else None)  # fmt: skip

    # --- train
    run_meta = {"config": cfg.to_dict(), "data_fingerprint": corpus.fingerprint,
                "tokenizer": without_tokenizer_text(tok_info)}  # the text itself is in the model metadata  # fmt: skip
    engine = Engine(cfg, LanguageModeling(model), optimizer, names, loader, val_windows, ckpts, metrics, status, d,
                    log, progress, state, metadata, run_meta, _resume_command(run_dir),
                    average)  # fmt: skip
    start, start_step = start_digests(model, list(model.weights())), state.step
    engine.train()
    averaged = engine.finish()

    # --- the weights-only model, proven to hold the trained weights before success is reported
    model_path = run_dir / "model.apr"
    summary_meta = engine.training_meta() | {"state": None, "phases": state.phases, "averaged": averaged}
    if status is not None:
        latest = ckpts.latest()
        where = f"The trained weights are in checkpoint {latest if latest else '(none written)'}."
        qat = engine.qat_record()
        final_meta = {**metadata, "training_summary": summary_meta, **({"qat": qat} if qat else {})}
        export_trained(model_path, model, final_meta, start,
                       state.step - start_step, log, where)  # fmt: skip
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
        "epochs_completed": state.epochs_completed(loader.windows),
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
        "corpus": corpus_record(corpus.manifest),
    }


@dataclass
class InitialModel:
    """What `--init MODEL` gives the run: the architecture, the tokenizer the corpus is tokenized with, the
    weights a fresh run starts from (None on resume: the checkpoint has them) and a record of where from."""

    config: LlamaConfig
    tokenizer: Any
    weights: dict[str, torch.Tensor] | None
    record: dict[str, Any]


def _initial_model(cfg: TrainConfig, ckpt: Checkpoint | None, log: Callable[[str], None]) -> InitialModel | None:
    """The --init model: opened once on a fresh run; on resume rebuilt from the checkpoint's metadata (the
    path it records is never opened again)."""
    if cfg.init is None:
        return None
    if ckpt is not None:
        config = llama_config(ckpt.metadata)
        tokenizer = load_tokenizer_for(ckpt.metadata, ckpt.path, config)
        return InitialModel(config, tokenizer, None, ckpt.metadata.get("init") or {})
    path = Path(cfg.init)
    model, info = load_model(path)
    if cfg.seq_len > info.config.max_position_embeddings:
        raise UsageError(f"--seq-len {cfg.seq_len} exceeds the model's max_position_embeddings "
                         f"{info.config.max_position_embeddings}")  # fmt: skip
    tokenizer = load_tokenizer_for(info.metadata, path, info.config)
    record = {"path": path.name, "format": info.format, "sha256": model_digest(path),
              "architecture": info.config.architecture}  # fmt: skip
    log(f"init: {info.config.architecture} from {path} ({info.format}, {info.param_count:,} parameters)")
    return InitialModel(info.config, tokenizer, model.weights(), record)


def _data(cfg, ckpt, ckpts, run_dir: Path, corpus_arg, log, d: Dist, tokenizer: Any = None):
    """The prepared corpus (rank 0 prepares it; every rank opens the same shards) and the tokenizer
    facts, with the tokenizer's text that every file of the run embeds. `tokenizer`: the --init model's."""
    resuming = ckpt.training.get("data_fingerprint") if ckpt is not None else None
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpts.prepare()
        _prepare_data(cfg, run_dir, log, corpus_arg, resuming, tokenizer)
    d.barrier()
    corpus = _prepare_data(cfg, run_dir, log, corpus_arg, resuming, tokenizer)
    if ckpt is not None and resuming != corpus.fingerprint:
        raise UsageError(f"cannot resume {ckpt.path.name}: the corpus changed since the checkpoint was written")
    tok_info = dict(corpus.manifest["tokenizer"])
    if tok_info["kind"] != "bytes":  # embedded in every file the run writes; the sidecar is for other tools
        tok_info |= {"file": TOKENIZER_FILE, "json": bpe_json(tok_info, corpus.directory)}
        if d.main:
            atomic_write_text(run_dir / TOKENIZER_FILE, tok_info["json"])
    return corpus, tok_info


def _build(cfg: TrainConfig, ckpt: Checkpoint | None, vocab_size: int, log: Any, d: Dist, init: InitialModel | None):
    """The model, its optimizer, the loop state and the SWA average: fresh (from --init's weights when
    given), or restored from `ckpt`."""
    seed_everything(cfg.seed)
    model = LlamaForCausalLM(init.config if init else cfg.model_config(vocab_size))
    if init is not None and init.weights is not None:
        model.load_weights(init.weights)
    model = model.to(cfg.device)
    optimizer, names, state, average = optimizer_and_state(model, cfg, ckpt, log)
    if d.from_main(state.step) != state.step:
        raise IntegrityError("ranks disagree on the resume step")
    return model, optimizer, names, state, average


def _prepare_data(
    cfg: TrainConfig,
    run_dir: Path,
    log: Callable[[str], None],
    corpus_arg: str | None,
    resuming: str | None,
    tokenizer: Any = None,
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
    if tokenizer is None and cfg.tokenizer not in KINDS:  # a tokenizer file: read now, embedded from here on
        tokenizer = open_tokenizer(Path(cfg.tokenizer))
    return prepare_corpus(
        Path(cfg.corpus) if cfg.corpus else None,
        run_dir / "data",
        tokenizer=tokenizer or cfg.tokenizer,
        vocab_size=cfg.vocab_size,
        val_fraction=cfg.val_fraction,
        text_field=cfg.text_field,
        log=log,
    )
