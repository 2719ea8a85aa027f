"""Data at scale (issue #13 item 12): peak memory and training speed of `pretrain` on a large prepared
corpus, this tree against a baseline revision, in one run.

  .venv/bin/python benchmarks/bench_data.py [--tokens 200000000] [--baseline REV] [--rounds 2]

- generates (once) a prepared corpus of --tokens training tokens in benchmarks/_work/ (byte-level
  tokens, 4 M per shard; never committed), and prepares the default corpus there;
- peak RSS of `pretrain --steps 20` on the large corpus, each run in its own process (ru_maxrss), and
  of the same run on the default corpus (what the process needs whatever the corpus size);
- tokens/s on the default corpus (the median of the metrics lines after the first);
both for this tree and for `--baseline` (a git worktree of that revision under benchmarks/_work/),
alternating ABBA so that drift of the machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work"
sys.path.insert(0, str(ROOT))

from aprtool.data.prepare import MANIFEST, SHARD_TOKENS, prepare_corpus  # noqa: E402
from aprtool.data.shards import write_shard  # noqa: E402
from aprtool.data.tokenizer import ByteTokenizer  # noqa: E402

MEASURE = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[2:], cwd=sys.argv[1], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def big_corpus(tokens: int) -> Path:
    """A prepared corpus of `tokens` byte-level training tokens (text-like byte statistics, not text)."""
    out = WORK / f"big-{tokens // 1_000_000}M"
    if (out / MANIFEST).is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tok = ByteTokenizer()
    probs = rng.dirichlet(np.full(256, 0.3))  # a skewed byte distribution, like text's
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    for split, count in (("train", tokens), ("val", 1_000_000)):
        for i, start in enumerate(range(0, count, SHARD_TOKENS)):
            n = min(SHARD_TOKENS, count - start)
            name = f"{split}-{i:04d}.tok"
            write_shard(out / name, rng.choice(256, size=n, p=probs).astype(np.uint16), tok.vocab_size)
            splits[split].append({"file": name, "tokens": n})
    manifest = {
        "format": "aprtool-shards", "version": 1, "fingerprint": f"bench-{tokens}",
        "source": {"root": "generated", "files": 0, "default": False}, "tokenizer": tok.info(), "splits": splits,
        "tokens": {k: sum(s["tokens"] for s in v) for k, v in splits.items()},
    }  # fmt: skip
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def baseline_tree(rev: str) -> Path:
    tree = WORK / f"baseline-{rev}"
    if not tree.is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True)
    return tree


def run(tree: Path, args: list[str]) -> int:
    """Peak RSS (KiB) of `python -m aprtool ARGS` run from `tree`."""
    result = subprocess.run([sys.executable, "-c", MEASURE, str(tree), sys.executable, "-m", "aprtool", *args],
                            capture_output=True, text=True, check=True)  # fmt: skip
    code, rss = result.stdout.split()
    if code != "0":
        raise SystemExit(f"{tree}: aprtool {' '.join(args)} exited {code}")
    return int(rss)


def peak_rss_mb(tree: Path, corpus: Path) -> float:
    with tempfile.TemporaryDirectory(dir=WORK) as d:
        args = ["pretrain", "--run-dir", f"{d}/run", "--corpus", str(corpus), "--steps", "20",
                "--eval-tokens", "4096", "--eval-every", "1000"]  # fmt: skip
        return run(tree, args) / 1024


def tokens_per_s(tree: Path, corpus: Path) -> float:
    with tempfile.TemporaryDirectory(dir=WORK) as d:
        args = ["pretrain", "--run-dir", f"{d}/run", "--corpus", str(corpus), "--steps", "50", "--log-every", "10",
                "--eval-every", "1000", "--eval-tokens", "4096"]  # fmt: skip
        run(tree, args)
        lines = [json.loads(x) for x in Path(f"{d}/run/metrics.jsonl").read_text().splitlines()]
        return statistics.median(r["tokens_per_s"] for r in lines[1:] if "tokens_per_s" in r)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=200_000_000)
    parser.add_argument("--baseline", default=None, help="a git revision to compare with (e.g. HEAD~3)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    big = big_corpus(args.tokens)
    default = prepare_corpus(None, WORK / "stdlib-bpe").directory  # the default job: BPE, vocab 4096
    trees = {"this": ROOT} | ({"baseline": baseline_tree(args.baseline)} if args.baseline else {})
    rss: dict[str, list[float]] = {k: [] for k in trees}
    speed: dict[str, list[float]] = {k: [] for k in trees}
    for i in range(args.rounds):
        for name in list(trees) if i % 2 == 0 else list(trees)[::-1]:
            rss[name].append(peak_rss_mb(trees[name], big))
            speed[name].append(tokens_per_s(trees[name], default))
    result: dict[str, object] = {"train_tokens": args.tokens, "baseline": args.baseline,
                                 "this_default_corpus_peak_rss_mb": round(peak_rss_mb(ROOT, default), 1)}  # fmt: skip
    for name in trees:
        result[f"{name}_peak_rss_mb"] = round(max(rss[name]), 1)
        result[f"{name}_tokens_per_s"] = round(statistics.median(speed[name]), 1)
    if args.baseline:
        result["tokens_per_s_ratio"] = round(result["this_tokens_per_s"] / result["baseline_tokens_per_s"], 3)
        result["peak_rss_ratio"] = round(result["this_peak_rss_mb"] / result["baseline_peak_rss_mb"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
