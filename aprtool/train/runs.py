"""A run directory's own files: `aprtool runs DIR` (its checkpoints), config.json (the resolved options)
and status.json (where the run is). Modules that import torch are imported inside the functions that
need them, so `runs` and `inspect` stay quick."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from aprtool.atomic import atomic_write_text
from aprtool.errors import AprError, FileAccessError
from aprtool.paths import MAX_RUN_FILE_BYTES, read_json_object


def _pointer(ckpt: Path) -> str | None:
    """The file name `latest` names (None when it is missing or names no checkpoint file)."""
    from aprtool.train.checkpoint import CheckpointDir

    try:
        latest = CheckpointDir(ckpt, keep_last=0, log=lambda _m: None).latest()
    except AprError:
        return None
    return latest.name if latest else None


def _checkpoint(path: Path, verify: bool) -> dict[str, Any]:
    from aprtool.container import open_apr, verify_file

    row: dict[str, Any] = {"file": path.name, "bytes": path.stat().st_size}
    try:
        with open_apr(path) as f:  # a checkpoint's training facts, or a final model's summary of them
            found = [f.metadata.get(k) for k in ("training", "training_summary", "distillation")]
        training = next((t for t in found if isinstance(t, dict)), {})
        state = training.get("state") if isinstance(training.get("state"), dict) else {}
        row |= {
            "step": training.get("step"),
            "epoch": training.get("epoch"),
            "val_loss": training.get("val_loss"),
            "best_val_loss": state.get("best_val_loss"),
            "saved_at": training.get("saved_at"),
        }
        row["verified"] = verify_file(path).valid if verify else None
    except AprError as exc:
        row |= {"verified": False, "error": str(exc)}
    return row


def list_run(run_dir: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any]:
    """Every checkpoint of RUN_DIR/ckpt (step, epoch, held-out loss, size, verified), which ones `latest`
    and `best` are, the final model and the run's status file if it has one."""
    run_dir = Path(run_dir)
    ckpt = run_dir / "ckpt"
    if not run_dir.is_dir():
        raise FileAccessError(f"{run_dir}: no such directory")
    files = sorted(p for p in ckpt.glob("*.apr") if p.is_file() and not p.name.startswith(".")) if ckpt.is_dir() else []
    rows = [_checkpoint(p, verify) for p in files]
    status = None
    for name in ("state.json", "status.json"):
        if (run_dir / name).is_file():
            try:
                status = read_json_object(run_dir / name, MAX_RUN_FILE_BYTES).get("status")
            except AprError:
                status = "unreadable"
            status = status if isinstance(status, str) or status is None else "unreadable"
    model = run_dir / "model.apr"
    return {
        "run": str(run_dir),
        "format": "aprtool run",
        "status": status,
        "latest": _pointer(ckpt) if ckpt.is_dir() else None,
        "best": "best.apr" if (ckpt / "best.apr").is_file() else None,
        "model": _checkpoint(model, verify) if model.is_file() else None,
        "checkpoints": rows,
        "valid": all(r.get("verified") is not False for r in rows),
    }


RUN_CONFIG = "config.json"


def _may_replace(path: Path) -> None:
    """A run's config.json / status.json is replaced only if aprtool wrote it (an HF folder has a
    config.json of its own): anything else is refused before it is touched."""
    from aprtool.errors import UsageError

    if not os.path.lexists(path):
        return
    try:
        document = read_json_object(path, MAX_RUN_FILE_BYTES)
        ours = document.get("command") in ("pretrain", "distill") or document.get("format") == "aprtool-distill-state"
    except AprError:
        ours = False
    if not ours:
        raise UsageError(f"{path} exists and was not written by an aprtool run: choose another run directory")


def write_run_config(run_dir: Path, command: str, config: dict[str, Any], **resolved: Any) -> Path:
    """RUN_DIR/config.json, written when a run starts or resumes: every option with its default filled in
    (`config`), what was decided at run time (`resolved`: model shape, tokenizer, world size, the
    checkpoint resumed from) and the command line, so a run can be repeated or compared."""
    document = {
        "command": command,
        "argv": sys.argv[1:],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config,
        **resolved,
    }
    path = run_dir / RUN_CONFIG
    _may_replace(path)
    atomic_write_text(path, json.dumps(document, indent=2, default=str) + "\n")
    return path


STATUS_FILE = "status.json"


class RunStatus:
    """RUN_DIR/status.json (distill: state.json): where a run is (status running / completed / interrupted /
    failed, step, the last verified checkpoint, the resume command or the reason), replaced atomically at
    start, at each checkpoint (from the background thread that verified it) and at the end. Written only
    once this process has started the run, so a refused start never touches another run's file."""

    def __init__(self, run_dir: Path, command: str, *, name: str = STATUS_FILE, **fixed: Any) -> None:
        self.path = run_dir / name
        self.command = command
        self.fixed = fixed  # fields every version of the file carries first (distill: format, fingerprint)
        self.fields: dict[str, Any] = {}
        self.started = False
        self._lock = threading.Lock()

    def document(self) -> dict[str, Any]:
        return {**self.fixed, "command": self.command, **self.fields}

    def update(self, **fields: Any) -> None:
        with self._lock:
            if not self.started:
                _may_replace(self.path)
            self.started = True
            self.fields |= fields
            document = {**self.document(), "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            atomic_write_text(self.path, json.dumps(document, indent=1) + "\n")

    def ended(self, exc: BaseException, resume: str) -> None:
        """After an exception: `interrupted` with the resume command, or `failed` with the reason."""
        if not self.started:
            return
        from aprtool.train.common import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):
            self.update(status="interrupted", reason=str(exc), resume=resume)
        else:
            self.update(status="failed", reason=str(exc) or type(exc).__name__, resume=resume)
