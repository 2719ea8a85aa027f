"""`compress`: quantize once (int6), code losslessly, and compare every codec on the same symbols.

If the input is already quantized, compress *repacks*: it decodes with the old codec and encodes with
the new one, never re-quantizing, so the content digests of input and output are equal.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aprtool.codecs import tensor as enc
from aprtool.codecs.coders import CODERS, order0_entropy_bits
from aprtool.codecs.gptq import DEFAULT_DAMP, ROW_DAMP, gptq_quantize, gptq_rows, output_error, row_factors
from aprtool.codecs.quant import Clip, Quantized, quantize, relative_error
from aprtool.container import constants as C
from aprtool.container import open_apr, write_apr
from aprtool.container.reader import AprFile
from aprtool.container.scan import count_nonfinite
from aprtool.data.documents import DEFAULT_TEXT_FIELD
from aprtool.data.tokenizer import embed_tokenizer
from aprtool.errors import IntegrityError, MetadataError, UsageError
from aprtool.ops.adaround import STEPS as ADAROUND_STEPS
from aprtool.ops.adaround import adaround
from aprtool.ops.budget import (
    REFINE_EVALS_PER_TENSOR,
    Choice,
    Unquantized,
    allocate,
    fill,
    lower_hull,
    measured_size,
    payload_of,
    refine,
    rounding_cost,
    undo_last,
)
from aprtool.ops.calibrate import (
    DEFAULT_CALIB_TOKENS,
    MAX_CALIB_TOKENS,
    Calibration,
    calibrate,
    calibration_refusal,
)
from aprtool.paths import input_file, output_path
from aprtool.text import printable

QUANT_MODES = ("int6", "none")
PASSTHROUGH_MODES = ("f16", "keep")


@dataclass(frozen=True)
class CompressOptions:
    codec: str = "rans"
    quant: str = "int6"
    clip: str | None = None  # None: the clip late QAT trained the model for (metadata.qat), else per tensor (auto)
    min_elements: int = C.DEFAULT_MIN_ELEMENTS
    passthrough: str = "f16"  # float tensors left unquantized: stored as fp16, or kept as they are
    compare: bool = False  # also code the symbols with every other codec, for the comparison table
    force: bool = False  # replace an existing OUT (atomically); without it an existing OUT is refused
    dry_run: bool = False  # everything but writing OUT
    workers: int = 0  # threads for quantizing and coding (0: every core); 1 for clean per-codec timings
    bits: str | None = None  # one width 4..8, or per kind: "mlp=5,attn=6,embed=7" (parse_bits); None: DEFAULT_BITS
    budget: int | None = None  # bytes the written file may take: each tensor's width chosen to fit (ops/budget.py)
    calibrate: bool = False  # GPTQ rounding under each layer's calibration Hessian (aprtool Llama models)
    calib_tokens: int = DEFAULT_CALIB_TOKENS
    calib_data: str | None = None  # prepared shards or text; None: the model's run data, else the default corpus
    text_field: str = DEFAULT_TEXT_FIELD  # the documents' field when calib_data is a parquet / jsonl corpus

    def validate(self) -> Clip:
        enc.coder_for(self.codec)
        if self.quant not in QUANT_MODES:
            raise UsageError(f"--quant {self.quant!r}: choose from {', '.join(QUANT_MODES)}")
        if self.passthrough not in PASSTHROUGH_MODES:
            raise UsageError(f"--passthrough {self.passthrough!r}: choose from f16, keep")
        if self.min_elements < 0:
            raise UsageError("--min-elements must be >= 0")
        if self.workers < 0:
            raise UsageError("workers must be >= 0")
        parse_bits(self.bits)
        if self.budget is not None and (self.budget < 0 or self.quant != "int6"):
            raise UsageError("--budget needs --quant int6 and a byte count >= 0")
        if self.budget is not None and self.bits is not None:
            raise UsageError("--bits with --budget: the budget chooses each tensor's width itself; give one of them")
        if self.calibrate and self.quant != "int6":
            raise UsageError("--calibrate chooses int6 symbols: it needs --quant int6")
        if not 0 < self.calib_tokens <= MAX_CALIB_TOKENS:
            raise UsageError(f"--calib-tokens {self.calib_tokens}: must be between 1 and {MAX_CALIB_TOKENS:,}")
        if not self.calibrate and (self.calib_data is not None or self.calib_tokens != DEFAULT_CALIB_TOKENS):
            flag = "--calib-data" if self.calib_data is not None else "--calib-tokens"
            raise UsageError(f"{flag} sets what --calibrate runs on: add --calibrate, or leave {flag} out")
        return Clip.parse(C.DEFAULT_CLIP if self.clip in (None, AUTO) else self.clip)


AUTO = "auto"  # per tensor, the clip with the least error at its width (the default without late QAT)
AUTO_CLIPS = ("absmax", "std:3", "std:4", "std:5", "std:6", "std:8", "std:10", "std:12.85", "std:16")


def best_clip(weights: np.ndarray, bits: int, hessian: np.ndarray | None) -> Clip:
    """The clip of AUTO_CLIPS whose rounding costs least: tr(E·H·Eᵀ) with a calibration Hessian, else ||E||².
    Less error costs bytes: a finer grid has more entropy (with --budget, the widths pay for it)."""
    clips = [Clip.parse(c) for c in AUTO_CLIPS]
    return min(clips, key=lambda c: rounding_cost(weights, quantize(weights, c, bits), hessian))


def resolve_clip(metadata: dict[str, Any], options: CompressOptions) -> tuple[Clip | None, str]:
    """The clip (None: chosen per tensor) and where it came from: --clip; else the clip late QAT trained
    the model for (its weights sit on that grid); else per tensor, the clip with the least error."""
    per_tensor = "per tensor, the least " + ("output error" if options.calibrate else "squared error")
    if options.clip == AUTO:
        return None, f"--clip auto: {per_tensor}"
    if options.clip is not None:
        return Clip.parse(options.clip), "--clip"
    qat = metadata.get("qat")
    if isinstance(qat, dict) and "clip" in qat:
        try:
            return Clip.parse(str(qat["clip"])), "late QAT (metadata.qat.clip)"
        except UsageError:
            raise MetadataError(f"metadata.qat.clip: {printable(str(qat['clip']))[:40]!r} is not a clip") from None
    return None, f"default: {per_tensor}"


class _Source:
    """The input's tensors, from an APR file (plain or encoded), a bare safetensors file, or any model
    `model.sources` opens (an HF folder, safetensors with config.json, GGUF: dequantized to float32)."""

    def __init__(self, path: Path) -> None:
        from aprtool.files.detect import APR, SAFETENSORS, detect

        self.file: AprFile | None = None
        self.model = None
        kind = detect(path)
        bare = kind == SAFETENSORS and not path.with_name("config.json").exists()
        if kind != APR and not bare:
            from aprtool.model.sources import open_source, provenance

            self.model = open_source(path)
            self.metadata = {**self.model.metadata, "source": provenance(self.model)}
            self.names = list(self.model.shapes)
            self.arrays = {}
        elif kind == SAFETENSORS:
            from aprtool.interop.safetensors_io import read_safetensors

            self.arrays, self.metadata = read_safetensors(path)
            self.names = list(self.arrays)
        else:
            self.file = open_apr(path)
            self.metadata = dict(self.file.metadata)
            self.names = [n for n in self.file.names() if not n.startswith(C.TRAINING_PREFIX)]

    def encoded(self, name: str) -> bool:
        return self.file is not None and enc.is_encoded(self.file.info(name))

    def dtype_name(self, name: str) -> str:
        if self.file is not None:
            return self.file.info(name).dtype.name
        if self.model is not None:
            return "F32"
        return _NUMPY_NAMES.get(self.arrays[name].dtype.name, self.arrays[name].dtype.name.upper())

    def array(self, name: str) -> np.ndarray:
        if self.model is not None:
            return self.model.float32(name)
        return self.file.numpy(name) if self.file is not None else self.arrays[name]

    def as_float32(self, name: str) -> np.ndarray:
        if self.file is not None and self.dtype_name(name) == "BF16":
            return enc.dequantize(self.file, name, np.float32)  # widens the stored bits exactly
        return np.asarray(self.array(name), np.float32)  # no copy for F32: a view of the mapping

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.model is not None:
            self.model.close()


_NUMPY_NAMES = {"float32": "F32", "float16": "F16", "float64": "F64"}
FLOATS = ("F32", "F16", "F64", "BF16")


BIT_KINDS = ("embed", "attn", "mlp", "default")


def parse_bits(text: str | None) -> dict[str, int]:
    """`6`, or `mlp=5,attn=6,embed=7[,default=6]` (a bare number is the default): kind -> width. None: every
    kind at DEFAULT_BITS."""
    spec = {"default": C.DEFAULT_BITS}
    if text is None:
        return spec
    given: set[str] = set()
    for part in (p.strip() for p in str(text).split(",")):
        kind, _, value = part.rpartition("=")
        kind = kind.strip() or "default"
        try:
            bits = int(value)
        except ValueError:
            bits = -1
        if kind not in BIT_KINDS or bits not in C.QUANT_BITS:
            widths = f"{C.QUANT_BITS[0]}..{C.QUANT_BITS[-1]}"
            raise UsageError(f"--bits {text!r}: each part is a width {widths}, alone or as KIND=WIDTH with KIND one of "
                             f"{', '.join(BIT_KINDS)} (e.g. mlp=5,attn=6,embed=7)")  # fmt: skip
        if kind in given:  # `mlp=5,mlp=6` or `6,7`: which one was meant is not ours to guess
            raise UsageError(f"--bits {text!r}: {kind} is given twice")
        given.add(kind)
        spec[kind] = bits
    return spec


def tensor_kind(name: str) -> str:
    """Which --bits pattern a tensor follows, by its (HF Llama) name."""
    if "embed_tokens" in name or name.startswith("lm_head"):
        return "embed"
    if ".self_attn." in name:
        return "attn"
    return "mlp" if ".mlp." in name else "default"


def default_output(src: Path, options: CompressOptions) -> Path:
    """OUT when none is given: beside IN, named by what compress does (model.apr -> model.int6.apr, or
    model.int6-lzma.apr for another codec; a repacked model.int6.apr -> model.int6-zstd.apr)."""
    stem = src.name.removesuffix(".apr").removesuffix(".safetensors").removesuffix(".int6")
    tag = options.quant + ("" if options.codec == "rans" else f"-{options.codec}")
    return src.with_name(f"{stem}.{tag}.apr")


def compress_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None = None,
    options: CompressOptions | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Compress `src` (.apr or .safetensors) into `dst` (default: `default_output`); return the report
    (the CLI's --json). `progress(stage, done, total)` is called as tensors are quantized and coded, and with
    --budget as its candidates are made and costed."""
    options = options or CompressOptions()
    options.validate()
    src = Path(src) if Path(src).is_dir() else input_file(src)  # a directory: an HF folder
    dst = Path(dst) if dst is not None else default_output(src, options)
    if not options.dry_run:
        dst = output_path(dst, force=options.force, inputs=[src])
    source = _Source(src)
    try:
        plan = _plan(source, options)
        _check_repack(plan, options, src)
        quantizing = not plan.repack and options.quant == "int6"
        clip, clip_source = resolve_clip(source.metadata, options) if quantizing else (None, None)
        calibration = _calibration(src, plan, options)
        metadata, warning = embed_tokenizer(source.metadata, src)
        warnings: list[str] = [warning] if warning else []
        if calibration is not None:
            metadata = {**metadata, "calibration": calibration.record}
        budget = None
        if options.budget is not None:
            metadata = {**metadata, "budget": {"bytes": options.budget, "cost": _cost_name(calibration)}}
            budget = _fit_budget(source, plan, clip, options, calibration, metadata, dst, progress or _quiet)
        else:
            _quantize_all(source, plan, clip, options, progress or _quiet, calibration)
        stats = _code_all(plan, options, progress or _quiet)
        warnings += _calibration_notes(plan, calibration, budget, src, source.metadata)
        size = None
        if not options.dry_run:
            size = write_apr(dst, {n: plan.out[n] for n in source.names}, metadata).size_bytes
        report = _report(src, dst, size, source, plan, stats, options, clip, warnings)
        report["clip_source"] = clip_source
        return report | {"calibration": calibration.record if calibration is not None else None, "budget": budget}
    finally:
        source.close()


