"""Where text comes from: the embedded default corpus and a file-level held-out split."""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

from aprtool.errors import UsageError

# Test suites are most of the stdlib's bytes and repeat themselves; the library code is the corpus.
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}


def default_corpus_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def default_corpus_files() -> list[Path]:
    """The running interpreter's standard library sources (*.py), without site-packages or tests."""
    root = default_corpus_root()
    files = [
        p for p in root.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]) and p.is_file()
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def text_files(root: Path) -> list[Path]:
    """Every UTF-8 text file under `root` (binary files are skipped), in a stable order."""
    out = []
    for p in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        if not p.is_file() or p.name.startswith("."):
            continue
        with open(p, "rb") as f:
            head = f.read(8192)  # the head decides; a large file is not read whole here
        if b"\0" in head:
            continue
        out.append(p)
    return out


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


EVAL_SPLITS = ("auto", "val", "all")  # what `eval --split` scores: auto = val for a model aprtool trained


def split_by_file(files: list[Path], root: Path, val_fraction: float) -> tuple[list[Path], list[Path]]:
    """Held-out split by whole files, decided by a hash of each relative path: stable across
    machines and runs, and no file contributes tokens to both sides."""
    if len(files) < 2:
        raise UsageError(f"corpus {root}: {len(files)} text file(s); a file-level held-out split needs at least 2")

    def bucket(p: Path) -> float:
        digest = hashlib.sha256(p.relative_to(root).as_posix().encode()).digest()
        return int.from_bytes(digest[:8], "little") / 2**64

    val = [p for p in files if bucket(p) < val_fraction]
    train = [p for p in files if bucket(p) >= val_fraction]
    if not val:  # tiny corpora: the file with the smallest hash goes to validation
        first = min(files, key=bucket)
        val, train = [first], [p for p in files if p != first]
    if not train:
        train, val = val[1:], val[:1]
    return train, val
