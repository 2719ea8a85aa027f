"""One named test per malformed-file case (in the style of safetensors' tests).

Each test writes a valid file with aprtool.write_apr, patches bytes so that exactly one thing is wrong
and, unless the case is about a CRC, recomputes the header and footer CRCs so that the test proves the
specific structural check catches the defect. Opening must raise the specific aprtool.errors subclass
with a message naming the field; `verify_file` must report the file invalid with the same message.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from _builders import (
    data_start,
    entry,
    fix_crcs,
    get_header,
    metadata_bytes,
    pad64,
    patch_metadata,
    replace_metadata,
    set_entry,
    set_header,
    valid_bytes,
    write,
)

import aprtool
from aprtool.errors import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    AprError,
    ChecksumError,
    FileAccessError,
    FormatError,
    MetadataError,
    NotAprError,
    TensorIndexError,
    TruncatedError,
    UnknownDTypeError,
    UnsupportedVersionError,
)

# Names of equal length so they can be swapped/renamed in place. Data layout (offsets relative to
# data_offset): attn [0, 64), bias [64, 88) + padding, core [128, 228) + padding; data is 256 bytes.
TENSORS = {
    "attn": np.arange(16, dtype=np.float32).reshape(4, 4),
    "bias": np.arange(6, dtype=np.int32) - 3,
    "core": np.arange(1, 101, dtype=np.uint8),
}
METADATA = {"name": "tiny", "k1": "aa", "k2": "bb", "num": 123456789}


@pytest.fixture
def path(tmp_path):
    return tmp_path / "m.apr"


@pytest.fixture
def good(path) -> bytearray:
    """A valid file's bytes (the file is also on disk at `path`)."""
    return bytearray(valid_bytes(path, TENSORS, METADATA))


def rejected(path, buf, exc_type: type[AprError], *words: str, exit_code: int = EXIT_INVALID) -> str:
    """Write `buf`; opening must raise exactly `exc_type` naming every word; verify must agree."""
    write(path, buf)
    with pytest.raises(exc_type) as info:
        aprtool.open_apr(path)
    message = str(info.value)
    assert type(info.value) is exc_type, f"{type(info.value).__name__}: {message}"
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert "\n" not in message
    report = aprtool.verify_file(path)
    assert not report.valid
    assert report.exit_code == exit_code
    if exc_type is not ChecksumError:  # verify opens without the header CRC check and reports it itself
        assert message in report.errors
    return message


