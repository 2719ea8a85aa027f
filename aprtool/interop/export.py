"""`export`: any model (APR float or int6, safetensors, an HF folder, GGUF) to safetensors, a Hugging Face
directory of the model's own class, GGUF for llama.cpp, or APR (the explicit import: weights, architecture,
tokenizer and provenance in one self-contained file).

Training state (`__training__.*`) is never exported, except by `--to apr` without --weights-only.
Every output appears atomically: OUT is never left half-written.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aprtool.atomic import atomic_path, atomic_write_text, fsync_dir, temp_path
from aprtool.container import constants as C
from aprtool.container import open_apr, write_apr
from aprtool.data.tokenizer import embed_tokenizer
from aprtool.errors import IntegrityError, UsageError
from aprtool.files.detect import APR, GGUF, HF, SAFETENSORS, detect
from aprtool.interop.hf_config import hf_config, require_llama
from aprtool.interop.safetensors_io import META_KEY, SafetensorsFile, imported_metadata
from aprtool.interop.targets import DTYPE_NAMES, TARGETS
from aprtool.interop.tokenizer_files import gguf_vocab, special_ids, tokenizer_config, tokenizer_json
from aprtool.model.io import check_tensors, llama_config, load_tokenizer_for, tokenizer_info
from aprtool.paths import input_file, output_path

DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.float16, torch.bfloat16), strict=True))


def load_source(src: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every tensor of `src` as torch (int6 and GGUF-quantized tensors dequantized to float32) and its
    metadata. The format is read from the content: APR, a bare safetensors file, or any model
    `model.sources` opens (an HF folder, safetensors with config.json, GGUF), which adds provenance."""
    kind = detect(src)
    if kind == SAFETENSORS and not Path(src).with_name("config.json").exists():
        return _load_safetensors(input_file(src))
    if kind in (SAFETENSORS, HF, GGUF):
        return _load_model_source(Path(src))
    if kind != APR:
        raise UsageError(f"{src} is a run directory; export RUN_DIR/model.apr")
    from aprtool.codecs import dequantize, is_encoded

    with open_apr(src) as f:
        tensors = {}
        for name in f.names():
            if is_encoded(f.info(name)):
                tensors[name] = torch.from_numpy(dequantize(f, name, np.float32))
            else:
                tensors[name] = f.torch(name).clone()
        metadata = dict(f.metadata)
    metadata.pop(C.APRTOOL_KEY, None)  # per-tensor records describe this file's bytes, not the export's
    return tensors, metadata


