"""Fuzz targets for every reader, run under an address-space limit (issue #11).

    python tests/fuzz_harness.py TARGET --cases N [--seed S] [--limit-mb 1024]

TARGET is `apr` (structure, encoded payloads, verify --deep, decoding), `model` (Llama metadata and
tensors as eval/export/distill open them), `safetensors` (the import reader), `gguf` (inspect --stats
and verify --deep of a GGUF file), `hf` (a Hugging Face folder: config.json, the index, the shards, as
inspect, verify and every command's model opener read it), `run` (a run directory's status.json,
config.json and metrics.jsonl as `runs`, `plot` and --resume read them) or `tokenizer` (a model's
embedded tokenizer text as eval, calibrate and export --to hf|gguf load it). Each case mutates a valid seed (a
file, or one of a folder's files); after an APR mutation both CRCs and every per-tensor checksum are
recomputed, so the case reaches the deep checks and decoders instead of stopping at a checksum. A case passes
when the reader returns or raises an AprError; any other exception is what the CLI would report as exit 1 (a
bug), and a case slower than 2 s is a failure too. The process runs under RLIMIT_AS, so an allocation sized by
a file's claim fails as MemoryError (a bug) or kills the process (a signal death): both are caught by the
caller. Prints one JSON summary line; exit 0 only if every case passed.
"""

from __future__ import annotations

import argparse
import base64
import json
import lzma
import random
import resource
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import xxhash

sys.path.insert(0, str(Path(__file__).parent))
from _builders import (  # noqa: E402
    ENTRY_FIELD_CODES,
    HEADER_FIELDS,
    NUMERIC_HEADER_FIELDS,
    entries,
    fix_crcs,
    metadata_bytes,
    replace_metadata,
    set_entry,
    set_header,
)

SLOW_SECONDS = 2.0
INTERESTING = [0, 1, 2, 3, 7, 31, 32, 63, 64, 127, 128, 255, 256, 4095, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1,
               2**32, 2**40, 2**48, 2**62, 2**63 - 1, 2**63, 2**64 - 1]  # fmt: skip
JSON_VALUES = [0, -1, 1, 2.5, 1e300, 2**40, 2**64, True, None, "", "x", "../../etc/passwd", [], [1], {}, {"a": 1}]


# ---------------------------------------------------------------- seeds


def _apr_seeds(d: Path) -> list[bytes]:
    import aprtool
    from aprtool.ops.compress import CompressOptions, compress_file

    rng = np.random.default_rng(0)
    plain = d / "plain.apr"
    aprtool.write_apr(
        plain,
        {
            "w": rng.normal(size=(48, 40)).astype(np.float32),
            "b": np.arange(5, dtype=np.int32),
            "h": np.ones(3, np.float16),
        },
        {"name": "seed", "n": 3},
    )
    seeds = [plain.read_bytes()]
    for codec in ("rans", "lzma", "zstd", "raw"):
        out = d / f"{codec}.apr"
        compress_file(plain, out, CompressOptions(codec=codec, min_elements=16, compare=False))
        seeds.append(out.read_bytes())
    vectors = Path(__file__).resolve().parents[1] / "formats" / "vectors"
    seeds += [p.read_bytes() for p in sorted(vectors.glob("*.apr"))]
    return seeds


def _model_seeds(d: Path) -> list[bytes]:
    import torch

    import aprtool
    from aprtool.model.llama import PRESETS, LlamaForCausalLM

    cfg = PRESETS["tiny"].with_overrides(vocab_size=257, num_layers=1)
    torch.manual_seed(0)
    meta = {"architecture": "LlamaForCausalLM", **cfg.to_metadata(),
            "tokenizer": {"kind": "bytes", "vocab_size": 257, "eos_id": 256, "file": None}}  # fmt: skip
    aprtool.write_apr(d / "model.apr", LlamaForCausalLM(cfg).weights(), meta)
    from aprtool.ops.compress import CompressOptions, compress_file

    compress_file(d / "model.apr", d / "model.int6.apr", CompressOptions(min_elements=1024, compare=False))
    return [(d / "model.apr").read_bytes(), (d / "model.int6.apr").read_bytes()]


