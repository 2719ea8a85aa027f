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


# ---------------------------------------------------------------- 1, 9, 10. encoded-tensor bombs and defects


def leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def rans_body(lo: int, counts: list[int], words: bytes = b"") -> bytes:
    """An rANS body by the spec: i8 lowest symbol, u8 alphabet size, LEB128 counts, u32 words."""
    return np.int8(lo).tobytes() + bytes([len(counts)]) + b"".join(map(leb128, counts)) + words


def digest_of_constant(shape: tuple[int, ...], symbol: int, scales: np.ndarray) -> str:
    """content_xxh3_128 of a tensor whose symbols are all `symbol`, hashed chunk by chunk."""
    import xxhash

    h = xxhash.xxh3_128()
    h.update(json.dumps({"quant": "int6", "shape": list(shape)}).encode())
    n, chunk = int(np.prod(shape)), np.full(1 << 24, symbol, np.int8).tobytes()
    for start in range(0, n, 1 << 24):
        h.update(chunk[: min(1 << 24, n - start)])
    h.update(scales.astype("<f2").tobytes())
    return h.hexdigest()


def encoded_file(path: Path, dtype: str, shape: tuple[int, ...], body: bytes, *, scales=None, digest=None) -> Path:
    """A file holding one hand-built encoded tensor (plus model-like metadata), written by aprtool."""
    from aprtool.container.layout import DTYPES_BY_NAME
    from aprtool.container.writer import EncodedTensor

    rows = shape[0] if shape else 1
    scales = np.full(rows, 0.01, np.float16) if scales is None else scales
    codec = {"INT6_RANS": "rans", "INT6_LZMA": "lzma", "INT6_ZSTD": "zstd", "INT6_RAW": "raw"}[dtype]
    record = {"codec": codec, "quant": "int6", "rows": rows, "content_xxh3_128": digest or "0" * 32}
    tensor = EncodedTensor(DTYPES_BY_NAME[dtype], shape, scales.astype("<f2").tobytes() + body, record)
    aprtool.write_apr(path, {"model.embed_tokens.weight": tensor}, {"architecture": "LlamaForCausalLM"})
    return path


LOAD_COMMANDS = {
    "verify --deep": lambda src, out: ["verify", "--deep", src],
    "compress (repack)": lambda src, out: ["compress", src, "-o", out, "--codec", "raw"],
    "export": lambda src, out: ["export", src, "-o", out, "--to", "safetensors"],
    "eval": lambda src, out: ["eval", src],
}


def refused(cli, tmp_path, src: Path, code: int, *words: str, commands=LOAD_COMMANDS) -> None:
    """Every command that decodes refuses `src` with `code`, fast, writing nothing."""
    before = snapshot(tmp_path)
    for label, make in commands.items():
        r = cli(*make(src, tmp_path / "out.apr"), timeout=60)
        if label.startswith("verify"):
            assert r.code == code and all(w in r.stdout for w in words), (label, r.code, r.stdout, r.stderr)
        else:
            assert r.code in (code, 4), (label, r.code, r.stderr)  # a command may refuse earlier, on metadata
            one_line_error(r, r.code)
        assert snapshot(tmp_path) == before, label


def test_declared_shape_beyond_the_element_limit_is_refused_before_decoding(cli, tmp_path):
    body = rans_body(0, [2**40 - 1, 1], b"\0" * 8)  # a table that sums to the claim: only the limit stops it
    src = encoded_file(tmp_path / "bomb.apr", "INT6_RANS", (1, 2**40), body)
    assert src.stat().st_size < 1024
    refused(cli, tmp_path, src, 4, "exceeds 4,294,967,296 elements")


def test_rans_stream_too_short_for_its_table_is_refused_without_decoding(cli, tmp_path):
    # 2^26 symbols split evenly over two values need 2^26 bits; the stream has 32
    body = rans_body(0, [2**25, 2**25], b"\x01\0\0\0")
    src = encoded_file(tmp_path / "short.apr", "INT6_RANS", (2**13, 2**13), body)
    refused(cli, tmp_path, src, 5, "need at least")


