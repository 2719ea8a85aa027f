"""`aprtool compress`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from aprtool.cli._common import ForceOption, JsonOption, TextFieldOption, emit, handle_errors
from aprtool.cli.choices import Codec, Passthrough, Quant
from aprtool.container import constants as C
from aprtool.ops.compress import AUTO_CLIPS, CompressOptions, compress_file
from aprtool.sizes import parse_size
from aprtool.text import markup_safe

_DEFAULTS = CompressOptions()

EXAMPLES = """\b
Examples:
  aprtool compress run/model.apr              # writes run/model.int6.apr (int6 + rANS)
  aprtool compress model.apr --dry-run --compare    # every codec's size; nothing written
  aprtool compress run/model.apr --calibrate  # GPTQ rounding, calibrated on the run's training data
  aprtool compress run/model.apr --calibrate --budget 16MB   # the best widths that fit in 16,000,000 bytes
"""


def _speed(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _headline(report: dict[str, Any]) -> str:
    where = "dry run, nothing written" if report["dry_run"] else f"{markup_safe(report['output'])}"
    size = "" if report["output_bytes"] is None else f": {report['output_bytes']:,} bytes"
    return f"{where}{size} (input {report['input_bytes']:,} bytes; {report['mode']}, codec {report['codec']})"


def _codec_summary(report: dict[str, Any]) -> str:
    """The chosen codec's line, always printed: size, bits/weight, distance to the order-0 bound."""
    c = report["codecs"][report["codec"]]
    return (
        f"{report['codec']}: {c['bytes']:,} bytes for {report['quantized_params']:,} quantized weights "
        f"({c['bits_per_weight']:.4f} bits/weight): symbols {c['symbol_bytes']:,} bytes, "
        f"{c['over_entropy_pct']:+.3f}% over their order-0 bound ({report['entropy_bound_bytes']:,} bytes); "
        f"row scales {c['scale_bytes']:,} bytes"
        + (f"; clip {report['clip']} ({report['clip_source']})" if report.get("clip") else "")
    )


def _table(report: dict[str, Any]) -> Table:
    table = Table(title=f"{report['quantized_params']:,} quantized weights, same symbols for every codec")
    cols = ("codec", "bytes", "bits/weight", "symbols", "symbols over entropy", "scales", "encode MB/s", "decode MB/s")
    for col in cols:
        table.add_column(col, justify="left" if col == "codec" else "right")
    table.add_row("f32", f"{report['raw_float_bytes']:,}", "32.0000", "", "", "", "", "")
    for name, c in sorted(report["codecs"].items(), key=lambda kv: kv[1]["bytes"]):
        mark = " *" if name == report["codec"] else ""
        table.add_row(
            name + mark,
            f"{c['bytes']:,}",
            f"{c['bits_per_weight']:.4f}",
            f"{c['symbol_bytes']:,}",
            f"{c['over_entropy_pct']:+.3f}%",
            f"{c['scale_bytes']:,}",
            _speed(c["encode_mb_s"]),
            _speed(c["decode_mb_s"]),
        )
    bound = report["entropy_bound_bytes"]
    table.add_row("order-0 bound of the symbols", "", "", f"{bound:,}", "", "", "", "")
    return table


def _clips(report: dict[str, Any]) -> str:
    """How many quantized tensors got each clip (chosen per tensor without --clip)."""
    tally: dict[str, int] = {}
    for t in report["tensors"]:
        if t.get("clip") and t["action"] != "passthrough":
            tally[t["clip"]] = tally.get(t["clip"], 0) + 1
    return "clips: " + ", ".join(f"{markup_safe(c)} ×{k}" for c, k in sorted(tally.items()))


def _allocation(report: dict[str, Any]) -> Table:
    """--budget's choice per tensor: width, clip, rounding, stored bytes and the estimated cost."""
    table = Table(
        title=f"allocation under --budget {report['budget']['bytes']:,} bytes (cost: {report['budget']['cost']})"
    )
    for col in ("tensor", "shape", "width", "clip", "rounding", "bytes", "cost"):
        table.add_column(col, justify="left" if col in ("tensor", "clip", "rounding") else "right")
    for t in report["tensors"]:
        if "cost" not in t:
            continue
        shape = "×".join(str(d) for d in t["shape"])
        if t["action"] == "passthrough":  # a matrix below --min-elements that the budget left unquantized
            width, clip, rounding = t["width"], "-", "-"
        else:
            width, clip, rounding = f"int{t['bits']}", markup_safe(t["clip"]), t.get("method", "rtn")
        table.add_row(markup_safe(t["name"]), shape, width, clip, rounding, f"{t.get('stored_bytes', 0):,}",
                      f"{t['cost']:.6g}")  # fmt: skip
    return table


def _render(report: dict[str, Any]):
    def render(console: Console) -> None:
        console.print(_headline(report))
        for warning in report["warnings"]:
            console.print(f"[yellow]warning[/]: {markup_safe(warning)}")
        if not report["quantized_params"]:
            console.print("no tensor was quantized")
            return
        console.print(_codec_summary(report))
        if report.get("budget"):
            b = report["budget"]
            widths = ", ".join(f"{n} ×{k}" for n, k in b["widths"].items())
            refined = f"; {b['refine_steps']} steps of local search on the joint loss" if b.get("refine_steps") else ""
            refined += f"; {b['fill_steps']} upgrades on weight error alone" if b.get("fill_steps") else ""
            console.print(f"budget {b['bytes']:,} bytes: file {b['file_bytes']:,} bytes; widths {widths} "
                          f"(smallest reachable {b['smallest_bytes']:,}; cost: {b['cost']}{refined})")  # fmt: skip
            console.print(_allocation(report))
        elif report.get("clip") == "auto":
            console.print(_clips(report))
        if len(report["codecs"]) > 1:
            console.print(_table(report))

    return render