def _load_model_source(src: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A model of another format, checked by model.sources; safetensors' F16/BF16 stay as stored."""
    from aprtool.model.sources import open_source, provenance

    with open_source(src) as source:
        shards = getattr(source.view, "shards_of", {})
        tensors = {}
        for name in source.shapes:
            stored = getattr(shards.get(name, source.view), "file", None)
            if isinstance(stored, SafetensorsFile):
                tensors[name] = _torch_tensor(stored, name)
            else:
                tensors[name] = torch.from_numpy(source.float32(name).copy())
        metadata = {**source.metadata, "source": provenance(source)}
    return tensors, metadata


def _torch_tensor(f: SafetensorsFile, name: str) -> torch.Tensor:
    """BF16 stays BF16 (so apr -> safetensors -> apr is bit-exact); F8 is widened exactly to float32."""
    if f.entries[name].dtype == "BF16":
        return torch.from_numpy(np.array(f.array(name))).view(torch.bfloat16)
    return torch.from_numpy(np.array(f.float32_or_stored(name)))


def _load_safetensors(src: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    f = SafetensorsFile(src)
    return {name: _torch_tensor(f, name) for name in f.entries}, imported_metadata(f)


def _model_tensors(tensors: dict[str, torch.Tensor], dtype: str | None) -> dict[str, torch.Tensor]:
    out = {n: t for n, t in tensors.items() if not n.startswith(C.TRAINING_PREFIX)}
    if not out:
        raise IntegrityError("nothing to export: the input holds 0 model tensors")
    if dtype is not None:
        out = {n: t.to(DTYPES[dtype]) if t.is_floating_point() else t for n, t in out.items()}
    for name, t in out.items():  # NaN/Inf in the input or from a narrowing --dtype: the output would fail verify
        if t.is_floating_point() and (bad := int(t.numel() - torch.isfinite(t).sum())):
            raise IntegrityError(f"tensor {name!r}: {bad} NaN/Inf values kept as {str(t.dtype)[6:]}; "
                                 "the output would fail verify")  # fmt: skip
    return out


def _safetensors_bytes_to(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    header = {"format": "pt", META_KEY: json.dumps(metadata, separators=(",", ":"))}
    with atomic_path(path) as tmp:
        save_file({n: t.contiguous() for n, t in tensors.items()}, str(tmp), metadata=header)


def _replace_dir(build: Path, out: Path) -> None:
    """Put the finished directory `build` at `out`. An existing `out` (output_path has checked that it
    may be replaced) is renamed aside first and removed only once the new one is in place."""
    old = None
    if os.path.lexists(out):
        old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        out.rename(old)
    build.rename(out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


def export_file(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    to: str,
    *,
    dtype: str | None = None,
    weights_only: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Export `src` to `out`; an existing non-empty `out` is replaced only with `force`."""
    if to not in TARGETS:
        raise UsageError(f"--to {to!r}: choose from {', '.join(TARGETS)}")
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: choose from {', '.join(DTYPES)}")
    src = Path(src) if Path(src).is_dir() else input_file(src)  # a directory: an HF folder (load_source)
    out = output_path(out, force=force, inputs=[src], directory=to == "hf")
    tensors, metadata = load_source(src)
    files: list[str] = []
    warning = None

    if to == "apr":
        metadata, warning = embed_tokenizer(metadata, src)
        kept = tensors if not weights_only else _model_tensors(tensors, None)
        training = {n: t for n, t in kept.items() if n.startswith(C.TRAINING_PREFIX)}
        model = _model_tensors(kept, dtype)
        if weights_only:
            metadata.pop("training", None)
        result = write_apr(out, {**model, **training}, metadata)
        files.append(str(out))
        count, size = result.tensor_count, result.size_bytes
    elif to == "safetensors":
        model = _model_tensors(tensors, dtype)
        metadata.pop("training", None)
        _safetensors_bytes_to(out, model, metadata)
        files.append(str(out))
        count, size = len(model), out.stat().st_size
    elif to == "hf":
        count, size = _export_hf(src, out, tensors, metadata, dtype, files)
    else:
        count, size = _export_gguf(src, out, tensors, metadata, dtype, files)
    return {
        "input": str(src),
        "output": str(out),
        "to": to,
        "tensors": count,
        "bytes": size,
        "files": files,
        "warnings": [warning] if warning else [],
    }


def checked_llama(metadata: dict[str, Any], tensors: dict[str, torch.Tensor], target: str) -> dict[str, Any]:
    """The metadata with its architecture fields checked (missing: exit 5; malformed: exit 4) and every
    model tensor checked against them by name and shape, before anything is converted."""
    require_llama(metadata, target)
    config = llama_config(metadata)
    tokenizer_info(metadata, config)
    model = {n: t for n, t in tensors.items() if not n.startswith(C.TRAINING_PREFIX)}
    check_tensors(
        config, {n: tuple(t.shape) for n, t in model.items()}, {n for n, t in model.items() if t.is_floating_point()}
    )
    return {**metadata, **config.to_metadata()}


def published_tokenizer(metadata: dict[str, Any], src: Path, config: Any) -> str | None:
    """The tokenizer.json text an export publishes, loaded and checked against the model before anything is
    written (exit 4): it parses, it has the size the metadata records, every id it yields has an embedding row."""
    text = tokenizer_json(metadata, src)
    if text is not None:
        load_tokenizer_for(metadata, src, config)
    return text


def _export_hf(src, out, tensors, metadata, dtype, files) -> tuple[int, int]:
    metadata = checked_llama(metadata, tensors, "hf")
    config = llama_config(metadata)
    model = _model_tensors(tensors, dtype or "f32")
    tok = published_tokenizer(metadata, src, config)
    info = metadata.get("tokenizer") or {}
    bos, eos = special_ids(info) if tok else (None, None)
    torch_dtype = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[
        next(t.dtype for t in model.values() if t.is_floating_point())
    ]
    hf = hf_config(config, bos, eos, torch_dtype)  # refused (exit 5) before anything is written
    build = temp_path(out)  # a killed export leaves this; the next write to the directory sweeps it
    build.mkdir()
    try:
        meta = {k: v for k, v in metadata.items() if k != "training"}
        _safetensors_bytes_to(build / "model.safetensors", model, meta)
        atomic_write_text(build / "config.json", json.dumps(hf, indent=2) + "\n")
        ids = {f"{k}_token_id": v for k, v in (("bos", bos), ("eos", eos)) if v is not None}
        gen = {"_from_model_config": True, **ids}
        atomic_write_text(build / "generation_config.json", json.dumps(gen, indent=2) + "\n")
        if tok is not None:
            atomic_write_text(build / "tokenizer.json", tok)
        if tok is not None and info.get("kind") == "hf":  # its bos/eos and add-bos rule, as transformers reads them
            side = tokenizer_config(tok, info, config.max_position_embeddings)
            atomic_write_text(build / "tokenizer_config.json", json.dumps(side, indent=2) + "\n")
        _replace_dir(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    files.extend(str(out / p.name) for p in sorted(out.iterdir()))
    return len(model), sum(p.stat().st_size for p in out.iterdir())


def _export_gguf(src, out, tensors, metadata, dtype, files) -> tuple[int, int]:
    from aprtool.interop.gguf_io import write_gguf

    if dtype == "bf16":
        raise UsageError("--to gguf writes f32 or f16 tensors; use --dtype f32 or f16")
    metadata = checked_llama(metadata, tensors, "gguf")
    config = llama_config(metadata)
    tok = published_tokenizer(metadata, src, config)
    if tok is None:
        raise IntegrityError("--to gguf: the model names no tokenizer, and llama.cpp needs one")
    vocab = gguf_vocab(tok, metadata["tokenizer"])
    model = _model_tensors(tensors, "f32")
    half = dtype == "f16"  # matrices only: llama.cpp keeps norms in f32
    arrays = {n: (t.half() if half and t.ndim >= 2 else t).numpy() for n, t in model.items()}
    size = write_gguf(out, arrays, config, str(metadata.get("name", "aprtool-model")), vocab)
    files.append(str(out))
    return len(arrays), size