def _check_repack(plan: _Plan, options: CompressOptions, src: Path) -> None:
    """A repack keeps the symbols: options that would choose them are refused, not silently ignored."""
    if not plan.repack:
        return
    if options.budget is not None:
        raise UsageError(f"--budget: {src} is already quantized; give its float model a budget instead")
    for flag, value in (("--bits", options.bits), ("--clip", options.clip)):
        if value is not None:
            raise UsageError(f"{flag}: {src} is already quantized and a repack keeps its symbols; "
                             f"quantize its float model with {flag} instead")  # fmt: skip


def _quiet(stage: str, done: int, total: int) -> None:
    pass


def _cost_name(calibration: Calibration | None) -> str:
    return "the model's loss on calibration text with the tensor rounded" if calibration else "squared weight error"


def _choices(
    source: _Source, plan: _Plan, clip: Clip | None, options: CompressOptions, calibration: Calibration | None,
    progress: Callable[[str, int, int], None] = _quiet,
) -> dict[str, list[Choice]]:  # fmt: skip
    """Ways to store each quantized tensor, coded for real, on every core: every width with the given clip
    (or, with none given, every clip of AUTO_CLIPS), rounded to nearest; with calibration also GPTQ's
    symbols for each setting on the tensor's lower hull; for a matrix below --min-elements also itself
    unquantized. Kept: the lower hull of (bytes, estimated cost), the only choices an allocation takes;
    `cost` is tr(E·H·Eᵀ) with a Hessian, else ||E||²."""
    hessians = calibration.hessians if calibration is not None else {}
    clips = [clip] if clip is not None else [Clip.parse(c) for c in AUTO_CLIPS]

    def one(name: str, bits: int, c: Clip, method: str) -> Choice:
        w, h = source.as_float32(name), hessians.get(name)
        rows = calibration.row_factors.get(name) if calibration is not None else None
        q = _gptq(w, h, rows, c, name, bits) if method == "gptq" else quantize(w, c, bits)
        record = _record(w, q, c, source.dtype_name(name), h, method)
        error = rounding_cost(w, q, h)
        return Choice(q, record, len(enc.encode(q, options.codec, record).tensor.payload), error, error)

    def unquantized(name: str) -> Choice:
        kept = Unquantized(plan.out[name])
        error = rounding_cost(source.as_float32(name), kept, hessians.get(name))
        return Choice(kept, {}, kept.array.nbytes, error, error)

    def hull(options_of: list[Choice]) -> list[Choice]:
        return [options_of[i] for i in lower_hull(options_of)]

    names = plan.to_quantize + plan.optional
    with ThreadPoolExecutor(max_workers=_workers(options)) as pool:
        jobs = {n: [pool.submit(one, n, b, c, "rtn") for b in C.QUANT_BITS for c in clips] for n in names}
        choices = {}
        for done, (name, js) in enumerate(jobs.items(), 1):
            choices[name] = hull([j.result() for j in js] + ([unquantized(name)] if name in plan.optional else []))
            progress("candidates", done, len(jobs))
        gptq = {n: [pool.submit(one, n, c.bits, Clip.parse(c.record["clip"]), "gptq") for c in choices[n]
                    if isinstance(c.q, Quantized)] for n in choices if n in hessians}  # fmt: skip
        for done, (name, js) in enumerate(gptq.items(), 1):
            choices[name] = hull(choices[name] + [j.result() for j in js])
            progress("GPTQ candidates", done, len(gptq))
    return choices


