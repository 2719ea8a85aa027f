"""compress --calibrate (issue #14 §2): GPTQ rounding on the same int6 grid, calibrated on training text
run through the model; the file format and the decoder do not change, only the symbols."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import aprtool
from aprtool.codecs.gptq import gptq_quantize, gptq_rows, output_error, row_factors
from aprtool.codecs.quant import Clip, quantize
from aprtool.errors import IntegrityError
from fixtures.corpora import materialize

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "fixtures" / "models" / "tiny-bytes.apr"


def _layer(seed: int = 0, rows: int = 96, cols: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A weight matrix and the second moment of correlated inputs, like a trained layer's."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(rows, cols)).astype(np.float32)
    x = rng.normal(size=(2048, cols)) @ rng.normal(size=(cols, cols)) * 0.2 + rng.normal(size=(2048, cols))
    return w, x.T @ x / len(x)


@pytest.mark.parametrize("clip", ["std:12.85", "absmax", "std:4"])
def test_gptq_lowers_the_output_error_on_the_same_grid(clip):
    w, h = _layer()
    rtn, gptq = quantize(w, Clip.parse(clip)), gptq_quantize(w, h, Clip.parse(clip))
    assert np.array_equal(gptq.scales, rtn.scales) and gptq.shape == rtn.shape  # the same grid
    assert gptq.symbols.dtype == np.int8 and np.abs(gptq.symbols).max() <= 31
    assert output_error(w, gptq, h) < 0.9 * output_error(w, rtn, h)


def test_with_an_identity_hessian_gptq_is_round_to_nearest():
    w, _ = _layer()
    rtn = quantize(w, Clip.parse("std:12.85"))
    assert np.array_equal(gptq_quantize(w, np.eye(w.shape[1]), Clip.parse("std:12.85"), damp=0.0).symbols, rtn.symbols)


@pytest.mark.parametrize(
    ("hessian", "said"),
    [(np.zeros((128, 128)), "all zero"), (np.full((128, 128), np.nan), "NaN"), (np.eye(64), "columns")],
    ids=["zero", "nan", "wrong-shape"],
)
def test_a_hessian_that_cannot_guide_the_rounding_is_an_error(hessian, said):
    w, _ = _layer()
    with pytest.raises(IntegrityError, match=said):
        gptq_quantize(w, hessian, Clip.parse("std:12.85"), name="layer")


def test_per_row_gptq_with_one_shared_hessian_is_gptq():
    w, h = _layer(rows=64, cols=48)
    shared = gptq_quantize(w, h, Clip.parse("std:8"), damp=0.1, act_order=False)
    per_row = gptq_rows(w, row_factors(np.repeat(h[None], len(w), axis=0), damp=0.1), Clip.parse("std:8"))
    assert np.array_equal(shared.symbols, per_row.symbols) and np.array_equal(shared.scales, per_row.scales)


def test_per_row_gptq_lowers_each_rows_own_error_and_rounds_an_unseen_row_to_nearest():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(40, 32)).astype(np.float32)
    mix = rng.normal(size=(40, 32, 32))
    hessians = np.einsum("rij,rkj->rik", mix, mix) + np.eye(32)  # a different curvature per row
    hessians[7] = 0.0  # a token calibration never reached
    clip = Clip.parse("std:12.85")
    gptq, rtn = gptq_rows(w, row_factors(hessians, damp=0.01), clip), quantize(w, clip)

    def cost(q):
        e = q.dequantize(np.float64) - w
        return np.einsum("ri,rij,rj->r", e, hessians, e)

    assert np.array_equal(gptq.symbols[7], rtn.symbols[7])
    lower = np.delete(cost(gptq) < cost(rtn), 7)
    assert lower.mean() > 0.9, lower.mean()  # (a row may tie with round-to-nearest)


@pytest.mark.parametrize("bad", ["nan", "zero", "shape"])
def test_per_row_hessians_that_cannot_guide_the_rounding_are_an_error(bad):
    w, h = _layer(rows=8, cols=16)
    rows = np.repeat(h[None], 8, axis=0)
    rows = {"nan": np.where(rows > 1, np.nan, rows), "zero": rows * 0, "shape": rows[:, :8, :8]}[bad]
    with pytest.raises(IntegrityError, match="Hessians"):
        gptq_rows(w, row_factors(rows) if bad != "shape" else rows, Clip.parse("absmax"))


def test_a_calibrated_artifact_is_a_plain_int6_file_that_records_its_calibration(cli, tmp_path):
    out = tmp_path / "m.gptq.apr"
    r = cli("compress", MODEL, "-o", out, "--min-elements", "4096", "--calibrate", "--calib-tokens", "4096", "--json")
    assert r.code == 0, r.stderr
    report = r.json()
    assert report["calibration"]["method"] == "gptq" and report["calibration"]["tokens"] >= 4096
    assert report["calibration"]["source"] == "python-stdlib" and report["calibration"]["split"] == "train"
    assert report["calibration"]["row_hessians"] == ["model.embed_tokens.weight"]  # tied, small: one H per token
    # 4,096 tokens leave too few windows apart from the selection windows for adaround to learn on
    assert report["calibration"]["adaround_windows"] < 8 and not any("adaround" in t for t in report["tensors"])
    quantized = [t for t in report["tensors"] if t["action"] == "int6"]
    assert quantized and all(t["output_error"] >= 0 for t in quantized)
    for t in quantized:  # each tensor kept the symbols that cost the model less on calibration text
        assert set(t["calib_loss"]) == {"gptq", "rtn"} and t["calib_loss"][t["method"]] == min(t["calib_loss"].values())
    assert aprtool.verify_file(out, deep=True).valid
    with aprtool.open_apr(out) as f:
        assert f.metadata["calibration"] == report["calibration"]
        assert f.metadata["tokenizer"]["kind"] == "bytes"
    repacked = tmp_path / "m.lzma.apr"  # a repack keeps the symbols and says how they were chosen
    assert cli("compress", out, "-o", repacked, "--codec", "lzma").code == 0
    assert aprtool.verify_file(repacked, deep=True).valid
    with aprtool.open_apr(out) as a, aprtool.open_apr(repacked) as b:
        for name in a.names():
            ra, rb = a.info(name).record or {}, b.info(name).record or {}
            assert ra.get("content_xxh3_128") == rb.get("content_xxh3_128") and ra.get("method") == rb.get("method")
    assert cli("eval", out, "--max-tokens", "2000").code == 0


def test_calibration_data_given_as_prepared_shards_of_the_models_tokenizer(cli, tmp_path):
    from aprtool.data.prepare import prepare_corpus

    shards = prepare_corpus(materialize("tiny", tmp_path / "text"), tmp_path / "shards", tokenizer="bytes")
    out = tmp_path / "m.apr"
    r = cli("compress", MODEL, "-o", out, "--min-elements", "4096", "--calibrate", "--calib-data", shards.directory,
            "--calib-tokens", "2048", "--json")  # fmt: skip
    assert r.code == 0, r.stderr
    assert r.json()["calibration"]["source"] == str(shards.directory)


def _refused(cli, tmp_path, *args: str | Path, said: str, source: Path = MODEL) -> None:
    out = tmp_path / "out.apr"
    r = cli("compress", source, "-o", out, "--calibrate", *args)
    assert r.code == 2, r.stderr
    assert said in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()  # no partial output


def test_calibrate_refuses_a_file_without_an_architecture(cli, tmp_path):
    plain = tmp_path / "plain.apr"
    aprtool.write_apr(plain, {"w": np.ones((300, 300), np.float32)}, {"name": "no architecture"})
    _refused(cli, tmp_path, said="needs a Llama-family model", source=plain)


def test_calibrate_refuses_a_model_without_a_tokenizer(cli, tmp_path):
    with aprtool.open_apr(MODEL) as f:
        tensors = {n: np.array(f.numpy(n)) for n in f.names()}
        metadata = {k: v for k, v in f.metadata.items() if k not in ("tokenizer", "aprtool")}
    bare = tmp_path / "bare.apr"
    aprtool.write_apr(bare, tensors, metadata)
    _refused(cli, tmp_path, said="names no tokenizer", source=bare)


def test_calibrate_refuses_calibration_data_of_another_tokenizer(cli, tmp_path):
    from aprtool.data.prepare import prepare_corpus

    bpe = prepare_corpus(materialize("tiny", tmp_path / "text"), tmp_path / "bpe", tokenizer="bpe", vocab_size=300)
    _refused(cli, tmp_path, "--calib-data", bpe.directory, said="is not the model's")


def test_calibrate_refuses_too_little_calibration_text_and_a_bad_token_count(cli, tmp_path):
    text = tmp_path / "few"
    text.mkdir()
    (text / "a.txt").write_text("x = 1\n")
    (text / "b.txt").write_text("y = 2\n")
    _refused(cli, tmp_path, "--calib-data", text, said="cannot fill one window")
    _refused(cli, tmp_path, "--calib-tokens", "0", said="--calib-tokens 0")


def test_calibrate_refuses_an_already_quantized_file(cli, tmp_path):
    _refused(cli, tmp_path, said="already quantized", source=ROOT / "fixtures" / "models" / "tiny-bytes.int6.apr")


def test_calibrate_json_errors_are_json(cli, tmp_path):
    r = cli("compress", MODEL, "-o", tmp_path / "o.apr", "--calibrate", "--calib-tokens", "-5", "--json")
    assert r.code == 2 and json.loads(r.stdout)["exit_code"] == 2


def test_per_row_hessians_are_collected_only_for_an_embedding_that_is_quantized(cli, tmp_path):
    r = cli("compress", MODEL, "-o", tmp_path / "m.apr", "--calibrate", "--calib-tokens", "4096", "--json")
    assert r.code == 0, r.stderr  # the default threshold leaves the 257×64 embedding as fp16
    assert not [
        t for t in r.json()["tensors"] if t["name"] == "model.embed_tokens.weight" and t["action"] != "passthrough"
    ]
    assert "row_hessians" not in r.json()["calibration"] and "row_damp" not in r.json()["calibration"]


def test_scoring_a_tensor_from_its_layers_kept_input_gives_the_whole_forward_passs_loss():
    from aprtool.ops.calibrate import calibrate

    cal = calibrate(MODEL, calib_tokens=1024)
    name, embedding = "model.layers.1.mlp.down_proj.weight", "model.embed_tokens.weight"
    rounded = quantize(cal.model.state_dict()[name].numpy(), Clip.parse("absmax"), 4).dequantize()
    float_embedding = cal.model.state_dict()[embedding].numpy().copy()
    # with the embedding among the tensors set (to its own float values) the pass starts at the embedding
    whole = cal.window_losses({name: rounded, embedding: float_embedding})
    assert cal.layer_inputs is None
    kept = cal.window_losses({name: rounded})
    assert cal.layer_inputs is not None and len(cal.layer_inputs) == 2  # kept, and used: the same numbers
    assert kept.shape == (len(cal.select),) and np.array_equal(kept, whole)
    float_loss = cal.loss_with_all({})
    assert float_loss != kept.mean() and cal.loss_with(embedding, float_embedding) == float_loss  # restored


def test_a_small_tied_embedding_is_refined_by_adaround_and_kept_only_where_it_costs_no_more(cli, tmp_path):
    out = tmp_path / "m.apr"
    r = cli("compress", MODEL, "-o", out, "--min-elements", "4096", "--calibrate", "--calib-tokens", "16384", "--json")
    assert r.code == 0, r.stderr
    assert r.json()["calibration"]["adaround_windows"] > 0
    (row,) = [t for t in r.json()["tensors"] if t["name"] == "model.embed_tokens.weight"]
    losses, summary = row["calib_loss"], row["adaround"]
    start = summary["from"]  # what _choose took: the lower of the two
    assert losses[start] == min(losses["gptq"], losses["rtn"]) and summary["steps"] == 1000
    assert 0 < summary["changed"] < 0.5
    assert summary["kept"] == (losses["adaround"] <= losses[start])
    assert row["method"] == ("adaround" if summary["kept"] else start)
    others = [t for t in r.json()["tensors"] if t["action"] == "int6" and t["name"] != row["name"]]
    assert others and not any("adaround" in t for t in others)  # only the tied embedding's rows are learned
    with aprtool.open_apr(out) as f:  # the file holds the symbols the record names
        dequantized = aprtool.codecs.dequantize(f, row["name"])
    calibration_loss = _loss_with(row["name"], dequantized)
    assert abs(calibration_loss - losses[row["method"]]) < 1e-5


def _loss_with(name: str, values: np.ndarray) -> float:
    from aprtool.ops.calibrate import calibrate

    return calibrate(MODEL, calib_tokens=16384).loss_with(name, values)


def test_a_model_too_large_to_score_every_tensor_on_text_chooses_by_output_error(tmp_path, monkeypatch):
    import aprtool.ops.calibrate as calibrate_module
    from aprtool.ops.compress import CompressOptions, compress_file

    monkeypatch.setattr(calibrate_module, "TEXT_SCORING_BUDGET", 0)  # as if the model were 135 M parameters
    options = CompressOptions(min_elements=4096, calibrate=True, calib_tokens=16384)
    report = compress_file(MODEL, tmp_path / "m.apr", options)
    assert report["calibration"]["scored_on_text"] == ["model.embed_tokens.weight"]
    rows = [t for t in report["tensors"] if t["action"] == "int6"]
    matrices = [t for t in rows if t["name"] != "model.embed_tokens.weight"]
    assert matrices and all(t["chosen_by"] == "output_error" and "calib_loss" not in t for t in matrices)
    (embedding,) = [t for t in rows if t["name"] == "model.embed_tokens.weight"]
    assert "chosen_by" not in embedding and set(embedding["calib_loss"]) >= {"gptq", "rtn"}
