"""Shared CLI pieces: typed option aliases, error-to-exit-code mapping, one output helper."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import sys
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from aprtool.errors import EXIT_INTERNAL, EXIT_NOT_FOUND, AprError
from aprtool.text import printable

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text (errors too).")]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace OUT if it exists (atomically).")]
TensorboardOption = Annotated[
    bool,
    typer.Option(
        "--tensorboard",
        help="Also write the metrics as TensorBoard event files in RUN_DIR/tensorboard/ "
        "(needs: pip install 'aprtool[tensorboard]').",
    ),
]

CORPUS_HELP = (
    "A directory of text files, a .parquet / .jsonl / .jsonl.gz file or a directory of them (a document "
    "per row), a prepared shard directory, or a directory of modded-nanogpt token shards."
)
TEXT_FIELD_HELP = "The documents' field in a parquet / jsonl corpus."
TextFieldOption = Annotated[str, typer.Option("--text-field", help=TEXT_FIELD_HELP)]

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 internal error (a bug); 2 usage error; 3 file not found or unreadable; "
    "4 not an APR file or structurally invalid; 5 verification or content check failed; "
    "9 feature not available yet."
)


def given_options(ctx: typer.Context, values: dict[str, Any], names: Any) -> dict[str, Any]:
    """The options the user actually gave (command line or environment), by name, Enums as their values.
    A resumed run keeps its checkpoint's value for every option not given, whatever the default."""
    out = {}
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            value = values[name]
            out[name] = value.value if isinstance(value, Enum) else value
    return out


def console() -> Console:
    """Rich output; 120 columns when not a terminal (logs and pipes), so tables are not squeezed."""
    width = None if sys.stdout.isatty() else 120
    return Console(soft_wrap=True, highlight=False, width=width)


def error(message: str) -> None:
    """One line on stderr: no rich wrapping, no traceback, no control characters from a file."""
    sys.stderr.write(f"aprtool: error: {printable(message)}\n")


# JSON escapes C0 controls itself; C1 controls (U+0080..U+009F, e.g. CSI) and bidi overrides pass through
# `ensure_ascii=False` untouched and would still reach a terminal that `cat`s the output.
_JSON_UNSAFE = re.compile("[\u0080-\u009f\u200b\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")


def finite(value: Any) -> Any:
    """`value` with every non-finite float as the string JSON readers agree on ("NaN", "Infinity",
    "-Infinity"): strict parsers refuse the bare tokens `json` would write."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def to_json(data: Any) -> str:
    text = json.dumps(finite(data), indent=2, ensure_ascii=False, allow_nan=False)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def fail(message: str, exit_code: int, as_json: bool) -> typer.Exit:
    """Report an error: one line on stderr and, with --json, `{"error", "exit_code"}` on stdout, so a
    script that parses the output parses every outcome."""
    error(message)
    if as_json:
        sys.stdout.write(to_json({"error": printable(message), "exit_code": exit_code}) + "\n")
    return typer.Exit(exit_code)


def handle_errors(func: F) -> F:
    """Turn library errors into their documented exit codes with a one-line message."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            return func(*args, **kwargs)
        except AprError as exc:
            raise fail(str(exc), exc.exit_code, as_json) from None
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise fail(f"{where}{exc.strerror or exc}", EXIT_NOT_FOUND, as_json) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130, as_json) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug in aprtool: say so in one line; APRTOOL_DEBUG=1 shows it all
            if os.environ.get("APRTOOL_DEBUG"):
                raise
            message = f"internal error: {type(exc).__name__}: {exc} (set APRTOOL_DEBUG=1 for the traceback)"
            raise fail(message, EXIT_INTERNAL, as_json) from None

    return wrapper  # type: ignore[return-value]


def emit(data: Any, as_json: bool, render: Callable[[Console], None]) -> None:
    """Print `data` as JSON, or let `render` draw it with rich."""
    if as_json:
        sys.stdout.write(to_json(data) + "\n")
    else:
        render(console())
