"""Crash-safe file replacement: temp file in the same directory, fsync, os.replace, fsync the dir.

A reader never sees a partial file under the final name: after a crash it finds either the old file
or the new one, plus at most a hidden temp file `.NAME.tmp-PID-XXXXXXXX` that `sweep_temp_files`
removes once process PID is gone (a live process may still be writing it).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_MARK = ".tmp-"
_TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}$")  # exactly what temp_path makes


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


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sweep_temp_files(directory: Path) -> list[Path]:
    """Remove what a killed aprtool write left in `directory`: entries named exactly as `temp_path`
    names them whose process no longer runs (files, or the build directory of an HF export)."""
    removed = []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        match = _TEMP_NAME.match(p.name)
        if not match or _running(int(match.group(1))) or p.is_symlink():
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_file():
            p.unlink(missing_ok=True)
        else:
            continue
        removed.append(p)
    return removed
