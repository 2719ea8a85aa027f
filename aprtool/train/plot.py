"""`aprtool plot`: a run's curves from its metrics.jsonl (loss, held-out loss, learning rate, grad norm,
tokens/s against step; phase starts marked), several runs on one figure. matplotlib is an optional
dependency (`pip install 'aprtool[plot]'`)."""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aprtool.errors import AprError, FormatError, UnavailableError
from aprtool.paths import bounded_lines, open_input, parse_json
from aprtool.train.metrics import MAX_LINE

CURVES_FILE = "curves.png"
PANELS = (("loss", "loss (nats/token)"), ("lr", "learning rate"), ("grad_norm_max", "grad norm (max per interval)"),
          ("tokens_per_s", "tokens/s"))  # fmt: skip


@dataclass
class Curves:
    name: str
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    phases: dict[str, int] = field(default_factory=dict)  # phase -> the step it began at
    skipped_lines: int = 0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # a 400-digit integer
        return None
    return number if math.isfinite(number) else None


def read_curves(run_dir: str | os.PathLike[str]) -> Curves:
    """The curves of one run. Lines that are not JSON objects with an integer step are skipped and
    counted (a killed run may leave a torn last line); the file's values are numbers or nothing."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FormatError(f"{run_dir}: no metrics.jsonl (not a pretrain or distill run directory)")
    curves = Curves(run_dir.resolve().name or str(run_dir))
    with open_input(path) as f:
        for line in bounded_lines(f, MAX_LINE):
            _add_record(curves, line, path)
    if not curves.series:
        raise FormatError(f"{path}: no metrics records to plot")
    return curves


def _add_record(curves: Curves, line: bytes, path: Path) -> None:
    """One metrics line into `curves` (a line that is not a record is counted as skipped)."""
    try:
        record = parse_json(line, str(path))
    except FormatError:
        curves.skipped_lines += 1
        return
    step = record.get("step") if isinstance(record, dict) else None
    if not isinstance(step, int) or isinstance(step, bool):
        curves.skipped_lines += 1
        return
    for key in ("loss", "val_loss", "lr", "grad_norm_max", "tokens_per_s"):
        value = _number(record.get(key))
        if value is not None:
            curves.series.setdefault(key, []).append((step, value))
    phases = record.get("phases")
    for phase, began in phases.items() if isinstance(phases, dict) else ():
        if isinstance(began, int) and not isinstance(began, bool):
            curves.phases.setdefault(str(phase)[:40], began)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise UnavailableError("plot needs matplotlib: pip install 'aprtool[plot]'") from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def render_png(runs: list[Curves]) -> bytes:
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        color = colors[i % len(colors)]
        label = run.name if len(runs) > 1 else None
        for ax, (key, title) in zip(axes.flat, PANELS, strict=True):
            ax.set_title(title)
            points = run.series.get(key, [])
            if points:
                ax.plot(*zip(*points, strict=True), color=color, label=(label or "train") if key == "loss" else None)
            if key == "loss" and run.series.get("val_loss"):
                ax.plot(*zip(*run.series["val_loss"], strict=True), color=color, linestyle="--", marker="o",
                        markersize=3, label=f"{label} held-out" if label else "held-out")  # fmt: skip
            for j, (phase, step) in enumerate(sorted(run.phases.items(), key=lambda kv: kv[1])):
                ax.axvline(step, color=color, linestyle=":", linewidth=1)
                if key in ("loss", "lr"):  # labels staggered so that nearby phases stay readable
                    ax.text(step, 0.98 - 0.07 * (j % 3), f" {phase}", transform=ax.get_xaxis_transform(),
                            fontsize=8, va="top", color=color)  # fmt: skip
    for ax in axes[1]:
        ax.set_xlabel("step")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def plot_runs(run_dirs: list[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Write the curves of one or more runs to `out` (default: the first run's curves.png)."""
    from aprtool.atomic import atomic_write_bytes

    runs = [read_curves(d) for d in run_dirs]
    target = Path(out) if out is not None else Path(run_dirs[0]) / CURVES_FILE
    atomic_write_bytes(target, render_png(runs))
    described = [
        {"run": str(d), "records": len(r.series.get("loss", [])), "evaluations": len(r.series.get("val_loss", [])),
         "phases": r.phases, "skipped_lines": r.skipped_lines}
        for d, r in zip(run_dirs, runs, strict=True)
    ]  # fmt: skip
    return {"file": str(target), "runs": described}


def try_plot(run_dir: Path) -> str | None:
    """The run's curves.png when matplotlib is installed (for the end-of-run summary), else None."""
    try:
        return plot_runs([run_dir])["file"]
    except AprError:  # no matplotlib, no records, a full disk: the run itself has succeeded
        return None
