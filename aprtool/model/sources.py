"""Every model format a user holds, opened as one thing: an APR file, a safetensors file with its
config.json beside it, a Hugging Face folder (one file or shards), or a GGUF file, recognised by content.

`open_source(path)` reads the format's own description of the model into APR's metadata spelling (the
architecture fields through `interop.hf_config` or the GGUF keys, checked once by `model.io.llama_config`),
finds the model's tokenizer (embedded in an APR; tokenizer.json and its side files in the folder, under
their fixed names; a GGUF's `tokenizer.ggml.*` keys) and checks every weight the architecture needs by
name and shape before any value is read. `float32(name)` then reads one weight, by its Hugging Face name,
dequantized (int6 or any GGUF type gguf-py dequantizes) and in Hugging Face row order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aprtool.container import constants as C
from aprtool.errors import FormatError, MetadataError
from aprtool.files.detect import APR, GGUF, HF, SAFETENSORS, detect
from aprtool.model.config import LlamaConfig

FLOAT_DTYPES = ("F32", "F16", "BF16", "F64", "F8_E4M3", "F8_E5M2")
# Buffers older transformers versions saved beside the weights; they are recomputed, never weights.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclass
class ModelSource:
    """A checked model in any format. `metadata` is in APR's spelling; `shapes` and `dtypes` are the
    architecture's weights by Hugging Face name (stored dtype names: F32, BF16, Q4_1, I6 ...)."""

    path: Path
    format: str  # apr | safetensors | hf | gguf
    metadata: dict[str, Any]
    config: LlamaConfig
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    quantized: bool
    read: Callable[[str], np.ndarray] = field(repr=False)
    view: Any = field(repr=False)

    def float32(self, name: str) -> np.ndarray:
        return self.read(name)

    @property
    def param_count(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes.values())

    def close(self) -> None:
        self.view.close()

    def __enter__(self) -> ModelSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _refuse_undequantizable(view: Any, names: list[str]) -> None:
    from aprtool.interop.gguf_reader import dequantizable

    for name in names:
        t = view.file.tensors[view.names[name]]
        if not dequantizable(t.ggml_type) and t.type_name not in ("I8", "I16", "I32", "I64"):
            raise FormatError(f"{view.path}: tensor {t.name[:80]!r} has ggml type {t.type_name}, which gguf-py cannot "
                              "dequantize")  # fmt: skip


def _float_names(view: Any, names: list[str]) -> set[str]:
    if view.format.startswith("APR"):
        return {n for n in names if view.file.info(n).dtype.is_float}
    if view.format.startswith("GGUF"):
        from aprtool.interop.gguf_reader import dequantizable

        return {n for n in names if dequantizable(view.file.tensors[view.names[n]].ggml_type)}
    return {n for n in names if view.tensors[n].dtype in FLOAT_DTYPES}


def _apr_metadata(view: Any) -> dict[str, Any]:
    return dict(view.metadata)


def _side_config(directory: Path) -> dict[str, Any]:
    from aprtool.paths import read_json

    config = read_json(directory / "config.json")
    if not isinstance(config, dict):
        raise MetadataError(f"{directory / 'config.json'}: must be a JSON object")
    return config


def _hf_metadata(directory: Path, own: dict[str, Any] | None) -> dict[str, Any]:
    """A folder's (or a safetensors file's neighbours') model: config.json, strictly; the tokenizer from
    the folder unless aprtool's own metadata carries one."""
    from aprtool.interop.hf_config import family_metadata
    from aprtool.interop.tokenizer_files import folder_tokenizer

    config = _side_config(directory)
    metadata = {**(own or {}), **family_metadata(config, str(directory / "config.json")), "hf_config": config}
    if not isinstance(metadata.get(C.TOKENIZER_KEY), dict):
        metadata[C.TOKENIZER_KEY] = folder_tokenizer(directory, config)
    return metadata


def _safetensors_metadata(view: Any) -> dict[str, Any]:
    """aprtool's own metadata (an aprtool export) or config.json beside the file; one of them is needed."""
    from aprtool.container.layout import parse_metadata
    from aprtool.interop.safetensors_io import META_KEY

    strings = {k: v for k, v in view.file.metadata.items() if k != "format"}  # HF's own string map
    own = parse_metadata(strings[META_KEY].encode("utf-8")) if META_KEY in strings else strings or None
    if os.path.lexists(view.path.with_name("config.json")):
        return _hf_metadata(view.path.parent, own)
    if own is None:
        raise MetadataError(f"{view.path}: a safetensors file needs config.json beside it to be a model")
    return own


