"""Property tests of the reader on mutated files: it returns data or raises an AprError, nothing else.

Each test starts from a few valid files (every plain dtype, 0-d and empty tensors, zero tensors, no
aprtool records, an int6 rANS-encoded file) and mutates them. Byte-level mutations without a CRC fix
must also make `verify_file` report the file invalid. Structure-aware mutations (header fields, index
fields, metadata) recompute both CRCs afterwards so the mutated file gets past the checksums into the
deeper checks.
"""

from __future__ import annotations

import contextlib
import functools
import json
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from _builders import (
    ENTRY_FIELD_CODES,
    FIELD_BITS,
    HEADER_FIELDS,
    NUMERIC_HEADER_FIELDS,
    entries,
    fix_crcs,
    metadata_bytes,
    replace_metadata,
    set_entry,
    set_header,
    valid_bytes,
    write,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aprtool
from aprtool.errors import AprError, FormatError
from aprtool.ops.compress import CompressOptions, compress_file

FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@functools.cache
def bases() -> tuple[bytes, ...]:
    """Valid files to mutate, built once per process."""
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "base.apr"
        every_dtype = bytearray(
            valid_bytes(
                path,
                {
                    "f32": rng.standard_normal((3, 5)).astype(np.float32),
                    "f16": rng.standard_normal(7).astype(np.float16),
                    "f64": rng.standard_normal((2, 2)),
                    "i32": np.arange(-4, 5, dtype=np.int32),
                    "i64": np.array([2**40, -1, 7], dtype=np.int64),
                    "i8": np.arange(-64, 64, 9, dtype=np.int8),
                    "u8": np.arange(65, dtype=np.uint8),
                    "zz.bf16": rng.standard_normal(9).astype(np.float16),
                    "é-名": np.ones((2, 1, 2), np.float32),
                },
                {"name": "fuzz", "architecture": "Tiny", "hidden_size": 8, "nested": {"a": [1, 2.5, None]}},
            )
        )
        # the writer takes bf16 only from torch: relabel an F16 tensor as BF16 (same bytes, same records)
        set_entry(every_dtype, "zz.bf16", "dtype", 30)
        corners = valid_bytes(
            path,
            {
                "scalar": np.array(3.5),
                "empty": np.zeros((0,), np.float32),
                "empty2": np.zeros((3, 0), np.int64),
                "empty3": np.zeros((2, 0, 5), np.float16),
                "one": np.array([9], np.uint8),
            },
            {"name": "corners"},
        )
        no_tensors = valid_bytes(path, {}, {"name": "nothing"})
        plain = valid_bytes(
            path,
            {"bias": np.ones(1, np.float32), "weights": np.arange(8, dtype=np.float32)},
            {},
            tensor_records=False,
        )
        float_path = Path(d) / "float.apr"
        valid_bytes(
            float_path,
            {"w": rng.standard_normal((12, 20)).astype(np.float32), "n": np.ones(20, np.float32)},
            {"name": "to-encode"},
        )
        encoded_path = Path(d) / "encoded.apr"
        compress_file(float_path, encoded_path, CompressOptions(min_elements=100, compare=False))
        encoded = encoded_path.read_bytes()
        return bytes(fix_crcs(every_dtype)), corners, no_tensors, plain, encoded


def read_all(f: aprtool.AprFile) -> None:
    for name in f.names():
        f.info(name)
        for verify in (True, False):
            with contextlib.suppress(AprError):
                f.numpy(name, verify=verify)


def exercise(path: Path, data: bytes | bytearray) -> aprtool.container.VerifyReport:
    """Open, read every tensor, verify: each step may only succeed or raise an AprError."""
    write(path, data)
    for check_header_crc in (True, False):
        try:
            with aprtool.open_apr(path, check_header_crc=check_header_crc) as f:
                read_all(f)
        except AprError:
            pass
    report = aprtool.verify_file(path, deep=True)  # a report, never an exception; decodes int6 too
    assert isinstance(report.valid, bool)
    assert report.valid == (report.exit_code == 0)
    assert report.valid or report.errors
    return report


base_index = st.integers(0, 4)

INTERESTING = [0, 1, 2, 3, 7, 8, 9, 15, 16, 30, 63, 64, 65, 127, 128, 160, 200, 255, 256, 257, 4096]
INTERESTING += [2**15, 2**16 - 1, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63]
INTERESTING += [2**64 - 64, 2**64 - 1, 64 * 1024 * 1024, 64 * 1024 * 1024 + 1, 1_000_000, 1_000_001]


def field_value(bits: int, current: int):
    """Values worth trying in a field of `bits` bits that now holds `current`."""
    near = st.integers(-130, 130).map(lambda d: (current + d) % 2**bits)
    special = st.sampled_from(INTERESTING).map(lambda v: v % 2**bits)
    return st.one_of(special, near, st.integers(0, 2**bits - 1))


# ---------------------------------------------------------------- byte-level mutations


@FUZZ
@given(which=base_index, data=st.data(), fix=st.booleans())
def test_random_overwrites(tmp_path, which, data, fix):
    buf = bytearray(bases()[which])
    for _ in range(data.draw(st.integers(1, 6), label="writes")):
        pos = data.draw(st.integers(0, len(buf) - 1), label="pos")
        buf[pos] = data.draw(st.integers(0, 255), label="byte")
    if fix:
        fix_crcs(buf)
    report = exercise(tmp_path / "f.apr", buf)
    if not fix and buf != bases()[which]:
        assert not report.valid


@FUZZ
@given(which=base_index, data=st.data(), fix=st.booleans())
def test_truncation(tmp_path, which, data, fix):
    base = bases()[which]
    buf = bytearray(base[: data.draw(st.integers(0, len(base) - 1), label="length")])
    if fix:
        fix_crcs(buf)
    report = exercise(tmp_path / "f.apr", buf)
    assert not report.valid and report.exit_code == 4  # every truncation is a structural error
    with pytest.raises(FormatError):
        aprtool.open_apr(tmp_path / "f.apr", check_header_crc=False)


@FUZZ
@given(which=base_index, data=st.data(), fix=st.booleans())
def test_insertion(tmp_path, which, data, fix):
    buf = bytearray(bases()[which])
    pos = data.draw(st.integers(0, len(buf)), label="pos")
    buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=80), label="inserted")
    if fix:
        fix_crcs(buf)
    report = exercise(tmp_path / "f.apr", buf)
    assert not report.valid


