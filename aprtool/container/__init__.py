"""The APR v2 container: layout, writer, reader, streaming checks."""

from aprtool.container.inspect import inspect_file
from aprtool.container.layout import TensorInfo
from aprtool.container.reader import AprFile, load_apr, open_apr
from aprtool.container.verify import VerifyReport, verify_file, verify_files
from aprtool.container.writer import EncodedTensor, WriteResult, write_apr

__all__ = [
    "AprFile",
    "EncodedTensor",
    "TensorInfo",
    "VerifyReport",
    "WriteResult",
    "inspect_file",
    "load_apr",
    "open_apr",
    "verify_file",
    "verify_files",
    "write_apr",
]
