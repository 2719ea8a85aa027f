"""int6 quantization (lossy, once) and lossless coders (raw, rANS, LZMA, zstd) for APR tensors."""

from __future__ import annotations

from aprtool.codecs.coders import CODERS, order0_entropy_bits
from aprtool.codecs.quant import Clip, Quantized, quantize, torch_fake_quant
from aprtool.codecs.tensor import check_encoded, decode, dequantize, encode, is_encoded
from aprtool.container.reader import AprFile
from aprtool.container.verify import register_deep_check
from aprtool.errors import AprError


def _deep_check(f: AprFile) -> list[AprError]:
    """verify --deep: decode every encoded tensor (streaming, bounded memory) and compare its digest."""
    problems = []
    for name in f.names():
        if is_encoded(f.info(name)):
            try:
                check_encoded(f, name)
            except AprError as exc:
                problems.append(exc)
    return problems


register_deep_check(_deep_check)

__all__ = [
    "CODERS",
    "Clip",
    "Quantized",
    "decode",
    "dequantize",
    "encode",
    "is_encoded",
    "order0_entropy_bits",
    "quantize",
    "torch_fake_quant",
]
