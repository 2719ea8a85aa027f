"""A run's metrics: one JSON line per log interval in RUN_DIR/metrics.jsonl, and with `tensorboard` the
same scalars as TensorBoard event files in RUN_DIR/tensorboard/ (the optional `tensorboard` package)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aprtool.atomic import atomic_writer
from aprtool.errors import FormatError, UnavailableError
from aprtool.paths import appendable, bounded_lines, open_input, parse_json

METRICS_FILE = "metrics.jsonl"
MAX_LINE = 1 << 20  # a metrics.jsonl line: a record is ~300 bytes; a longer line is no record
TENSORBOARD_DIR = "tensorboard"
SCALARS = ("loss", "val_loss", "lr", "grad_norm_max", "tokens_per_s", "kd_loss", "ce_loss")


def require_tensorboard() -> None:
    """Fail before training starts, not at the first log line."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UnavailableError(
            "--tensorboard needs the tensorboard package: pip install 'aprtool[tensorboard]'"
        ) from None


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop lines logged after the checkpoint (those steps are about to be re-run) and any
    torn line a killed process left."""
    if not path.is_file():
        return
    with open_input(path) as f, atomic_writer(path) as out:  # line by line: a large log is never held whole
        for raw in bounded_lines(f, MAX_LINE):
            try:
                record = parse_json(raw, str(path))
            except FormatError:
                continue  # a torn line
            if isinstance(record, dict) and type(record.get("step")) is int and record["step"] <= step:
                out.write(raw if raw.endswith(b"\n") else raw + b"\n")


class MetricsLog:
    def __init__(self, run_dir: Path, *, tensorboard: bool = False) -> None:
        self.path = run_dir / METRICS_FILE
        self.run_dir = run_dir
        self.tensorboard = tensorboard
        self._writer: Any = None

    def start(self, step: int, *, fresh: bool = False) -> None:
        """Open at `step`: a fresh run drops an old file (`fresh`), a resumed one the lines after `step`;
        TensorBoard purges its events after `step` too, so re-run steps are not drawn twice."""
        appendable(self.path)  # a FIFO here would hang the first write; a symlink, write elsewhere
        if fresh:
            self.path.unlink(missing_ok=True)
        else:
            truncate_metrics(self.path, step)
        if self.tensorboard:
            require_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=step + 1, flush_secs=10)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key in SCALARS:
                if isinstance(record.get(key), int | float):
                    self._writer.add_scalar(f"train/{key}", record[key], record["step"])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
