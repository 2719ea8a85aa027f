"""Golden bytes: the exact layout, pinned by the committed conformance vectors in formats/."""

from __future__ import annotations

import importlib.util
import json
import struct
import zlib
from pathlib import Path

import pytest

from aprtool.container import inspect_file

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "formats" / "vectors"

_spec = importlib.util.spec_from_file_location("make_vectors", ROOT / "formats" / "make_vectors.py")
make_vectors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_vectors)


@pytest.mark.parametrize("name", sorted(make_vectors.VECTORS))
def test_writer_reproduces_vector_bytes(name, tmp_path):
    out = tmp_path / f"{name}.apr"
    make_vectors.write_vector(name, out)
    assert out.read_bytes() == (VECTORS / f"{name}.apr").read_bytes()


@pytest.mark.parametrize("name", sorted(make_vectors.VECTORS))
def test_writer_output_identical_across_runs(name, tmp_path):
    make_vectors.write_vector(name, tmp_path / "a.apr")
    make_vectors.write_vector(name, tmp_path / "b.apr")
    assert (tmp_path / "a.apr").read_bytes() == (tmp_path / "b.apr").read_bytes()


@pytest.mark.parametrize("name", sorted(make_vectors.VECTORS))
def test_inspect_json_matches_vector(name, cli):
    expected = json.loads((VECTORS / f"{name}.inspect.json").read_text(encoding="utf-8"))
    result = cli("inspect", "--json", VECTORS / f"{name}.apr")
    assert result.code == 0, result.stderr
    got = result.json()
    got.pop("file")
    assert got == expected


def test_golden_v2_is_516_bytes_with_exact_layout():
    raw = (VECTORS / "golden-v2.apr").read_bytes()
    assert len(raw) == 516
    magic, major, minor, flags, count, md_off, md_size, idx_off, data_off, crc, reserved = struct.unpack(
        "<4sBBHIQIQQI20s", raw[:64]
    )
    assert (magic, major, minor, flags, count) == (b"APR\0", 2, 0, 0x0400, 2)
    assert (md_off, md_size, idx_off, data_off) == (64, 189, 256, 384)
    assert reserved == bytes(20)
    assert crc == zlib.crc32(raw[44:64], zlib.crc32(raw[:40]))
    metadata = raw[64 : 64 + 189]
    assert metadata.startswith(b'{"model_type":"linear_regression","name":"golden-v2","license":null')
    assert raw[64 + 189 : 256] == bytes(3)
    # index: bias then weights, sorted by name
    bias = struct.pack("<H4sBBQQQ", 4, b"bias", 0, 1, 1, 0, 4)
    weights = struct.pack("<H7sBBQQQ", 7, b"weights", 0, 1, 8, 64, 32)
    assert raw[256 : 256 + 67] == bias + weights
    assert raw[256 + 67 : 384] == bytes(128 - 67)
    assert raw[384:388] == struct.pack("<f", 0.5)
    assert raw[388:448] == bytes(60)
    assert raw[448:480] == struct.pack("<8f", *range(1, 9))
    assert raw[480:512] == bytes(32)
    assert raw[512:] == struct.pack("<I", zlib.crc32(raw[:512]))


def test_all_dtypes_vector_reads_back_exactly():
    tensors, _, _ = make_vectors.all_dtypes()
    from aprtool import open_apr

    with open_apr(VECTORS / "all-dtypes.apr") as f:
        assert sorted(f.names()) == sorted(tensors)
        for name, want in tensors.items():
            got = f.numpy(name)
            assert got.shape == want.shape
            assert got.tobytes() == want.tobytes(), name
        assert f.info("bf16").dtype.name == "BF16"
        assert f.torch("bf16").tolist() == [1.0, -2.0, 0.125]


def test_no_tensors_vector_inspects_but_never_verifies(cli):
    assert inspect_file(VECTORS / "no-tensors.apr")["tensor_count"] == 0
    result = cli("verify", "--json", VECTORS / "no-tensors.apr")
    assert result.code == 5
    assert result.json()["valid"] is False


# ---------------------------------------------------------------- encoded tensors (spec §5.1)

STANDARD_DTYPES = {0: "F32", 1: "F16", 3: "F64", 4: "I32", 5: "I64", 6: "I8", 7: "U8", 30: "BF16"}
ITEMSIZE = {0: 4, 1: 2, 3: 8, 4: 4, 5: 8, 6: 1, 7: 1, 30: 2}