def _fit_budget(source, plan, clip, options, calibration, metadata, dst: Path, progress=_quiet) -> dict[str, Any]:
    """Choose each quantized tensor's width, clip and rounding so that the written file is at most --budget
    bytes, measured by writing it (a temp file beside OUT, removed); exit 5 naming the smallest size if
    nothing fits. With calibration each remaining choice is costed by the model's loss on calibration
    text with that tensor so rounded."""
    choices = _choices(source, plan, clip, options, calibration, progress)
    if calibration is not None:
        costed = [(name, c) for name, options_of in choices.items() for c in options_of]
        for done, (name, c) in enumerate(costed, 1):
            c.cost = calibration.loss_with(name, c.q.dequantize())
            progress("costing on calibration text", done, len(costed))
    smallest = {n: min(range(len(c)), key=lambda i, c=c: c[i].payload) for n, c in choices.items()}

    def stored(c: Choice) -> Any:
        return c.q.array if isinstance(c.q, Unquantized) else enc.encode(c.q, options.codec, c.record).tensor

    def measure(chosen: dict[str, int]) -> int:
        tensors = {n: stored(choices[n][chosen[n]]) if n in chosen else plan.out[n] for n in source.names}
        return measured_size(tensors, metadata, None if options.dry_run else dst.parent)

    floor = measure(smallest)
    if floor > options.budget:
        raise IntegrityError(f"--budget {options.budget:,} bytes: the smallest file reachable is {floor:,} bytes "
                             f"(every quantized tensor at {C.QUANT_BITS[0]} bits, its smallest clip)")  # fmt: skip
    payload = payload_of(choices, smallest)
    chosen, taken = allocate(choices, options.budget - (floor - payload))
    size = measure(chosen)
    while size > options.budget and undo_last(chosen, taken, choices):
        size = measure(chosen)
    steps = 0
    if calibration is not None and size <= options.budget:
        chosen, size, steps = _refined(choices, chosen, size, options.budget, calibration, measure)
    filled = 0
    if size <= options.budget:
        filled, size = _filled(choices, chosen, size, options.budget, measure)
    for name, i in chosen.items():
        _take(plan, name, choices[name][i])
    picked = [choices[n][i] for n, i in chosen.items()]
    records = [c.record for c in picked if isinstance(c.q, Quantized)]
    return {"bytes": options.budget, "file_bytes": size, "smallest_bytes": floor, "cost": _cost_name(calibration),
            "refine_steps": steps, "fill_steps": filled, "widths": _tally(c.width for c in picked),
            "clips": _tally(r["clip"] for r in records),
            **({"methods": _tally(r["method"] for r in records)} if calibration is not None else {})}  # fmt: skip


