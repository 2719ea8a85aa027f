"""int6 quantization and the lossless coders: exactness, bounds, repack, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aprtool import open_apr, verify_file, write_apr
from aprtool.codecs import CODERS, Clip, decode, dequantize, order0_entropy_bits, quantize, torch_fake_quant
from aprtool.errors import ChecksumError, IntegrityError, UsageError
from aprtool.ops.compress import CompressOptions, compress_file

rng = np.random.default_rng(0)
SYMBOL_SETS = {
    "gaussian": np.clip(np.rint(rng.standard_normal(50_000) * 4), -31, 31).astype(np.int8),
    "full-range": rng.integers(-31, 32, size=20_000).astype(np.int8),
    "single-symbol": np.full(1000, 5, np.int8),
    "two-symbols": np.array([-31, 31] * 500, np.int8),
    "one-element": np.array([-7], np.int8),
    "skewed": np.where(rng.random(30_000) < 0.999, 0, 3).astype(np.int8),
}


@pytest.mark.parametrize("codec", sorted(CODERS))
@pytest.mark.parametrize("kind", sorted(SYMBOL_SETS))
def test_every_codec_round_trips_symbols_bit_exactly(codec, kind):
    symbols = SYMBOL_SETS[kind]
    body = CODERS[codec].encode(symbols)
    assert np.array_equal(CODERS[codec].decode(memoryview(body), symbols.size), symbols)


@pytest.mark.parametrize("codec", sorted(CODERS))
def test_decoder_refuses_a_different_symbol_count(codec):
    symbols = SYMBOL_SETS["gaussian"]
    body = memoryview(CODERS[codec].encode(symbols))
    for n in (symbols.size - 1, symbols.size + 1):
        with pytest.raises(IntegrityError):
            CODERS[codec].decode(body, n)


@pytest.mark.parametrize("codec", sorted(CODERS))
def test_decoders_feed_and_yield_in_small_chunks(monkeypatch, codec):
    """A body many chunks long (CHUNK made small, so the test is quick) is read a chunk at a time and still
    decodes exactly; one symbol too many or too few is still refused."""
    from aprtool.codecs import coders

    monkeypatch.setattr(coders, "CHUNK", 997)
    symbols = SYMBOL_SETS["full-range"]
    body = memoryview(CODERS[codec].encode(symbols))
    assert len(body) > 5 * 997
    assert np.array_equal(CODERS[codec].decode(body, symbols.size), symbols)
    for n in (symbols.size - 1, symbols.size + 1):
        with pytest.raises(IntegrityError):
            CODERS[codec].decode(body, n)


@pytest.mark.parametrize("codec", ["rans", "raw"])
def test_decoding_a_tensor_allocates_its_symbols_once(tmp_path, codec):
    """The digest is taken as the symbols stream in (hashing a copy of them doubled the peak): 64 MiB of
    symbols cost their 64 MiB plus a few decoder chunks, traced by tracemalloc (numpy reports to it)."""
    import tracemalloc

    from aprtool.codecs.quant import Quantized
    from aprtool.codecs.tensor import encode

    rows, cols = 1 << 12, 1 << 14
    symbols = np.zeros((rows, cols), np.int8)
    symbols[:, ::64] = rng.integers(-31, 32, size=(rows, cols // 64))
    q = Quantized(symbols, np.ones(rows, np.float16), (rows, cols), 6)
    write_apr(tmp_path / "big.apr", {"w": encode(q, codec, {}).tensor}, {})
    del q
    with open_apr(tmp_path / "big.apr") as f:
        f.raw("w")  # the stored checksum, outside the trace
        tracemalloc.start()
        try:
            decoded = decode(f, "w")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert np.array_equal(decoded.symbols, symbols)
    assert peak < 1.5 * symbols.size, f"{peak / 2**20:.0f} MiB to decode {symbols.size / 2**20:.0f} MiB"


def test_choosing_a_clip_works_in_blocks_not_whole_tensor_copies():
    """best_clip quantizes at nine clips and costs each: every float temporary is a block of rows, so a
    49 k-row embedding does not make float64 copies of itself (compress's peak memory was 2.45x the model)."""
    import tracemalloc

    from aprtool.codecs.quant import relative_error
    from aprtool.ops.compress import best_clip

    w = np.random.default_rng(0).standard_normal((16384, 512)).astype(np.float32)  # 32 MiB
    tracemalloc.start()
    try:
        clip = best_clip(w, 6, None)
        q = quantize(w, clip, 6)
        error = relative_error(w, q)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.6 * w.nbytes  # the symbols (0.25x) and one block's floats, never a copy of w
    assert error == pytest.approx(np.linalg.norm(q.dequantize() - w) / np.linalg.norm(w), rel=1e-5)


def test_order0_entropy_on_a_hand_made_distribution():
    # p = (1/2, 1/4, 1/4): H = 1.5 bits per symbol, 8 symbols -> 12 bits
    symbols = np.array([0, 0, 0, 0, 1, 1, -2, -2], np.int8)
    assert order0_entropy_bits(symbols) == pytest.approx(12.0)
    assert order0_entropy_bits(np.full(10, 3, np.int8)) == 0.0
    uniform = np.arange(-31, 32, dtype=np.int8)
    assert order0_entropy_bits(uniform) == pytest.approx(63 * np.log2(63))


def test_rans_is_within_a_tenth_of_a_percent_of_entropy_on_large_tensors():
    symbols = np.clip(np.rint(rng.standard_normal(1_000_000) * 3), -31, 31).astype(np.int8)
    body = CODERS["rans"].encode(symbols)
    assert len(body) <= order0_entropy_bits(symbols) / 8 * 1.001


def test_absmax_dequantization_error_is_at_most_half_a_scale():
    w = (rng.standard_normal((64, 300)) * rng.uniform(0.001, 10, size=(64, 1))).astype(np.float32)
    w[3] = 0.0  # an all-zero row
    w[5] = 1e-9  # a row below fp16's resolution
    q = quantize(w, Clip("absmax"))
    assert q.symbols.dtype == np.int8 and q.scales.dtype == np.float16
    assert q.symbols.min() >= -31 and q.symbols.max() <= 31
    err = np.abs(q.dequantize() - w)
    bound = q.scales.astype(np.float32)[:, None] / 2
    assert (err <= bound * (1 + 1e-6) + 1e-12).all()
    assert (q.dequantize()[3] == 0).all()


def test_std_clip_uses_k_sigma_and_clips_outliers():
    w = rng.standard_normal((8, 4096)).astype(np.float32)
    w[0, 0] = 1000.0  # an outlier far beyond 12.85 sigma
    q = quantize(w, Clip.parse("std:12.85"))
    expected = (12.85 * w.std(axis=1) / 31).astype(np.float16)
    assert np.allclose(q.scales.astype(np.float32), expected.astype(np.float32), rtol=1e-3)
    assert q.symbols[0, 0] == 31  # clipped, not a huge value
    inliers = np.abs(w) < 31 * q.scales.astype(np.float32)[:, None]
    err = np.abs(q.dequantize() - w)
    half = np.broadcast_to(q.scales.astype(np.float32)[:, None] / 2 * (1 + 1e-6), w.shape)
    assert (err[inliers] <= half[inliers]).all()


def test_constant_row_with_std_clip_falls_back_to_absmax():
    w = np.full((2, 100), 0.25, np.float32)  # std 0: a K*std scale would be 0
    q = quantize(w, Clip.parse("std:3"))
    assert (q.symbols == 31).all()
    assert (np.abs(q.dequantize() - w) <= q.scales.astype(np.float32)[:, None] / 2).all()


@pytest.mark.parametrize("bad", ["std:abc", "std:", "std:-1", "std:nan", "max", ""])
def test_bad_clip_is_a_usage_error(bad):
    with pytest.raises(UsageError):
        Clip.parse(bad)


def test_torch_fake_quant_equals_numpy_quantizer():
    w = rng.standard_normal((32, 200)).astype(np.float32)
    for clip in (Clip("absmax"), Clip.parse("std:12.85")):
        want = quantize(w, clip).dequantize()
        t = torch.tensor(w, requires_grad=True)
        got = torch_fake_quant(t, clip)
        assert np.allclose(got.detach().numpy(), want, atol=1e-7)
        got.sum().backward()  # straight-through estimator: gradient of identity
        assert torch.equal(t.grad, torch.ones_like(t))


def _float_model(path, seed=0):
    g = np.random.default_rng(seed)
    tensors = {
        "model.embed_tokens.weight": (g.standard_normal((512, 160)) * 0.02).astype(np.float32),
        "model.layers.0.mlp.up_proj.weight": (g.standard_normal((300, 256)) * 0.05).astype(np.float32),
        "model.layers.0.input_layernorm.weight": np.ones(160, np.float32),
        "small.weight": g.standard_normal((16, 16)).astype(np.float32),
    }
    write_apr(path, tensors, {"name": "f", "architecture": "LlamaForCausalLM", "created_at": "x"})
    return tensors


def test_compress_quantizes_large_matrices_and_passes_through_the_rest(tmp_path):
    tensors = _float_model(tmp_path / "f.apr")
    report = compress_file(tmp_path / "f.apr", tmp_path / "c.apr", CompressOptions(compare=True))
    actions = {r["name"]: r["action"] for r in report["tensors"]}
    assert actions == {
        "model.embed_tokens.weight": "int6",
        "model.layers.0.mlp.up_proj.weight": "int6",
        "model.layers.0.input_layernorm.weight": "passthrough",
        "small.weight": "passthrough",
    }
    with open_apr(tmp_path / "c.apr") as f:
        assert f.info("small.weight").dtype.name == "F16"
        assert f.info("model.embed_tokens.weight").dtype.name == "INT6_RANS"
        w = dequantize(f, "model.embed_tokens.weight")
        assert w.dtype == np.float32 and w.shape == (512, 160)
        rel = np.sqrt(np.mean((w - tensors["model.embed_tokens.weight"]) ** 2)) / 0.02
        assert rel < 0.2
    assert verify_file(tmp_path / "c.apr", deep=True).valid
    sizes = {c: v["bytes"] for c, v in report["codecs"].items()}
    assert sizes["rans"] < min(sizes["lzma"], sizes["zstd"], sizes["raw"])


def _digests(path):
    with open_apr(path) as f:
        return {n: (f.info(n).record or {}).get("content_xxh3_128") for n in f.names()}


def test_repack_chain_keeps_content_and_returns_to_identical_bytes(tmp_path):
    _float_model(tmp_path / "f.apr")
    first = tmp_path / "rans.apr"
    compress_file(tmp_path / "f.apr", first, CompressOptions(codec="rans", compare=False))
    digests = _digests(first)
    assert sum(d is not None for d in digests.values()) == 2
    previous = first
    for codec in ["lzma", "zstd", "raw", "rans"]:
        nxt = tmp_path / f"{codec}-{len(list(tmp_path.iterdir()))}.apr"
        report = compress_file(previous, nxt, CompressOptions(codec=codec, compare=False))
        assert report["mode"] == "repack"
        assert _digests(nxt) == digests
        assert verify_file(nxt, deep=True).valid
        with open_apr(nxt) as f:
            assert f.info("model.embed_tokens.weight").dtype.name == f"INT6_{codec.upper()}"
        previous = nxt
    assert previous.read_bytes() == first.read_bytes()


def _payload_region(path, name):
    with open_apr(path) as f:
        info = f.info(name)
        return f.absolute_offset(info), info.size


def test_flipped_byte_in_rans_stream_is_caught_by_checksum_before_decoding(tmp_path):
    _float_model(tmp_path / "f.apr")
    compress_file(tmp_path / "f.apr", tmp_path / "c.apr", CompressOptions(compare=False))
    start, size = _payload_region(tmp_path / "c.apr", "model.embed_tokens.weight")
    raw = bytearray((tmp_path / "c.apr").read_bytes())
    raw[start + size - 9] ^= 0x40
    (tmp_path / "c.apr").write_bytes(raw)
    with open_apr(tmp_path / "c.apr") as f, pytest.raises(ChecksumError, match="embed_tokens"):
        decode(f, "model.embed_tokens.weight")
    report = verify_file(tmp_path / "c.apr", deep=True)
    assert not report.valid and any("embed_tokens" in e for e in report.errors)


def test_wrong_frequency_table_with_a_matching_checksum_fails_deep_verify(tmp_path):
    """A writer bug (not a bit flip): a consistent file whose table no longer matches the symbols."""
    _float_model(tmp_path / "f.apr")
    compress_file(tmp_path / "f.apr", tmp_path / "c.apr", CompressOptions(compare=False))
    name = "model.layers.0.mlp.up_proj.weight"
    with open_apr(tmp_path / "c.apr") as f:
        others = {n: (dequantize(f, n) if n != name else None) for n in f.names()}
        info = f.info(name)
        payload = bytearray(f.raw(name))
        record = dict(info.record)
        rows = info.shape[0]
        payload[2 * rows + 2] ^= 0x01  # first count in the table
        from aprtool.container.writer import EncodedTensor

        tensors = {n: v for n, v in others.items() if v is not None}
        tensors[name] = EncodedTensor(info.dtype, info.shape, bytes(payload), record | {})
    tensors[name].record.pop("xxh3_64", None)
    write_apr(tmp_path / "bad.apr", tensors, {"name": "bad"})
    assert verify_file(tmp_path / "bad.apr").valid  # checksums match what was written...
    report = verify_file(tmp_path / "bad.apr", deep=True)  # ...but decoding proves it wrong
    assert not report.valid and any(name in e for e in report.errors)
    from aprtool.container import verify_file as verify_container  # the container alone knows no codec

    report = verify_container(tmp_path / "bad.apr", deep=True)
    assert report.valid and "not decoded (no decoder given)" in [c.detail for c in report.checks if c.name == "deep"][0]


def test_integer_tensor_cannot_be_quantized(tmp_path):
    write_apr(tmp_path / "i.apr", {"ids": np.zeros((300, 300), np.int32)})
    with pytest.raises(UsageError, match="integer"):
        compress_file(tmp_path / "i.apr", tmp_path / "o.apr")
    assert not (tmp_path / "o.apr").exists()


def test_unknown_codec_is_a_usage_error(tmp_path):
    _float_model(tmp_path / "f.apr")
    with pytest.raises(UsageError, match="codec"):
        compress_file(tmp_path / "f.apr", tmp_path / "o.apr", CompressOptions(codec="brotli9"))


def test_quant_none_keeps_floats_bit_exact(tmp_path):
    tensors = _float_model(tmp_path / "f.apr")
    compress_file(tmp_path / "f.apr", tmp_path / "o.apr", CompressOptions(quant="none"))
    with open_apr(tmp_path / "o.apr") as f:
        for name, value in tensors.items():
            assert f.numpy(name).tobytes() == value.tobytes()


def test_safetensors_input(tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    save_file(
        {"w": torch.randn(300, 300, generator=g), "b": torch.randn(300, generator=g).bfloat16()},
        str(tmp_path / "m.safetensors"),
        metadata={"name": "st"},
    )
    report = compress_file(tmp_path / "m.safetensors", tmp_path / "o.apr")
    assert {r["name"]: r["action"] for r in report["tensors"]} == {"w": "int6", "b": "passthrough"}
    with open_apr(tmp_path / "o.apr") as f:
        assert f.metadata["name"] == "st"
        assert f.info("b").dtype.name == "F16"
    assert verify_file(tmp_path / "o.apr", deep=True).valid


def test_compress_cli_json_fields_and_usage_errors(cli, tmp_path):
    _float_model(tmp_path / "f.apr")
    result = cli("compress", tmp_path / "f.apr", "-o", tmp_path / "c.apr", "--json", "--compare")
    assert result.code == 0, result.stderr
    report = result.json()
    for key in ["input_bytes", "output_bytes", "params", "entropy_bound_bytes", "codecs", "tensors"]:
        assert key in report
    for codec in ["rans", "lzma", "zstd", "raw"]:
        assert set(report["codecs"][codec]) == {
            "bytes", "symbol_bytes", "scale_bytes", "bits_per_weight", "over_entropy_pct", "encode_mb_s",
            "decode_mb_s",
        }  # fmt: skip
    assert report["output_bytes"] == (tmp_path / "c.apr").stat().st_size
    text = cli("compress", tmp_path / "f.apr", "-o", tmp_path / "d.apr", "--compare")
    assert text.code == 0 and "rans" in text.stdout and "lzma" in text.stdout
    assert cli("verify", "--deep", tmp_path / "c.apr").code == 0
    assert cli("compress", tmp_path / "f.apr", "-o", tmp_path / "x.apr", "--codec", "nope").code == 2
    assert cli("compress", tmp_path / "f.apr", "-o", tmp_path / "x.apr", "--clip", "std:abc").code == 2
    assert cli("compress", tmp_path / "missing.apr", "-o", tmp_path / "x.apr").code == 3
    assert not (tmp_path / "x.apr").exists()


@pytest.mark.parametrize("kind", ["gaussian", "heavy-tailed", "narrow rows"])
def test_every_codec_is_compared_with_the_bound_of_its_own_symbols(tmp_path, kind):
    """The bound once added the row scales raw while every codec's bytes held them LZMA-coded, so a codec
    came out 'below' the order-0 bound (-0.644 %). Now the symbols are set against their own entropy."""
    rng = np.random.default_rng(3)
    shape = {"gaussian": (256, 512), "heavy-tailed": (384, 256), "narrow rows": (4096, 32)}[kind]
    w = rng.standard_normal(shape) if kind != "heavy-tailed" else rng.standard_t(3, shape)
    w *= rng.uniform(0.2, 3.0, (shape[0], 1))  # per-row scale, as in trained layers
    write_apr(tmp_path / "f.apr", {"w": w.astype(np.float32), "b": np.zeros(8, np.float32)}, {"name": kind})
    report = compress_file(tmp_path / "f.apr", tmp_path / "o.apr", CompressOptions(compare=True, min_elements=1024))
    for codec, line in report["codecs"].items():
        assert line["symbol_bytes"] + line["scale_bytes"] == line["bytes"]
        if codec in ("rans", "raw"):  # order-0 coders: the entropy bounds them by construction
            assert line["over_entropy_pct"] >= 0, (codec, line)
    assert report["codecs"]["rans"]["over_entropy_pct"] < 1.0