def rejected_cheaply(path, buf, exc_type: type[AprError], *words: str) -> None:
    """As `rejected`, and opening allocates almost nothing: hostile sizes are checked before use."""
    write(path, buf)
    tracemalloc.start()
    try:
        with pytest.raises(exc_type):
            aprtool.open_apr(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"opening a hostile file allocated {peak} bytes"
    rejected(path, buf, exc_type, *words)


# ---------------------------------------------------------------- baseline


def test_baseline_file_is_valid_and_fix_crcs_is_a_no_op(path, good):
    assert fix_crcs(bytearray(good)) == good
    assert len(good) == get_header(good, "data_offset") + 256 + 4
    with aprtool.open_apr(path) as f:
        assert f.names() == ["attn", "bias", "core"]
        for name, value in TENSORS.items():
            np.testing.assert_array_equal(f.numpy(name), value)
    report = aprtool.verify_file(path)
    assert report.valid and report.exit_code == 0, report.errors


# ---------------------------------------------------------------- header


def test_bad_magic(path, good):
    good[0:4] = b"GGUF"
    rejected(path, fix_crcs(good), NotAprError, "magic")


def test_text_file_is_not_apr(path):
    rejected(path, b"hello, this is not a tensor file at all\n" * 3, NotAprError, "magic")


def test_unsupported_major_version_3(path, good):
    set_header(good, "version_major", 3)
    rejected(path, fix_crcs(good), UnsupportedVersionError, "version", "3.0")


def test_unsupported_major_version_1(path, good):
    set_header(good, "version_major", 1)
    rejected(path, fix_crcs(good), UnsupportedVersionError, "version", "1.0")


def test_other_minor_version_is_accepted(path, good):
    set_header(good, "version_minor", 7)
    write(path, fix_crcs(good))
    with aprtool.open_apr(path) as f:
        assert f.header.version == "2.7"
    assert aprtool.verify_file(path).valid


def test_header_crc_mismatch(path, good):
    good[40] ^= 0x01  # the stored CRC itself
    rejected(path, good, ChecksumError, "header_crc", exit_code=EXIT_FAILED)
    with aprtool.open_apr(path, check_header_crc=False) as f:  # structure is otherwise fine
        assert not f.header_crc_valid
    report = aprtool.verify_file(path)
    assert any(c.name == "header_crc" and not c.passed for c in report.checks)
    assert any("header_crc" in e for e in report.errors)


def test_header_field_changed_without_crc_update(path, good):
    set_header(good, "version_minor", 1)  # a legal value, but the CRC no longer matches
    rejected(path, good, ChecksumError, "header_crc", exit_code=EXIT_FAILED)


def test_nonzero_reserved_header_bytes(path, good):
    good[50] = 0x01
    rejected(path, fix_crcs(good), FormatError, "reserved")


def test_quantized_flag_without_encoded_tensors(path, good):
    set_header(good, "flags", get_header(good, "flags") | 0x0020)
    rejected(path, fix_crcs(good), FormatError, "flags", "quantized")


def test_row_major_flag_cleared(path, good):
    set_header(good, "flags", get_header(good, "flags") & ~0x0400)
    rejected(path, fix_crcs(good), FormatError, "flags", "row-major")


def test_metadata_offset_not_64(path, good):
    set_header(good, "metadata_offset", 128)
    rejected(path, fix_crcs(good), FormatError, "metadata_offset")


def test_tensor_index_offset_wrong(path, good):
    set_header(good, "tensor_index_offset", get_header(good, "tensor_index_offset") + 64)
    rejected(path, fix_crcs(good), FormatError, "tensor_index_offset")


def test_data_offset_not_aligned(path, good):
    set_header(good, "data_offset", get_header(good, "data_offset") + 8)
    rejected(path, fix_crcs(good), FormatError, "data_offset")


def test_data_offset_before_index(path, good):
    set_header(good, "data_offset", 64)
    rejected(path, fix_crcs(good), FormatError, "data_offset")


def test_huge_tensor_count(path, good):
    set_header(good, "tensor_count", 2**32 - 1)
    rejected_cheaply(path, fix_crcs(good), FormatError, "tensor_count")


def test_tensor_count_within_limit_but_larger_than_the_index(path, good):
    set_header(good, "tensor_count", 1_000_000)
    rejected_cheaply(path, fix_crcs(good), TensorIndexError, "tensor_count")


def test_tensor_count_one_too_many(path, good):
    set_header(good, "tensor_count", 4)
    rejected(path, fix_crcs(good), TensorIndexError, "tensor index entry 3")


def test_tensor_count_one_too_few(path, good):
    set_header(good, "tensor_count", 2)
    rejected(path, fix_crcs(good), TensorIndexError, "tensor index", "non-zero")


def test_huge_metadata_size(path, good):
    set_header(good, "metadata_size", 64 * 1024 * 1024 + 1)
    rejected_cheaply(path, fix_crcs(good), MetadataError, "metadata_size")


def test_metadata_size_u32_max(path, good):
    set_header(good, "metadata_size", 2**32 - 1)
    rejected_cheaply(path, fix_crcs(good), MetadataError, "metadata_size")


def test_metadata_size_past_end_of_file(path, good):
    set_header(good, "metadata_size", 4096)  # under the limit, but the file is smaller than that
    rejected_cheaply(path, fix_crcs(good), TruncatedError, "metadata")


# ---------------------------------------------------------------- truncation and trailing bytes


def test_empty_file(path):
    rejected(path, b"", TruncatedError, "header")


def test_truncated_inside_header(path, good):
    rejected(path, good[:30], TruncatedError, "header")


def test_truncated_at_end_of_header(path, good):
    rejected(path, good[:64], TruncatedError, "header")


def test_truncated_inside_metadata(path, good):
    rejected(path, good[: 64 + get_header(good, "metadata_size") // 2], TruncatedError, "metadata")


def test_truncated_at_end_of_metadata(path, good):
    rejected(path, good[: get_header(good, "tensor_index_offset")], TruncatedError, "metadata")


def test_truncated_inside_index(path, good):
    rejected(path, good[: get_header(good, "tensor_index_offset") + 10], TruncatedError, "tensor index")


def test_truncated_at_end_of_index(path, good):
    # the data section is then empty (its last 4 index bytes read as the footer)
    rejected(path, good[: data_start(good)], TruncatedError, "tensor index")


def test_truncated_inside_tensor_data(path, good):
    # 'core' ([128, 228) in the data section) is cut: its index entry now points past the end
    cut = data_start(good) + 150
    rejected(path, fix_crcs(good[:cut]), TensorIndexError, "'core'", "past the end")


def test_truncated_inside_data_padding(path, good):
    # every tensor's bytes are still there, only the padding after 'core' is cut
    cut = data_start(good) + 228 + 4
    rejected(path, fix_crcs(good[:cut]), TruncatedError, "data")


def test_missing_footer(path, good):
    rejected(path, good[:-4], TruncatedError, "data")


def test_every_truncation_is_rejected_on_open(path, good):
    for length in range(len(good)):
        write(path, good[:length])
        with pytest.raises(FormatError):
            aprtool.open_apr(path)
        write(path, fix_crcs(good[:length]))
        with pytest.raises(FormatError):
            aprtool.open_apr(path)


def test_appended_trailing_bytes(path, good):
    buf = good[:-4] + bytes(64) + good[-4:]
    rejected(path, fix_crcs(buf), FormatError, "data", "64 unexpected bytes")


def test_one_appended_byte_without_crc_update(path, good):
    rejected(path, good + b"\x00", FormatError, "data", "1 unexpected bytes")


# ---------------------------------------------------------------- tensor index


def test_tensor_offset_past_eof(path, good):
    set_entry(good, "core", "offset", 256)
    rejected(path, fix_crcs(good), TensorIndexError, "'core'", "past the end")


def test_tensor_offset_huge(path, good):
    set_entry(good, "core", "offset", 2**64 - 64)
    rejected(path, fix_crcs(good), TensorIndexError, "'core'", "past the end")


def test_tensor_size_huge(path, good):
    set_entry(good, "core", "size", 2**64 - 1)
    rejected(path, fix_crcs(good), TensorIndexError, "'core'", "past the end")


def test_overlapping_tensors(path, good):
    set_entry(good, "core", "offset", 64)  # core [64, 164) over bias [64, 88)
    rejected(path, fix_crcs(good), TensorIndexError, "'core'", "overlaps", "'bias'")


def test_overlap_with_a_tensor_that_ends_further(path, good):
    # attn moved to [128, 192): inside core [128, 228), and the bytes at [0, 64) are left unused
    set_entry(good, "attn", "offset", 128)
    rejected(path, fix_crcs(good), TensorIndexError, "overlaps")


def test_unsorted_names(path, good):
    first, second = entry(good, "attn"), entry(good, "bias")
    good[first.field_pos("name") : first.field_pos("name") + 4] = b"bias"  # swap the first two names
    good[second.field_pos("name") : second.field_pos("name") + 4] = b"attn"
    rejected(path, fix_crcs(good), TensorIndexError, "'attn'", "unsorted")


def test_duplicate_names(path, good):
    set_entry(good, "bias", "name", b"attn")
    rejected(path, fix_crcs(good), TensorIndexError, "'attn'", "duplicate")


def test_name_not_utf8(path, good):
    set_entry(good, "bias", "name", b"b\xff\xfes")
    rejected(path, fix_crcs(good), TensorIndexError, "tensor index entry 1", "UTF-8")


def test_name_len_zero(path, good):
    set_entry(good, "attn", "name_len", 0)
    rejected(path, fix_crcs(good), TensorIndexError, "tensor index entry 0", "name_len 0")


def test_name_len_over_256(path, good):
    set_entry(good, "bias", "name_len", 257)
    rejected(path, fix_crcs(good), TensorIndexError, "tensor index entry 1", "name_len 257")


def test_name_len_past_end_of_index(path, good):
    set_entry(good, "core", "name_len", 256)  # legal length, but the index ends first
    rejected(path, fix_crcs(good), TensorIndexError, "tensor index entry 2", "past the end")


def test_unknown_dtype_code_99(path, good):
    set_entry(good, "bias", "dtype", 99)
    rejected(path, fix_crcs(good), UnknownDTypeError, "'bias'", "99")


def test_unknown_dtype_code_200(path, good):
    set_entry(good, "bias", "dtype", 200)
    rejected(path, fix_crcs(good), UnknownDTypeError, "'bias'", "200")


def test_unused_dtype_code_2(path, good):
    set_entry(good, "bias", "dtype", 2)
    rejected(path, fix_crcs(good), UnknownDTypeError, "'bias'", "2")


def test_ndim_over_8(path, good):
    set_entry(good, "attn", "ndim", 9)
    rejected(path, fix_crcs(good), TensorIndexError, "'attn'", "ndim 9")


def test_ndim_255(path, good):
    set_entry(good, "core", "ndim", 255)
    rejected_cheaply(path, fix_crcs(good), TensorIndexError, "'core'", "ndim 255")


def test_huge_dims_u64_max(path, good):
    set_entry(good, "attn", "dim", 2**64 - 1, j=0)
    rejected_cheaply(path, fix_crcs(good), TensorIndexError, "'attn'", "size 64")


def test_dims_whose_product_wraps_u64(path, good):
    # 2**32 x 2**32 x 4 bytes wraps to 0 in u64 arithmetic; the reader must not wrap
    set_entry(good, "attn", "dim", 2**32, j=0)
    set_entry(good, "attn", "dim", 2**32, j=1)
    set_entry(good, "attn", "size", 0)
    rejected_cheaply(path, fix_crcs(good), TensorIndexError, "'attn'", "size 0")


def test_empty_tensor_with_huge_dims(path):
    # 0 elements, so size 0 is right, but no array of this shape can exist: numpy refuses it
    good = bytearray(valid_bytes(path, {"empty": np.zeros((0, 3), np.float32), "x": np.ones(2, np.int8)}))
    set_entry(good, "empty", "dim", 2**64 - 1, j=1)
    rejected_cheaply(path, fix_crcs(good), TensorIndexError, "'empty'", "shape")


def test_size_not_shape_times_itemsize(path, good):
    set_entry(good, "bias", "size", 28)  # 6 x int32 is 24 bytes
    rejected(path, fix_crcs(good), TensorIndexError, "'bias'", "size 28")


def test_tensor_offset_not_aligned(path, good):
    set_entry(good, "bias", "offset", 65)
    rejected(path, fix_crcs(good), TensorIndexError, "'bias'", "offset 65", "aligned")


def test_index_padding_not_zero(path, good):
    last = entry(good, "core")
    good[last.field_pos("size") + 8] = 0x01
    rejected(path, fix_crcs(good), TensorIndexError, "tensor index", "non-zero")


# ---------------------------------------------------------------- metadata


def test_metadata_not_utf8(path, good):
    patch_metadata(good, b'"tiny"', b'"\xffiny"')
    rejected(path, fix_crcs(good), MetadataError, "metadata", "UTF-8")


def test_metadata_not_json(path, good):
    patch_metadata(good, b'"num":', b'"num" ')
    rejected(path, fix_crcs(good), MetadataError, "metadata", "invalid JSON")


def test_metadata_json_array_not_object(path, good):
    rejected(path, replace_metadata(good, b"[1,2,3]"), MetadataError, "metadata", "object", "list")


def test_metadata_json_string_not_object(path, good):
    rejected(path, replace_metadata(good, b'"tiny"'), MetadataError, "metadata", "object", "str")


def test_metadata_empty(path, good):
    rejected(path, replace_metadata(good, b""), MetadataError, "metadata")


def test_metadata_duplicate_key(path, good):
    patch_metadata(good, b'"k2"', b'"k1"')
    rejected(path, fix_crcs(good), MetadataError, "metadata", "duplicate key 'k1'")


def test_metadata_duplicate_key_nested(path, good):
    text = json.loads(metadata_bytes(good))
    text["nested"] = {"deeper": {"x": 1, "y": 2}}
    raw = json.dumps(text, separators=(",", ":")).encode().replace(b'"y":2', b'"x":2')
    rejected(path, replace_metadata(good, raw), MetadataError, "metadata", "duplicate key 'x'")


def test_metadata_nan(path, good):
    patch_metadata(good, b"123456789", b"NaN      ")
    rejected(path, fix_crcs(good), MetadataError, "metadata", "NaN")


def test_metadata_infinity(path, good):
    patch_metadata(good, b"123456789", b"Infinity ")
    rejected(path, fix_crcs(good), MetadataError, "metadata", "Infinity")


def test_metadata_negative_infinity(path, good):
    patch_metadata(good, b"123456789", b"-Infinity")
    rejected(path, fix_crcs(good), MetadataError, "metadata", "-Infinity")


def test_metadata_number_overflows_to_infinity(path, good):
    patch_metadata(good, b"123456789", b"1e999    ")
    rejected(path, fix_crcs(good), MetadataError, "metadata", "1e999")


def test_metadata_integer_with_too_many_digits(path, good):
    rejected(path, replace_metadata(good, b'{"n":' + b"9" * 5000 + b"}"), MetadataError, "metadata")


def test_metadata_nested_100000_deep(path, good):
    raw = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    rejected(path, replace_metadata(good, raw), MetadataError, "metadata", "nested")


def test_metadata_100000_open_brackets(path, good):
    rejected(path, replace_metadata(good, b"[" * 100_000), MetadataError, "metadata")


def test_metadata_nested_objects_100000_deep(path, good):
    raw = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    rejected(path, replace_metadata(good, raw), MetadataError, "metadata", "nested")


def test_metadata_nested_past_the_depth_limit(path, good):
    raw = b'{"a":' + b"[" * 64 + b"]" * 64 + b"}"  # 65 levels: parses, but deeper than 64
    rejected(path, replace_metadata(good, raw), MetadataError, "metadata", "deeper than 64")


def test_metadata_nested_at_the_depth_limit_is_accepted(path, good):
    # the top object plus 63 nested lists: exactly 64 levels
    doc = json.loads(metadata_bytes(good))
    doc["deep"] = json.loads("[" * 63 + "]" * 63)
    write(path, replace_metadata(good, json.dumps(doc, separators=(",", ":")).encode()))
    with aprtool.open_apr(path) as f:
        assert f.metadata["name"] == "tiny"


def test_metadata_padding_not_zero(path, good):
    assert get_header(good, "metadata_size") % 64, "the metadata needs padding for this test"
    good[64 + get_header(good, "metadata_size")] = ord(" ")
    rejected(path, fix_crcs(good), MetadataError, "metadata", "padding")


def test_metadata_record_for_unknown_tensor(path, good):
    patch_metadata(good, b'"core":{', b'"cord":{')
    rejected(path, fix_crcs(good), MetadataError, "'cord'", "unknown")


def test_metadata_record_missing(path, good):
    doc = json.loads(metadata_bytes(good))
    del doc["aprtool"]["tensors"]["bias"]
    rejected(path, replace_metadata(good, json.dumps(doc).encode()), MetadataError, "'bias'", "no record")


def test_metadata_record_without_checksum(path, good):
    doc = json.loads(metadata_bytes(good))
    doc["aprtool"]["tensors"]["bias"] = {"xxh3_64": 12}
    rejected(path, replace_metadata(good, json.dumps(doc).encode()), MetadataError, "'bias'", "xxh3_64")


def test_metadata_aprtool_not_an_object(path, good):
    doc = json.loads(metadata_bytes(good))
    doc["aprtool"] = ["tensors"]
    rejected(path, replace_metadata(good, json.dumps(doc).encode()), MetadataError, "metadata.aprtool")


# ---------------------------------------------------------------- checksums


def test_footer_crc_mismatch(path, good):
    good[-1] ^= 0x80
    write(path, good)
    with aprtool.open_apr(path) as f:  # by design open does not stream the file for the footer
        for name in f.names():
            f.numpy(name)
    report = aprtool.verify_file(path)
    assert not report.valid and report.exit_code == EXIT_FAILED
    assert [c.name for c in report.checks if not c.passed] == ["footer_crc"]
    assert any(e.startswith("footer_crc:") for e in report.errors)


def test_per_tensor_checksum_mismatch(path, good):
    good[data_start(good) + 64 + 5] ^= 0x10  # a byte of 'bias'
    write(path, fix_crcs(good))
    with aprtool.open_apr(path) as f:
        np.testing.assert_array_equal(f.numpy("attn"), TENSORS["attn"])
        with pytest.raises(ChecksumError, match="'bias'"):
            f.numpy("bias")
        assert f.numpy("bias", verify=False)[1] != TENSORS["bias"][1]
        np.testing.assert_array_equal(f.numpy("core"), TENSORS["core"])
    report = aprtool.verify_file(path)
    assert not report.valid and report.exit_code == EXIT_FAILED
    assert [c.name for c in report.checks if not c.passed] == ["tensor_checksums"]
    assert len(report.errors) == 1 and report.errors[0].startswith("tensor 'bias': stored-bytes checksum")


def test_data_byte_flipped_without_crc_update(path, good):
    good[data_start(good) + 130] ^= 0x01  # a byte of 'core'
    write(path, good)
    report = aprtool.verify_file(path)
    assert not report.valid and report.exit_code == EXIT_FAILED
    assert {c.name for c in report.checks if not c.passed} == {"footer_crc", "tensor_checksums"}
    assert any("'core'" in e for e in report.errors)


def test_data_padding_byte_changed(path, good):
    good[data_start(good) + 100] = 0xAA  # padding after 'bias': only the footer CRC covers it
    write(path, good)
    report = aprtool.verify_file(path)
    assert not report.valid
    assert [c.name for c in report.checks if not c.passed] == ["footer_crc"]


def test_footer_is_crc32_of_everything_before_it(good):
    assert struct.unpack("<I", good[-4:])[0] == zlib.crc32(bytes(good[:-4]))
    assert pad64(get_header(good, "metadata_size")) + 64 == get_header(good, "tensor_index_offset")


# ---------------------------------------------------------------- paths


def test_directory_path(tmp_path):
    with pytest.raises(FileAccessError, match="directory"):
        aprtool.open_apr(tmp_path)
    report = aprtool.verify_file(tmp_path)
    assert not report.valid and report.exit_code == EXIT_NOT_FOUND


def test_missing_path(tmp_path):
    with pytest.raises(FileAccessError, match="no such file"):
        aprtool.open_apr(tmp_path / "absent.apr")
    report = aprtool.verify_file(tmp_path / "absent.apr")
    assert not report.valid and report.exit_code == EXIT_NOT_FOUND


def test_empty_tensor_with_the_largest_addressable_shape_is_accepted(path):
    good = bytearray(valid_bytes(path, {"empty": np.zeros((0, 3), np.float32), "x": np.ones(2, np.int8)}))
    set_entry(good, "empty", "dim", (2**63 - 1) // 4, j=1)  # 0 x (2**63 - 1) // 4 x 4 bytes: just fits
    write(path, fix_crcs(good))
    with aprtool.open_apr(path) as f:
        assert f.numpy("empty").shape == (0, (2**63 - 1) // 4)
        assert tuple(f.torch("empty").shape) == (0, (2**63 - 1) // 4)
    assert aprtool.verify_file(path).valid


# ---------------------------------------------------------------- encoded tensors stored as U8 (spec §5.1)


@pytest.fixture
def encoded(path) -> bytearray:
    """TENSORS plus an int6 rANS tensor 'enc0', which the writer stores as U8 with a logical dtype/shape."""
    from aprtool.codecs import Clip, encode, quantize

    weight = np.random.default_rng(3).standard_normal((8, 16)).astype(np.float32)
    tensor = encode(quantize(weight, Clip.parse("absmax")), "rans", {"clip": "absmax"}).tensor
    buf = bytearray(valid_bytes(path, {**TENSORS, "enc0": tensor}, METADATA))
    e = entry(buf, "enc0")
    assert (e.dtype, e.dims, e.size) == (7, (len(tensor.payload),), len(tensor.payload)), "U8 [payload bytes]"
    return buf


def with_record(buf: bytearray, name: str, **changes) -> bytearray:
    doc = json.loads(metadata_bytes(buf))
    record = doc["aprtool"]["tensors"][name]
    for key, value in changes.items():
        if value is None:
            record.pop(key)
        else:
            record[key] = value
    return replace_metadata(buf, json.dumps(doc).encode())


def test_encoded_tensor_reads_as_its_logical_dtype_and_shape(path, encoded):
    with aprtool.open_apr(path) as f:
        info = f.info("enc0")
        assert (info.dtype.name, info.shape, info.stored_dtype.name) == ("INT6_RANS", (8, 16), "U8")
    assert get_header(encoded, "flags") & 0x0020, "the quantized flag says a tensor is encoded"
    assert aprtool.verify_file(path, deep=True).valid


def test_encoded_logical_dtype_names_a_plain_dtype(path, encoded):
    rejected(path, with_record(encoded, "enc0", logical_dtype="F32"), MetadataError, "'enc0'", "logical_dtype")


def test_encoded_logical_dtype_missing(path, encoded):
    rejected(path, with_record(encoded, "enc0", logical_dtype=None), MetadataError, "'enc0'", "logical_dtype")


def test_encoded_logical_dtype_unknown(path, encoded):
    rejected(path, with_record(encoded, "enc0", logical_dtype="INT6_BROTLI"), MetadataError, "INT6_BROTLI")


@pytest.mark.parametrize("shape", ["8x16", [8, -16], [8, 16.0], [True, 16], [1] * 9, [2**64, 1]], ids=str)
def test_encoded_logical_shape_malformed(path, encoded, shape):
    rejected(path, with_record(encoded, "enc0", logical_shape=shape), MetadataError, "'enc0'", "logical_shape")


def test_encoded_logical_shape_missing(path, encoded):
    rejected(path, with_record(encoded, "enc0", logical_shape=None), MetadataError, "'enc0'", "logical_shape")


def test_encoded_logical_shape_too_large_for_any_array(path, encoded):
    bad = with_record(encoded, "enc0", logical_shape=[2**62, 4])
    rejected(path, bad, TensorIndexError, "'enc0'", "too large")


def test_encoded_logical_shape_with_elements_but_no_payload(path):
    from aprtool.codecs import Clip, encode, quantize

    empty = encode(quantize(np.zeros((0, 4), np.float32), Clip.parse("absmax")), "raw", {}).tensor
    buf = bytearray(valid_bytes(path, {**TENSORS, "enc0": empty}, METADATA))
    rejected(path, with_record(buf, "enc0", logical_shape=[4, 4]), TensorIndexError, "'enc0'", "stores 0 bytes")


def test_logical_dtype_on_a_plain_f32_tensor(path, encoded):
    bad = with_record(encoded, "attn", logical_dtype="INT6_RANS", logical_shape=[4, 4])
    rejected(path, bad, TensorIndexError, "'attn'", "one-dimensional U8")


def test_logical_dtype_on_a_two_dimensional_u8_tensor(path):
    buf = bytearray(valid_bytes(path, {**TENSORS, "core": TENSORS["core"].reshape(10, 10)}, METADATA))
    bad = with_record(buf, "core", logical_dtype="INT6_RAW", logical_shape=[10, 10])
    rejected(path, bad, TensorIndexError, "'core'", "one-dimensional U8")


def test_encoded_tensor_with_the_quantized_flag_cleared(path, encoded):
    set_header(encoded, "flags", get_header(encoded, "flags") & ~0x0020)
    rejected(path, fix_crcs(encoded), FormatError, "quantized")


def test_encoded_logical_shape_beyond_the_element_limit_is_refused_before_decoding(path, encoded):
    write(path, with_record(encoded, "enc0", logical_shape=[2**20, 2**20], rows=2**20))
    report = aprtool.verify_file(path, deep=True)  # opens: the shape is plausible as an array
    assert not report.valid and report.exit_code == EXIT_INVALID
    assert any("'enc0'" in e and "exceeds" in e for e in report.errors), report.errors