def _take(plan: _Plan, name: str, c: Choice) -> None:
    """Put the allocation's choice for one tensor into the plan (an unquantized matrix stays as it was)."""
    if isinstance(c.q, Unquantized):
        plan.rows[name] |= {"width": c.width, "stored_bytes": c.payload, "cost": c.cost}
        return
    plan.out.pop(name, None)
    plan.quantized[name] = (c.q, c.record)
    plan.rows[name] = {"name": name, "shape": list(c.q.shape), "action": f"int{c.bits}", "bits": c.bits,
                       "cost": c.cost, **c.record}  # fmt: skip


def _refined(choices, chosen, size: int, budget: int, calibration: Calibration, measure) -> tuple[dict, int, int]:
    """The allocation after a local search on the joint calibration loss (budget.refine): its last
    accepted step whose written file fits the budget (with its size and how many steps it took), else
    the allocation as it was."""
    room = payload_of(choices, chosen) + budget - size

    def joint_loss(allocation: dict[str, int]) -> np.ndarray:
        return calibration.window_losses({n: choices[n][i].q.dequantize() for n, i in allocation.items()})

    steps = refine(choices, chosen, room, joint_loss, REFINE_EVALS_PER_TENSOR * len(chosen))
    for taken in range(len(steps), 0, -1):
        refined_size = measure(steps[taken - 1])
        if refined_size <= budget:
            return steps[taken - 1], refined_size, taken
    return chosen, size, 0


