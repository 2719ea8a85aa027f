"""The library's exceptions. Each carries the CLI exit code it maps to (documented in the README)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1  # an unexpected exception: a bug in aprtool
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_INVALID = 4
EXIT_FAILED = 5
EXIT_UNAVAILABLE = 9


class AprError(Exception):
    """Base of every error aprtool raises on purpose. The message is one line naming the field."""

    exit_code = EXIT_INVALID


class UsageError(AprError):
    """Bad arguments or options (unknown codec, malformed KEY=VALUE, ...)."""

    exit_code = EXIT_USAGE


class FileAccessError(AprError):
    """The file does not exist or cannot be read/written."""

    exit_code = EXIT_NOT_FOUND


class FormatError(AprError):
    """Not an APR v2 file, or structurally invalid: bad magic, version, layout, metadata, index."""

    exit_code = EXIT_INVALID


class NotAprError(FormatError):
    pass


class UnsupportedVersionError(FormatError):
    pass


class TruncatedError(FormatError):
    pass


class MetadataError(FormatError):
    pass


class TensorIndexError(FormatError):
    pass


class UnknownDTypeError(FormatError):
    pass


class LimitError(FormatError):
    """A size the file declares is beyond what a reader accepts or this process can allocate."""


class IntegrityError(AprError):
    """The structure is fine but the content is not what was written (checksums, content gates)."""

    exit_code = EXIT_FAILED


class ChecksumError(IntegrityError):
    pass


class UnavailableError(AprError):
    """A feature that is not built yet."""

    exit_code = EXIT_UNAVAILABLE
