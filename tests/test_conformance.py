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
