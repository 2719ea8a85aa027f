"""The real CLI in a subprocess: exit codes, JSON fields, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aprtool import write_apr
from aprtool.demo import write_demo

SUBCOMMANDS = ["pretrain", "distill", "inspect", "verify", "compress", "export"]


@pytest.fixture
def model(tmp_path) -> Path:
    return write_demo(tmp_path / "demo.apr")


def test_help_lists_the_six_subcommands_and_exit_codes(cli):
    result = cli("--help")
    assert result.code == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout
    assert "Exit codes" in result.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("aprtool")
    proc = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "verify" in proc.stdout


def test_inspect_json_fields(cli, model):
    result = cli("inspect", "--json", model)
    assert result.code == 0, result.stderr
    info = result.json()
    for key in [
        "file", "format", "version", "size_bytes", "tensor_count", "param_count", "architecture",
        "flags", "header_checksum_valid", "footer_checksum_valid", "checksum_valid", "metadata", "tensors",
    ]:  # fmt: skip
        assert key in info
    assert info["format"] == "APR v2" and info["version"] == "2.0"
    assert info["size_bytes"] == model.stat().st_size
    assert info["tensor_count"] == 20 and info["architecture"] == "LlamaForCausalLM"
    assert info["param_count"] == info["metadata"]["param_count"]
    assert info["checksum_valid"] is True
    t = info["tensors"][0]
    assert set(t) >= {"name", "dtype", "shape", "offset", "stored_bytes", "codec"}


def test_inspect_text_and_tensor_table(cli, model):
    result = cli("inspect", "--tensors", model)
    assert result.code == 0
    assert "APR v2" in result.stdout and "model.embed_tokens.weight" in result.stdout


def test_inspect_missing_file_exits_3(cli, tmp_path):
    result = cli("inspect", tmp_path / "nope.apr")
    assert result.code == 3
    assert result.stderr.count("\n") == 1 and "no such file" in result.stderr


def test_inspect_non_apr_file_exits_4(cli, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not a model\n" * 10)
    result = cli("inspect", path)
    assert result.code == 4
    assert "magic" in result.stderr and result.stderr.count("\n") == 1


def test_inspect_corrupt_tensor_reports_invalid_and_exits_5(cli, model):
    raw = bytearray(model.read_bytes())
    raw[-100] ^= 0x01
    model.write_bytes(raw)
    result = cli("inspect", "--json", model)
    assert result.code == 5
    assert result.json()["checksum_valid"] is False


def test_verify_ok(cli, model):
    result = cli("verify", "--json", model, "--expect-tensors", "20", "--require", "architecture=LlamaForCausalLM")
    assert result.code == 0, result.stdout
    report = result.json()
    assert report["valid"] is True and report["errors"] == []
    names = {c["name"] for c in report["checks"]}
    assert {"structure", "header_crc", "footer_crc", "tensor_checksums", "finite", "tensor_count"} <= names
    assert all(set(c) >= {"name", "passed", "detail"} for c in report["checks"])


def test_verify_names_the_broken_tensor(cli, tmp_path):
    path = tmp_path / "m.apr"
    write_apr(path, {"good": np.ones(64, np.float32), "victim": np.full(64, 3, np.float32)})
    from aprtool import open_apr

    with open_apr(path) as f:
        at = f.absolute_offset(f.info("victim"))
    raw = bytearray(path.read_bytes())
    raw[at + 5] ^= 0x10
    path.write_bytes(raw)
    result = cli("verify", "--json", path)
    assert result.code == 5
    report = result.json()
    assert any("'victim'" in e for e in report["errors"])
    assert not any("'good'" in e for e in report["errors"])


def test_verify_truncated_exits_4(cli, model):
    model.write_bytes(model.read_bytes()[:-10])
    result = cli("verify", "--json", model)
    assert result.code == 4 and result.json()["valid"] is False


def test_verify_several_files_gives_a_list_and_the_worst_code(cli, model, tmp_path):
    result = cli("verify", "--json", model, tmp_path / "missing.apr")
    assert result.code == 3
    reports = result.json()
    assert [r["valid"] for r in reports] == [True, False]


def test_verify_expect_tensors_mismatch_exits_5(cli, model):
    result = cli("verify", model, "--expect-tensors", "3")
    assert result.code == 5 and "expected 3" in result.stdout


def test_verify_require_mismatch_and_nested_key(cli, model):
    assert cli("verify", model, "--require", "architecture=GPT2").code == 5
    assert cli("verify", model, "--require", "hidden_size=64", "--require", "aprtool.records_version=1").code == 0
    assert cli("verify", model, "--require", "no_such_key=1").code == 5


def test_verify_malformed_require_is_a_usage_error(cli, model):
    result = cli("verify", model, "--require", "novalue")
    assert result.code == 2 and "KEY=VALUE" in result.stderr


def test_verify_zero_tensor_warns_and_fails_under_strict(cli, tmp_path):
    path = tmp_path / "z.apr"
    write_apr(path, {"w": np.zeros((4, 4), np.float32), "b": np.ones(4, np.float32)})
    result = cli("verify", "--json", path)
    assert result.code == 0 and any("'w'" in w for w in result.json()["warnings"])
    assert cli("verify", "--strict", path).code == 5


def test_verify_nan_fails(cli, tmp_path):
    path = tmp_path / "nan.apr"
    bad = np.ones(10, np.float16)
    bad[3] = np.inf
    write_apr(path, {"w": bad})
    result = cli("verify", "--json", path)
    assert result.code == 5 and "1 NaN/Inf" in " ".join(result.json()["errors"])


def test_unknown_option_is_a_usage_error(cli, model):
    assert cli("verify", model, "--no-such-flag").code == 2


def test_python_dash_m_runs_the_same_cli():
    proc = subprocess.run([sys.executable, "-m", "aprtool", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "inspect" in proc.stdout