@FUZZ
@given(which=base_index, data=st.data(), fix=st.booleans())
def test_deletion(tmp_path, which, data, fix):
    buf = bytearray(bases()[which])
    start = data.draw(st.integers(0, len(buf) - 1), label="start")
    stop = data.draw(st.integers(start + 1, min(len(buf), start + 80)), label="stop")
    del buf[start:stop]
    if fix:
        fix_crcs(buf)
    report = exercise(tmp_path / "f.apr", buf)
    assert not report.valid


# ---------------------------------------------------------------- structure-aware mutations (CRCs fixed)


@FUZZ
@given(which=base_index, data=st.data())
def test_header_field_splice(tmp_path, which, data):
    buf = bytearray(bases()[which])
    for _ in range(data.draw(st.integers(1, 3), label="fields")):
        name = data.draw(st.sampled_from(NUMERIC_HEADER_FIELDS + ["magic", "reserved"]), label="field")
        offset, code = HEADER_FIELDS[name]
        if code.endswith("s"):
            width = struct.calcsize(code)
            raw = data.draw(st.binary(min_size=width, max_size=width), label="raw")
            buf[offset : offset + width] = raw
        else:
            current = struct.unpack_from("<" + code, buf, offset)[0]
            set_header(buf, name, data.draw(field_value(FIELD_BITS[code], current), label="value"))
    exercise(tmp_path / "f.apr", fix_crcs(buf))


