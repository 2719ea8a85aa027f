"""Real data in (issue #25): preparing a parquet corpus against today's text path on the same documents, and
training from memory-mapped modded-nanogpt shards against aprtool's own prepared shards of the same tokens.

  .venv/bin/python benchmarks/bench_real_data.py [--mb 200] [--steps 30] [--rounds 2]

- generates (once, in benchmarks/_work/real-data-NNN/) documents of stdlib text, --mb MB in all, written as
  a directory of text files (one document each: today's path) and as one parquet file (a row each);
- prepares each with the byte tokenizer (so tokens = bytes: 200 MB are 200 M tokens, and the reading path,
  not the tokenizer, is what is compared), each in its own process: seconds and peak RSS (ru_maxrss);
- writes the prepared training tokens again as modded-nanogpt shards and runs `pretrain --steps N` on both
  (the `tiny` preset), comparing tokens/s (the median of the metrics lines after the first);
rounds alternate ABBA so that drift of the machine hits both alike. Prints one JSON document.
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

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work"
sys.path.insert(0, str(ROOT))

MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
print(code, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""
PREPARE = "from pathlib import Path; import sys; from aprtool.data.prepare import prepare_corpus; " \
          "prepare_corpus(Path(sys.argv[1]), Path(sys.argv[2]), tokenizer='bytes', val_fraction=0.01)"  # fmt: skip


def documents(megabytes: int) -> Path:
    """The same documents as text files and as one parquet file (64 KB documents of stdlib text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fixtures.foreign import STDLIB

    out = WORK / f"real-data-{megabytes}"
    if (out / "docs.parquet").is_file():
        return out
    (out / "text").mkdir(parents=True, exist_ok=True)
    source = "".join(p.read_text(encoding="utf-8") for p in sorted(STDLIB.glob("*.py"))[:200])
    size, docs, i = 64 * 1024, [], 0
    while len(docs) * size < megabytes * 1_000_000:
        start = (i * 7919) % (len(source) - size)
        docs.append(f"# document {i}\n" + source[start : start + size])
        i += 1
    for n, doc in enumerate(docs):
        (out / "text" / f"doc-{n:06d}.txt").write_text(doc, encoding="utf-8")
    pq.write_table(pa.table({"text": docs}), out / "docs.parquet", row_group_size=256)
    return out


def measured(*command: str) -> tuple[float, int]:
    r = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, cwd=ROOT)
    code, seconds, rss = r.stdout.split()
    if code != "0":
        raise SystemExit(f"{command}: exit {code}: {r.stderr[-2000:]}")
    return float(seconds), int(rss) * 1024


def prepare(source: Path, out: Path) -> tuple[float, int]:
    subprocess.run(["rm", "-rf", str(out)], check=True)
    return measured(sys.executable, "-c", PREPARE, str(source), str(out))


def nanogpt_copy(prepared: Path, out: Path) -> Path:
    """The prepared corpus's tokens again, as modded-nanogpt shards."""
    from aprtool.data.prepare import load_prepared

    corpus = load_prepared(prepared)
    out.mkdir(parents=True, exist_ok=True)
    for side in ("train", "val"):
        for i, path in enumerate(corpus.shard_paths(side)):
            tokens = np.fromfile(path, "<u2", offset=32)
            header = np.zeros(256, "<i4")
            header[:3] = 20240520, 1, len(tokens)
            (out / f"fineweb_{side}_{i:06d}.bin").write_bytes(header.tobytes() + tokens.tobytes())
    return out


def tokens_per_second(corpus: Path, run_dir: Path, steps: int) -> float:
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    command = [sys.executable, "-m", "aprtool", "pretrain", "--run-dir", str(run_dir), "--corpus", str(corpus),
               "--tokenizer", "bytes", "--size", "tiny", "--steps", str(steps), "--log-every", "5",
               "--eval-every", "1000", "--eval-tokens", "4096"]  # fmt: skip
    r = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"pretrain: exit {r.returncode}: {r.stderr[-2000:]}")
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [x["tokens_per_s"] for x in lines if x.get("tokens_per_s")][1:]
    return statistics.median(speeds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    work = documents(args.mb)
    timings: dict[str, list[tuple[float, int]]] = {"text": [], "parquet": []}
    for r in range(args.rounds):
        for kind in ("text", "parquet") if r % 2 == 0 else ("parquet", "text"):
            source = work / "text" if kind == "text" else work / "docs.parquet"
            timings[kind].append(prepare(source, work / f"prepared-{kind}"))
            print(kind, timings[kind][-1], file=sys.stderr)
    shards = nanogpt_copy(work / "prepared-text", work / "nanogpt")
    speeds: dict[str, list[float]] = {"prepared": [], "nanogpt": []}
    for r in range(args.rounds):
        for kind in ("prepared", "nanogpt") if r % 2 == 0 else ("nanogpt", "prepared"):
            corpus = work / "prepared-text" if kind == "prepared" else shards
            speeds[kind].append(tokens_per_second(corpus, work / f"run-{kind}", args.steps))
            print(kind, speeds[kind][-1], file=sys.stderr)
    text_s = min(t for t, _ in timings["text"])
    parquet_s = min(t for t, _ in timings["parquet"])
    manifest = json.loads((work / "prepared-parquet" / "manifest.json").read_text())
    result = {
        "megabytes": args.mb, "tokens": sum(manifest["tokens"].values()), "when": time.strftime("%Y-%m-%d"),
        "prepare": {"text_s": text_s, "parquet_s": parquet_s, "throughput_ratio": text_s / parquet_s,
                    "text_peak_rss": max(m for _, m in timings["text"]),
                    "parquet_peak_rss": max(m for _, m in timings["parquet"])},
        "train": {"prepared_tok_s": statistics.median(speeds["prepared"]),
                  "nanogpt_tok_s": statistics.median(speeds["nanogpt"]),
                  "ratio": statistics.median(speeds["nanogpt"]) / statistics.median(speeds["prepared"])},
    }  # fmt: skip
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