def _filled(choices, chosen: dict[str, int], size: int, budget: int, measure) -> tuple[int, int]:
    """Spend the bytes the allocation left on lower weight error (budget.fill), undoing its last upgrades
    while the written file is over; updates `chosen`. Returns (upgrades kept, the file's size)."""
    before = dict(chosen)
    taken = fill(choices, chosen, payload_of(choices, chosen) + budget - size)
    filled = measure(chosen) if taken else size
    while filled > budget and undo_last(chosen, taken, choices, before):
        filled = measure(chosen) if taken else size
    return len(taken), filled


def _tally(values: Any) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def _calibration(src: Path, plan: _Plan, options: CompressOptions) -> Calibration | None:
    if not options.calibrate:
        return None
    if plan.repack:
        raise UsageError(f"--calibrate: {src} is already quantized; calibrate its float model instead")
    calib_data = Path(options.calib_data) if options.calib_data is not None else None
    calibration = calibrate(
        src, calib_data, options.calib_tokens, quantized=plan.to_quantize + plan.optional, text_field=options.text_field
    )
    calibration.record |= {"damp": DEFAULT_DAMP, "act_order": True}
    if calibration.row_hessians:  # their GPTQ keeps each row's column order, damped per row
        calibration.record |= {"row_damp": ROW_DAMP}
        # the factors depend on neither clip nor width: computed once, used by every candidate
        calibration.row_factors = {n: row_factors(h, name=n) for n, h in calibration.row_hessians.items()}
        calibration.row_hessians = {}  # 128 MiB each, not needed again
    return calibration


UNCALIBRATED_BUDGET = ("--budget without --calibrate weighs every weight's squared error alike, which does not know "
                       "which weights the model needs")  # fmt: skip


def _calibration_notes(
    plan: _Plan, calibration: Calibration | None, budget: dict[str, Any] | None, src: Path, metadata: dict[str, Any]
) -> list[str]:
    if budget is None:
        return _uncalibrated(plan) if calibration is not None else []
    if calibration is not None:
        return []
    if calibration_refusal(src, metadata) is None:
        return [f"{UNCALIBRATED_BUDGET}; --calibrate measures it (docs/performance.md)"]
    return [f"{UNCALIBRATED_BUDGET} (--calibrate, which measures it, needs a Llama-family model with a tokenizer)"]


