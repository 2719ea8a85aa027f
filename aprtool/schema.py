"""Dataclasses from JSON found in a file: every field checked against its annotation first.

A checkpoint's config or loop state is data an attacker (or a bug) may have shaped: a string where a
count belongs makes `validate()` raise TypeError, a nested list where a float belongs crashes the loop
hours later. `from_json` refuses such data at the door with a MetadataError (exit 4) naming the field.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, TypeVar

from aprtool.errors import MetadataError

T = TypeVar("T")


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # JSON writes 1.0 as 1
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    if dataclasses.is_dataclass(hint):
        return isinstance(value, dict)  # checked field by field by from_json
    return False


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def from_json(cls: type[T], data: Any, where: str) -> T:
    """An instance of dataclass `cls` from `data`; unknown keys are ignored, missing ones take defaults."""
    if not isinstance(data, dict):
        raise MetadataError(f"{where}: must be an object, found {type(data).__name__}")
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if not _fits(value, hint):
            raise MetadataError(f"{where}.{f.name}: {value!r:.60} is not {_name(hint)}")
        if dataclasses.is_dataclass(hint):
            value = from_json(hint, value, f"{where}.{f.name}")
        values[f.name] = value
    return cls(**values)
