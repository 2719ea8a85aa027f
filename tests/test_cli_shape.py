"""The command line shaped like its users' habits (issue #12 §3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import aprtool


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.apr"
    rng = np.random.default_rng(0)
    aprtool.write_apr(path, {"w": rng.normal(size=(300, 256)).astype(np.float32), "b": np.ones(8, np.float32)})
    return path


def test_compress_without_out_writes_beside_the_input_and_says_where(cli, model, tmp_path):
    r = cli("compress", model)
    assert r.code == 0, r.stderr
    assert str(tmp_path / "model.int6.apr") in r.stdout
    assert aprtool.verify_file(tmp_path / "model.int6.apr", deep=True).valid
    r = cli("compress", tmp_path / "model.int6.apr", "--codec", "lzma")  # a repack is named by its codec
    assert r.code == 0 and (tmp_path / "model.int6-lzma.apr").is_file(), r.stderr
    again = cli("compress", model)  # the default name is an existing OUT now: refused, not replaced
    assert again.code == 2 and "--force" in again.stderr


def test_compress_prints_its_codec_line_and_compares_only_on_request(cli, model, tmp_path):
    r = cli("compress", model, "-o", tmp_path / "a.apr")
    assert r.code == 0
    assert "rans:" in r.stdout and "bits/weight" in r.stdout and "over their order-0 bound" in r.stdout
    assert "row scales" in r.stdout
    assert "lzma" not in r.stdout and "0.0 MB/s" not in r.stdout
    r = cli("compress", model, "-o", tmp_path / "b.apr", "--compare", "--json")
    assert set(r.json()["codecs"]) == {"rans", "lzma", "zstd", "raw"}
    assert all(c["decode_mb_s"] for c in r.json()["codecs"].values())


def test_dry_run_writes_nothing(cli, model, tmp_path):
    before = sorted(p.name for p in tmp_path.iterdir())
    r = cli("compress", model, "--dry-run", "--compare", "--json")
    assert r.code == 0 and r.json()["dry_run"] and r.json()["output"] is None
    assert r.json()["codecs"]["rans"]["bytes"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_usage_errors_are_one_line_and_the_hint(cli, model):
    for args, words in (
        (["compress", model, "--codec", "brotli"], "'brotli' is not one of"),
        (["compress"], "Missing argument 'IN'"),
        (["nosuch"], "No such command"),
        (["export", model, "-o", "x", "--to", "onnx"], "'onnx' is not one of"),
    ):
        r = cli(*args)
        lines = r.stderr.strip().splitlines()
        assert r.code == 2 and len(lines) == 2, r.stderr
        assert lines[0].startswith("aprtool: error: ") and words in lines[0]
        assert lines[1].startswith("Try 'aprtool") and "--help" in lines[1]
        assert "╭" not in r.stderr and "│" not in r.stderr


def test_with_json_every_outcome_is_json(cli, model, tmp_path):
    usage = cli("compress", model, "--codec", "brotli", "--json")
    assert usage.code == 2 and usage.json() == {"error": usage.json()["error"], "exit_code": 2}
    missing = cli("export", tmp_path / "missing.apr", "-o", tmp_path / "x.apr", "--to", "apr", "--json")
    assert missing.code == 3 and missing.json()["exit_code"] == 3 and "no such file" in missing.json()["error"]
    bad = tmp_path / "bad.apr"
    bad.write_bytes(b"not an apr file at all" * 10)
    for args in (["inspect", bad, "--json"], ["eval", bad, "--json"]):
        r = cli(*args)
        assert r.code == 4 and json.loads(r.stdout)["exit_code"] == 4, (args, r.stdout)


def test_version(cli):
    r = cli("--version")
    assert r.code == 0 and r.stdout.strip() == f"aprtool {aprtool.__version__}"


@pytest.mark.parametrize("command", ["pretrain", "distill", "inspect", "verify", "compress", "export", "eval"])
def test_help_lists_choices_real_defaults_and_ends_with_examples(cli, command):
    r = cli(command, "--help")
    assert r.code == 0
    assert "<bool>" not in r.stdout and "(None)" not in r.stdout and "[default: (" not in r.stdout
    assert "Examples:" in r.stdout and f"aprtool {command}" in r.stdout.split("Examples:")[1]
    if command == "compress":
        assert "--codec <rans|lzma|zstd|raw>" in r.stdout
    if command == "export":
        assert "<safetensors|hf|gguf|apr>" in r.stdout
    if command == "pretrain":
        assert "<tiny|small|medium|large>" in r.stdout and "[default: small]" in r.stdout


def test_every_command_has_a_guide_page_with_its_help_examples():
    import importlib

    from aprtool.cli import app

    guide = Path(__file__).resolve().parents[1] / "docs" / "guide"
    names = sorted(c.name for c in app.registered_commands)
    index = (guide / "README.md").read_text()
    for name in names:
        page = (guide / f"{name}.md").read_text()
        assert f"({name}.md)" in index, name
        examples = importlib.import_module(f"aprtool.cli.{name}").EXAMPLES
        for line in examples.splitlines():
            command = line.split("  #")[0].strip()
            if command.startswith(("aprtool ", "torchrun ")):
                assert command in page, (name, command)


def test_pretrain_and_distill_share_every_loop_option_with_one_help_and_default():
    """The options of the shared training engine (LoopConfig) are declared once: both commands show each
    of them with the same flag, help text and default, and a resume passes through only what was given."""
    from dataclasses import fields

    import click
    import typer.main

    from aprtool.cli import app
    from aprtool.train.config import LoopConfig

    group = typer.main.get_command(app)
    ctx = click.Context(group)
    shown = {}
    for name in ("pretrain", "distill"):
        command = group.get_command(ctx, name)
        shown[name] = {p.name: (tuple(p.opts), p.help, p.default) for p in command.params}
    for f in fields(LoopConfig):
        if f.name == "seq_len":  # pretrain: 256; distill: the teacher's
            continue
        assert f.name in shown["pretrain"] and shown["pretrain"][f.name] == shown["distill"][f.name], f.name
        opts, _, default = shown["pretrain"][f.name]
        assert f"--{f.name.replace('_', '-')}" in opts
        assert (default.value if hasattr(default, "value") else default) == f.default, f.name


def test_verify_max_bytes_is_exact_and_takes_the_usual_units(cli, model, tmp_path):
    size = model.stat().st_size
    assert cli("verify", model, "--max-bytes", str(size)).code == 0  # a file exactly at the cap passes
    over = cli("verify", model, "--max-bytes", str(size - 1), "--json")
    assert over.code == 5 and over.json()["valid"] is False
    assert any("over the limit" in e and "by 1" in e for e in over.json()["errors"])
    assert (
        cli("verify", model, "--max-bytes", "16MB").code == 0 and cli("verify", model, "--max-bytes", "1KiB").code == 5
    )
    bad = cli("verify", model, "--max-bytes", "16 furlongs")
    assert bad.code == 2 and len(bad.stderr.strip().splitlines()) == 1 and "MiB" in bad.stderr


def test_sizes_are_parsed_as_written():
    from aprtool.errors import UsageError
    from aprtool.sizes import parse_size

    assert parse_size("16000000") == parse_size("16MB") == 16_000_000
    assert parse_size("15.5MiB") == 16_252_928 and parse_size("1 kib") == 1024 and parse_size("0") == 0
    for bad in ("", "-1", "1.5B", "16M", "MB", "1e6"):
        with pytest.raises(UsageError):
            parse_size(bad)


@pytest.mark.parametrize("command", ["pretrain", "distill"])
def test_adam_betas_outside_0_to_1_are_usage_errors(cli, tmp_path, command):
    extra = ["--teacher", "fixtures/models/tiny-bytes.apr"] if command == "distill" else []
    r = cli(command, *extra, "--run-dir", tmp_path / "run", "--beta2", "1.0")
    assert r.code == 2 and "--beta1 and --beta2 must be in [0, 1)" in r.stderr
    assert not (tmp_path / "run").exists()
