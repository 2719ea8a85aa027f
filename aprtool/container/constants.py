"""APR v2 constants: data only. formats/APR.md is the normative text these numbers come from."""

from __future__ import annotations

from dataclasses import dataclass

MAGIC = b"APR\x00"
VERSION_MAJOR = 2
VERSION_MINOR = 0

HEADER_SIZE = 64
FOOTER_SIZE = 4
ALIGNMENT = 64  # metadata, index and every tensor start on a 64-byte boundary (mmap/SIMD friendly)

# Header field layout, little-endian. The CRC field itself (bytes 40..44) is excluded from its CRC.
HEADER_STRUCT = "<4sBBHIQIQQI20s"
HEADER_CRC_OFFSET = 40
HEADER_CRC_END = 44

FLAG_QUANTIZED = 0x0020  # at least one tensor uses an encoded (code >= 160) dtype
FLAG_HAS_VOCAB = 0x0200  # aprender's "contains vocabulary/tokenizer": set when metadata.tokenizer is complete
FLAG_ROW_MAJOR = 0x0400  # always set: aprender's reader assumes it
KNOWN_FLAGS = {FLAG_QUANTIZED: "quantized", FLAG_HAS_VOCAB: "has_vocab", FLAG_ROW_MAJOR: "row_major"}
TOKENIZER_KEY = "tokenizer"  # metadata object: kind, vocab_size, eos_id, sha256 and, for BPE, "json"

# Hostile-input limits, checked before anything is allocated.
MAX_METADATA_SIZE = 64 * 1024 * 1024
MAX_TENSOR_COUNT = 1_000_000
MAX_NAME_BYTES = 256
MAX_NDIM = 8
MAX_JSON_DEPTH = 64

# Index entry: u16 name_len, name, u8 dtype, u8 ndim, ndim x u64 dims, u64 offset, u64 size.
INDEX_ENTRY_FIXED = 2 + 1 + 1 + 8 + 8
MIN_INDEX_ENTRY = INDEX_ENTRY_FIXED + 1  # a name has at least one byte

# Key in the metadata JSON under which aprtool keeps its own records (per-tensor checksums etc.).
APRTOOL_KEY = "aprtool"
RECORDS_VERSION = 1
CHECKSUM_ALGORITHM = "xxh3_64"  # per-tensor, over the stored bytes; ~10 GB/s so checked loads stay cheap
TRAINING_PREFIX = "__training__."  # checkpoint-only tensors (optimizer, RNG); never exported


@dataclass(frozen=True)
class DType:
    code: int
    name: str
    itemsize: int  # bytes per element; 0 for encoded dtypes whose size is not shape-derived
    numpy: str | None  # numpy dtype string for a zero-copy view; BF16 is viewed as raw uint16 bits
    is_float: bool


# Codes 0..7 and 30 are aprender's; 2 is unused there too. Codes >= 160 belong to aprtool's codecs.
PLAIN_DTYPES: tuple[DType, ...] = (
    DType(0, "F32", 4, "<f4", True),
    DType(1, "F16", 2, "<f2", True),
    DType(3, "F64", 8, "<f8", True),
    DType(4, "I32", 4, "<i4", False),
    DType(5, "I64", 8, "<i8", False),
    DType(6, "I8", 1, "i1", False),
    DType(7, "U8", 1, "u1", False),
    DType(30, "BF16", 2, "<u2", True),
)

ENCODED_DTYPE_MIN = 160
# An encoded tensor is stored as a one-dimensional U8 tensor (its payload), so that readers knowing only
# the standard dtypes can parse and list the file; its record names what it decodes to (section 5.1).
# Files written before this keep the encoded dtype code in the index, and are still read.
LOGICAL_DTYPE_KEY = "logical_dtype"  # an encoded dtype's name, e.g. "INT6_RANS"
LOGICAL_SHAPE_KEY = "logical_shape"  # the decoded shape

# An encoded tensor's row scales are plain fp16 unless its record says how they are coded (section 5):
# "scales": "lzma-planes" (high bytes, then low bytes, one raw LZMA2 stream) and "scale_bytes": its length.
SCALES_KEY = "scales"
SCALE_BYTES_KEY = "scale_bytes"
SCALE_CODING = "lzma-planes"

# Limits on what an encoded tensor may claim, checked before anything is decoded or allocated
# (formats/APR.md section 5.2). The largest tensor of any published LLM has ~2.1e9 elements.
MAX_DECODED_ELEMENTS = 2**32
# Most symbols one payload byte can decode to, per codec: raw stores one byte per symbol; LZMA's 11-bit
# probabilities cost >= 0.022 bits per coded bit, so a 273-byte match costs >= ~0.26 bits (< 8,300x,
# measured 6,870x on zeros); a zstd RLE block is 4 bytes for at most 128 KiB (< 32,768x). rANS has no
# ratio (a one-symbol table costs 0 bits): its table must count exactly the declared symbols instead.
MAX_EXPANSION = {"INT6_RAW": 1, "INT6_LZMA": 10_000, "INT6_ZSTD": 32_768}

# int6 quantization (section 5.1): symbols -INT6_LEVELS..INT6_LEVELS, one fp16 scale per row. The defaults
# are `compress`'s, and late QAT uses them too, so a model is trained against the grid it will be stored on.
INT6_LEVELS = 31
QUANT_BITS = (4, 5, 6, 7, 8)  # widths a record's `quant` may name ("int4".."int8"): symbols -(2^(b-1)-1)..2^(b-1)-1
DEFAULT_BITS = 6
DEFAULT_CLIP = "std:12.85"  # parameter-golf's setting for matrices: ~3.3 bits/weight after coding
DEFAULT_MIN_ELEMENTS = 65_536  # smaller tensors (and every 1-D one) are kept as fp16, as parameter-golf does
# With --budget a matrix below --min-elements may be quantized too when that buys more than it costs; below
# this size its metadata record (~300 bytes) outweighs what quantizing saves, so it stays float.
BUDGET_MIN_ELEMENTS = 1_024

# aprtool's encoded dtypes: int6 symbols (one per weight, -31..31) with fp16 per-row scales, coded
# losslessly by one of the codecs. The payload layout per codec is in formats/APR.md section 5.1.
ENCODED_DTYPES: tuple[DType, ...] = (
    DType(160, "INT6_RAW", 0, None, True),
    DType(161, "INT6_RANS", 0, None, True),
    DType(162, "INT6_LZMA", 0, None, True),
    DType(163, "INT6_ZSTD", 0, None, True),
)
