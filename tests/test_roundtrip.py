"""Write -> read round trips for every dtype and shape corner, numpy and torch, lazy and zero-copy."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from aprtool import open_apr, verify_file, write_apr
from aprtool.errors import FileAccessError, UsageError

NUMPY_DTYPES = [np.float32, np.float16, np.float64, np.int32, np.int64, np.int8, np.uint8]
SHAPES = [(), (0,), (3, 0, 2), (1,), (7,), (3, 5), (2, 3, 4), (1, 1, 1, 1, 1, 1, 1, 2)]


def _sample(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_numpy_round_trip(tmp_path, dtype, shape):
    value = _sample(dtype, shape)
    path = tmp_path / "t.apr"
    write_apr(path, {"x": value, "y": np.ones(3, np.float32)}, {"name": "rt"})
    with open_apr(path) as f:
        got = f.numpy("x")
        assert got.dtype == value.dtype and got.shape == value.shape
        assert got.tobytes() == value.tobytes()
    assert verify_file(path).valid


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int32,
        torch.int64,
        torch.int8,
        torch.uint8,
    ],
    ids=str,
)
@pytest.mark.parametrize("shape", [(), (0,), (5,), (4, 3)], ids=str)
def test_torch_round_trip(tmp_path, dtype, shape):
    gen = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        value = torch.randn(shape, generator=gen).to(dtype)
    else:
        value = torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=gen).to(dtype)
    path = tmp_path / "t.apr"
    write_apr(path, {"x": value})
    with open_apr(path) as f:
        got = f.torch("x")
        assert got.dtype == dtype and tuple(got.shape) == tuple(shape)
        assert torch.equal(got, value)


def test_non_contiguous_and_big_endian_inputs_are_stored_as_values(tmp_path):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    big = np.arange(5, dtype=">i4")
    write_apr(tmp_path / "t.apr", {"t": base.T, "b": big, "tt": torch.arange(6.0).reshape(2, 3).t()})
    with open_apr(tmp_path / "t.apr") as f:
        assert np.array_equal(f.numpy("t"), base.T)
        assert np.array_equal(f.numpy("b"), big) and f.numpy("b").dtype == np.dtype("<i4")
        assert torch.equal(f.torch("tt"), torch.arange(6.0).reshape(2, 3).t())


def test_tensors_are_zero_copy_views_of_a_private_mapping(tmp_path):
    path = tmp_path / "t.apr"
    write_apr(path, {"x": np.zeros(16, np.float32) + 1})
    before = path.read_bytes()
    with open_apr(path) as f:
        a = f.numpy("x")
        assert a.base is not None and not a.flags.owndata
        a[:] = 7  # copy-on-write: the file must not change
        t = f.torch("x")  # same mapping, so it sees the in-memory change
        assert float(t[0]) == 7
    assert path.read_bytes() == before


def test_reading_one_tensor_reads_only_that_tensor(tmp_path):
    """A checksum failure elsewhere in the file does not stop reading a healthy tensor lazily."""
    path = tmp_path / "t.apr"
    write_apr(path, {"a": np.ones(1000, np.float32), "b": np.full(1000, 2, np.float32)})
    with open_apr(path) as f:
        start = f.absolute_offset(f.info("b"))
    raw = bytearray(path.read_bytes())
    raw[start + 10] ^= 0xFF
    path.write_bytes(raw)
    with open_apr(path) as f:
        assert float(f.numpy("a")[0]) == 1.0
        assert f.numpy("b", verify=False).shape == (1000,)


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "m.apr"
    write_apr(path, {"x": np.ones(3, np.float32)}, {"v": 1})
    write_apr(path, {"x": np.ones(3, np.float32) * 2}, {"v": 2})
    assert os.listdir(tmp_path) == ["m.apr"]
    with open_apr(path) as f:
        assert f.metadata["v"] == 2


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "m.apr"
    write_apr(path, {"x": np.ones(3, np.float32)})
    before = path.read_bytes()
    with pytest.raises(UsageError):
        write_apr(path, {"x": np.ones(3, dtype=bool)})
    with pytest.raises(UsageError):
        write_apr(path, {"x": np.ones(1, np.float32)}, {"bad": float("nan")})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.apr"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_directory_is_a_file_access_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(FileAccessError):
            write_apr(ro / "m.apr", {"x": np.ones(1, np.float32)})
    finally:
        ro.chmod(0o700)


def test_missing_directory_is_a_file_access_error(tmp_path):
    with pytest.raises(FileAccessError):
        write_apr(tmp_path / "nope" / "m.apr", {"x": np.ones(1, np.float32)})


def test_bad_names_are_rejected(tmp_path):
    for bad in ["", "x" * 257]:
        with pytest.raises(UsageError):
            write_apr(tmp_path / "m.apr", {bad: np.ones(1, np.float32)})
    with pytest.raises(UsageError):
        write_apr(tmp_path / "m.apr", [("a", np.ones(1)), ("a", np.ones(1))])


def test_index_is_sorted_bytewise_and_data_follows_offsets(tmp_path):
    names = ["b", "a", "B", "é", "a.b", "a_b"]
    path = tmp_path / "m.apr"
    write_apr(path, {n: np.full(3, i, np.int32) for i, n in enumerate(names)})
    with open_apr(path) as f:
        assert f.names() == sorted(names, key=lambda n: n.encode())
        for i, n in enumerate(names):
            assert f.numpy(n).tolist() == [i] * 3
