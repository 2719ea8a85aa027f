"""Codec benchmark on the same int6 symbols: size vs the order-0 bound, speed vs LZMA-9e.

    .venv/bin/python benchmarks/bench_compress.py [--model PATH.apr ...] [--synthetic-mparams 25]

For each model (trained `pretrain` output given with --model, plus a synthetic float model built
here with heavy-tailed, per-row-scaled weights like a trained LM's) it measures:
  - bytes per codec (rANS, LZMA-9e, zstd-22, raw, and brotli-11 when `brotli` is installed),
    the symbols (rANS frequency tables included) against the order-0 entropy of the symbols, scales apart;
  - end-to-end `compress` time (read, quantize, code, write; no comparison) for rans vs lzma;
  - decode: every encoded tensor decoded and dequantized to float32, in M weights/s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from aprtool import open_apr, write_apr
from aprtool.codecs import dequantize, is_encoded, order0_entropy_bits, quantize
from aprtool.codecs.quant import Clip
from aprtool.ops.compress import CompressOptions, compress_file

WORK = Path(__file__).resolve().parent / "_work"


def synthetic_model(path: Path, mparams: float, seed: int = 0) -> None:
    """A Llama-shaped float model whose weights look trained: Student-t tails, varied row scales."""
    rng = np.random.default_rng(seed)
    hidden, vocab = 512, 8192
    inter = 1408
    per_layer = 4 * hidden * hidden + 3 * hidden * inter
    layers = max(1, round((mparams * 1e6 - vocab * hidden) / per_layer))

    def w(rows: int, cols: int) -> np.ndarray:
        row_scale = rng.lognormal(mean=-3.5, sigma=0.4, size=(rows, 1))
        return (rng.standard_t(df=5, size=(rows, cols)) * row_scale).astype(np.float32)

    tensors = {
        "model.embed_tokens.weight": w(vocab, hidden),
        "model.norm.weight": np.ones(hidden, np.float32),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors |= {
            p + "self_attn.q_proj.weight": w(hidden, hidden),
            p + "self_attn.k_proj.weight": w(hidden, hidden),
            p + "self_attn.v_proj.weight": w(hidden, hidden),
            p + "self_attn.o_proj.weight": w(hidden, hidden),
            p + "mlp.gate_proj.weight": w(inter, hidden),
            p + "mlp.up_proj.weight": w(inter, hidden),
            p + "mlp.down_proj.weight": w(hidden, inter),
            p + "input_layernorm.weight": np.ones(hidden, np.float32),
            p + "post_attention_layernorm.weight": np.ones(hidden, np.float32),
        }
    write_apr(path, tensors, {"name": "synthetic", "architecture": "LlamaForCausalLM"})


def brotli_bytes(path: Path, clip: str, min_elements: int) -> tuple[int | None, float | None]:
    """brotli-11 on the same symbols (one int8 byte per weight), the symbols' bytes alone."""
    try:
        import brotli
    except ImportError:
        return None, None
    total, seconds = 0, 0.0
    with open_apr(path) as f:
        for name in f.names():
            info = f.info(name)
            if len(info.shape) < 2 or info.numel < min_elements:
                continue
            q = quantize(np.asarray(f.numpy(name), np.float32), Clip.parse(clip))
            start = time.perf_counter()
            total += len(brotli.compress(q.symbols.tobytes(), quality=11))
            seconds += time.perf_counter() - start
    return total, seconds


def decode_rate(path: Path) -> float:
    with open_apr(path) as f:
        names = [n for n in f.names() if is_encoded(f.info(n))]
        weights = sum(f.info(n).numel for n in names)
        start = time.perf_counter()
        for n in names:
            dequantize(f, n)
        return weights / (time.perf_counter() - start) / 1e6


def bench(path: Path, clip: str) -> dict:
    out = WORK / (path.stem + ".int6.apr")
    # every codec on the same symbols, one thread so that the per-codec timings are clean
    report = compress_file(path, out, CompressOptions(clip=clip, compare=True, workers=1, force=True))
    timings = {}
    for codec, repeats in (("rans", 5), ("lzma", 1)):  # median of 5 for the fast one: timer noise
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            options = CompressOptions(codec=codec, clip=clip, compare=False, force=True)
            compress_file(path, WORK / f"{path.stem}.{codec}.apr", options)
            runs.append(time.perf_counter() - start)
        timings[codec] = sorted(runs)[len(runs) // 2]
    rans_file = WORK / f"{path.stem}.rans.apr"
    codecs = {k: {"bytes": v["bytes"], "symbol_bytes": v["symbol_bytes"], "over_entropy_pct": v["over_entropy_pct"]}
              for k, v in report["codecs"].items()}  # fmt: skip
    b_bytes, b_seconds = brotli_bytes(path, clip, 65_536)
    if b_bytes is not None:
        codecs["brotli-11"] = {
            "symbol_bytes": b_bytes,
            "over_entropy_pct": round((b_bytes / report["entropy_bound_bytes"] - 1) * 100, 4),
        }
    symbols_bits = sum(r.get("entropy_bits_per_weight", 0) * np.prod(r["shape"]) for r in report["tensors"])
    return {
        "model": str(path.name),
        "params": report["params"],
        "quantized_params": report["quantized_params"],
        "clip": clip,
        "entropy_bits_per_weight": round(symbols_bits / report["quantized_params"], 4),
        "entropy_bound_bytes": report["entropy_bound_bytes"],
        "codecs": codecs,
        "rans_over_bound_ratio": round(codecs["rans"]["bytes"] / report["entropy_bound_bytes"], 6),
        "rans_smallest": all(codecs["rans"]["bytes"] < v["bytes"] for k, v in codecs.items() if k != "rans"),
        "compress_rans_s": round(timings["rans"], 3),
        "compress_lzma_s": round(timings["lzma"], 3),
        "lzma_over_rans_time": round(timings["lzma"] / timings["rans"], 1),
        "decode_mweights_s": round(decode_rate(rans_file), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, action="append", default=[])
    parser.add_argument("--synthetic-mparams", type=float, default=25)
    parser.add_argument("--clip", default="std:12.85")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    models = list(args.model)
    if args.synthetic_mparams:
        path = WORK / "synthetic.apr"
        synthetic_model(path, args.synthetic_mparams)
        models.append(path)
    results = [bench(m, args.clip) for m in models]
    print(json.dumps(results, indent=2))
    _ = order0_entropy_bits  # the bound is computed per tensor inside compress_file


if __name__ == "__main__":
    main()
