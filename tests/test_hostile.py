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


# ---------------------------------------------------------------- 2. FIFOs, devices, symlink loops

INPUT_COMMANDS = {
    "inspect": lambda src, out: ["inspect", src],
    "verify": lambda src, out: ["verify", src],
    "compress": lambda src, out: ["compress", src, "-o", out],
    "export": lambda src, out: ["export", src, "-o", out, "--to", "safetensors"],
    "eval": lambda src, out: ["eval", src],
}


def special_input(tmp_path: Path, kind: str) -> Path:
    if kind == "fifo":
        path = tmp_path / "model.apr"
        os.mkfifo(path)
        return path
    if kind == "loop":
        path = tmp_path / "model.apr"
        os.symlink(tmp_path / "other.apr", path)
        os.symlink(path, tmp_path / "other.apr")
        return path
    link = tmp_path / "model.apr"  # a device behind an innocent name
    os.symlink(kind, link)
    return link


@pytest.mark.parametrize("command", sorted(INPUT_COMMANDS))
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "loop"])
def test_special_files_are_refused_without_blocking(cli, tmp_path, command, kind):
    src = special_input(tmp_path, kind)
    before = snapshot(tmp_path)
    r = cli(*INPUT_COMMANDS[command](src, tmp_path / "out.apr"), timeout=60)
    word = {"fifo": "FIFO", "/dev/zero": "character device", "loop": "symbolic links"}[kind]
    if command == "verify":  # verify reports instead of raising: the same words, in its report
        assert r.code == 3 and word in r.stdout, (r.code, r.stdout, r.stderr)
    else:
        one_line_error(r, 3, word)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- 4. never clobber


@pytest.fixture
def model_file(tmp_path) -> Path:
    path = tmp_path / "model.apr"
    rng = np.random.default_rng(0)
    aprtool.write_apr(path, {"w": rng.normal(size=(64, 64)).astype(np.float32), "b": np.ones(64, np.float32)})
    return path


def test_compress_refuses_to_overwrite_its_input(cli, model_file, tmp_path):
    before = snapshot(tmp_path)
    for out in (model_file, tmp_path / "." / "model.apr"):
        one_line_error(cli("compress", model_file, "-o", out, "--min-elements", "16"), 2, "is the input")
    os.link(model_file, tmp_path / "hardlink.apr")
    one_line_error(cli("compress", model_file, "-o", tmp_path / "hardlink.apr", "--force"), 2, "is the input")
    os.symlink(model_file, tmp_path / "alias.apr")
    one_line_error(cli("compress", model_file, "-o", tmp_path / "alias.apr", "--force"), 2, "is the input")
    assert {k: v for k, v in snapshot(tmp_path).items() if k == "model.apr"} == {"model.apr": before["model.apr"]}


@pytest.mark.parametrize("to", ["safetensors", "gguf", "apr", "hf"])
def test_export_refuses_an_existing_output_without_force(cli, model_file, tmp_path, to):
    out = tmp_path / "out"
    if to == "hf":
        out.mkdir()
        (out / "mine.txt").write_text("the user's own file")
    else:
        out.write_text("the user's own file")
    before = snapshot(tmp_path)
    one_line_error(cli("export", model_file, "-o", out, "--to", to), 2, "already exists", "--force")
    assert snapshot(tmp_path) == before


def test_compress_replaces_an_existing_output_only_with_force(cli, model_file, tmp_path):
    out = tmp_path / "out.apr"
    out.write_bytes(b"precious")
    one_line_error(cli("compress", model_file, "-o", out), 2, "already exists")
    assert out.read_bytes() == b"precious"
    r = cli("compress", model_file, "-o", out, "--force", "--min-elements", "16")
    assert r.code == 0, r.stderr
    assert aprtool.verify_file(out, deep=True).valid
    empty = tmp_path / "empty.apr"
    empty.touch()  # an empty file holds nothing to lose: no --force needed
    assert cli("compress", model_file, "-o", empty).code == 0


def test_export_hf_into_a_symlinked_directory_is_refused(cli, tmp_path, markup_file):
    target = tmp_path / "real"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    os.symlink(target, tmp_path / "link")
    before = snapshot(tmp_path)
    for force in ([], ["--force"]):
        r = cli("export", markup_file, "-o", tmp_path / "link", "--to", "hf", *force)
        one_line_error(r, 2, "symbolic link")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["compress", "export"])
def test_output_that_is_a_fifo_or_device_is_refused(cli, model_file, tmp_path, command):
    fifo = tmp_path / "out.apr"
    os.mkfifo(fifo)
    args = ["-o", fifo, "--force"] + (["--to", "apr"] if command == "export" else [])
    one_line_error(cli(command, model_file, *args, timeout=60), 2, "FIFO")
    assert Path(fifo).exists()


# ---------------------------------------------------------------- 11. leftovers of killed writes


def test_temp_files_of_a_killed_write_are_swept_by_the_next_write(cli, model_file, tmp_path):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale_file = tmp_path / f".out.apr.tmp-{dead.pid}-0123abcd"
    stale_dir = tmp_path / f".hf.tmp-{dead.pid}-89abcdef"
    stale_file.write_bytes(b"half")
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"half")
    live = tmp_path / f".other.apr.tmp-{os.getpid()}-0123abcd"  # a process still writing it
    lookalike = tmp_path / ".notes.tmp-backup"  # not aprtool's pattern
    live.write_bytes(b"in progress")
    lookalike.write_bytes(b"the user's")
    r = cli("export", model_file, "-o", tmp_path / "x.safetensors", "--to", "safetensors")
    assert r.code == 0, r.stderr
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists() and lookalike.exists()
