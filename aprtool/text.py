"""Strings that came from a file, made safe to print.

A tensor name, a metadata value or a path inside a file is attacker-controlled: it may hold terminal
escape sequences (ESC, CSI), newlines that forge extra report lines, or bidi overrides that reorder
what the reader sees. `printable` keeps ordinary text (any language) and shows everything else as a
visible escape; `markup_safe` additionally neutralises rich markup such as `[/]` or `[link=...]`.
"""

from __future__ import annotations

import unicodedata

# Format characters that reorder or hide text ("Trojan Source", CVE-2021-42574), plus separators.
_INVISIBLE = {0x200B, 0x200E, 0x200F, 0x2028, 0x2029, 0xFEFF, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def _escape_char(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object) -> str:
    """`value` as one line of visible text: control and invisible characters become \\xNN / \\uNNNN."""
    text = str(value)
    if text.isprintable() and not any(ord(ch) in _INVISIBLE for ch in text):
        return text
    return "".join(
        _escape_char(ch) if unicodedata.category(ch) in ("Cc", "Cs") or ord(ch) in _INVISIBLE or ch in "\n\r\t" else ch
        for ch in text
    )


def markup_safe(value: object) -> str:
    """`printable(value)` with rich markup escaped, for interpolation into a rich-rendered string."""
    from rich.markup import escape

    return escape(printable(value))