@FUZZ
@given(which=st.sampled_from([0, 1, 3]), data=st.data())
def test_index_field_splice(tmp_path, which, data):
    buf = bytearray(bases()[which])
    index = entries(buf)
    for _ in range(data.draw(st.integers(1, 3), label="fields")):
        e = data.draw(st.sampled_from(index), label="entry")
        field = data.draw(st.sampled_from(["name", *ENTRY_FIELD_CODES]), label="field")
        if field == "name":
            raw = data.draw(st.binary(min_size=len(e.name), max_size=len(e.name)), label="name")
            pos = e.field_pos("name")
            buf[pos : pos + len(raw)] = raw
            continue
        if field == "dim" and not e.ndim:
            continue
        j = data.draw(st.integers(0, max(e.ndim - 1, 0)), label="j")
        code = ENTRY_FIELD_CODES[field]
        pos = e.field_pos(field, j)
        current = struct.unpack_from("<" + code, buf, pos)[0]
        value = data.draw(field_value(FIELD_BITS[code], current), label="value")
        if field == "dtype":
            value = data.draw(st.sampled_from([value, 0, 1, 2, 3, 4, 5, 6, 7, 30, 160]), label="dtype")
        struct.pack_into("<" + code, buf, pos, value)
    exercise(tmp_path / "f.apr", fix_crcs(buf))


ITEMSIZE = {0: 4, 1: 2, 3: 8, 4: 4, 5: 8, 6: 1, 7: 1, 30: 2}


@FUZZ
@given(which=st.sampled_from([0, 1, 3]), data=st.data())
def test_shape_and_size_splice(tmp_path, which, data):
    """New dims for one tensor, often with a matching size, so that the shape itself gets checked."""
    buf = bytearray(bases()[which])
    e = data.draw(st.sampled_from([e for e in entries(buf) if e.ndim]), label="entry")
    dims = [data.draw(field_value(64, d), label="dim") for d in e.dims]
    numel = int(np.prod(dims, dtype=object))
    size = data.draw(st.sampled_from([numel * ITEMSIZE[e.dtype] % 2**64, 0, e.size]), label="size")
    for j, d in enumerate(dims):
        struct.pack_into("<Q", buf, e.field_pos("dim", j), d)
    struct.pack_into("<Q", buf, e.field_pos("size"), size)
    exercise(tmp_path / "f.apr", fix_crcs(buf))


JSON_CHARS = st.sampled_from(list('{}[]":,. 0123456789eE+-\\/nultrfasNIyi\x00\xff') + ["\\u00", "\ud800"])


@FUZZ
@given(which=base_index, data=st.data())
def test_metadata_character_splice(tmp_path, which, data):
    base = bases()[which]
    text = bytearray(metadata_bytes(base))
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        pos = data.draw(st.integers(0, len(text)), label="pos")
        piece = data.draw(JSON_CHARS, label="piece").encode("utf-8", "surrogatepass")
        if data.draw(st.booleans(), label="insert"):
            text[pos:pos] = piece
        else:
            text[pos : pos + len(piece)] = piece
    exercise(tmp_path / "f.apr", replace_metadata(base, bytes(text)))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(which=base_index, data=st.data())
def test_metadata_document_replacement(tmp_path, which, data):
    base = bytes(bases()[which])
    doc = json.loads(metadata_bytes(base))
    choice = data.draw(st.sampled_from(["raw", "value", "record"]), label="kind")
    if choice == "raw":
        new = data.draw(st.binary(max_size=200), label="raw")
    elif choice == "value":
        doc[data.draw(st.sampled_from([*doc, "aprtool", "x"]), label="key")] = data.draw(json_values)
        new = json.dumps(doc).encode()
    else:  # disturb the aprtool records: the per-tensor checksums must still not crash anything
        records = doc.get("aprtool", {}).get("tensors", {})
        if records:
            name = data.draw(st.sampled_from(sorted(records)), label="tensor")
            records[name] = data.draw(json_values | st.fixed_dictionaries({"xxh3_64": st.text()}))
        new = json.dumps(doc).encode()
    exercise(tmp_path / "f.apr", replace_metadata(base, new))


# ---------------------------------------------------------------- sanity


def test_bases_are_valid(tmp_path):
    for i, base in enumerate(bases()):
        report = exercise(tmp_path / "f.apr", base)
        if i == 2:  # zero tensors: structurally fine, never a valid model
            assert report.errors == ["tensor_count: the file holds 0 tensors"]
        else:
            assert report.valid, report.errors