def stock_listing(raw: bytes) -> dict[str, tuple[str, list[int]]]:
    """What a reader that knows only APR v2's standard dtypes sees (as aprender's does): it refuses any
    other code. Written from the spec's tables, with no aprtool code."""
    count, md_size, index_at, data_at = (
        struct.unpack_from(c, raw, o)[0] for c, o in [("<I", 8), ("<I", 20), ("<Q", 24), ("<Q", 32)]
    )
    json.loads(raw[64 : 64 + md_size])
    listing, pos = {}, index_at
    for _ in range(count):
        (name_len,) = struct.unpack_from("<H", raw, pos)
        name = raw[pos + 2 : pos + 2 + name_len].decode()
        code, ndim = raw[pos + 2 + name_len], raw[pos + 3 + name_len]
        if code not in STANDARD_DTYPES:
            raise ValueError(f"tensor {name}: unknown dtype code {code}")
        dims = list(struct.unpack_from(f"<{ndim}Q", raw, pos + 4 + name_len))
        offset, size = struct.unpack_from("<QQ", raw, pos + 4 + name_len + 8 * ndim)
        n = 1
        for d in dims:
            n *= d
        assert size == n * ITEMSIZE[code] and data_at + offset + size <= len(raw) - 4
        listing[name] = (STANDARD_DTYPES[code], dims)
        pos += 4 + name_len + 8 * ndim + 16
    return listing


def test_a_reader_of_standard_dtypes_lists_every_tensor_of_an_encoded_file():
    raw = (VECTORS / "int6.apr").read_bytes()
    listing = stock_listing(raw)
    assert sorted(listing) == ["norm", "w.rans", "w.raw"]
    assert listing["norm"] == ("F16", [4])
    records = json.loads(raw[64 : 64 + struct.unpack_from("<I", raw, 20)[0]])["aprtool"]["tensors"]
    for name, logical in [("w.rans", "INT6_RANS"), ("w.raw", "INT6_RAW")]:
        assert listing[name][0] == "U8" and len(listing[name][1]) == 1  # the payload, as bytes
        assert records[name]["logical_dtype"] == logical
    assert records["w.rans"]["logical_shape"] == [4, 24] and records["w.raw"]["logical_shape"] == [2, 24]
    with pytest.raises(ValueError, match="unknown dtype code 161"):  # what the encoding of before did to it
        stock_listing((VECTORS / "int6-legacy.apr").read_bytes())


def test_files_in_the_encoding_of_before_read_as_the_same_tensors(cli):
    from aprtool import open_apr
    from aprtool.codecs import decode

    with open_apr(VECTORS / "int6.apr") as new, open_apr(VECTORS / "int6-legacy.apr") as old:
        assert {n: (i.dtype.name, i.shape) for n, i in new.tensors.items()} == {
            n: (i.dtype.name, i.shape) for n, i in old.tensors.items()
        }
        assert old.info("w.rans").stored_dtype is None and new.info("w.rans").stored_dtype.name == "U8"
        for name in ("w.rans", "w.raw"):
            a, b = decode(new, name), decode(old, name)
            assert a.bits == b.bits and a.symbols.tobytes() == b.symbols.tobytes()
            assert a.scales.tobytes() == b.scales.tobytes()
    expected = json.loads((VECTORS / "int6-legacy.inspect.json").read_text(encoding="utf-8"))
    got = cli("inspect", "--json", VECTORS / "int6-legacy.apr").json()
    got.pop("file")
    assert got == expected
    assert cli("verify", "--deep", VECTORS / "int6-legacy.apr").code == 0


def test_a_repack_writes_a_file_of_before_in_the_new_encoding(cli, tmp_path):
    out = tmp_path / "repacked.apr"
    result = cli("compress", VECTORS / "int6-legacy.apr", "-o", out, "--codec", "zstd", "--json")
    assert result.code == 0, result.stderr
    stock_listing(out.read_bytes())  # readable by a reader of standard dtypes now
    from aprtool import open_apr

    with open_apr(out) as f, open_apr(VECTORS / "int6-legacy.apr") as old:
        for name in ("w.rans", "w.raw"):
            assert f.info(name).codec == "zstd" and f.info(name).stored_dtype.name == "U8"
            assert f.info(name).record["content_xxh3_128"] == old.info(name).record["content_xxh3_128"]
    assert cli("verify", "--deep", out).code == 0


def test_coded_scales_read_as_the_spec_describes_them():
    """Scales of int6-scales.apr decoded from the spec's words alone (section 5.1), not aprtool's decoder."""
    import lzma

    import numpy as np

    from aprtool.codecs import decode
    from aprtool.container import open_apr

    raw = (VECTORS / "int6-scales.apr").read_bytes()
    record = json.loads(raw[64 : 64 + struct.unpack_from("<I", raw, 20)[0]])["aprtool"]["tensors"]["w"]
    assert record["scales"] == "lzma-planes" and record["rows"] == 256
    with open_apr(VECTORS / "int6-scales.apr") as f:
        payload = bytes(f.raw("w"))
        decoded = decode(f, "w").scales
    filters = [{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20, "lc": 0, "lp": 0, "pb": 0}]
    stream = payload[: record["scale_bytes"]]
    planes = np.frombuffer(lzma.decompress(stream, lzma.FORMAT_RAW, filters=filters), np.uint8)
    assert planes.size == 2 * 256
    scales = ((planes[:256].astype(np.uint16) << 8) | planes[256:]).view("<f2")
    assert np.array_equal(scales.view(np.uint16), decoded.view(np.uint16))
