"""A model of the SmolLM-135M shape from outside (issue #24): eval speed against transformers, peak memory of
eval and compress against the model's f32 size, GGUF import against gguf-py alone, compress --calibrate.

  .venv/bin/python benchmarks/bench_foreign.py [--windows 16] [--skip-calibrate]

The model is random (576 hidden, 30 layers, 9 heads / 3 KV, 1,536 FFN, 49,152 rows, tied), saved by
transformers as an f32 folder with a 4,096-token byte-level BPE (the embedding padded past it), and as a GGUF
with Q8_0 matrices written by gguf-py. Every figure is a ratio against a baseline measured in the same run:
- eval forward tokens/s, aprtool vs transformers' LlamaForCausalLM, the same windows and threads, alternated;
- peak RSS (wait4's ru_maxrss of the child) of `aprtool eval` and `aprtool compress` over the f32 size;
- GGUF import (`load_model` of the .gguf: parse, dequantize, un-permute, build) vs gguf-py's reader
  dequantizing every tensor;
- `compress --calibrate` wall time and peak RSS (default 65,536 calibration tokens).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / "benchmarks" / "_work" / "foreign"
SHAPE = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
         "intermediate_size": 1536, "vocab_size": 49152, "max_position_embeddings": 2048,
         "tie_word_embeddings": True}  # fmt: skip


def build(work: Path) -> tuple[Path, Path, Path]:
    from fixtures import foreign as F_

    folder, gguf, corpus = work / "smol", work / "smol.gguf", work / "corpus"
    if not (folder / "model.safetensors").is_file():
        import transformers

        tok = F_.bytelevel_tokenizer(4096)
        cfg = transformers.LlamaConfig(**SHAPE)
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(cfg)
        model.save_pretrained(folder)
        transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                             eos_token="<|end_of_text|>").save_pretrained(folder)  # fmt: skip
        vocab = F_.bytelevel_vocab(tok, "llama-bpe", None, "<|end_of_text|>")
        F_.gguf_from_hf(folder, gguf, vocab, {"proj.weight": "Q8_0"})
    if not corpus.is_dir():
        corpus.mkdir(parents=True)
        for name in F_.TRAIN_FILES + ("heapq.py", "bisect.py", "colorsys.py", "fnmatch.py"):
            (corpus / name).write_text((F_.STDLIB / name).read_text(encoding="utf-8"), encoding="utf-8")
    return folder, gguf, corpus


# A launcher without torch runs each measured command: Linux carries a parent's RSS high-water mark into
# a forked child's ru_maxrss, so the measuring process must be small when it forks.
LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
with open(sys.argv[1], "wb") as out, open(sys.argv[2], "wb") as err:
    proc = subprocess.Popen(sys.argv[3:], stdout=out, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"seconds": time.perf_counter() - start, "rss": usage.ru_maxrss * 1024,
                  "code": os.waitstatus_to_exitcode(status)}))
"""


def rss_of(args: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, stdout) of one aprtool command, from wait4 on that child alone."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "out", Path(tmp) / "err"
        cmd = [sys.executable, "-c", LAUNCHER, str(out), str(err), sys.executable, "-m", "aprtool", *args]
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        if r["code"] != 0:
            raise SystemExit(f"aprtool {' '.join(args)} failed: {err.read_text()[-2000:]}")
        return r["seconds"], r["rss"], out.read_text()


def forward_ratio(folder: Path, windows: int, seq_len: int) -> dict[str, float]:
    import transformers

    from aprtool.model.io import load_model

    ours, _ = load_model(folder)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.randint(0, 4096, (windows, seq_len + 1), generator=torch.Generator().manual_seed(0))
    times = {"aprtool": [], "transformers": []}
    with torch.no_grad():
        for _ in range(3):  # alternated, so both see the same machine state; the first round warms up
            for name, model in (("aprtool", ours), ("transformers", theirs)):
                start = time.perf_counter()
                for i in range(0, windows, 8):
                    batch = ids[i : i + 8]
                    out = model(batch[:, :-1])
                    logits = getattr(out, "logits", out)
                    F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
                times[name].append(time.perf_counter() - start)
    tokens = windows * seq_len
    best = {k: min(v[1:]) for k, v in times.items()}
    return {"aprtool_tok_s": tokens / best["aprtool"], "transformers_tok_s": tokens / best["transformers"],
            "ratio": best["transformers"] / best["aprtool"], "threads": torch.get_num_threads()}  # fmt: skip


def gguf_ratio(gguf_path: Path) -> dict[str, float]:
    import gguf

    from aprtool.model.io import load_model

    start = time.perf_counter()
    reader = gguf.GGUFReader(str(gguf_path))
    for t in reader.tensors:
        gguf.quants.dequantize(t.data, t.tensor_type)
    alone = time.perf_counter() - start
    start = time.perf_counter()
    load_model(gguf_path)
    ours = time.perf_counter() - start
    return {"gguf_py_s": alone, "aprtool_import_s": ours, "ratio": ours / alone}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--skip-calibrate", action="store_true")
    args = parser.parse_args()
    folder, gguf_path, corpus = build(WORK)
    f32 = (folder / "model.safetensors").stat().st_size
    results: dict[str, object] = {"f32_bytes": f32, "gguf_bytes": gguf_path.stat().st_size}
    results["forward"] = forward_ratio(folder, args.windows, args.seq_len)
    print(json.dumps({"forward": results["forward"]}), file=sys.stderr, flush=True)  # each figure as it comes
    results["gguf_import"] = gguf_ratio(gguf_path)
    print(json.dumps({"gguf_import": results["gguf_import"]}), file=sys.stderr, flush=True)
    s, rss, out = rss_of(["eval", str(folder), "--corpus", str(corpus), "--max-tokens", "2048", "--json"])
    results["eval"] = {
        "seconds": s,
        "peak_rss": rss,
        "rss_over_f32": rss / f32,
        "bits_per_byte": json.loads(out)["bits_per_byte"],
    }
    dst = WORK / "smol.int6.apr"
    s, rss, _ = rss_of(["compress", str(folder), "-o", str(dst), "--force", "--json"])
    results["compress"] = {"seconds": s, "peak_rss": rss, "rss_over_f32": rss / f32, "bytes": dst.stat().st_size}
    if not args.skip_calibrate:
        s, rss, out = rss_of(["compress", str(folder), "-o", str(WORK / "smol.gptq.apr"), "--force", "--calibrate",
                              "--calib-data", str(corpus), "--json"])  # fmt: skip
        rows = json.loads(out)["calibration"].get("row_hessians")
        results["compress_calibrate"] = {"seconds": s, "peak_rss": rss, "rss_over_f32": rss / f32, "row_hessians": rows}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