@pytest.mark.parametrize("dtype", ["INT6_LZMA", "INT6_ZSTD"])
def test_payload_smaller_than_the_codec_ratio_allows_is_refused(cli, tmp_path, dtype):
    src = encoded_file(tmp_path / "ratio.apr", dtype, (2**16, 2**15), b"\x00" * 64)
    refused(cli, tmp_path, src, 5, "cannot hold" if dtype == "INT6_LZMA" else "zstd frame")


def test_rans_table_that_does_not_count_the_shape_is_refused(cli, tmp_path):
    src = encoded_file(tmp_path / "count.apr", "INT6_RANS", (4, 4), rans_body(0, [15]))
    refused(cli, tmp_path, src, 5, "counts 15 symbols, shape needs 16")


def test_zero_dimensional_encoded_tensor_is_refused(cli, tmp_path):
    src = encoded_file(tmp_path / "scalar.apr", "INT6_RAW", (), b"\x01")
    refused(cli, tmp_path, src, 5, "at least one dimension")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.5])
def test_deep_verify_fails_an_int6_tensor_with_a_nan_inf_or_negative_scale(cli, tmp_path, bad):
    scales = np.array([0.5, bad, 0.25, 0.5], np.float16)
    symbols = np.arange(16, dtype=np.int8).reshape(4, 4) - 8
    from aprtool.codecs.quant import Quantized
    from aprtool.codecs.tensor import content_digest

    digest = content_digest(Quantized(symbols, scales, (4, 4)))  # consistent: only the scale is wrong
    src = encoded_file(tmp_path / "nan.apr", "INT6_RAW", (4, 4), symbols.tobytes(), scales=scales, digest=digest)
    refused(cli, tmp_path, src, 5, "row scale(s) are NaN, infinite or negative")


def peak_rss_mb(*args: str | Path) -> tuple[int, float, str]:
    """Run the CLI in a child process; its exit code, peak RSS in MB, and stdout."""
    import subprocess
    import sys

    script = (
        "import resource, subprocess, sys; "
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); "
        "print(p.stdout + p.stderr)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, sys.executable, "-m", "aprtool", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    first, _, rest = out.partition("\n")
    code, rss = first.split()
    return int(code), float(rss), rest


def test_deep_verify_memory_does_not_grow_with_the_decoded_size(tmp_path):
    import lzma

    shape = (2**14, 2**14)  # 256 Mi symbols (1 GiB once dequantized), legitimately coded in ~40 KB
    packer = lzma.LZMACompressor(format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 0}])
    body = b"".join(packer.compress(bytes(1 << 24)) for _ in range(16)) + packer.flush()
    scales = np.full(shape[0], 0.01, np.float16)
    big = encoded_file(tmp_path / "big.apr", "INT6_LZMA", shape, body, digest=digest_of_constant(shape, 0, scales))
    assert big.stat().st_size < 200_000
    code, rss, out = peak_rss_mb("verify", "--deep", big)
    assert code == 0, out
    small = encoded_file(
        tmp_path / "small.apr", "INT6_RAW", (2, 2), bytes(4), digest=digest_of_constant((2, 2), 0, scales[:2])
    )
    code, baseline, out = peak_rss_mb("verify", "--deep", small)
    assert code == 0, out
    assert rss < baseline + 100, (rss, baseline)  # 256 MiB of symbols were decoded, in bounded chunks


# ---------------------------------------------------------------- 8. disk full during export


def _private_tmpfs_works() -> bool:
    import shutil
    import subprocess

    if not shutil.which("unshare"):
        return False
    probe = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"]
    return subprocess.run(probe, capture_output=True).returncode == 0


