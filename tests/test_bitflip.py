"""Every single-bit flip anywhere in a real file is caught by `verify`, in the library and in the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from _builders import get_header

import aprtool
from aprtool.errors import EXIT_FAILED, EXIT_INVALID

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> bytes:
    """A real multi-tensor file of a few KB with every plain numpy dtype."""
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("bitflip") / "model.apr"
    aprtool.write_apr(
        path,
        {
            "embed.weight": rng.standard_normal((16, 12)).astype(np.float32),
            "layers.0.attn.bias": rng.standard_normal(40).astype(np.float16),
            "layers.0.mlp.weight": rng.standard_normal((6, 5)),
            "lm_head.scale": np.array(0.5, np.float32),
            "positions": np.arange(-20, 20, dtype=np.int64),
            "token_ids": np.arange(30, dtype=np.int32) * 7,
            "quant.i8": rng.integers(-128, 128, 50, dtype=np.int8),
            "quant.u8": rng.integers(1, 256, 33, dtype=np.uint8),
        },
        {"name": "bitflip", "architecture": "Tiny", "hidden_size": 12, "rope_theta": 10000.0},
    )
    data = path.read_bytes()
    assert 2048 < len(data) < 8192
    assert aprtool.verify_file(path).valid
    return data


def flipped(data: bytes, pos: int, bit: int) -> bytes:
    out = bytearray(data)
    out[pos] ^= 1 << bit
    return bytes(out)


def assert_caught(path: Path, pos: int, bit: int) -> aprtool.container.VerifyReport:
    report = aprtool.verify_file(path)
    assert not report.valid, f"flip of bit {bit} at byte {pos} not detected"
    assert report.exit_code in (EXIT_INVALID, EXIT_FAILED), (pos, bit, report.exit_code)
    assert report.errors, (pos, bit)
    return report


def test_every_byte_with_one_bit_flipped_fails_verify(tmp_path, original):
    path = tmp_path / "flip.apr"
    path.write_bytes(original)
    codes = set()
    with open(path, "r+b") as f:
        for pos in range(len(original)):
            bit = pos % 8
            f.seek(pos)
            f.write(bytes([original[pos] ^ (1 << bit)]))
            f.flush()
            codes.add(assert_caught(path, pos, bit).exit_code)
            f.seek(pos)
            f.write(original[pos : pos + 1])
            f.flush()
    assert aprtool.verify_file(path).valid  # every flip was undone
    assert codes == {EXIT_INVALID, EXIT_FAILED}  # both structural and checksum failures were seen


def test_every_bit_of_header_metadata_start_and_footer(tmp_path, original):
    """All eight bits, where one flipped bit most often still leaves a file that parses."""
    path = tmp_path / "flip.apr"
    n = len(original)
    positions = [
        *range(0, 64 + 32),
        *range(get_header(original, "tensor_index_offset"), n)[:64],
        *range(n - 4, n),
    ]
    for pos in positions:
        for bit in range(8):
            path.write_bytes(flipped(original, pos, bit))
            assert_caught(path, pos, bit)


def _cli_verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aprtool", "verify", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_cli_verify_catches_a_sample_of_bit_flips(tmp_path, original):
    n = len(original)
    # the magic, version, flags, counts, offsets, CRC and reserved bytes, then spread over the rest
    positions = [0, 4, 6, 9, 20, 33, 41, 50, *range(64, n, (n - 64) // 11), n - 3, n - 1]
    assert len(positions) >= 20
    paths = []
    for pos in positions:
        path = tmp_path / f"flip-{pos}.apr"
        path.write_bytes(flipped(original, pos, pos % 8))
        paths.append(path)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(_cli_verify, paths))
    for pos, path, proc in zip(positions, paths, results, strict=True):
        assert "Traceback" not in proc.stderr, (pos, proc.stderr)
        assert proc.returncode in (EXIT_INVALID, EXIT_FAILED), (pos, proc.returncode, proc.stderr)
        report = json.loads(proc.stdout)
        assert report["valid"] is False, pos
        assert report["exit_code"] == proc.returncode
        assert report["file"] == str(path)
        assert report["errors"]
