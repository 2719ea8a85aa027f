"""`verify` of an APR file with the codecs' decoder: --deep decodes every encoded tensor."""

from __future__ import annotations

import os
from collections.abc import Sequence

from aprtool.codecs import decode_all
from aprtool.container.verify import VerifyReport
from aprtool.container.verify import verify_file as verify_container


def verify_file(
    path: str | os.PathLike[str],
    *,
    deep: bool = False,
    strict: bool = False,
    expect_tensors: int | None = None,
    require: Sequence[tuple[str, str]] = (),
) -> VerifyReport:
    """Every check of `aprtool.container.verify_file`; with `deep`, encoded tensors are decoded too."""
    return verify_container(path, deep=deep, strict=strict, expect_tensors=expect_tensors, require=require,
                            decoder=decode_all)  # fmt: skip