def _uncalibrated(plan: _Plan) -> list[str]:
    """Tensors not GPTQ-rounded, and why: no linear layer reads them (an untied embedding), or GPTQ's
    symbols cost the model more on calibration text than round-to-nearest's."""
    notes = []
    none = [n for n in plan.to_quantize if "method" not in plan.rows[n]]
    if none:
        notes.append(f"{len(none)} tensor(s) are no linear layer's weights and were rounded to nearest: "
                     f"{', '.join(none[:3])}")  # fmt: skip
    worse = [n for n in plan.to_quantize if plan.rows[n].get("method") == "rtn"]
    if worse:
        notes.append(f"{len(worse)} tensor(s) kept round-to-nearest, which cost less on calibration text than GPTQ "
                     f"(a tied embedding is also the input table; a late-QAT model sits on that grid): "
                     f"{', '.join(worse[:3])}")  # fmt: skip
    return notes


@dataclass
class _Plan:
    repack: bool
    out: dict[str, Any] = field(default_factory=dict)  # what gets written: arrays and EncodedTensors
    quantized: dict[str, tuple[Quantized, dict[str, Any]]] = field(default_factory=dict)  # symbols + record
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # the report's per-tensor lines
    to_quantize: list[str] = field(default_factory=list)
    optional: list[str] = field(default_factory=list)  # with --budget: matrices below --min-elements, kept as out


def _plan(source: _Source, options: CompressOptions) -> _Plan:
    """Per tensor: repack (decode the old codec, never re-quantize), quantize later, or pass through."""
    plan = _Plan(repack=any(source.encoded(n) for n in source.names))
    quantizing = not plan.repack and options.quant == "int6"
    for name in source.names:
        if source.encoded(name):
            q = enc.decode(source.file, name)
            kept = ("clip", "rel_rmse", "source_dtype", "method", "output_error", "calib_loss")
            record = {k: v for k, v in source.file.info(name).record.items() if k in kept}
            plan.quantized[name] = (q, record)
            plan.rows[name] = {"name": name, "shape": list(q.shape), "action": "repack", "bits": q.bits, **record}
            continue
        array, dtype_name = source.array(name), source.dtype_name(name)
        if quantizing and array.ndim >= 2 and array.size >= max(options.min_elements, 1):
            if dtype_name not in FLOATS:
                raise UsageError(f"tensor {name!r}: {dtype_name} is an integer tensor and cannot be int6-quantized")
            plan.to_quantize.append(name)
            continue
        stored = array
        if quantizing and options.passthrough == "f16" and dtype_name in FLOATS[:3]:
            with np.errstate(over="ignore"):  # an overflow to Inf is refused just below
                stored = np.asarray(array).astype(np.float16)
        _refuse_nonfinite(name, stored, "F16" if stored is not array else dtype_name)
        plan.out[name] = stored
        if options.budget is not None and quantizing and _budget_may_quantize(array, dtype_name):
            plan.optional.append(name)
        err = relative_error(array, stored) if dtype_name in FLOATS[:3] else 0.0
        plan.rows[name] = {
            "name": name,
            "shape": list(np.shape(array)),
            "action": "passthrough",
            "rel_rmse": round(err, 6),
        }
    return plan


def _refuse_nonfinite(name: str, stored: np.ndarray, dtype_name: str) -> None:
    """A kept tensor holding NaN/Inf (in the input, or from a float16 overflow) would make a file `verify`
    fails: refused (exit 5) before anything is written."""
    if bad := count_nonfinite(stored, dtype_name):
        raise IntegrityError(
            f"tensor {name!r}: {bad} NaN/Inf values kept as {dtype_name}; the output would fail verify"
        )


def _budget_may_quantize(array: np.ndarray, dtype_name: str) -> bool:
    """A float matrix below --min-elements that --budget may quantize instead of keeping (F32/F16/F64: the
    kept copy is a plain numpy array)."""
    return array.ndim >= 2 and array.size >= C.BUDGET_MIN_ELEMENTS and dtype_name in FLOATS[:3]


def _quantize_one(
    weights: np.ndarray, clip: Clip | None, dtype_name: str, hessian: np.ndarray | None, name: str, bits: int,
    factors: np.ndarray | None = None,
) -> list[tuple[Quantized, dict[str, Any]]]:  # fmt: skip
    """The tensor's symbols and record: round-to-nearest, and with a Hessian the GPTQ candidate first.
    `clip` None: the best of AUTO_CLIPS for this tensor and width."""
    clip = clip if clip is not None else best_clip(weights, bits, hessian)
    candidates = [(quantize(weights, clip, bits), "rtn")]
    if hessian is not None:
        candidates.insert(0, (_gptq(weights, hessian, factors, clip, name, bits), "gptq"))
    return [(q, _record(weights, q, clip, dtype_name, hessian, method)) for q, method in candidates]


