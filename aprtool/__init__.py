"""aprtool: train small language models and keep their weights in one checksummed APR container."""

from aprtool.container import (
    AprFile,
    EncodedTensor,
    inspect_file,
    load_apr,
    open_apr,
    write_apr,
)
from aprtool.errors import AprError
from aprtool.ops.verify import verify_file  # the container's checks, and --deep decodes encoded tensors

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