def _gguf_metadata(view: Any) -> dict[str, Any]:
    from aprtool.interop.gguf_io import gguf_family_metadata
    from aprtool.interop.tokenizer_files import gguf_tokenizer

    md = view.file.metadata
    shapes = {n: tuple(spec.shape) for n, spec in view.tensors.items()}
    metadata = gguf_family_metadata(md, shapes)
    name = md.get("general.name")
    return {"name": name if isinstance(name, str) else view.path.stem, **metadata,
            C.TOKENIZER_KEY: gguf_tokenizer(md)}  # fmt: skip


def _open_view(path: Path, kind: str) -> Any:
    from aprtool.files.views import VIEWS
    from aprtool.interop.gguf_io import GgufAsHf

    view = VIEWS[kind](path)
    return GgufAsHf(view) if kind == GGUF else view


READERS = {APR: _apr_metadata, SAFETENSORS: _safetensors_metadata, GGUF: _gguf_metadata}


def open_source(path: str | os.PathLike[str]) -> ModelSource:
    """Open and check a model in any format (see the module docstring); close it, or use `with`."""
    from aprtool.model.io import check_tensors, llama_config, tokenizer_info

    path = Path(path)
    kind = detect(path)
    if kind not in (APR, SAFETENSORS, GGUF, HF):
        raise FormatError(f"{path}: an aprtool run directory, not a model; give RUN_DIR/model.apr")
    view = _open_view(path, kind)
    try:
        metadata = _hf_metadata(path, None) if kind == HF else READERS[kind](view)
        config = llama_config(metadata)
        metadata = {**metadata, **config.to_metadata()}
        tokenizer_info(metadata, config)
        names = [n for n in view.tensors if not n.startswith(C.TRAINING_PREFIX) and not n.endswith(IGNORED_SUFFIXES)]
        if config.tie_word_embeddings and kind != APR:
            names = [n for n in names if n != "lm_head.weight"]  # a tied copy some writers keep
        shapes = {n: tuple(view.tensors[n].shape) for n in names}
        if kind == GGUF:
            _refuse_undequantizable(view, names)
        check_tensors(config, shapes, _float_names(view, names))
        metadata.setdefault("param_count", sum(int(np.prod(s)) for s in shapes.values()))
        dtypes = {n: view.tensors[n].dtype for n in names}
        quantized = kind == GGUF and any(d not in ("F32", "F16", "BF16", "F64") for d in dtypes.values())
        if kind == APR:
            quantized = any(view.file.info(n).dtype.code >= C.ENCODED_DTYPE_MIN for n in names)
    except BaseException:
        view.close()
        raise
    return ModelSource(path, kind, metadata, config, shapes, dtypes, quantized, _reader(view, path), view)


def _reader(view: Any, path: Path) -> Callable[[str], np.ndarray]:
    def read(name: str) -> np.ndarray:
        values = view.values(name)
        if values is None:
            raise FormatError(f"{path}: tensor {name[:80]!r} has a type that cannot be dequantized")
        return np.asarray(values, dtype=np.float32)

    return read


SIDE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
              "model.safetensors.index.json")  # fmt: skip


def provenance(source: ModelSource) -> dict[str, Any]:
    """Where an imported model came from: its format and every file read, with size and sha256."""
    import hashlib

    from aprtool.files.detect import hf_shard_names
    from aprtool.paths import open_input

    if source.format == HF:
        folder, names = source.path, hf_shard_names(source.path)
    elif source.format == SAFETENSORS:
        folder, names = source.path.parent, [source.path.name]
    else:
        folder, names = source.path.parent, [source.path.name]
    if source.format in (HF, SAFETENSORS):
        names += [n for n in SIDE_FILES if (folder / n).is_file()]
    files = []
    for name in names:
        with open_input(folder / name) as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        files.append({"name": name, "bytes": (folder / name).stat().st_size, "sha256": digest})
    return {"format": source.format, "path": source.path.name, "files": files}


def model_digest(path: Path) -> str:
    """sha256 of a model file, or of a folder's files (their names and digests, in order): what identifies a
    model wherever it is moved."""
    import hashlib

    from aprtool.paths import open_input

    if path.is_dir():
        with open_source(path) as source:
            files = provenance(source)["files"]
        return hashlib.sha256("".join(f"{f['name']}\0{f['sha256']}\0" for f in files).encode()).hexdigest()
    with open_input(path) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
