"""A distillation run's identity and bookkeeping: fingerprint, DIR/state.json, the teacher's data.

DIR/state.json (replaced atomically; DistillStatus):
    {"format": "aprtool-distill-state", "version": 1, "fingerprint": ..., "teacher": {"path", "sha256"},
     "mode": ..., "command": "distill", "status": "running" | "completed" | "interrupted" | "failed",
     "step": ..., "steps": ..., "checkpoints": {"latest": ..., "final": ...}, "model": "model.apr",
     "reason": ..., "resume": ..., "updated_at": ...}
The fingerprint is the sha256 of the canonical JSON (sorted keys, no spaces) of everything that decides
what is trained: the teacher's sha256, the student's shape and init (with the student file's sha256), the
mode and keys, the data's fingerprint, the seed and the budget and optimizer settings.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aprtool.data.documents import DEFAULT_TEXT_FIELD
from aprtool.data.prepare import MANIFEST, PreparedCorpus, load_prepared, prepare_corpus
from aprtool.data.tokenizer import load_tokenizer
from aprtool.distill.config import DistillConfig, identity
from aprtool.distill.models import LoadedModel, StudentPlan, tokenizer_differences
from aprtool.errors import FormatError, UsageError
from aprtool.paths import MAX_RUN_FILE_BYTES, read_json, recorded_path_hint
from aprtool.train.checkpoint import CheckpointDir
from aprtool.train.runs import RunStatus

STATE = "state.json"
STATE_FORMAT = "aprtool-distill-state"


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def fingerprint(cfg: DistillConfig, teacher: LoadedModel, plan: StudentPlan, corpus: PreparedCorpus) -> str:
    student = plan.describe()
    student.pop("student_file")  # the path; its content is in student_sha256
    payload = {
        "version": 1,
        "teacher_sha256": teacher.sha256,
        "student": student,
        "data": corpus.fingerprint,
        "config": identity(cfg),  # mode, keys, temperature, alpha, seed, steps, seq_len, batch, lr, ...
    }
    return hashlib.sha256(canonical_json(payload)).hexdigest()


def read_state(out: Path) -> dict[str, Any] | None:
    path = out / STATE
    if not path.is_file():
        return None
    try:
        state = read_json(path, MAX_RUN_FILE_BYTES)
    except FormatError as exc:
        raise FormatError(f"{exc}; remove it or use --force") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise FormatError(f"{path}: not an aprtool distill state file; use another --run-dir or --force")
    return state


class DistillStatus(RunStatus):
    """DIR/state.json: the run's status file (train.runs.RunStatus) with the run's identity first and the
    checkpoints `latest` (the newest verified) and `final` (the one the export came from)."""

    def __init__(self, out: Path, command: str, run_id: str, teacher: LoadedModel, mode: str) -> None:
        super().__init__(out, command, name=STATE, format=STATE_FORMAT, version=1, fingerprint=run_id,
                         teacher={"path": str(teacher.path), "sha256": teacher.sha256}, mode=mode)  # fmt: skip

    def document(self) -> dict[str, Any]:
        doc = super().document()
        doc["checkpoints"] = {"latest": doc.pop("last_checkpoint", None), "final": doc.pop("final", None)}
        return doc


def clear_run(out: Path, ckpt_dir: Path) -> None:
    """--force: the previous run's checkpoints, model and log go (the prepared data stays, it is a cache).
    The checkpoint directory is renamed out of the way first, so a crash cannot leave half of it."""
    if ckpt_dir.is_dir():
        doomed = ckpt_dir.with_name(f".{ckpt_dir.name}.deleting-{secrets.token_hex(4)}")
        ckpt_dir.rename(doomed)
        shutil.rmtree(doomed)
    for name in ("model.apr", "model.rejected.apr", "metrics.jsonl", STATE):
        (out / name).unlink(missing_ok=True)


def before_fresh_run(
    out: Path,
    ckpts: CheckpointDir,
    run_id: str,
    previous: dict[str, Any] | None,
    force: bool,
    export_problems: Callable[[], list[str]],
    log: Any,
) -> str:
    """What a run without --resume does with what `out` already holds: "skip" (the same run completed and
    its model.apr checks out), "export-again" (it completed but model.apr is missing or damaged: resume
    from the final checkpoint), or "train" (nothing there, or --force cleared it). A different run, or an
    unfinished one that can be resumed, is refused: two runs never mix in one directory."""
    checkpoints = bool(ckpts.dir.is_dir() and (ckpts.step_files() or (ckpts.dir / "latest").exists()))
    same = previous is not None and previous.get("fingerprint") == run_id
    if same and previous.get("status") == "completed" and not force:
        problems = export_problems() if (out / "model.apr").is_file() else ["missing"]
        if not problems:
            return "skip"
        if checkpoints:
            log(f"WARNING: {out / 'model.apr'} does not check out ({'; '.join(problems)}); exporting it again")
            return "export-again"
    if force or (same and not checkpoints):
        if previous or checkpoints or (out / "model.apr").exists():
            reason = "--force" if force else "the previous attempt left no checkpoint"
            log(f"{reason}: starting over in {out} (its checkpoints and model are removed)")
        clear_run(out, ckpts.dir)
        return "train"
    if same:
        raise UsageError(
            f"{out} holds an unfinished run of this distillation (status {previous.get('status')}, step "
            f"{previous.get('step')}); continue it with --resume latest, or start over with --force"
        )
    if previous is not None or checkpoints:
        theirs = (previous or {}).get("fingerprint") or "unknown"
        raise UsageError(
            f"{out} holds another run (fingerprint {theirs[:16]}…, this one {run_id[:16]}…); "
            "use --force to replace it, or choose another --run-dir"
        )
    return "train"


def teacher_corpus(
    corpus_arg: str | None,
    teacher: LoadedModel,
    out_dir: Path,
    log: Any,
    *,
    resume: tuple[str, str | None] | None = None,
    text_field: str = DEFAULT_TEXT_FIELD,
) -> tuple[PreparedCorpus, str]:
    """The prepared corpus and a description of where it came from; its tokenizer must be the teacher's.

    `corpus_arg` is --corpus as the user gave it. Without it: on resume (`resume` = the checkpoint's data
    fingerprint and recorded corpus) the run's own prepared OUT/data; else the teacher run's prepared `data/`
    (beside the teacher file); else the default corpus, unless the teacher's training recorded another
    corpus, which is named for the user to pass (a path inside a file is never opened)."""
    tok = teacher.tokenizer
    trained = teacher.trained_with
    if corpus_arg is None and resume is not None:
        if (out_dir / MANIFEST).is_file() and load_prepared(out_dir).fingerprint == resume[0]:
            return load_prepared(out_dir), str(out_dir)
        if resume[1] is not None:
            raise recorded_path_hint("this run was trained on corpus", resume[1], "--corpus")
    if corpus_arg is not None:
        source, origin = Path(corpus_arg), corpus_arg
    elif teacher.run_dir is not None and (teacher.run_dir / "data" / MANIFEST).is_file():
        source = teacher.run_dir / "data"
        origin = str(source)
    elif trained.corpus is not None:
        raise recorded_path_hint("the teacher was trained on corpus", trained.corpus, "--corpus")
    else:
        source, origin = None, "python-stdlib"
    if source is not None and (source / MANIFEST).is_file():  # already tokenized: checked before it is linked
        _check_corpus_tokens(tok, load_prepared(source).manifest, origin)
    corpus = prepare_corpus(
        source,
        out_dir,
        tokenizer="bytes" if tok["kind"] == "bytes" else load_tokenizer(tok, teacher.path.parent),
        val_fraction=trained.val_fraction,
        text_field=text_field,
        log=log,
    )
    _check_corpus_tokens(tok, corpus.manifest, origin)
    return corpus, origin


def _check_corpus_tokens(teacher_tokenizer: dict[str, Any], manifest: dict[str, Any], origin: str) -> None:
    differences = tokenizer_differences(teacher_tokenizer, manifest["tokenizer"], "corpus")
    if differences:
        raise UsageError(
            f"corpus {origin}: its tokens are not the teacher's ({'; '.join(differences)}); pass --corpus with text "
            "(it is tokenized with the teacher's own tokenizer) or the teacher run's data/ directory"
        )