def _safetensors_seeds(d: Path) -> list[bytes]:
    import torch
    from safetensors.torch import save_file

    tensors = {"a": torch.randn(8, 4), "b": torch.arange(6, dtype=torch.int32), "c": torch.randn(3).bfloat16()}
    save_file(tensors, str(d / "s.safetensors"), metadata={"k": "v"})
    return [(d / "s.safetensors").read_bytes()]


def _gguf_seeds(d: Path) -> list[bytes]:
    from aprtool.interop.export import export_file

    _model_seeds(d)
    seeds = []
    for dtype in ("f32", "f16"):
        export_file(d / "model.apr", d / f"{dtype}.gguf", "gguf", dtype=dtype)
        seeds.append((d / f"{dtype}.gguf").read_bytes())
    return seeds


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _hf_seeds(d: Path) -> list[dict[str, bytes]]:
    from aprtool.interop.export import export_file

    _model_seeds(d)
    export_file(d / "model.apr", d / "hf", "hf")
    single = _files(d / "hf")
    sharded = {k: v for k, v in single.items() if k != "model.safetensors"}
    shard = "model-00001-of-00001.safetensors"
    sharded[shard] = single["model.safetensors"]
    (n,) = struct.unpack_from("<Q", sharded[shard], 0)
    names = [k for k in json.loads(sharded[shard][8 : 8 + n]) if k != "__metadata__"]
    index = {"metadata": {"total_size": len(sharded[shard])}, "weight_map": dict.fromkeys(names, shard)}
    sharded["model.safetensors.index.json"] = json.dumps(index).encode()
    return [single, sharded]


def _run_seeds(d: Path) -> list[dict[str, bytes]]:
    import sysconfig

    from aprtool.data.prepare import prepare_corpus
    from aprtool.train.loop import pretrain

    text = d / "text"
    text.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in ("textwrap.py", "shlex.py", "glob.py", "this.py"):
        (text / name).write_bytes((stdlib / name).read_bytes())
    prepare_corpus(text, d / "shards", tokenizer="bytes")
    cfg = {"size": "tiny", "num_layers": 1, "tokenizer": "bytes", "seq_len": 16, "batch_size": 2, "steps": 4,
           "eval_every": 2, "log_every": 1, "eval_tokens": 128, "corpus": str(d / "shards")}  # fmt: skip
    pretrain(d / "run", cfg, log=lambda _m: None)
    return [{k: v for k, v in _files(d / "run").items() if not k.startswith("data/") and k != "model.apr"}]


def _tokenizer_seeds(d: Path) -> list[bytes]:
    import torch

    import aprtool
    from aprtool.data.tokenizer import BpeTokenizer, HfTokenizer
    from aprtool.model.llama import PRESETS, LlamaForCausalLM

    text = [json.dumps(JSON_VALUES) * 20, Path(__file__).read_text()]
    bpe = BpeTokenizer.train(text, 300)
    cfg = PRESETS["tiny"].with_overrides(vocab_size=bpe.vocab_size, num_layers=1)
    torch.manual_seed(0)
    weights = LlamaForCausalLM(cfg).weights()
    seeds = []
    for tok in (bpe, HfTokenizer.from_entry(bpe.to_json(), {"eos_id": bpe.eos_id}, "seed")):
        info = tok.info() | {"file": "tokenizer.json", "sha256": _sha256(tok.to_json()), "json": tok.to_json()}
        path = d / f"{tok.kind}.apr"
        aprtool.write_apr(path, weights, {"architecture": "LlamaForCausalLM", **cfg.to_metadata(), "tokenizer": info})
        seeds.append(path.read_bytes())
    return seeds


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- JSON side files


