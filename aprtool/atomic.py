"""Crash-safe file replacement: temp file in the same directory, fsync, os.replace, fsync the dir.

A reader never sees a partial file under the final name: after a crash it finds either the old file
or the new one, plus at most a hidden temp file that `sweep_temp_files` removes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_MARK = ".tmp-"


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    return path.parent / f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Yield a binary file; on clean exit it replaces `path` durably, on error it vanishes."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    tmp = temp_path(path)
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """For writers that want a file name (safetensors, gguf): yield a temp path in the same directory;
    on clean exit it is fsynced and renamed over `path`, on error it vanishes."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent if str(path.parent) else Path("."))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sweep_temp_files(directory: Path) -> list[Path]:
    """Remove temp files a crash left behind in `directory` (hidden names containing TEMP_MARK)."""
    removed = []
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.startswith(".") and TEMP_MARK in p.name and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed
