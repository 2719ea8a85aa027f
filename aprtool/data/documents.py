"""The documents of a corpus, streamed: text files (one document each), or rows of parquet / jsonl(.gz) files
(one document per row, from a text field). Each document goes to the training or the held-out side by a
stable hash: of its file's relative path (text files, as before), or of the file and row (rows), so the same
corpus splits the same way on every machine and no document is on both sides.

`Documents.stream()` yields (side, text) in a stable order with memory bounded by one row group / one line,
and counts what it read (`tally`): documents, their UTF-8 bytes, and rows skipped because their field is not
a string (null, a number, a list): counted and reported, never silently dropped.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aprtool.data.corpus import default_corpus_files, default_corpus_root, read_text, split_by_file, text_files
from aprtool.errors import FileAccessError, FormatError, UnavailableError, UsageError

RECORD_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz")
DEFAULT_TEXT_FIELD = "text"
MAX_LINE_BYTES = 256 * 1024 * 1024  # one jsonl row; a longer line is refused, not read into memory
PARQUET_BATCH_BYTES = 4 * 1024 * 1024  # rows converted to Python strings at a time: small enough to stay in cache
SIDES = ("train", "val")


def is_record_file(path: Path) -> bool:
    return path.name.endswith(RECORD_SUFFIXES)


@dataclass
class Tally:
    documents: int = 0
    bytes: int = 0
    skipped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"documents": self.documents, "bytes": self.bytes, "skipped": self.skipped}


def bucket(key: str) -> float:
    """Where a document falls in [0, 1): below the held-out fraction it is held out."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") / 2**64


@dataclass
class Documents:
    kind: str  # "text" (a file per document) or "records" (a row per document)
    root: Path
    files: list[Path]
    text_field: str = DEFAULT_TEXT_FIELD
    default: bool = False  # the embedded default corpus
    tally: dict[str, Tally] = field(default_factory=lambda: {side: Tally() for side in SIDES})

    @classmethod
    def open(cls, source: Path | None, text_field: str = DEFAULT_TEXT_FIELD) -> Documents:
        """The corpus at `source` (None: the default corpus): a record file, or a directory of record files
        or of text files. Which it is, is decided by the names (a directory holding any record file is read
        as records; its other files are not documents)."""
        if source is None:
            return cls("text", default_corpus_root(), default_corpus_files(), default=True)
        if source.is_file() and is_record_file(source):
            return cls("records", source.parent, [source], text_field)
        if not source.is_dir():
            raise FileAccessError(f"--corpus {source}: not a directory or a .parquet / .jsonl / .jsonl.gz file")
        records = sorted((p for p in source.rglob("*") if p.is_file() and is_record_file(p)),
                         key=lambda p: p.relative_to(source).as_posix())  # fmt: skip
        if records:
            return cls("records", source, records, text_field)
        return cls("text", source, text_files(source))

    def describe(self) -> dict[str, Any]:
        out = {"root": str(self.root), "kind": self.kind, "files": len(self.files), "default": self.default}
        return out | ({"text_field": self.text_field} if self.kind == "records" else {})

    def fingerprint(self, settings: dict[str, Any]) -> str:
        return files_fingerprint(self.files, self.root, {**settings, **self._identity()})

    def _identity(self) -> dict[str, Any]:
        return {"text_field": self.text_field} if self.kind == "records" else {}

    def stream(self, val_fraction: float, sides: tuple[str, ...] = SIDES) -> Iterator[tuple[str, str]]:
        """(side, text) for every document on `sides`, in a stable order, counted in `tally`."""
        if self.kind == "text":
            train, val = split_by_file(self.files, self.root, val_fraction)
            held_out = set(val)
            for path in self.files:
                side = "val" if path in held_out else "train"
                if side in sides:
                    text = read_text(path)
                    if text is None:
                        self.tally[side].skipped += 1  # not UTF-8, or unreadable
                    elif text:  # an empty file is no document
                        yield self._counted(side, text)
            return
        for path in self.files:
            for row, value in self._rows(path):
                key = f"{path.relative_to(self.root).as_posix()}#{row}"
                side = "val" if bucket(key) < val_fraction else "train"
                if side not in sides:
                    continue
                if isinstance(value, str):
                    yield self._counted(side, value)
                else:
                    self.tally[side].skipped += 1

    def texts(self, val_fraction: float, sides: tuple[str, ...] = SIDES) -> Iterator[str]:
        return (text for _, text in self.stream(val_fraction, sides))

    def _counted(self, side: str, text: str) -> tuple[str, str]:
        tally = self.tally[side]
        tally.documents += 1
        tally.bytes += len(text.encode("utf-8"))
        return side, text

    def _rows(self, path: Path) -> Iterator[tuple[int, Any]]:
        return (
            _parquet_rows(path, self.text_field)
            if path.name.endswith(".parquet")
            else _jsonl_rows(path, self.text_field)
        )


def files_fingerprint(files: list[Path], root: Path, settings: dict[str, Any]) -> str:
    """A corpus's identity: each file's relative path and contents (streamed, never read whole), and the
    settings it is prepared with."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def _shown(names: list[str]) -> str:
    shown = ", ".join(repr(n)[:40] for n in names[:12])
    return (shown + f", ... ({len(names)} in all)") if len(names) > 12 else shown or "none"


def _missing(path: Path, where: str, text_field: str, present: list[str]) -> FormatError:
    return FormatError(f"{path}{where}: no field {text_field!r:.60} (--text-field); fields present: {_shown(present)}")


def _jsonl_rows(path: Path, text_field: str) -> Iterator[tuple[int, Any]]:
    """Each non-blank line's `text_field` value (rows counted from 0, as in parquet), line by line; errors
    name the line number."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            row_index = 0
            for number, line in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), 1):
                if len(line) > MAX_LINE_BYTES:
                    raise FormatError(f"{path}:{number}: a line longer than {MAX_LINE_BYTES:,} bytes")
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError) as exc:
                    raise FormatError(f"{path}:{number}: not JSON ({str(exc)[:80]})") from None
                if not isinstance(row, dict):
                    raise FormatError(f"{path}:{number}: a row must be a JSON object, found {type(row).__name__}")
                if text_field not in row:
                    raise _missing(path, f":{number}", text_field, sorted(map(str, row)))
                yield row_index, row[text_field]
                row_index += 1
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise FormatError(f"{path}: cannot be read ({str(exc)[:120]})") from None


def _parquet_rows(path: Path, text_field: str) -> Iterator[tuple[int, Any]]:
    """The `text_field` column, one batch of rows at a time (row = index in the file)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UnavailableError(f"{path}: parquet corpora need pyarrow: pip install 'aprtool[data]'") from None
    try:
        table = pq.ParquetFile(path)
        names = table.schema_arrow.names
        if text_field not in names:
            raise _missing(path, "", text_field, names)
        row = 0
        for batch in table.iter_batches(batch_size=_batch_rows(table), columns=[text_field]):
            for value in batch.column(0).to_pylist():
                yield row, value
                row += 1
    except (pa.ArrowException, OSError) as exc:
        raise FormatError(f"{path}: not a readable parquet file ({str(exc)[:120]})") from None


def _batch_rows(table: Any) -> int:
    """Rows per batch for about PARQUET_BATCH_BYTES of (uncompressed) data, from the file's own row groups."""
    meta = table.metadata
    rows = max(meta.num_rows, 1)
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return int(min(max(PARQUET_BATCH_BYTES * rows // max(size, 1), 16), 65536))


def check_sides(documents: Documents, root: Path) -> None:
    """Both sides of the split hold a document (after a stream)."""
    empty = [side for side in SIDES if documents.tally[side].documents == 0]
    if empty:
        per = "file" if documents.kind == "text" else "document"
        raise UsageError(f"corpus {root}: no readable text on the {empty[0]} side of the by-{per} held-out split"
                         f" ({documents.tally['train'].documents} train / {documents.tally['val'].documents} val"
                         " documents; raise --val-fraction or add documents)")  # fmt: skip