def _gptq(
    weights: np.ndarray, hessian: np.ndarray, factors: np.ndarray | None, clip: Clip, name: str, bits: int
) -> Quantized:
    """GPTQ under the tensor's per-row Hessians (their factors) when calibration has them (a small tied
    embedding), else under its layer's shared input Hessian."""
    if factors is not None:
        return gptq_rows(weights, factors, clip, name=name, bits=bits)
    return gptq_quantize(weights, hessian, clip, name=name, bits=bits)


def _record(
    weights: np.ndarray, q: Quantized, clip: Clip, dtype_name: str, hessian: np.ndarray | None, method: str
) -> dict[str, Any]:
    """The tensor's record: how its symbols were chosen and what they lose."""
    _ = q.counts  # computed here, in parallel, for the entropy bound and the rANS table
    record = {
        "clip": str(clip),
        "rel_rmse": round(relative_error(weights, q), 6),
        "source_dtype": dtype_name,
    }
    if hessian is not None:
        record |= {"method": method, "output_error": round(output_error(weights, q, hessian), 8)}
    return record


def _choose(name: str, candidates: list[tuple[Quantized, dict[str, Any]]], calibration: Calibration | None):
    """GPTQ's symbols unless they cost the model more than round-to-nearest's on calibration text: GPTQ
    lowers each layer's output error, but a tied embedding is also the input table, and a model trained
    with late QAT already sits on the round-to-nearest grid. Both losses go into the record."""
    if calibration is None or len(candidates) == 1:
        return candidates[0]
    if calibration.scored is not None and name not in calibration.scored:  # a model too large to score each
        q, record = min(candidates, key=lambda c: c[1]["output_error"])
        return q, record | {"chosen_by": "output_error"}
    losses = [calibration.loss_with(name, q.dequantize()) for q, _ in candidates]
    best = min(range(len(candidates)), key=lambda i: (losses[i], i))  # ties: GPTQ
    q, record = candidates[best]
    record["calib_loss"] = {r["method"]: round(loss, 6) for (_, r), loss in zip(candidates, losses, strict=True)}
    return q, record


def _adarounded(name: str, weights: np.ndarray, q: Quantized, record: dict[str, Any], calibration: Calibration,
                progress: Callable[[str, int, int], None]) -> tuple[Quantized, dict[str, Any]]:  # fmt: skip
    """The chosen symbols of a tied embedding refined by adaround on the calibration windows, kept only if
    they cost the model no more on calibration text than the symbols they started from."""
    refined = adaround(calibration.model, name, weights, q, calibration.windows,
                       progress=lambda done, total: progress("adaround", done, total))  # fmt: skip
    losses = {**record["calib_loss"], "adaround": round(calibration.loss_with(name, refined.dequantize()), 6)}
    kept = losses["adaround"] <= losses[record["method"]]  # as recorded, so the record explains the choice
    summary = {"from": record["method"], "steps": ADAROUND_STEPS, "kept": kept,
               "changed": round(float(np.mean(refined.symbols != q.symbols)), 6)}  # fmt: skip
    if kept:
        record = _record(weights, refined, Clip.parse(record["clip"]), record["source_dtype"],
                         calibration.hessians[name], "adaround")  # fmt: skip
    return (refined if kept else q), record | {"calib_loss": losses, "adaround": summary}


def _workers(options: CompressOptions) -> int:
    return options.workers or os.cpu_count() or 1


def _quantize_all(
    source: _Source, plan: _Plan, clip: Clip | None, options: CompressOptions,
    progress: Callable[[str, int, int], None], calibration: Calibration | None,
) -> None:  # fmt: skip
    """numpy releases the GIL: one thread per core."""
    hessians = calibration.hessians if calibration is not None else {}
    factors = calibration.row_factors if calibration is not None else {}
    widths = parse_bits(options.bits)

    def one(n: str) -> list[tuple[Quantized, dict[str, Any]]]:  # read in the worker: one tensor in memory each
        return _quantize_one(source.as_float32(n), clip, source.dtype_name(n), hessians.get(n), n,
                             widths.get(tensor_kind(n), widths["default"]), factors.get(n))  # fmt: skip

    with ThreadPoolExecutor(max_workers=_workers(options)) as pool:
        jobs = {n: pool.submit(one, n) for n in plan.to_quantize}
        for done, (name, job) in enumerate(jobs.items(), 1):
            q, record = _choose(name, job.result(), calibration)
            if calibration is not None and calibration.windows is not None and name in factors:
                q, record = _adarounded(name, source.as_float32(name), q, record, calibration, progress)
            plan.quantized[name] = (q, record)
            plan.rows[name] = {"name": name, "shape": list(q.shape), "action": f"int{q.bits}", "bits": q.bits, **record}
            progress("quantize", done, len(jobs))