def mutate_json_text(data: bytes, rnd: random.Random) -> bytes:
    """A JSON side file mutated: a value replaced somewhere inside, nested very deep, a huge number, bytes
    flipped (not JSON, not UTF-8), or cut."""
    kind = rnd.choice(["value", "value", "value", "deep", "number", "bytes", "cut"])
    if kind == "deep":
        return b"[" * rnd.choice([100, 1000, 100_000]) + b"]" * rnd.choice([0, 100_000])
    if kind == "number":
        return b'{"step": 1' + b"9" * rnd.choice([20, 400, 5000]) + b', "loss": 1e999}'
    if kind == "bytes":
        buf = bytearray(data or b"{}")
        _mutate_bytes(buf, rnd)
        return bytes(buf)
    if kind == "cut":
        return data[: rnd.randrange(len(data) + 1)]
    try:
        value = json.loads(data)
    except ValueError:
        return data
    return json.dumps(_replace_inside(value, rnd)).encode()


def _replace_inside(node, rnd: random.Random, depth: int = 0):
    keys = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
    if not keys or depth > 5 or rnd.random() < 0.2:
        return rnd.choice(JSON_VALUES + [rnd.choice(INTERESTING), [[[[]]]], "\x00/..", "\u202e"])
    key = rnd.choice(keys)
    node[key] = _replace_inside(node[key], rnd, depth + 1)
    return node


def mutate_folder(seed: dict[str, bytes], rnd: random.Random) -> dict[str, bytes]:
    """One file of a folder mutated (a safetensors file as the safetensors target does), or one removed."""
    files = dict(seed)
    name = rnd.choice(sorted(files))
    if rnd.random() < 0.05:
        del files[name]
    elif name.endswith(".safetensors"):
        files[name] = mutate_safetensors(files[name], rnd)
    elif name.endswith(".jsonl"):
        lines = files[name].splitlines(keepends=True) or [b"{}\n"]
        i = rnd.randrange(len(lines))
        lines[i] = mutate_json_text(lines[i].rstrip(b"\n"), rnd) + rnd.choice([b"\n", b""])
        files[name] = b"".join(lines)
    elif name.endswith(".apr"):
        files[name] = mutate_apr(files[name], rnd)
    else:
        files[name] = mutate_json_text(files[name], rnd)
    return files


def mutate_tokenizer(seed: bytes, rnd: random.Random) -> bytes:
    """The embedded tokenizer text (or its entry) mutated, its sha256 recomputed (mostly), the file re-sealed."""
    buf = bytearray(seed)
    meta = json.loads(metadata_bytes(buf))
    info = meta["tokenizer"]
    choice = rnd.random()
    if choice < 0.7:  # the text, stored plain (`json`) or packed again (`json_xz`)
        text = lzma.decompress(base64.b64decode(info.pop("json_xz"))).decode()
        text = mutate_json_text(text.encode(), rnd).decode("utf-8", "replace")
        if rnd.random() < 0.9:
            info["sha256"] = _sha256(text)
        if rnd.random() < 0.5:
            info["json"] = text
        else:
            info["json_xz"] = base64.b64encode(lzma.compress(text.encode(), format=lzma.FORMAT_XZ, preset=0)).decode()
    elif choice < 0.8:  # the packed bytes themselves
        packed = bytearray(base64.b64decode(info["json_xz"]))
        _mutate_bytes(packed, rnd)
        info["json_xz"] = base64.b64encode(packed).decode()
    else:
        key = rnd.choice(["kind", "vocab_size", "eos_id", "bos_id", "add_bos", "json", "json_xz", "sha256", "file"])
        info[key] = rnd.choice(JSON_VALUES + [rnd.choice(INTERESTING), "bpe", "hf", "bytes"])
    return bytes(reseal(replace_metadata(buf, json.dumps(meta, separators=(",", ":")).encode())))


