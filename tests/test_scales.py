"""Row scales stored coded (formats/APR.md §5): record `scales: lzma-planes` + `scale_bytes`, else fp16.

Malformed cases are crafted EncodedTensor payloads and records written to real files, one named test each;
every one must be a DecodeError naming the tensor, never a crash or a silent wrong value."""

from __future__ import annotations

import lzma

import numpy as np
import pytest

import aprtool
from aprtool.codecs import Clip, decode, encode, quantize
from aprtool.codecs.coders import DecodeError
from aprtool.container import EncodedTensor
from aprtool.container import constants as C


def quantized(rows: int, cols: int = 16):
    weight = np.random.default_rng(rows).standard_normal((rows, cols)).astype(np.float32)
    return quantize(weight * np.linspace(0.5, 2.0, rows, dtype=np.float32)[:, None], Clip.parse("std:8"))


def written(tmp_path, tensor: EncodedTensor) -> aprtool.AprFile:
    aprtool.write_apr(tmp_path / "m.apr", {"w": tensor})
    return aprtool.open_apr(tmp_path / "m.apr")


def test_many_rows_store_coded_scales_that_decode_to_the_same_content(tmp_path):
    q = quantized(512)
    tensor = encode(q, "rans", {}).tensor
    assert tensor.record[C.SCALES_KEY] == C.SCALE_CODING and tensor.record[C.SCALE_BYTES_KEY] < 2 * 512
    plain = encode(q, "raw", {}).tensor  # raw keeps one plain byte per symbol and fp16 scales
    assert C.SCALES_KEY not in plain.record and plain.record["content_xxh3_128"] == tensor.record["content_xxh3_128"]
    with written(tmp_path, tensor) as f:
        back = decode(f, "w")
        assert np.array_equal(back.symbols, q.symbols) and np.array_equal(back.scales.view("<u2"), q.scales.view("<u2"))
    assert aprtool.verify_file(tmp_path / "m.apr", deep=True).valid


def test_few_rows_keep_plain_fp16_scales_where_coding_does_not_pay():
    tensor = encode(quantized(4), "rans", {}).tensor
    assert C.SCALES_KEY not in tensor.record and C.SCALE_BYTES_KEY not in tensor.record


def test_a_repack_codes_the_scales_anew_whatever_the_old_record_said():
    stale = {C.SCALES_KEY: C.SCALE_CODING, C.SCALE_BYTES_KEY: 7}
    assert C.SCALES_KEY not in encode(quantized(512), "raw", stale).tensor.record


def crafted(tmp_path, *, payload: bytes | None = None, rows: int = 512, **record) -> DecodeError:
    """Decode tensor 'w' whose record (and payload) were changed; the DecodeError it raises."""
    good = encode(quantized(rows), "rans", {}).tensor
    changed = {k: v for k, v in {**good.record, **record}.items() if v is not None}
    tensor = EncodedTensor(good.dtype, good.shape, good.payload if payload is None else payload, changed)
    with written(tmp_path, tensor) as f, pytest.raises(DecodeError) as exc:
        decode(f, "w")
    assert "'w'" in str(exc.value)
    return exc.value


def test_an_unknown_scale_coding_is_refused(tmp_path):
    assert "not f16 or lzma-planes" in str(crafted(tmp_path, scales="brotli-planes"))


@pytest.mark.parametrize("size", [None, 0, True, "12", 10**9], ids=["missing", "zero", "bool", "string", "past-end"])
def test_a_bad_scale_bytes_is_refused(tmp_path, size):
    assert "scale_bytes" in str(crafted(tmp_path, scale_bytes=size))


def test_corrupt_coded_scales_are_refused(tmp_path):
    good = encode(quantized(512), "rans", {}).tensor
    n = good.record[C.SCALE_BYTES_KEY]
    assert "corrupt" in str(crafted(tmp_path, payload=b"\xff" * n + good.payload[n:]))


def test_coded_scales_cut_short_are_refused(tmp_path):
    good = encode(quantized(512), "rans", {}).tensor
    n = good.record[C.SCALE_BYTES_KEY]
    assert "decode to" in str(crafted(tmp_path, payload=good.payload[: n - 8] + good.payload[n:], scale_bytes=n - 8))


def test_bytes_after_the_coded_scales_are_refused(tmp_path):
    good = encode(quantized(512), "rans", {}).tensor
    n = good.record[C.SCALE_BYTES_KEY]
    assert "follow the coded scales" in str(crafted(tmp_path, scale_bytes=n + 2))


def test_coded_scales_for_another_row_count_are_refused(tmp_path):
    good = encode(quantized(512), "rans", {}).tensor
    n = good.record[C.SCALE_BYTES_KEY]
    other = encode(quantized(256), "rans", {}).tensor  # a valid stream of 256 scales in place of 512
    m = other.record[C.SCALE_BYTES_KEY]
    err = crafted(tmp_path, payload=other.payload[:m] + good.payload[n:], scale_bytes=m)
    assert "decode to 512 bytes, 512 rows need 1024" in str(err)


def test_a_few_bytes_cannot_claim_millions_of_rows(tmp_path):
    stream = lzma.compress(b"", format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    q = quantize(np.ones((300_000, 1), np.float32), Clip.parse("absmax"))
    good = encode(q, "raw", {}).tensor
    tensor = EncodedTensor(good.dtype, good.shape, stream + good.payload[2 * 300_000 :],
                           {**good.record, "codec": "raw", C.SCALES_KEY: C.SCALE_CODING,
                            C.SCALE_BYTES_KEY: len(stream)})  # fmt: skip
    with written(tmp_path, tensor) as f, pytest.raises(DecodeError, match="cannot hold 300000 row scales"):
        decode(f, "w")
