"""Importing .safetensors that may be hostile (issue #11 item 7): files built byte by byte.

One named case per defect; each is exit 4 (3 for an unreadable config.json) naming the problem, through
both readers (compress and export), with nothing written.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from test_hostile import one_line_error, snapshot

import aprtool
from aprtool.errors import AprError
from aprtool.interop.export import export_file
from aprtool.ops.compress import CompressOptions, compress_file


def safetensors_bytes(header: dict, data: bytes, *, raw_header: bytes | None = None) -> bytes:
    """The format by hand: u64 LE header length, JSON header (space-padded to 8 bytes), the buffer."""
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def one_tensor(dtype="F32", shape=(2, 2), data=None, offsets=None, metadata=None) -> bytes:
    data = bytes(16) if data is None else data
    header = {"w": {"dtype": dtype, "shape": list(shape), "data_offsets": offsets or [0, len(data)]}}
    if metadata is not None:
        header["__metadata__"] = metadata
    return safetensors_bytes(header, data)


CASES = {
    "header longer than the file": (struct.pack("<Q", 10**6) + b"{}", "exceeds the file"),
    "header not JSON": (safetensors_bytes({}, b"", raw_header=b"{not json"), "not valid JSON"),
    "header a list": (safetensors_bytes({}, b"", raw_header=b"[1, 2]"), "not a JSON object"),
    "duplicate tensor names": (
        safetensors_bytes(
            {},
            bytes(8),
            raw_header=b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
            b' "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}',
        ),  # fmt: skip
        "duplicate key",
    ),
    "shape 2^62 x 0": (one_tensor(shape=(2**62, 0), data=b""), "too large"),
    "I8 shape 0 x 2^62 (too large once widened)": (one_tensor(dtype="I8", shape=(0, 2**62), data=b""), "too large"),
    "negative dimension": (one_tensor(shape=(-1, 4)), "non-negative"),
    "size does not match the shape": (one_tensor(shape=(3, 2)), "bytes for shape"),
    "offsets past the buffer": (one_tensor(offsets=[0, 64]), "outside"),
    "hole in the buffer": (
        safetensors_bytes({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)),
        "hole",
    ),
    "overlapping tensors": (
        safetensors_bytes(
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
            },
            bytes(8),
        ),  # fmt: skip
        "overlaps",
    ),
    "dtype with no APR counterpart": (one_tensor(dtype="U16", shape=(8,)), "no APR counterpart"),
    "unknown dtype": (one_tensor(dtype="Q4_K"), "unknown dtype"),
    "metadata values not strings": (one_tensor(metadata={"n": 3}), "__metadata__"),
    "aprtool metadata not an object": (one_tensor(metadata={"aprtool_metadata": "[1, 2]"}), "JSON object"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_safetensors_is_exit_4_naming_the_problem(tmp_path, case):
    data, words = CASES[case]
    src = tmp_path / "in.safetensors"
    src.write_bytes(data)
    before = snapshot(tmp_path)
    for attempt in (
        lambda: export_file(src, tmp_path / "out.apr", "apr"),
        lambda: compress_file(src, tmp_path / "out2.apr", CompressOptions(compare=False)),
    ):
        with pytest.raises(AprError) as info:
            attempt()
        assert info.value.exit_code == 4, (type(info.value).__name__, str(info.value))
        assert words in str(info.value) and "\n" not in str(info.value)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["shape 2^62 x 0", "metadata values not strings", "header longer than the file",
                                  "I8 shape 0 x 2^62 (too large once widened)"])  # fmt: skip
def test_malformed_safetensors_through_the_cli(cli, tmp_path, case):
    src = tmp_path / "in.safetensors"
    src.write_bytes(CASES[case][0])
    one_line_error(cli("inspect", src, "--stats"), 4, CASES[case][1])
    r = cli("verify", src, "--deep")  # the report names the problem on stdout
    assert r.code == 4 and CASES[case][1] in r.stdout and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    one_line_error(cli("export", src, "-o", tmp_path / "o.apr", "--to", "apr"), 4, CASES[case][1])
    one_line_error(cli("compress", src, "-o", tmp_path / "o.apr"), 4, CASES[case][1])


F8_TORCH = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


@pytest.mark.parametrize("dtype", ["F8_E4M3", "F8_E5M2"])
def test_f8_tensors_are_widened_exactly_to_float32(tmp_path, dtype):
    every = torch.from_numpy(np.arange(256, dtype=np.uint8)).view(F8_TORCH[dtype]).float()
    bits = np.arange(256, dtype=np.uint8)[torch.isfinite(every).numpy()]  # every finite bit pattern
    src = tmp_path / "f8.safetensors"
    src.write_bytes(one_tensor(dtype=dtype, shape=(len(bits),), data=bits.tobytes()))
    export_file(src, tmp_path / "out.apr", "apr")
    expected = torch.from_numpy(bits.copy()).view(F8_TORCH[dtype]).float().numpy()
    with aprtool.open_apr(tmp_path / "out.apr") as f:
        got = f.numpy("w")
        assert got.dtype == np.float32
        assert np.array_equal(got, expected)
    assert aprtool.verify_file(tmp_path / "out.apr").exit_code == 0


@pytest.mark.parametrize("command", ["compress", "export-apr", "export-safetensors"])
@pytest.mark.parametrize("dtype", ["F8_E4M3", "F8_E5M2"])
def test_an_f8_nan_pattern_is_refused_not_written_unverifiable(cli, tmp_path, dtype, command):
    src = tmp_path / "f8.safetensors"
    src.write_bytes(one_tensor(dtype=dtype, shape=(16, 16), data=np.arange(256, dtype=np.uint8).tobytes()))
    out = tmp_path / "out"
    args = ["compress", src, "-o", out] if command == "compress" else ["export", src, "-o", out, "--to", command[7:]]
    one_line_error(cli(*args), 5, "'w'", "NaN/Inf")
    assert not out.exists()


def test_a_float16_overflow_of_a_kept_tensor_is_refused(cli, tmp_path):
    src = tmp_path / "big.safetensors"
    src.write_bytes(one_tensor(dtype="F32", shape=(4,), data=np.array([1, 2, 3e38, 4], "<f4").tobytes()))
    one_line_error(cli("compress", src, "-o", tmp_path / "c.apr"), 5, "'w'", "F16")
    one_line_error(cli("export", src, "-o", tmp_path / "e.apr", "--to", "apr", "--dtype", "f16"), 5, "'w'", "float16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.safetensors"]


CONFIGS = {
    "a list": ([1, 2], "must be a JSON object"),
    "heads a string": ({"num_attention_heads": "8"}, "num_attention_heads"),
    "tie a string": ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
    "architectures a string": ({"architectures": "LlamaForCausalLM"}, "architectures"),
    "eps a bool": ({"rms_norm_eps": True}, "rms_norm_eps"),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_malformed_config_json_beside_the_safetensors_is_exit_4(cli, tmp_path, case):
    config, words = CONFIGS[case]
    (tmp_path / "model.safetensors").write_bytes(one_tensor())
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(AprError) as info:
        export_file(tmp_path / "model.safetensors", tmp_path / "out.apr", "apr")
    assert info.value.exit_code == 4 and words in str(info.value)


def test_config_json_that_is_a_fifo_is_refused_not_waited_on(cli, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(one_tensor())
    os.mkfifo(tmp_path / "config.json")
    r = cli("export", tmp_path / "model.safetensors", "-o", tmp_path / "out.apr", "--to", "apr", timeout=60)
    one_line_error(r, 3, "FIFO")


def test_a_valid_hand_built_file_imports(tmp_path):
    values = np.arange(6, dtype=np.float32)
    src = tmp_path / "ok.safetensors"
    src.write_bytes(one_tensor(shape=(2, 3), data=values.tobytes(), metadata={"note": "hi"}))
    export_file(src, tmp_path / "out.apr", "apr")
    with aprtool.open_apr(tmp_path / "out.apr") as f:
        assert np.array_equal(f.numpy("w"), values.reshape(2, 3)) and f.metadata["note"] == "hi"
    assert Path(tmp_path / "out.apr").stat().st_size > 0
