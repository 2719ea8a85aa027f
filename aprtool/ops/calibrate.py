"""Calibration for `compress --calibrate`: each linear layer's input second moment H = E[x xᵀ], from
sequences of training text run through the model.

Where the text comes from (the first that applies):
  --calib-data PATH    a prepared shard directory (its tokenizer must be the model's) or text files;
  RUN_DIR/data         the prepared training data beside RUN_DIR/model.apr (the model's own run);
  the default corpus   the standard library's training split, tokenized with the model's tokenizer.
Windows are spread evenly over the training split (never the held-out files), so a calibrated
artifact is scored by `eval` on text calibration did not see. The tied embedding is the output layer
too: it gets lm_head's inputs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aprtool.container import open_apr
from aprtool.data.documents import DEFAULT_TEXT_FIELD, Documents
from aprtool.data.prepare import MANIFEST, load_prepared
from aprtool.data.shards import ShardedTokens, checked_nanogpt, nanogpt_shards
from aprtool.errors import UsageError
from aprtool.ops.adaround import BATCH as ADAROUND_BATCH
from aprtool.text import printable

if TYPE_CHECKING:  # torch is imported when calibration runs, so `compress` without it starts fast
    import torch

    from aprtool.model.llama import LlamaForCausalLM

DEFAULT_CALIB_TOKENS = 65_536  # beyond this the held-out gain grew by < 0.0002 bits/byte (performance.md)
MAX_CALIB_TOKENS = 16 * 1024 * 1024


SELECT_TOKENS = 8_192  # calibration tokens on which each tensor's GPTQ and round-to-nearest symbols are scored
SELECT_BATCH = 8  # selection windows per forward pass
LAYER_INPUTS_BYTES = 512 * 2**20  # every decoder layer's input on the selection is kept up to this size
# Scoring every tensor's candidates on the selection costs about tensors × selection tokens × parameters
# multiply-adds. Up to this many (the `small` preset takes 1e12) every tensor is scored on text; beyond it
# (a 135 M model would take hours) only the tied embedding is, and the others take the candidate with the
# lower output error tr(E·H·Eᵀ).
TEXT_SCORING_BUDGET = 2e13


# Per-row Hessians of the tied embedding (vocab × hidden × hidden, float64) are kept up to this many
# elements (256 MiB): the `tiny` preset needs 16.8 M; `small` (4096 × 256²) and larger use the shared one.
MAX_ROW_HESSIAN_ELEMENTS = 2**25
EMBEDDING = "model.embed_tokens.weight"
OUTER_ELEMENTS = 2**22  # float64 elements of per-position outer products held at once (32 MiB)


@dataclass
class Calibration:
    hessians: dict[str, np.ndarray]  # weight name -> H (cols × cols), float64
    record: dict[str, Any]  # what calibration used, for the artifact's metadata
    model: Any  # the float model (LlamaForCausalLM)
    select: Any  # the windows candidates are scored on (a torch tensor)
    row_hessians: dict[str, np.ndarray] = field(default_factory=dict)  # name -> one H per row (rows × cols × cols)
    row_factors: dict[str, np.ndarray] = field(default_factory=dict)  # name -> gptq.row_factors of row_hessians
    layer_inputs: list[list[Any]] | None = None  # per decoder layer, its float input on each selection batch
    # calibration windows (seq_len + 1 tokens) that share no token with `select`: what adaround learns on,
    # so that scoring its symbols on `select` is a held-out check; None without per-row Hessians
    windows: Any = None
    scored: frozenset[str] | None = None  # the tensors whose candidates are scored on text; None: every one

    def loss_with(self, name: str, values: np.ndarray) -> float:
        """Mean cross-entropy (nats/token) on the selection windows with tensor `name` set to `values`
        and every other tensor float: how much this one tensor's rounding costs the model."""
        return self.loss_with_all({name: values})

    def loss_with_all(self, values: dict[str, np.ndarray]) -> float:
        """The same with every tensor of `values` set at once (the others float)."""
        return float(self.window_losses(values).mean())

    def window_losses(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """Mean cross-entropy of each selection window with every tensor of `values` set at once."""
        import torch

        first = min((_layer_of(n) for n in values), default=0)
        inputs = self._inputs_of_layer(first) if first > 0 else None  # before any tensor is changed
        params = self.model.state_dict(keep_vars=True)
        saved = {n: params[n].detach().clone() for n in values}
        losses = []
        try:
            with torch.no_grad():
                for n, v in values.items():
                    params[n].copy_(torch.from_numpy(np.ascontiguousarray(v, np.float32)).reshape(params[n].shape))
                for k, start in enumerate(range(0, len(self.select), SELECT_BATCH)):
                    batch = self.select[start : start + SELECT_BATCH]
                    x = self.model.embed(batch[:, :-1]) if inputs is None else inputs[k]
                    each = self.model.losses_from_layer(x, batch[:, 1:], 0 if inputs is None else first)
                    losses.append(each.double().mean(1))
        finally:
            with torch.no_grad():
                for n, v in saved.items():
                    params[n].copy_(v)
        return torch.cat(losses).numpy()

    def _inputs_of_layer(self, layer: int) -> list[Any] | None:
        """Decoder layer `layer`'s float input on each selection batch, so that scoring a tensor of that
        layer or a later one skips the layers before it (the same numbers: they are float in every
        candidate). Computed once, for every layer, when they fit in LAYER_INPUTS_BYTES; else None."""
        import torch

        if self.layer_inputs is None:
            layers = self.model.model.layers
            size = self.select[:, :-1].numel() * self.model.cfg.hidden_size * 4 * len(layers)
            if size > LAYER_INPUTS_BYTES:
                return None
            self.layer_inputs = [[] for _ in layers]

            def keep(i: int):
                return lambda _module, inputs: self.layer_inputs[i].append(inputs[0].detach().clone())

            handles = [layer.register_forward_pre_hook(keep(i)) for i, layer in enumerate(layers)]
            try:
                with torch.no_grad():
                    for start in range(0, len(self.select), SELECT_BATCH):
                        self.model(self.select[start : start + SELECT_BATCH, :-1])
            finally:
                for handle in handles:
                    handle.remove()
        return self.layer_inputs[layer]


def _layer_of(name: str) -> int:
    """The decoder layer a weight belongs to; 0 for the embedding and anything outside the layers (the
    final norm, an untied lm_head), which are then scored by the whole forward pass."""
    match = re.fullmatch(r"model\.layers\.(\d+)\..+", name)
    return int(match.group(1)) if match else 0


def _seq_len(model: LlamaForCausalLM, metadata: dict[str, Any]) -> int:
    summary = metadata.get("training_summary") or metadata.get("distillation") or {}
    config = summary.get("config") if isinstance(summary, dict) else None
    trained = config.get("seq_len") if isinstance(config, dict) else None
    limit = model.cfg.max_position_embeddings
    if isinstance(trained, int) and not isinstance(trained, bool) and 0 < trained <= limit:
        return trained
    return min(256, limit)


def _same_tokenizer(ours: dict[str, Any], theirs: dict[str, Any], where: str) -> None:
    for key in ("kind", "vocab_size", "sha256"):
        if ours.get(key) != theirs.get(key):
            raise UsageError(f"{where}: its tokenizer {key} {theirs.get(key)!r} is not the model's {ours.get(key)!r}")


def _encode_texts(texts: Any, tokenizer: Any, needed: int) -> np.ndarray:
    from aprtool.data.tokenizer import encode_documents

    parts, count = [], 0
    for text in texts:  # one document at a time, until there are enough tokens
        if count >= needed:
            break
        parts.append(encode_documents([text], tokenizer))
        count += len(parts[-1])
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def calibration_tokens(model_path: Path, metadata: dict[str, Any], tokenizer: Any, calib_data: Path | None,
                       needed: int, text_field: str = DEFAULT_TEXT_FIELD) -> tuple[Any, str]:  # fmt: skip
    """Training-split tokens to calibrate on, and where they came from: prepared shards, modded-nanogpt
    shards (of the model's tokenizer), or the training side of a text or record corpus."""
    from aprtool.model.io import tokenizer_info, training_val_fraction

    ours = tokenizer_info(metadata) or {}
    prepared = calib_data if calib_data is not None else model_path.parent / "data"
    if (prepared / MANIFEST).is_file():
        corpus = load_prepared(prepared)
        if calib_data is not None:
            _same_tokenizer(ours, corpus.manifest["tokenizer"], f"--calib-data {calib_data}")
            return corpus.tokens("train"), str(calib_data)
        try:
            _same_tokenizer(ours, corpus.manifest["tokenizer"], str(prepared))
            return corpus.tokens("train"), str(prepared)
        except UsageError:
            pass  # the directory beside the model is another run's data: use the default corpus instead
    if calib_data is not None and (found := nanogpt_shards(calib_data)) is not None:
        return ShardedTokens(checked_nanogpt(found["train"], tokenizer.vocab_size, "the model's")), str(calib_data)
    documents = Documents.open(calib_data, text_field)
    texts = documents.texts(training_val_fraction(metadata), ("train",))
    return _encode_texts(texts, tokenizer, needed), str(calib_data) if calib_data else "python-stdlib"


def _starts(tokens: Any, length: int, count: int, where: str) -> np.ndarray:
    """The first token of `count` windows of `length` tokens spread evenly over `tokens`."""
    span = len(tokens) - length
    if span < 1:
        raise UsageError(f"calibration data {where}: {len(tokens)} tokens cannot fill one window of {length + 1}")
    return np.linspace(0, span - 1, num=min(count, span)).astype(np.int64)


def _windows(tokens: Any, length: int, starts: np.ndarray) -> torch.Tensor:
    """The windows of `length` tokens beginning at `starts`."""
    import torch

    return torch.from_numpy(np.stack([np.asarray(tokens[s : s + length], dtype=np.int64) for s in starts]))


def _apart(starts: np.ndarray, others: np.ndarray, length: int) -> np.ndarray:
    """The starts whose window of `length` tokens shares no token with any window at `others`."""
    return starts[np.all(np.abs(starts[:, None] - others[None, :]) >= length, axis=1)]


def collect_hessians(model: LlamaForCausalLM, windows: torch.Tensor, batch_size: int = 8) -> dict[str, np.ndarray]:
    """H = E[x xᵀ] of the input of every linear layer, by weight name (the tied embedding: lm_head's)."""
    import torch

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    tied = model.cfg.tie_word_embeddings
    names: dict[str, list[str]] = {}  # one Hessian per distinct input: q/k/v read the same x, gate/up too

    def hook(group: str):
        def accumulate(_module: Any, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sums[group] = sums.get(group, 0) + x.T @ x
            counts[group] = counts.get(group, 0) + x.shape[0]

        return accumulate

    handles = []
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            weight = "model.embed_tokens.weight" if module_name == "lm_head" and tied else f"{module_name}.weight"
            group = SHARED_INPUT.sub(r"\1.\2", module_name)
            if group not in names:
                handles.append(module.register_forward_pre_hook(hook(group)))
            names.setdefault(group, []).append(weight)
    try:
        with torch.no_grad():
            for start in range(0, len(windows), batch_size):
                model(windows[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for group, total in sums.items():
        h = (total / counts[group]).numpy()
        out |= {weight: h for weight in names[group]}  # the same array: readers copy before changing it
    return out


SHARED_INPUT = re.compile(r"^(.*)\.(self_attn|mlp)\.(?:q_proj|k_proj|v_proj|gate_proj|up_proj)$")


def collect_row_hessians(model: LlamaForCausalLM, windows: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    """One Hessian per token row of a tied embedding, summed over the windows' positions: its output role's
    Gauss-Newton term p_t(1 − p_t)·h hᵀ (h: lm_head's input, p_t: the token's probability there) plus its
    input role's Fisher term g gᵀ wherever the token is read (g: the loss gradient at the embedding's
    output). A frequent token's row gets the curvature of both its uses; a rare one little of either."""
    import torch
    import torch.nn.functional as F

    vocab, hidden = model.model.embed_tokens.weight.shape
    out = torch.zeros(vocab, hidden * hidden, dtype=torch.float64)
    into = torch.zeros(vocab, hidden, hidden, dtype=torch.float64)
    seen: dict[str, torch.Tensor] = {}

    def keep_input(key: str, retain: bool):
        def hook(_module: Any, inputs: tuple[torch.Tensor, ...]) -> None:
            if retain:
                inputs[0].retain_grad()
            seen[key] = inputs[0]

        return hook

    handles = [model.lm_head.register_forward_pre_hook(keep_input("h", False)),
               model.model.layers[0].register_forward_pre_hook(keep_input("x", True))]  # fmt: skip
    try:
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            with torch.enable_grad():  # the input role's gradients, also when the caller runs under no_grad
                logits = model(batch[:, :-1])
                model.zero_grad(set_to_none=True)
                F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="sum").backward()
            with torch.no_grad():
                h = seen["h"].detach().flatten(0, 1).double()
                p = torch.softmax(logits.detach().float().flatten(0, 1), -1).double()
                g = seen["x"].grad.flatten(0, 1).double()
                ids = batch[:, :-1].flatten()
                step = max(1, OUTER_ELEMENTS // hidden**2)  # positions whose outer products fit in 32 MiB
                for i in range(0, len(h), step):
                    hh, gg = h[i : i + step], g[i : i + step]
                    out += (p[i : i + step] * (1 - p[i : i + step])).T @ (hh[:, :, None] * hh[:, None, :]).flatten(1)
                    into.index_add_(0, ids[i : i + step], gg[:, :, None] * gg[:, None, :])
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
    return (out.reshape(vocab, hidden, hidden) + into).numpy()


def calibration_refusal(model_path: Path, metadata: dict[str, Any]) -> str | None:
    """Why `--calibrate` cannot run on this model, from its metadata; None if it can."""
    from aprtool.model.config import ARCHITECTURES

    architecture = metadata.get("architecture")
    if not isinstance(architecture, str) or architecture not in ARCHITECTURES:
        found = "none" if architecture is None else repr(printable(str(architecture))[:60])
        return (f"--calibrate needs a Llama-family model ({', '.join(ARCHITECTURES)}) with its tokenizer; "
                f"{model_path} has architecture {found}")  # fmt: skip
    if metadata.get("tokenizer") is None:
        return f"--calibrate: {model_path} names no tokenizer, so no text can be run through it"
    return None


def _metadata_of(model_path: Path) -> dict[str, Any]:
    """The model's metadata in APR's spelling, whatever its format (an APR file's as it stands)."""
    from aprtool.files.detect import APR, detect
    from aprtool.model.sources import open_source

    if detect(model_path) == APR:
        with open_apr(model_path) as f:
            return dict(f.metadata)
    with open_source(model_path) as source:
        return source.metadata


def calibrate(
    model_path: Path, calib_data: Path | None = None, calib_tokens: int = DEFAULT_CALIB_TOKENS,
    quantized: Collection[str] = (EMBEDDING,), text_field: str = DEFAULT_TEXT_FIELD,
) -> Calibration:  # fmt: skip
    """Hessians of every linear layer of the aprtool Llama model in `model_path` (a Calibration); per-row
    ones for the tied embedding when it is among the `quantized` tensors and small enough."""
    from aprtool.model.io import load_model, load_tokenizer_for

    model_path = Path(model_path)
    if not 0 < calib_tokens <= MAX_CALIB_TOKENS:
        raise UsageError(f"--calib-tokens {calib_tokens}: must be between 1 and {MAX_CALIB_TOKENS:,}")
    if refusal := calibration_refusal(model_path, _metadata_of(model_path)):
        raise UsageError(refusal)
    model, info = load_model(model_path)
    tokenizer = load_tokenizer_for(info.metadata, model_path, info.config)  # checks the entry
    seq_len = _seq_len(model, info.metadata)
    # twice the tokens the windows take, so that they lie apart and adaround can learn on windows that share
    # no token with the selection windows its symbols are then scored on (a prepared split is read whole)
    needed = 2 * calib_tokens + seq_len
    tokens, source = calibration_tokens(model_path, info.metadata, tokenizer, calib_data, needed, text_field)
    windows = _windows(tokens, seq_len, _starts(tokens, seq_len, math.ceil(calib_tokens / seq_len), source))
    hessians = collect_hessians(model, windows)
    selected = _starts(tokens, seq_len + 1, math.ceil(min(calib_tokens, SELECT_TOKENS) / seq_len), source)
    select = _windows(tokens, seq_len + 1, selected)
    record = {"method": "gptq", "source": source, "split": "train", "tokens": int(windows.numel()),
              "windows": len(windows), "seq_len": seq_len, "select_tokens": int(select[:, 1:].numel())}  # fmt: skip
    rows: dict[str, np.ndarray] = {}
    vocab, hidden = model.model.embed_tokens.weight.shape
    learn = None
    if EMBEDDING in quantized and model.cfg.tie_word_embeddings and vocab * hidden**2 <= MAX_ROW_HESSIAN_ELEMENTS:
        starts = _starts(tokens, seq_len + 1, len(windows), source)
        rows[EMBEDDING] = collect_row_hessians(model, _windows(tokens, seq_len + 1, starts))
        record["row_hessians"] = [EMBEDDING]
        apart = _apart(starts, selected, seq_len + 1)
        learn = _windows(tokens, seq_len + 1, apart) if len(apart) >= ADAROUND_BATCH else None  # else: too few
        record["adaround_windows"] = len(apart)
    scored = None
    if len(quantized) * select[:, 1:].numel() * sum(p.numel() for p in model.parameters()) > TEXT_SCORING_BUDGET:
        scored = frozenset(n for n in quantized if n == EMBEDDING)
        record["scored_on_text"] = sorted(scored)  # the rest: the candidate with the lower output error
    return Calibration(hessians, record, model, select, rows, windows=learn, scored=scored)
