"""Training progress as pretrain and distill show it: a bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

from aprtool.train.progress import RunProgress, format_duration, log_line

NO_PLOT = "not drawn: pip install 'aprtool[plot]', then aprtool plot RUN_DIR"
BAR_UNITS = 1000  # the bar shows the fraction done, which under a time budget is not steps


class _Bar:
    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn

        self.bar = Progress(
            TextColumn("step {task.fields[steps]}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%  loss {task.fields[loss]}  {task.fields[tps]} tok/s"),
            TextColumn("ETA {task.fields[eta]}"),
            console=Console(stderr=True),
            transient=True,
        )
        self.task = self.bar.add_task("train", total=BAR_UNITS, steps="-", loss="-", tps="-", eta="-")

    def show(self, progress: RunProgress, record: dict[str, Any] | None) -> None:
        fields: dict[str, Any] = {"steps": progress.steps_text, "eta": format_duration(progress.eta_seconds)}
        if record and "loss" in record:
            fields |= {"loss": f"{record['loss']:.3f}", "tps": f"{record['tokens_per_s']:,.0f}"}
        self.bar.update(self.task, completed=round(progress.fraction * BAR_UNITS), **fields)


@contextmanager
def training_progress(enabled: bool) -> Iterator[Callable[[dict[str, Any]], None] | None]:
    """The `progress` callback for pretrain/distill: on a terminal a bar counting from the (resumed) step,
    following the wall clock under --time-budget, with an ETA; without one, a plain line on stderr with
    every metrics record (step, loss, lr, tokens/s, ETA), so CI logs and nohup runs show progress."""
    if not enabled:
        yield None
        return
    bar = _Bar() if sys.stderr.isatty() else None
    state: dict[str, RunProgress] = {}

    def update(event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            state["run"] = RunProgress.from_start(event)
            return
        run = state.get("run")
        if run is None:
            return
        run.update(event["step"], event.get("wall_seconds", run.wall))
        if bar is not None:
            bar.show(run, event if kind == "log" else None)
        elif kind == "log" and "loss" in event:  # an evaluation alone is already logged by the trainer
            print(f"[aprtool] {log_line(event, run)}", file=sys.stderr, flush=True)

    if bar is None:
        yield update
        return
    with bar.bar:
        yield update
