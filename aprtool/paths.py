"""What aprtool may read and what it may replace.

Inputs: only regular files. `open()` on a FIFO blocks forever and a device can be endless, so an input
is opened non-blocking and checked with fstat on the open descriptor (no window to swap the file).

Outputs: never replace or delete what aprtool did not create. An existing non-empty OUT is refused
unless `--force` (and then replaced atomically, the old kept until the new is complete); OUT that is
the input, a symlink, or not a regular file/directory is always refused.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from aprtool.errors import FileAccessError, FormatError, LimitError, UsageError

MAX_SIDECAR_BYTES = 64 * 1024 * 1024  # config.json, tokenizer.json, manifest.json: far below this
MAX_RUN_FILE_BYTES = 1 << 20  # a run's status.json / config.json, distill's state.json: a few KB each

_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _access_error(path: os.PathLike[str] | str, exc: OSError) -> FileAccessError:
    if exc.errno == errno.ENOENT:
        return FileAccessError(f"{path}: no such file")
    if exc.errno == errno.ELOOP:
        return FileAccessError(f"{path}: too many levels of symbolic links (a symlink loop?)")
    return FileAccessError(f"{path}: cannot read ({exc.strerror or exc})")


def input_file(path: str | os.PathLike[str]) -> Path:
    """`path` if it names a regular file (following symlinks); FileAccessError (exit 3) otherwise."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise _access_error(path, exc) from None
    if not stat.S_ISREG(mode):
        raise FileAccessError(f"{path}: is {_kind(mode)}, not a regular file")
    return Path(path)


def appendable(path: str | os.PathLike[str]) -> Path:
    """`path` if it is absent or a regular file (not a symlink): what a log aprtool appends to may be, so that a
    FIFO or a device in its place is an error (exit 3), never a hang or a write elsewhere."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return Path(path)
    except OSError as exc:
        raise _access_error(path, exc) from None
    if not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else _kind(mode)
        raise FileAccessError(f"{path}: is {kind}, not a regular file aprtool can append to")
    return Path(path)


def open_input(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a regular file for reading without ever blocking on a FIFO or reading a device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _access_error(path, exc) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FileAccessError(f"{path}: is {_kind(mode)}, not a regular file")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_input(path: str | os.PathLike[str], limit: int = MAX_SIDECAR_BYTES) -> bytes:
    """A small input file's bytes, refusing (exit 4) one larger than `limit` before reading it."""
    with open_input(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise FormatError(f"{path}: {size:,} bytes, more than the {limit:,} a file of this kind may have")
        return f.read(limit + 1)[:limit]


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except (OSError, RuntimeError):
        return False


def output_path(
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
    directory: bool = False,
) -> Path:
    """Check OUT before any work is done. `directory`: OUT is a directory (export --to hf).

    Refused: OUT that is (or links to) an input (exit 2), a symlink or a special file (exit 2), an
    existing non-empty file or directory without `force` (exit 2), a missing parent directory (exit 3).
    Temp files of earlier aprtool processes that were killed mid-write are swept from the parent."""
    out = Path(path)
    for source in inputs:
        if _same(out, Path(source)):
            raise UsageError(f"OUT {out} is the input {source}: write the result to another path")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise FileAccessError(f"{parent}: no such directory")
    if out.is_symlink():
        raise UsageError(f"OUT {out} is a symbolic link: give the path it should be written to, not a link")
    if os.path.lexists(out):
        mode = out.stat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UsageError(f"OUT {out} is {_kind(mode)}: aprtool writes only regular files and directories")
        if stat.S_ISDIR(mode) and not directory:
            raise UsageError(f"OUT {out} is a directory: give a file name")
        empty = not any(out.iterdir()) if stat.S_ISDIR(mode) else out.stat().st_size == 0
        if not empty and not force:
            raise UsageError(f"OUT {out} already exists: use --force to replace it, or choose another path")
    from aprtool.atomic import sweep_temp_files

    sweep_temp_files(parent)
    return out


def recorded_path_hint(what: str, recorded: str, flag: str) -> UsageError:
    """The error for a path a file records: shown to the user, who may pass it; never opened."""
    from aprtool.text import printable

    return UsageError(
        f"{what} {printable(recorded)!r} (recorded in a file; aprtool never opens a path found inside a file): "
        f"pass {flag} {printable(recorded)} to use it"
    )


def read_json(path: str | os.PathLike[str], limit: int = MAX_SIDECAR_BYTES) -> object:
    """A side file's JSON (config.json, tokenizer_config.json, a manifest, a run's status.json, ...): size-capped,
    and anything `json` raises on hostile text is one line naming the file (see `parse_json`)."""
    return parse_json(read_input(path, limit), str(path))


def parse_json(data: bytes | str, where: str) -> object:
    """JSON text from a file (a side file, a metrics line, an embedded tokenizer): bad UTF-8, syntax, a number
    too long to convert and nesting deep enough to exhaust the stack are each one line naming `where`."""
    import json

    try:
        return json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"{where}: not valid JSON ({str(exc)[:80]})") from None


def bounded_lines(f: BinaryIO, limit: int) -> Iterator[bytes]:
    """A binary file's lines of at most `limit` bytes, read one at a time; a longer line (no record a tool
    writes) is skipped whole without ever being held."""
    while line := f.readline(limit):
        if len(line) == limit and not line.endswith(b"\n"):
            while (rest := f.readline(limit)) and not rest.endswith(b"\n"):
                pass
            continue
        yield line


def read_json_object(path: str | os.PathLike[str], limit: int = MAX_SIDECAR_BYTES) -> dict[str, Any]:
    """`read_json` of a file that must hold a JSON object."""
    value = read_json(path, limit)
    if not isinstance(value, dict):
        raise FormatError(f"{path}: must be a JSON object, found {type(value).__name__}")
    return value


class FileRanges:
    """An open input whose bytes are mapped one range at a time: a multi-GiB model is never mapped whole, so
    it can be listed and read tensor by tensor under an address-space limit. Each range's mapping lives as
    long as the arrays made from it; every OSError names the file."""

    def __init__(self, f: BinaryIO, path: Path, *, writable: bool = False) -> None:
        self.path = path
        self._fd = os.dup(f.fileno())  # a plain descriptor: no ResourceWarning if the owner is never closed
        self._access = mmap.ACCESS_COPY if writable else mmap.ACCESS_READ
        self._closer = weakref.finalize(self, os.close, self._fd)

    def view(self, start: int, size: int, what: str) -> memoryview:
        """Bytes [start, start + size) of the file (checked by the caller to lie inside it)."""
        if size <= 0:
            return memoryview(bytearray(0))
        base = start // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
        try:
            mapping = mmap.mmap(self._fd, start + size - base, access=self._access, offset=base)
        except (OSError, ValueError) as exc:
            message = f"{self.path}: cannot map the {size:,} bytes of {what} ({getattr(exc, 'strerror', None) or exc})"
            if getattr(exc, "errno", None) == errno.ENOMEM:  # out of memory, as ensure_allocatable says it
                raise LimitError(message) from None
            raise FileAccessError(message) from None
        return memoryview(mapping)[start - base : start - base + size]

    def close(self) -> None:
        self._closer()
