"""Bit widths 4..8 (issue #14 §3): every width coded with every codec, decoded exactly, repacked
losslessly, its range enforced by the decoder; per-kind patterns; bad --bits refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import aprtool
from aprtool.codecs import CODERS, Clip, decode, encode, order0_entropy_bits, quantize
from aprtool.codecs.quant import levels_for
from aprtool.container.writer import EncodedTensor

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "fixtures" / "models" / "tiny-bytes.apr"
WIDTHS = (4, 5, 6, 7, 8)


def _weights(rows: int = 256, cols: int = 384, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((rows, cols)) * 0.05).astype(np.float32)


@pytest.mark.parametrize("bits", WIDTHS)
@pytest.mark.parametrize("codec", list(CODERS))
def test_every_width_round_trips_through_every_codec(tmp_path, bits, codec):
    q = quantize(_weights(), Clip.parse("absmax"), bits)
    levels = levels_for(bits)
    assert q.bits == bits and np.abs(q.symbols).max() == levels  # absmax reaches the edge of the grid
    path = tmp_path / "t.apr"
    aprtool.write_apr(path, {"w": encode(q, codec, {"clip": "absmax"}).tensor})
    assert aprtool.verify_file(path, deep=True).valid
    with aprtool.open_apr(path) as f:
        assert f.info("w").record["quant"] == f"int{bits}"
        back = decode(f, "w")
    assert back.bits == bits and np.array_equal(back.symbols, q.symbols) and np.array_equal(back.scales, q.scales)


@pytest.mark.parametrize("bits", WIDTHS)
def test_rans_stays_within_a_tenth_of_a_percent_of_the_order0_bound_at_every_width(bits):
    q = quantize(_weights(512, 512), Clip.parse("std:12.85"), bits)
    body = CODERS["rans"].encode(q.symbols, q.counts)
    bound = order0_entropy_bits(q.symbols, q.counts) / 8
    assert len(body) <= bound * 1.001 + 64  # + the alphabet table


def test_a_record_narrower_than_its_symbols_is_refused_by_the_decoder(tmp_path):
    q = quantize(_weights(), Clip.parse("absmax"), 6)  # symbols reach ±31
    tensor = encode(q, "rans", {}).tensor
    lying = EncodedTensor(tensor.dtype, tensor.shape, tensor.payload, {**tensor.record, "quant": "int5"})
    unknown = EncodedTensor(tensor.dtype, tensor.shape, tensor.payload, {**tensor.record, "quant": "int9"})
    aprtool.write_apr(tmp_path / "lying.apr", {"w": lying})
    aprtool.write_apr(tmp_path / "unknown.apr", {"w": unknown})
    report = aprtool.verify_file(tmp_path / "lying.apr", deep=True)
    assert not report.valid and any("outside -15..15" in e for e in report.errors)
    report = aprtool.verify_file(tmp_path / "unknown.apr", deep=True)
    assert not report.valid and any("not int4..int8" in e for e in report.errors)


def test_widths_by_tensor_kind_and_a_lossless_repack(cli, tmp_path):
    out = tmp_path / "m.apr"
    r = cli("compress", MODEL, "-o", out, "--min-elements", "4096", "--bits", "mlp=5,attn=7,embed=8", "--json")
    assert r.code == 0, r.stderr
    bits = {t["name"]: t["bits"] for t in r.json()["tensors"] if "bits" in t}
    assert bits["model.embed_tokens.weight"] == 8
    assert {b for n, b in bits.items() if ".mlp." in n} == {5} and {b for n, b in bits.items() if "attn" in n} == {7}
    assert aprtool.verify_file(out, deep=True).valid
    shown = cli("inspect", out, "--tensors")
    assert "int5 rans" in shown.stdout and "int8 rans" in shown.stdout
    repacked = tmp_path / "m.zstd.apr"
    assert cli("compress", out, "-o", repacked, "--codec", "zstd").code == 0
    with aprtool.open_apr(out) as a, aprtool.open_apr(repacked) as b:
        for name in a.names():
            ra, rb = a.info(name).record or {}, b.info(name).record or {}
            assert ra.get("quant") == rb.get("quant") and ra.get("content_xxh3_128") == rb.get("content_xxh3_128")
    for flag, value in (("--bits", "5"), ("--clip", "absmax")):  # a repack keeps the symbols: refused, not ignored
        refused = cli("compress", out, "-o", tmp_path / "r.apr", "--codec", "zstd", flag, value)
        assert refused.code == 2 and f"{flag}: " in refused.stderr and "a repack keeps its symbols" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "r.apr").exists()
    smaller = tmp_path / "m4.apr"
    assert cli("compress", MODEL, "-o", smaller, "--min-elements", "4096", "--bits", "4").code == 0
    assert smaller.stat().st_size < out.stat().st_size
    assert cli("eval", smaller, "--max-tokens", "2000").code == 0


@pytest.mark.parametrize("bits", ["9", "3", "mlp=3", "foo=5", "x", "mlp=5,,"])
def test_bits_outside_4_to_8_or_unknown_kinds_are_usage_errors(cli, tmp_path, bits):
    out = tmp_path / "o.apr"
    r = cli("compress", MODEL, "-o", out, "--bits", bits)
    assert r.code == 2 and "--bits" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_clip_auto_takes_per_tensor_the_clip_with_the_least_error(cli, tmp_path):
    from aprtool.ops.budget import rounding_cost
    from aprtool.ops.compress import AUTO_CLIPS

    out = tmp_path / "auto.apr"
    r = cli("compress", MODEL, "-o", out, "--min-elements", "4096", "--clip", "auto", "--bits", "mlp=5", "--json")
    assert r.code == 0, r.stderr
    report = r.json()
    assert report["clip"] == "auto" and report["clip_source"].startswith("--clip auto")
    with aprtool.open_apr(MODEL) as f:
        for t in (t for t in report["tensors"] if t["action"].startswith("int")):
            w = np.array(f.numpy(t["name"]), np.float32)
            costs = {c: rounding_cost(w, quantize(w, Clip.parse(c), t["bits"]), None) for c in AUTO_CLIPS}
            assert t["clip"] in AUTO_CLIPS and costs[t["clip"]] == min(costs.values()), t["name"]
    assert aprtool.verify_file(out, deep=True).valid
    fixed = cli("compress", MODEL, "-o", tmp_path / "fixed.apr", "--min-elements", "4096", "--bits", "mlp=5", "--json")
    errors = {
        t["name"]: t["rel_rmse"] for t in fixed.json()["tensors"] if "rel_rmse" in t and t["action"] != "passthrough"
    }
    assert all(t["rel_rmse"] <= errors[t["name"]] for t in report["tensors"] if t["name"] in errors)
