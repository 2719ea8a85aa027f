"""`verify` of an APR file with the codecs' decoder: --deep decodes every encoded tensor."""

from __future__ import annotations

import os
from typing import Any

from aprtool.codecs import decode_all
from aprtool.container.verify import VerifyReport
from aprtool.container.verify import verify_file as verify_container


def verify_file(path: str | os.PathLike[str], **options: Any) -> VerifyReport:
    """`aprtool.container.verify_file` (the same options: deep, strict, expect_tensors, require) with the
    codecs' decoder, so that with `deep` encoded tensors are decoded too."""
    return verify_container(path, decoder=decode_all, **options)
