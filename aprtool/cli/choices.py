"""Option choices as Enums, so `--help` lists them and typos are usage errors (exit 2) naming them.

Built from the library's own tables: a new codec or preset appears here without another edit.
"""

from __future__ import annotations

from enum import StrEnum

from aprtool.codecs.coders import CODERS
from aprtool.data.corpus import EVAL_SPLITS
from aprtool.distill.config import INITS, MODES, TEACHER_DTYPES
from aprtool.interop.targets import DTYPE_NAMES, TARGETS
from aprtool.model.config import PRESETS
from aprtool.ops.compress import PASSTHROUGH_MODES, QUANT_MODES
from aprtool.train.config import DEVICES, SCHEDULES


def _choices(name: str, values: tuple[str, ...] | list[str]) -> type[StrEnum]:
    return StrEnum(name, [(v, v) for v in values])  # type: ignore[return-value]


Codec = _choices("Codec", list(CODERS))
Quant = _choices("Quant", QUANT_MODES)
Passthrough = _choices("Passthrough", PASSTHROUGH_MODES)
ExportTarget = _choices("ExportTarget", TARGETS)
ExportDtype = _choices("ExportDtype", DTYPE_NAMES)
Size = _choices("Size", list(PRESETS))
Schedule = _choices("Schedule", SCHEDULES)
Device = _choices("Device", DEVICES)
Mode = _choices("Mode", MODES)
Init = _choices("Init", INITS)
EvalSplit = _choices("EvalSplit", EVAL_SPLITS)
TeacherDtype = _choices("TeacherDtype", TEACHER_DTYPES)
