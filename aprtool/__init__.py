"""aprtool: train small language models and keep their weights in one checksummed APR container."""

import aprtool.codecs  # noqa: F401 - registers verify --deep for encoded tensors
from aprtool.container import (
    AprFile,
    EncodedTensor,
    inspect_file,
    load_apr,
    open_apr,
    verify_file,
    write_apr,
)
from aprtool.errors import AprError

__version__ = "0.1.0"

__all__ = [
    "AprError",
    "AprFile",
    "EncodedTensor",
    "__version__",
    "inspect_file",
    "load_apr",
    "open_apr",
    "verify_file",
    "write_apr",
]