# ---------------------------------------------------------------- APR mutations (checksums re-sealed)


def reseal(buf: bytearray) -> bytearray:
    """Recompute every per-tensor xxh3_64 record and both CRCs, so only the planted defect remains."""
    try:
        meta = json.loads(metadata_bytes(buf))
        records = meta["aprtool"]["tensors"]
        data = struct.unpack_from("<Q", buf, 32)[0]
        for e in entries(buf):
            name = e.name.decode()
            if isinstance(records.get(name), dict):
                records[name]["xxh3_64"] = xxhash.xxh3_64_hexdigest(
                    bytes(buf[data + e.offset : data + e.offset + e.size])
                )
        buf = replace_metadata(buf, json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode())
    except Exception:  # the mutation broke what reseal needs: the file still gets fresh CRCs
        pass
    return fix_crcs(buf)


def _mutate_bytes(buf: bytearray, rnd: random.Random) -> None:
    for _ in range(rnd.randint(1, 8)):
        pos = rnd.randrange(len(buf))
        buf[pos] = rnd.choice([0, 0xFF, 0x7F, 0x80, rnd.randrange(256), buf[pos] ^ (1 << rnd.randrange(8))])


def _mutate_payload(buf: bytearray, rnd: random.Random) -> None:
    data = struct.unpack_from("<Q", buf, 32)[0]
    stored = [e for e in entries(buf) if e.size]
    if stored:
        e = rnd.choice(stored)
        for _ in range(rnd.randint(1, 4)):
            buf[data + e.offset + rnd.randrange(e.size)] = rnd.randrange(256)


def _mutate_header(buf: bytearray, rnd: random.Random) -> None:
    name = rnd.choice(NUMERIC_HEADER_FIELDS)
    bits = struct.calcsize("<" + HEADER_FIELDS[name][1]) * 8
    set_header(buf, name, rnd.choice([v for v in INTERESTING if v < 2**bits]))


def _mutate_index(buf: bytearray, rnd: random.Random) -> None:
    e = rnd.choice(entries(buf))
    field = rnd.choice([f for f in ENTRY_FIELD_CODES if f != "name_len" and (f != "dim" or e.ndim)])
    bits = struct.calcsize("<" + ENTRY_FIELD_CODES[field]) * 8
    set_entry(
        buf, e.name.decode(), field, rnd.choice([v for v in INTERESTING if v < 2**bits]), rnd.randrange(max(e.ndim, 1))
    )


def _mutate_metadata(buf: bytearray, rnd: random.Random) -> bytearray:
    meta = json.loads(metadata_bytes(buf))

    def walk(node, depth=0):
        keys = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
        if not keys or depth > 4:
            return
        key = rnd.choice(keys)
        if rnd.random() < 0.5 and isinstance(node[key], dict | list):
            walk(node[key], depth + 1)
        else:
            node[key] = rnd.choice(JSON_VALUES + [rnd.choice(INTERESTING)])

    walk(meta)
    return replace_metadata(buf, json.dumps(meta, separators=(",", ":")).encode())


def mutate_apr(seed: bytes, rnd: random.Random) -> bytes:
    buf = bytearray(seed)
    kind = rnd.choice(["bytes", "payload", "payload", "header", "index", "index", "metadata", "metadata", "cut"])
    try:
        if kind == "bytes":
            _mutate_bytes(buf, rnd)
        elif kind == "payload":
            _mutate_payload(buf, rnd)
        elif kind == "header":
            _mutate_header(buf, rnd)
        elif kind == "index":
            _mutate_index(buf, rnd)
        elif kind == "metadata":
            buf = _mutate_metadata(buf, rnd)
        else:
            buf = buf[: rnd.randrange(len(buf))] if rnd.random() < 0.5 else buf + bytes(rnd.randrange(1, 200))
    except Exception:  # a seed part the mutation needs is missing (e.g. no tensors): mutate bytes instead
        _mutate_bytes(buf, rnd)
    return bytes(reseal(buf) if rnd.random() < 0.9 else buf)