def _progress():
    """A progress bar on stderr when it is a terminal (large models take a while); None otherwise."""
    if not sys.stderr.isatty():
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), transient=True,
                   console=Console(stderr=True))  # fmt: skip
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done)

    return bar, update


# The options of calibrated and budgeted compression (issue #14), declared here to keep the command short.
BitsOption = Annotated[
    str | None,
    typer.Option(
        "--bits",
        metavar="BITS",
        help=f"Bits per weight, 4..8: one width, or per kind (embed, attn, mlp; a bare number for the rest), "
        f"e.g. mlp=5,attn=6,embed=7. Default: {C.DEFAULT_BITS}; with --budget, chosen per tensor.",
    ),
]
BudgetOption = Annotated[
    str | None,
    typer.Option(
        "--budget",
        metavar="BYTES",
        help="The file may take at most this many bytes (16000000, 16MB, 15.5MiB): each tensor's width is chosen "
        "to fit.",
    ),
]
CalibrateOption = Annotated[
    bool,
    typer.Option(
        "--calibrate",
        help="GPTQ: round each weight matrix under its layer's calibration inputs (a small tied embedding: "
        "then AdaRound).",
    ),
]
CalibTokensOption = Annotated[
    int, typer.Option("--calib-tokens", metavar="N", help="Calibration tokens (training split).")
]
CalibDataOption = Annotated[
    str | None,
    typer.Option(
        "--calib-data",
        metavar="PATH",
        help="Prepared shards, token shards, text files or a parquet / jsonl corpus to calibrate on. Default: the "
        "model's run data/, else the stdlib.",
    ),
]


@handle_errors
def compress_command(
    src: Annotated[Path, typer.Argument(metavar="IN", help=".apr or .safetensors input.", show_default=False)],
    out: Annotated[
        Path | None,
        typer.Option("-o", "--out", help="Output .apr (default: IN renamed, e.g. model.int6.apr).", show_default=False),
    ] = None,
    codec: Annotated[Codec, typer.Option(help="Lossless coder for the int6 symbols.")] = Codec(_DEFAULTS.codec),
    quant: Annotated[
        Quant, typer.Option(help="int6: quantize float matrices once; none: keep floats as they are.")
    ] = Quant(_DEFAULTS.quant),
    clip: Annotated[
        str | None,
        typer.Option(
            help="Row scale: absmax (max|row|/L), std:K (K*std(row)/L, larger values clipped), or auto (per tensor "
            f"the one with the least error at its width, of {', '.join(AUTO_CLIPS)}). Default: the clip late QAT "
            f"trained the model for, else auto. {C.DEFAULT_CLIP} gives smaller files with more error."
        ),
    ] = None,
    min_elements: Annotated[
        int,
        typer.Option(
            help="Tensors with fewer elements (and every 1-D tensor) are not quantized; with --budget, matrices "
            f"of at least {C.BUDGET_MIN_ELEMENTS:,} elements may be."
        ),
    ] = _DEFAULTS.min_elements,
    passthrough: Annotated[
        Passthrough, typer.Option(help="Unquantized float tensors: f16 (store as fp16) or keep (unchanged).")
    ] = Passthrough(_DEFAULTS.passthrough),
    compare: Annotated[
        bool,
        typer.Option("--compare/--no-compare", help="Also code with every codec (on every core) and print the table."),
    ] = _DEFAULTS.compare,
    bits: BitsOption = _DEFAULTS.bits,
    budget: BudgetOption = None,
    calibrate: CalibrateOption = _DEFAULTS.calibrate,
    calib_tokens: CalibTokensOption = _DEFAULTS.calib_tokens,
    calib_data: CalibDataOption = None,
    text_field: TextFieldOption = _DEFAULTS.text_field,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Quantize and code, print the report, write nothing.")] = (
        False
    ),
    force: ForceOption = False,
    as_json: JsonOption = False,
) -> None:
    """Quantize to int6 and entropy-code an APR or safetensors file.

    If IN is already quantized, compress repacks it with the new codec without re-quantizing;
    `aprtool verify --deep OUT` then proves the decoded content is unchanged.
    """
    options = CompressOptions(
        codec=codec.value,
        quant=quant.value,
        clip=clip,
        min_elements=min_elements,
        passthrough=passthrough.value,
        compare=compare,
        force=force,
        dry_run=dry_run,
        bits=bits,
        budget=parse_size(budget, "--budget") if budget is not None else None,
        calibrate=calibrate,
        calib_tokens=calib_tokens,
        calib_data=calib_data,
        text_field=text_field,
    )
    bar, update = _progress() if not as_json else (None, None)
    if bar is not None:
        with bar:
            report = compress_file(src, out, options, progress=update)
    else:
        report = compress_file(src, out, options)
    emit(report, as_json, _render(report))
