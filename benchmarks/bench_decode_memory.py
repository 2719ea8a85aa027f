"""Peak memory of decoding one encoded tensor, per codec (issue #26 item 10), each in a fresh process.

    .venv/bin/python benchmarks/bench_decode_memory.py [--log2 28]

Writes under benchmarks/_work/ one APR file per codec holding a (2^(k/2) x 2^(k/2)) int6 tensor of mostly
zero symbols (so its body is small: the hostile case of a body that expands to a large tensor), then decodes
it in a subprocess and reports the peak RSS above the process's own after imports, next to the symbols' own
size (the one allocation a decode has to make). With `--bad-digest` the record's digest is wrong, as in a
crafted file: the cost before the digest fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

WORK = Path(__file__).resolve().parent / "_work"
CHILD = """
import json, sys
from aprtool import open_apr
from aprtool.codecs import tensor as enc
import constriction, lzma, xxhash, zstandard


def hwm_kib():  # this process's own peak RSS (ru_maxrss would carry the parent's across fork + exec)
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    return int(line.split()[1])


with open_apr(sys.argv[1]) as f:
    f.raw("w")
    base = hwm_kib()
    try:
        enc.decode(f, "w"); result = "decoded"
    except Exception as exc:
        result = type(exc).__name__
print(json.dumps({"result": result, "peak_above_base_mib": round((hwm_kib() - base) / 1024, 1)}))
"""


def make(path: Path, codec: str, log2: int, bad: bool) -> int:
    import aprtool
    from aprtool.codecs.quant import Quantized
    from aprtool.codecs.tensor import encode

    rows = 1 << (log2 // 2)
    cols = 1 << (log2 - log2 // 2)
    symbols = np.zeros((rows, cols), np.int8)
    symbols[:, ::4096] = 3
    tensor = encode(Quantized(symbols, np.ones(rows, np.float16), (rows, cols), 6), codec, {}).tensor
    if bad:
        tensor = dataclasses.replace(tensor, record={**tensor.record, "content_xxh3_128": "0" * 32})
    aprtool.write_apr(path, {"w": tensor}, {})
    return symbols.size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log2", type=int, default=28)
    parser.add_argument("--bad-digest", action="store_true")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    for codec in ("rans", "lzma", "zstd"):
        path = WORK / f"decode-{codec}.apr"
        n = make(path, codec, args.log2, args.bad_digest)
        out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
        row = {"codec": codec, "symbols_mib": n / 2**20, "body_bytes": path.stat().st_size, **json.loads(out.stdout)}
        print(json.dumps(row))


if __name__ == "__main__":
    main()