@pytest.mark.skipif(not _private_tmpfs_works(), reason="needs user+mount namespaces to mount a small tmpfs")
@pytest.mark.parametrize("to", ["safetensors", "hf", "gguf", "apr"])
def test_export_onto_a_full_disk_says_so_and_leaves_nothing(tmp_path, to):
    """A real ENOSPC: a 64 KiB tmpfs in a private mount namespace, too small for the model."""
    import shlex
    import subprocess
    import sys

    from test_model_files import write_model

    model = write_model(tmp_path / "m")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    export = [sys.executable, "-m", "aprtool", "export", model, "-o", mnt / f"out.{to}", "--to", to]
    script = (
        f"mount -t tmpfs -o size=64k none {shlex.quote(str(mnt))} || exit 99; "
        f'{shlex.join(map(str, export))}; echo "exit=$?"; ls -A {shlex.quote(str(mnt))}'
    )
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    lines = r.stdout.split()
    assert lines[:1] == ["exit=3"] and lines[1:] == [], (r.stdout, r.stderr)  # nothing left in the directory
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "no space left on device (disk full)" in errors[0], r.stderr
    assert "Traceback" not in r.stderr


def test_export_past_a_file_size_limit_says_so(tmp_path):
    import resource
    import signal
    import subprocess
    import sys

    from test_model_files import write_model

    model = write_model(tmp_path / "m")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, 32 * 1024))

    for to in ("safetensors", "gguf"):
        out = tmp_path / f"out.{to}"
        r = subprocess.run([sys.executable, "-m", "aprtool", "export", model, "-o", out, "--to", to],
                           capture_output=True, text=True, preexec_fn=limit, timeout=120)  # fmt: skip
        assert r.returncode == 3 and "cannot write" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not out.exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


# ---------------------------------------------------------------- what the long fuzz campaigns found


def test_rans_stream_ending_in_a_zero_word_is_a_decode_error(cli, tmp_path):
    body = rans_body(0, [8, 8], b"\x01\0\0\0\0\0\0\0")  # constriction refuses such a stream outright
    src = encoded_file(tmp_path / "zero.apr", "INT6_RANS", (4, 4), body)
    refused(cli, tmp_path, src, 5, "rANS stream is invalid")


def test_float64_beyond_float32_range_is_an_error_not_inf(tmp_path):
    from aprtool.codecs import dequantize
    from aprtool.errors import IntegrityError

    path = tmp_path / "wide.apr"
    aprtool.write_apr(path, {"w": np.array([1e300, 1.0])})
    with aprtool.open_apr(path) as f, pytest.raises(IntegrityError, match="beyond the range of float32"):
        dequantize(f, "w")


def test_signaling_nan_is_counted_without_a_warning(cli, tmp_path):
    path = tmp_path / "snan.apr"
    aprtool.write_apr(path, {"h": np.array([0x7C01, 0x3C00], np.uint16).view(np.float16)})  # sNaN, 1.0
    r = cli("verify", path, "--json")
    assert r.code == 5 and r.stderr == "", r.stderr
    assert "1 NaN/Inf" in r.json()["errors"][0]


def test_a_real_kill_9_mid_export_leaves_a_temp_that_the_next_export_sweeps(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    src = tmp_path / "big.apr"
    aprtool.write_apr(src, {"w": np.ones((4096, 4096), np.float32)})  # 64 MiB: the write takes a moment
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for _attempt in range(5):
        args = ["export", src, "-o", out_dir / "big.safetensors", "--to", "safetensors"]
        proc = subprocess.Popen([sys.executable, "-m", "aprtool", *args], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if any(".tmp-" in p.name for p in out_dir.iterdir()):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
        proc.wait()
        if proc.returncode == -signal.SIGKILL:
            break
        (out_dir / "big.safetensors").unlink(missing_ok=True)
    else:
        pytest.fail("never caught the export mid-write")
    leftovers = [p for p in out_dir.iterdir() if ".tmp-" in p.name]
    assert leftovers and not (out_dir / "big.safetensors").exists()  # killed: no output, one temp file
    small = tmp_path / "small.apr"
    aprtool.write_apr(small, {"w": np.ones(4, np.float32)})
    r = subprocess.run([sys.executable, "-m", "aprtool", "export", small, "-o", out_dir / "small.safetensors",
                        "--to", "safetensors"], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["small.safetensors"]
