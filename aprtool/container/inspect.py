"""`inspect`: a structured summary of one APR file."""

from __future__ import annotations

import os
from typing import Any

from aprtool.container import constants as C
from aprtool.container.reader import open_apr
from aprtool.container.scan import scan_file
from aprtool.container.tokenizer_text import has_embedded_text, summarise_tokenizer


def param_count(tensors: Any) -> int:
    """Model parameters: every tensor's element count, training state excluded."""
    return sum(t.numel for t in tensors.values() if not t.name.startswith(C.TRAINING_PREFIX))


def inspect_file(path: str | os.PathLike[str], *, checksums: bool = True) -> dict[str, Any]:
    """Describe the file. Raises a FormatError (exit 4) if it is not structurally valid.

    With `checksums` the whole file is streamed once to check the footer and per-tensor checksums.
    """
    with open_apr(path, check_header_crc=False) as f:
        h = f.header
        footer_ok: bool | None = None
        tensors_ok: bool | None = None
        if checksums:
            scan = scan_file(f, content=False)
            footer_ok = scan.footer_crc == f.stored_footer_crc
            if f.has_tensor_records:
                tensors_ok = all(scan.tensors[n].digest == t.record[C.CHECKSUM_ALGORITHM] for n, t in f.tensors.items())
        valid_parts = [f.header_crc_valid, footer_ok, tensors_ok]
        metadata = dict(f.metadata)
        if isinstance(metadata.get(C.APRTOOL_KEY), dict):  # per-tensor records go in "tensors"
            metadata[C.APRTOOL_KEY] = {k: v for k, v in metadata[C.APRTOOL_KEY].items() if k != "tensors"}
        tok = metadata.get(C.TOKENIZER_KEY)
        if has_embedded_text(tok):  # 100 KB+ of vocabulary: summarised
            metadata[C.TOKENIZER_KEY] = summarise_tokenizer(tok)
        return {
            "file": str(path),
            "format": "APR v2",
            "version": h.version,
            "size_bytes": f.size,
            "tensor_count": len(f),
            "param_count": param_count(f.tensors),
            "architecture": f.metadata.get("architecture"),
            "flags": {
                "value": h.flags,
                "row_major": bool(h.flags & C.FLAG_ROW_MAJOR),
                "quantized": bool(h.flags & C.FLAG_QUANTIZED),
                "has_vocab": bool(h.flags & C.FLAG_HAS_VOCAB),
                "unknown_bits": h.flags & ~sum(C.KNOWN_FLAGS),
            },
            "header_checksum_valid": f.header_crc_valid,
            "footer_checksum_valid": footer_ok,
            "tensor_checksums": ("absent" if not f.has_tensor_records else ("valid" if tensors_ok else "invalid"))
            if checksums
            else "unchecked",
            "checksum_valid": None if None in valid_parts[:2] else all(p is not False for p in valid_parts),
            "metadata": metadata,
            "tensors": [
                {
                    "name": t.name,
                    "dtype": t.dtype.name,
                    "shape": list(t.shape),
                    "offset": t.offset,
                    "stored_bytes": t.size,
                    "codec": t.codec,
                    "checksum": t.record.get(C.CHECKSUM_ALGORITHM) if t.record else None,
                    # int4..int8: the symbols' width; stored as U8 (or, in files from before, the encoded code)
                    **(
                        {"quant": t.record.get("quant"), "stored_dtype": (t.stored_dtype or t.dtype).name}
                        if t.codec
                        else {}
                    ),
                }
                for t in f.tensors.values()
            ],
        }
