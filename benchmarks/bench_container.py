"""Container speed: verify throughput and full load vs safetensors, as ratios in the same run.

    .venv/bin/python benchmarks/bench_container.py [--mb 500] [--repeats 3]

Writes a ~500 MB F32 model-like file (and the same tensors as .safetensors) under benchmarks/_work/,
then times, with the page cache warm for both formats:
  - verify_file (full streaming pass: footer CRC, per-tensor XXH3, NaN/Inf and all-zero) in GB/s;
  - load: aprtool load_apr (checksum-verified mmap views) vs safetensors.numpy.load_file;
  - load+copy: the same, with every aprtool tensor copied into owned memory (what load_file returns);
  - peak RSS of `aprtool verify` in a subprocess, to show memory does not grow with file size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from aprtool import load_apr, verify_file, write_apr

WORK = Path(__file__).resolve().parent / "_work"


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


RSS_PROBE = """
import sys
from aprtool.cli import main
sys.argv = ["aprtool", "verify", sys.argv[1]]
try:
    main()
except SystemExit:
    pass
# VmHWM belongs to this process image; ru_maxrss would carry the parent's peak across fork+exec.
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""


def peak_rss_mb(path: Path) -> float:
    """Peak RSS of a fresh process running `aprtool verify` (measured inside it, after exec)."""
    proc = subprocess.run([sys.executable, "-c", RSS_PROBE, str(path)], check=True, capture_output=True, text=True)
    return int(proc.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    per = 4 * 1024 * 1024  # 4 MiB tensors, like a small LM's matrices
    tensors = {
        f"model.layers.{i}.w": rng.standard_normal(per // 4, dtype=np.float32).reshape(1024, -1)
        for i in range(args.mb * 1024 * 1024 // per)
    }
    apr, st = WORK / "big.apr", WORK / "big.safetensors"
    start = time.perf_counter()
    write_apr(apr, tensors)
    t_write = time.perf_counter() - start
    start = time.perf_counter()
    save_file(tensors, str(st))
    t_st_write = time.perf_counter() - start
    size = apr.stat().st_size
    gb = size / 1e9
    del tensors

    def apr_load():
        return load_apr(apr)

    def apr_load_copy():
        return {k: np.array(v) for k, v in load_apr(apr).items()}

    def st_load():
        return load_file(str(st))

    for fn in (apr_load, st_load, lambda: verify_file(apr)):  # warm the page cache
        fn()
    t_verify = timed(lambda: verify_file(apr), args.repeats)
    t_load = timed(apr_load, args.repeats)
    t_load_copy = timed(apr_load_copy, args.repeats)
    t_st = timed(st_load, args.repeats)

    rss_mb = peak_rss_mb(apr)

    result = {
        "file_bytes": size,
        "write_s": round(t_write, 3),
        "safetensors_write_s": round(t_st_write, 3),
        "verify_gb_s": round(gb / t_verify, 2),
        "apr_load_s": round(t_load, 3),
        "apr_load_copy_s": round(t_load_copy, 3),
        "safetensors_load_s": round(t_st, 3),
        "load_ratio_vs_safetensors": round(t_load / t_st, 3),
        "load_copy_ratio_vs_safetensors": round(t_load_copy / t_st, 3),
        "verify_cli_peak_rss_mb": round(rss_mb, 1),
    }
    print(json.dumps(result, indent=2))
    apr.unlink()
    st.unlink()


if __name__ == "__main__":
    main()
