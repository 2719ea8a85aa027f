"""Byte counts as people write them: `16000000`, `16MB`, `15.5MiB`, `900 KB`.

Decimal units are powers of 1000 (a "16MB" artifact cap is 16,000,000 bytes), binary units (KiB, MiB,
GiB) powers of 1024; the result must be a whole number of bytes.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from aprtool.errors import UsageError

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(text: str, option: str = "size") -> int:
    """Bytes from `text`; anything else is a UsageError naming `option` and the forms it accepts."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in UNITS:
        raise UsageError(f"{option} {text!r}: expected bytes, e.g. 16000000, 16MB, 15.5MiB (units: B, KB, MB, GB, "
                         "KiB, MiB, GiB)")  # fmt: skip
    try:
        value = Decimal(match.group(1)) * UNITS[unit]
    except InvalidOperation:
        raise UsageError(f"{option} {text!r}: not a number") from None
    if value != value.to_integral_value():
        raise UsageError(f"{option} {text!r} is {value} bytes: not a whole number of bytes")
    return int(value)
