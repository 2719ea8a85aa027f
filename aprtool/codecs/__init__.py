"""int6 quantization (lossy, once) and lossless coders (raw, rANS, LZMA, zstd) for APR tensors."""

from __future__ import annotations

from aprtool.codecs.coders import CODERS, order0_entropy_bits
from aprtool.codecs.quant import Clip, Quantized, quantize, torch_fake_quant
from aprtool.codecs.tensor import check_encoded, decode, dequantize, encode, is_encoded
from aprtool.container.reader import AprFile
from aprtool.errors import AprError


def decode_all(f: AprFile) -> list[AprError]:
    """verify --deep's decoder: decode every encoded tensor (streaming, bounded memory) and compare its
    content digest; returns what failed."""
    problems = []
    for name in f.names():
        if is_encoded(f.info(name)):
            try:
                check_encoded(f, name)
            except AprError as exc:
                problems.append(exc)
    return problems


__all__ = [
    "CODERS",
    "Clip",
    "Quantized",
    "decode",
    "decode_all",
    "dequantize",
    "encode",
    "is_encoded",
    "order0_entropy_bits",
    "quantize",
    "torch_fake_quant",
]