def mutate_safetensors(seed: bytes, rnd: random.Random) -> bytes:
    (n,) = struct.unpack_from("<Q", seed, 0)
    header = json.loads(seed[8 : 8 + n])
    data = bytearray(seed[8 + n :])
    kind = rnd.choice(["value", "value", "bytes", "length", "cut"])
    if kind == "value":
        name = rnd.choice(list(header))
        entry = header[name]
        key = rnd.choice(list(entry)) if isinstance(entry, dict) and entry else None
        if key is not None and rnd.random() < 0.5 and isinstance(entry[key], list) and entry[key]:
            entry[key][rnd.randrange(len(entry[key]))] = rnd.choice(INTERESTING + JSON_VALUES)
        elif key is not None:
            entry[key] = rnd.choice(JSON_VALUES + ["F8_E4M3", "BF16", "I16", "U64", "F64"] + INTERESTING)
        else:
            header[name] = rnd.choice(JSON_VALUES)
    text = json.dumps(header).encode()
    out = bytearray(struct.pack("<Q", len(text)) + text + data)
    if kind == "bytes":
        _mutate_bytes(out, rnd)
    elif kind == "length":
        struct.pack_into("<Q", out, 0, rnd.choice(INTERESTING))
    elif kind == "cut":
        out = out[: rnd.randrange(len(out))]
    return bytes(out)


def mutate_gguf(seed: bytes, rnd: random.Random) -> bytes:
    """Counts, lengths, type codes, dims and offsets live in the header: overwrite a u32 or u64 there
    with an interesting value (or flip bytes, or cut the file)."""
    from aprtool.interop.gguf_reader import GgufFile

    buf = bytearray(seed)
    kind = rnd.choice(["int", "int", "int", "bytes", "cut"])
    if kind == "int":
        with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
            f.write(seed)
            f.flush()
            with GgufFile(f.name) as g:
                header = g.data_start
        for _ in range(rnd.randint(1, 3)):
            code = rnd.choice(["<I", "<Q"])
            value = rnd.choice([v for v in INTERESTING if v < 2 ** (struct.calcsize(code) * 8)])
            struct.pack_into(code, buf, rnd.randrange(4, header - 8), value)
    elif kind == "bytes":
        _mutate_bytes(buf, rnd)
    else:
        buf = buf[: rnd.randrange(len(buf))]
    return bytes(buf)


# ---------------------------------------------------------------- targets


def read_apr(path: Path) -> None:
    """What inspect, verify --deep, compress (repack) and export do with a file."""
    import aprtool
    from aprtool.codecs import dequantize

    aprtool.inspect_file(path)
    aprtool.verify_file(path, deep=True)
    with aprtool.open_apr(path) as f:
        for name in f.names():
            dequantize(f, name)


def read_model(path: Path) -> None:
    from aprtool.model.io import load_model

    read_apr(path)
    model, info = load_model(path)
    import torch

    with torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long))


def read_safetensors_file(path: Path) -> None:
    from aprtool.interop.safetensors_io import read_safetensors

    read_safetensors(path)
    read_any(path)


def read_any(path: Path) -> None:
    """What inspect --stats and verify --deep do with a safetensors or GGUF file."""
    from aprtool.files.inspect import inspect_path
    from aprtool.files.verify import verify_any

    inspect_path(path, stats=True)
    report = verify_any(path, deep=True)
    if not report.valid:  # the readers' rejections surface here, as an AprError would
        from aprtool.errors import FormatError

        raise FormatError("; ".join(report.errors))


def read_hf(path: Path) -> None:
    """What inspect --stats, verify --deep and every command's model opener do with an HF folder."""
    from aprtool.model.io import load_model

    read_any(path)
    load_model(path)


