"""Crash-safe file replacement: temp file in the same directory, fsync, os.replace, fsync the dir.

A reader never sees a partial file under the final name: after a crash it finds either the old file
or the new one, plus at most a hidden temp file `.NAME.tmp-PID-XXXXXXXX` that `sweep_temp_files`
removes once process PID is gone (a live process may still be writing it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from aprtool.errors import FileAccessError

TEMP_MARK = ".tmp-"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXT = ("no space left", "os error 28", "disk quota")
_TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}$")  # exactly what temp_path makes


def _disk_full(directory: Path) -> bool:
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1024 * 1024


def write_error(path: Path, exc: BaseException) -> FileAccessError | None:
    """The one-line error (exit 3) for a failed write, or None if `exc` is not an I/O failure. Libraries
    report a full disk in their own ways (safetensors: a SafetensorError quoting os error 28; numpy's
    tofile: "N requested and M written", no errno), so the file system itself is asked when in doubt."""
    text = str(exc).lower()
    io_like = isinstance(exc, OSError) or "i/o error" in text or "written" in text or "os error" in text
    if not io_like:
        return None
    code = getattr(exc, "errno", None)
    if code in _NO_SPACE or any(t in text for t in _NO_SPACE_TEXT) or _disk_full(path.parent):
        return FileAccessError(f"{path}: cannot write: no space left on device (disk full)")
    if code == errno.EFBIG:
        return FileAccessError(f"{path}: cannot write: file too large (a file size limit was reached)")
    detail = getattr(exc, "strerror", None) or str(exc)[:200]
    return FileAccessError(f"{path}: cannot write ({detail})")


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
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        failure = write_error(path, exc) if isinstance(exc, Exception) else None
        if failure is not None:
            raise failure from None
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


@contextlib.contextmanager
def removed_if_refused(directory: Path) -> Iterator[None]:
    """`directory` is removed again when the block raises and it did not exist before it: a refused command
    leaves nothing behind, and what was there before (not aprtool's to delete) is never touched."""
    existed = os.path.lexists(directory)
    try:
        yield
    except BaseException:
        if not existed and directory.is_dir() and not directory.is_symlink():
            shutil.rmtree(directory, ignore_errors=True)
        raise
