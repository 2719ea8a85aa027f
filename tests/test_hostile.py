"""Hostile files and unlucky users, through the real command line (issue #11).

Every case asserts the documented exit code, a one-line error (no traceback), inputs left unchanged and
nothing written outside the output path. Bad bytes are crafted here, by hand where it matters.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

import aprtool

ESC = "\x1b"


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under `directory` (relative path -> sha256; symlinks by their target)."""
    out = {}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = "special"
    return out


def one_line_error(result, code: int, *words: str) -> str:
    """The run failed with `code` and exactly one stderr line naming every word."""
    assert result.code == code, (result.code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aprtool: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# ---------------------------------------------------------------- 5. file strings are not markup


@pytest.fixture
def markup_file(tmp_path) -> Path:
    path = tmp_path / "evil.apr"
    tensors = {"[/]": np.ones((300, 300), np.float32), f"x{ESC}[31mred\nFAKE LINE": np.ones(3, np.float32)}
    metadata = {"name": f"[bold red]spoof{ESC}]0;title\a", "architecture": "[/]", "note": "\u202eevil"}
    aprtool.write_apr(path, tensors, metadata)
    return path


def _no_raw_controls(text: str) -> None:
    assert ESC not in text and "\a" not in text and "\u202e" not in text
    assert "FAKE LINE" not in text.replace("\\x0aFAKE LINE", "")  # the newline is shown escaped, not obeyed


def test_inspect_prints_markup_and_escapes_literally(cli, markup_file):
    r = cli("inspect", markup_file, "--tensors")
    assert r.code == 0, r.stderr
    assert "[/]" in r.stdout and "[bold red]spoof" in r.stdout
    assert "\\x1b" in r.stdout
    _no_raw_controls(r.stdout)


def test_inspect_json_escapes_c1_and_bidi(cli, markup_file):
    r = cli("inspect", markup_file, "--json")
    assert r.code == 0
    assert "\u202e" not in r.stdout and ESC not in r.stdout
    assert r.json()["metadata"]["note"] == "\u202eevil"  # the value itself survives, escaped as JSON


def test_verify_names_a_markup_tensor_literally(cli, markup_file, tmp_path):
    buf = bytearray(markup_file.read_bytes())
    data_offset = int.from_bytes(buf[32:40], "little")
    buf[data_offset + 5] ^= 0xFF  # break a tensor: its name appears in the error line
    markup_file.write_bytes(bytes(buf))
    r = cli("verify", markup_file)
    assert r.code == 5, r.stderr
    assert "'[/]'" in r.stdout or "[/]" in r.stdout
    _no_raw_controls(r.stdout)


def test_compress_reports_a_markup_tensor_without_crashing(cli, markup_file, tmp_path):
    out = tmp_path / "out.apr"
    r = cli("compress", markup_file, "-o", out, "--min-elements", "4")
    assert r.code == 0, r.stderr
    _no_raw_controls(r.stdout)
    assert aprtool.verify_file(out, deep=True).valid


def test_error_lines_escape_control_characters(cli, tmp_path):
    name = f"bad{ESC}[2J"
    path = tmp_path / "m.apr"
    aprtool.write_apr(path, {name: np.ones(4, np.float32)})
    buf = bytearray(path.read_bytes())
    buf[int.from_bytes(buf[32:40], "little") + 1] ^= 1  # the tensor's bytes: a checksum error naming it
    path.write_bytes(bytes(buf))
    r = cli("export", path, "-o", tmp_path / "x.safetensors", "--to", "safetensors")
    line = one_line_error(r, 5, "\\x1b[2J")
    assert ESC not in r.stderr, line
    assert json.dumps(snapshot(tmp_path))  # the directory is still listable
    assert not (tmp_path / "x.safetensors").exists()