def read_run(path: Path) -> None:
    """What `runs`, `plot` and --resume read in a run directory."""
    from aprtool.train.metrics import truncate_metrics
    from aprtool.train.plot import read_curves
    from aprtool.train.runs import list_run

    list_run(path)
    read_curves(path)
    truncate_metrics(path / "metrics.jsonl", 2)


def read_tokenizer(path: Path) -> None:
    """What eval and calibrate (the model's tokenizer) and export --to hf|gguf do with an embedded tokenizer."""
    import aprtool
    from aprtool.interop.export import export_file
    from aprtool.model.io import load_tokenizer_for

    aprtool.verify_file(path)
    with aprtool.open_apr(path) as f:
        metadata = dict(f.metadata)
    tok = load_tokenizer_for(metadata, path)
    tok.decode(tok.encode("def f(x):\n    return x  # ünïcode"))
    for to, name in (("gguf", "out.gguf"), ("hf", "out-hf")):
        export_file(path, path.with_name(name), to, force=True)


TARGETS = {
    "apr": (_apr_seeds, mutate_apr, read_apr, ".apr"),
    "model": (_model_seeds, mutate_apr, read_model, ".apr"),
    "safetensors": (_safetensors_seeds, mutate_safetensors, read_safetensors_file, ".safetensors"),
    "gguf": (_gguf_seeds, mutate_gguf, read_any, ".gguf"),
    "hf": (_hf_seeds, mutate_folder, read_hf, ".hf"),
    "run": (_run_seeds, mutate_folder, read_run, ".run"),
    "tokenizer": (_tokenizer_seeds, mutate_tokenizer, read_tokenizer, ".apr"),
}


def write_case(path: Path, data: bytes | dict[str, bytes]) -> None:
    """A case on disk: a file, or a folder of files (what was there before is removed)."""
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    path.unlink(missing_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
        return
    for name, content in data.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(content)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-mb", type=int, default=1024)
    parser.add_argument("--keep", type=Path, help="write each failing input here")
    parser.add_argument("--sample", type=Path, help="also write every 100th input here (for CLI checks)")
    args = parser.parse_args()
    make_seeds, mutate, read, suffix = TARGETS[args.target]
    from aprtool.errors import AprError

    failures, slowest, rejected, accepted = [], 0.0, 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        seeds = make_seeds(d)
        warm = d / f"warm{suffix}"
        write_case(warm, seeds[0])
        read(warm)  # lazy imports and first-call setup are not the case's time
        limit = args.limit_mb * 1024 * 1024  # set after the imports and seeds: the readers run under it
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        rnd = random.Random(args.seed)
        for case in range(args.cases):
            data = mutate(rnd.choice(seeds), rnd)
            path = d / f"case{suffix}"
            write_case(path, data)
            if args.sample and case % 100 == 0:
                args.sample.mkdir(parents=True, exist_ok=True)
                write_case(args.sample / f"{args.target}-{case}{suffix}", data)
            start = time.perf_counter()
            try:
                read(path)
                accepted += 1
            except AprError:
                rejected += 1
            except BaseException as exc:  # noqa: BLE001 - anything else is a bug, MemoryError included
                failures.append({"case": case, "error": f"{type(exc).__name__}: {str(exc)[:200]}",
                                 "where": traceback.format_exc().splitlines()[-3:]})  # fmt: skip
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    write_case(args.keep / f"{args.target}-{case}{suffix}", data)
            seconds = time.perf_counter() - start
            slowest = max(slowest, seconds)
            if seconds > SLOW_SECONDS:
                failures.append({"case": case, "error": f"took {seconds:.2f} s"})
    summary = {"target": args.target, "cases": args.cases, "accepted": accepted, "rejected": rejected,
               "slowest_s": round(slowest, 3), "failures": failures[:20]}  # fmt: skip
    print(json.dumps(summary))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
