"""Training-loop overhead and checkpoint cost, as ratios against plain PyTorch in the same run.

  .venv/bin/python benchmarks/bench_pretrain.py [--size small] [--steps 30]

- tokens/s of `pretrain` (no eval, no checkpoint inside the timed steps) vs a bare PyTorch loop
  of the same model, batch, optimizer and data;
- checkpoint save (write + fsync + rename + verify) vs `torch.save` of the same state + fsync;
- checkpoint stall at the default cadence (one save every 10 minutes) as a share of wall time;
- stall per save inside a training loop: the background save (snapshot at the step boundary, write +
  fsync + verify on a worker thread) vs the synchronous write it replaced, both against the same loop
  without saves (issue #13 item 11: <= 25 %).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from aprtool.data.loader import BatchLoader, LoaderState
from aprtool.data.prepare import prepare_corpus
from aprtool.model.llama import LlamaForCausalLM
from aprtool.train.checkpoint import CheckpointDir, verify_checkpoint, write_checkpoint
from aprtool.train.common import param_groups
from aprtool.train.config import TrainConfig
from aprtool.train.loop import pretrain

WORK = Path(__file__).resolve().parent / "_work"


def bare_loop(cfg: TrainConfig, tokens, vocab: int, steps: int) -> float:
    """tokens/s of the textbook loop: same model, AdamW, clipping, batches."""
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(cfg.model_config(vocab))
    groups, _ = param_groups(model, cfg.weight_decay)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    loader = BatchLoader(tokens, cfg.seq_len, cfg.batch_size, cfg.seed, LoaderState())
    params = [p for g in groups for p in g["params"]]
    for i in range(steps + 2):
        if i == 2:  # two warm-up steps, as in pretrain's own measurement window
            start = time.perf_counter()
        x, y = loader.next_batch()
        loss = F.cross_entropy(model(x).float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * cfg.batch_size * cfg.seq_len / (time.perf_counter() - start)


def aprtool_loop(cfg_over: dict, steps: int, run: Path) -> float:
    over = {**cfg_over, "steps": steps + 2, "log_every": 1, "eval_every": 10**9, "checkpoint_every": 0}
    pretrain(run, over, log=lambda _m: None)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    t = [r["wall_seconds"] for r in lines]
    tokens = lines[-1]["tokens_seen"] - lines[1]["tokens_seen"]
    return tokens / (t[-1] - t[1])  # excludes the first two steps and the final eval/model write


def checkpoint_costs(cfg: TrainConfig, vocab: int, repeats: int) -> dict:
    model = LlamaForCausalLM(cfg.model_config(vocab))
    groups, names = param_groups(model, cfg.weight_decay)
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    loss = model(torch.zeros(1, 8, dtype=torch.long)).sum()
    loss.backward()
    opt.step()  # allocates the moments
    ours, verify, theirs = [], [], []
    with tempfile.TemporaryDirectory(dir=WORK) as d:
        for _ in range(repeats):
            start = time.perf_counter()
            count = write_checkpoint(Path(d) / "c.apr", model.weights(), opt, names, {"step": 1}, {"name": "bench"})
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            verify_checkpoint(Path(d) / "c.apr", count)  # off the training thread in pretrain
            verify.append(time.perf_counter() - start)
            start = time.perf_counter()
            with open(Path(d) / "c.pt", "wb") as f:
                torch.save({"model": model.state_dict(), "optim": opt.state_dict(),
                            "rng": torch.get_rng_state()}, f)  # fmt: skip
                f.flush()
                os.fsync(f.fileno())
            theirs.append(time.perf_counter() - start)
        size = (Path(d) / "c.apr").stat().st_size
    save, tsave = statistics.median(ours), statistics.median(theirs)
    return {
        "checkpoint_bytes": size,
        "save_s": round(save, 3),
        "torch_save_s": round(tsave, 3),
        "save_ratio_vs_torch_save": round(save / tsave, 3),
        "background_verify_s": round(statistics.median(verify), 3),
        "stall_at_10_min_cadence_pct": round(100 * save / (600 + save), 4),
    }


def save_stall(cfg: TrainConfig, tokens, vocab: int, steps: int, every: int, rounds: int = 3) -> dict:
    """What a save costs the training thread. Blocking time: how long the save call holds the thread,
    for the synchronous write it replaced (snapshot + write + fsync; verification aside) and for the
    background save the engine uses (snapshot + hand-off; waits if the previous save is still in flight).
    Loop overhead: (loop with background saves - loop without) / saves, which also counts the worker's
    competition for the cores; noisier, reported as a check."""
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(cfg.model_config(vocab))
    groups, names = param_groups(model, cfg.weight_decay)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    loader = BatchLoader(tokens, cfg.seq_len, cfg.batch_size, cfg.seed, LoaderState())
    blocking: dict[str, list[float]] = {"sync": [], "background": []}

    def loop(mode: str | None, save) -> float:
        start = time.perf_counter()
        for i in range(1, steps + 1):
            x, y = loader.next_batch()
            F.cross_entropy(model(x).float().flatten(0, 1), y.flatten()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if mode and i % every == 0:
                t = time.perf_counter()
                save(i)
                blocking[mode].append(time.perf_counter() - t)
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory(dir=WORK) as d:
        ckpts = CheckpointDir(Path(d), keep_last=2, log=print)

        def background(i: int) -> None:
            ckpts.save(ckpts.step_path(i), model.weights(), opt, names, {"step": i}, {"name": "bench"})

        def synchronous(i: int) -> None:
            write_checkpoint(Path(d) / "sync.apr", model.weights(), opt, names, {"step": i}, {"name": "bench"})

        loop(None, None)  # warm-up (allocates the moments, fills caches)
        totals: dict[str, list[float]] = {"none": [], "sync": [], "background": []}
        for _ in range(rounds):
            for mode, save in (("none", None), ("sync", synchronous), ("background", background)):
                totals[mode].append(loop(mode if save else None, save))
                ckpts.finish()
        size = ckpts.step_path(steps).stat().st_size
    sync, bg = statistics.median(blocking["sync"]), statistics.median(blocking["background"])
    saves = steps // every
    base = statistics.median(totals["none"])
    return {
        "stall_checkpoint_bytes": size,
        "stall_saves": saves * rounds,
        "step_s": round(base / steps, 4),
        "sync_save_blocking_s": round(sync, 4),
        "background_save_blocking_s": round(bg, 4),
        "background_vs_sync_blocking": round(bg / sync, 3),
        "background_loop_overhead_per_save_s": round((statistics.median(totals["background"]) - base) / saves, 4),
        "sync_loop_overhead_per_save_s": round((statistics.median(totals["sync"]) - base) / saves, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="small")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--only-stall", action="store_true", help="only the save stall (issue #13 item 11)")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    over = {"size": args.size}
    cfg = TrainConfig().merged(over).validate()
    corpus = prepare_corpus(None, WORK / "stdlib-bpe")  # the default job: BPE, vocab 4096
    tokens = corpus.tokens("train")
    vocab = corpus.manifest["tokenizer"]["vocab_size"]
    over["corpus"] = str(corpus.directory)
    stall = save_stall(cfg, tokens, vocab, steps=40, every=5)
    if args.only_stall:
        print(json.dumps(stall, indent=2))
        return
    ours, bare = [], []
    for i in range(args.rounds):  # ABBA order: drift of the machine and rests between runs hit both alike
        for which in ("ours", "bare") if i % 2 == 0 else ("bare", "ours"):
            if which == "ours":
                with tempfile.TemporaryDirectory(dir=WORK) as d:
                    ours.append(aprtool_loop(over, args.steps, Path(d) / f"run{i}"))
            else:
                bare.append(bare_loop(cfg, tokens, vocab, args.steps))
    ours, bare = statistics.median(ours), statistics.median(bare)
    result = {
        "size": args.size,
        "tokens_per_step": cfg.batch_size * cfg.seq_len,
        "pretrain_tokens_per_s": round(ours, 1),
        "bare_pytorch_tokens_per_s": round(bare, 1),
        "ratio": round(ours / bare, 3),
        **checkpoint_costs(cfg, vocab, args.repeats),
        **stall,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