def _code_one(q: Quantized, record: dict[str, Any], codec: str, timed_decode: bool) -> tuple[Any, float, float]:
    encoded = enc.encode(q, codec, record)
    decode_s = 0.0
    if timed_decode:  # time the decoder, and prove the round trip while at it
        start = time.perf_counter()
        decoded = CODERS[codec].decode(enc.body_of(encoded.tensor), q.symbols.size)
        decode_s = time.perf_counter() - start
        if not np.array_equal(decoded, q.symbols.reshape(-1)):
            raise AssertionError(f"codec {codec} failed to round-trip")
    return encoded.tensor, encoded.encode_seconds, decode_s


def _code_all(plan: _Plan, options: CompressOptions, progress: Callable[[str, int, int], None]) -> dict[str, Any]:
    """Code every quantized tensor with the chosen codec (with --compare, with every codec, on every core:
    LZMA and zstd release the GIL). Returns per-codec sizes and timings."""
    codecs = list(CODERS) if options.compare else [options.codec]
    stats = {c: {"bytes": 0, "symbol_bytes": 0, "encode_s": 0.0, "decode_s": 0.0} for c in codecs}
    with ThreadPoolExecutor(max_workers=_workers(options)) as pool:
        jobs = {
            (name, codec): pool.submit(_code_one, q, record, codec, options.compare)
            for name, (q, record) in plan.quantized.items()
            for codec in codecs
        }
        for done, ((name, codec), job) in enumerate(jobs.items(), 1):
            tensor, encode_s, decode_s = job.result()
            stats[codec]["bytes"] += len(tensor.payload)
            stats[codec]["symbol_bytes"] += len(enc.body_of(tensor))  # after the row scales
            stats[codec]["encode_s"] += encode_s
            stats[codec]["decode_s"] += decode_s
            if codec == options.codec:
                plan.out[name] = tensor
                plan.rows[name]["stored_bytes"] = len(tensor.payload)
            progress("code", done, len(jobs))
    return stats


def _codec_line(s: dict[str, Any], weights: int, entropy_bytes: float) -> dict[str, Any]:
    """A codec's bytes: `bytes` (its payloads) = `symbol_bytes` (the coded symbols, with the coder's own
    tables and headers) + `scale_bytes` (the row scales, LZMA-coded when smaller); `over_entropy_pct` sets
    the symbols alone against the order-0 entropy of the symbols, the same basis for every codec."""
    mb = weights / 1e6
    symbols = s["symbol_bytes"]
    return {
        "bytes": s["bytes"],
        "symbol_bytes": symbols,
        "scale_bytes": s["bytes"] - symbols,
        "bits_per_weight": round(s["bytes"] * 8 / weights, 4) if weights else 0.0,
        "over_entropy_pct": round((symbols / entropy_bytes - 1) * 100, 4) if entropy_bytes else 0.0,
        "encode_mb_s": round(mb / s["encode_s"], 3) if s["encode_s"] else None,
        "decode_mb_s": round(mb / s["decode_s"], 3) if s["decode_s"] else None,
    }


def _report(src, dst, size, source, plan, stats, options, clip, warnings) -> dict[str, Any]:
    entropy_bytes, weights = 0.0, 0
    for name, (q, _) in plan.quantized.items():
        n = q.symbols.size
        weights += n
        bits = order0_entropy_bits(q.symbols, q.counts)
        entropy_bytes += bits / 8  # the symbols alone: scales and tables are their own lines
        plan.rows[name]["entropy_bits_per_weight"] = round(bits / n, 4) if n else 0.0
    return {
        "input": str(src),
        "output": None if options.dry_run else str(dst),
        "dry_run": options.dry_run,
        "input_bytes": src.stat().st_size,
        "output_bytes": size,
        "mode": "repack" if plan.repack else options.quant,
        "codec": options.codec,
        "clip": None if plan.repack or options.quant != "int6" else (AUTO if clip is None else str(clip)),
        "params": sum(int(np.prod(r["shape"])) for r in plan.rows.values()),
        "quantized_params": weights,
        "raw_float_bytes": 4 * weights,
        "entropy_bound_bytes": round(entropy_bytes),
        "codecs": {c: _codec_line(s, weights, entropy_bytes) for c, s in stats.items()},
        "tensors": [plan.rows[n] for n in source.names],
        "warnings": warnings,
    }
