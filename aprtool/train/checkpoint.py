"""Crash-safe tiered checkpoints as APR files, with every piece of training state and no pickle.

RUN_DIR/ckpt/
    step-NNNNNN.apr   every --checkpoint-every steps (or minutes); the last --keep-last are kept
                      (`distill` names them ckpt-step-NNNNNN.apr: CheckpointDir's `prefix`)
    epoch-NNN.apr     one per completed epoch, kept, with epoch-NNN.metadata.json beside it
    best.apr          best held-out loss so far
    latest            the file name of the newest complete, verified checkpoint (atomically replaced)

Each checkpoint holds the model weights under their HF names, plus `__training__.*` tensors:
optimizer moments and steps, and the python / numpy / torch (CPU, CUDA) RNG states. Scalars (step,
data position, losses, early-stopping state, config) live in the metadata under "training".
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aprtool.atomic import atomic_write_text, sweep_temp_files
from aprtool.container import constants as C
from aprtool.container import open_apr, verify_file, write_apr
from aprtool.errors import (
    AprError,
    FileAccessError,
    FormatError,
    IntegrityError,
    MetadataError,
)
from aprtool.paths import read_input, read_json

P = C.TRAINING_PREFIX
STEP_PREFIX = "step-"
EPOCH_RE = re.compile(r"^epoch-(\d{3,})\.apr$")
DELETING = ".deleting-"  # retention renames out of the step-* pattern before it deletes


@dataclass
class Checkpoint:
    path: Path
    weights: dict[str, np.ndarray]
    optimizer: dict[str, Any]  # torch optimizer state_dict
    training: dict[str, Any]  # the metadata "training" object
    metadata: dict[str, Any]


def rng_tensors() -> dict[str, Any]:
    state = random.getstate()
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        P + "rng.python": np.array(state[1], dtype=np.int64),
        P + "rng.numpy": np.asarray(np_state[1], dtype=np.int64),
        P + "rng.torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[P + f"rng.cuda.{i}"] = s
    return out


def rng_metadata() -> dict[str, Any]:
    state = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": {"version": state[0], "gauss_next": state[2]},
        "numpy": {"kind": np_state[0], "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
    }  # fmt: skip


def restore_rng(tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    py = meta["python"]
    random.setstate((py["version"], tuple(int(x) for x in tensors[P + "rng.python"]), py["gauss_next"]))
    n = meta["numpy"]
    np.random.set_state(
        (
            n["kind"],
            tensors[P + "rng.numpy"].astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(torch.from_numpy(np.array(tensors[P + "rng.torch"], dtype=np.uint8)))
    cuda = sorted(k for k in tensors if k.startswith(P + "rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.from_numpy(np.array(tensors[k], dtype=np.uint8)) for k in cuda])


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: list[str]) -> tuple[dict[str, Any], dict]:
    """Optimizer state as named tensors plus its param groups (hyperparameters, parameter indices).

    `names[i]` is the name of the optimizer's i-th parameter (groups concatenated in order)."""
    sd = optimizer.state_dict()
    out = {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            out[f"{P}optim.{names[index]}.{key}"] = value.detach().to("cpu", copy=True).reshape(value.shape)
    return out, {"param_groups": sd["param_groups"]}


def optimizer_state(tensors: dict[str, np.ndarray], meta: dict[str, Any], names: list[str]) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for index, name in enumerate(names):
        prefix = f"{P}optim.{name}."
        entries = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if entries:
            state[index] = {k: torch.from_numpy(np.array(v)) for k, v in entries.items()}
    groups = [{**g, "betas": tuple(g["betas"])} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def snapshot(
    weights: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    param_names: list[str],
    training: dict[str, Any],
    metadata: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint's tensors and metadata, copied now: what later steps do cannot change what is written."""
    optim, optim_meta = optimizer_tensors(optimizer, param_names)
    tensors = {**{k: v.detach().to("cpu", copy=True) for k, v in weights.items()}, **optim, **rng_tensors()}
    saved_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # this file's own save time
    training = {**copy.deepcopy(training), "saved_at": saved_at, "optimizer": optim_meta, "rng": rng_metadata()}
    return tensors, {**copy.deepcopy(metadata), "training": training}


def write_checkpoint(path: Path, *args: Any) -> int:
    """Snapshot and write one checkpoint atomically; returns its tensor count. Raises AprError on failure."""
    tensors, metadata = snapshot(*args)
    write_apr(path, tensors, metadata)
    return len(tensors)


def verify_checkpoint(path: Path, tensor_count: int) -> None:
    report = verify_file(path, expect_tensors=tensor_count)
    if not report.valid:
        raise IntegrityError(f"{path.name}: written but does not verify: {'; '.join(report.errors)}")


def save_checkpoint(path: Path, *args: Any) -> Path:
    """Write and verify, in the caller's thread (the trainer does both in the background instead)."""
    verify_checkpoint(path, write_checkpoint(path, *args))
    return path


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint fully (checksums verified); weights and training state split apart."""
    report = verify_file(path)
    if not report.valid:
        raise report.error(f"checkpoint {path}")
    with open_apr(path) as f:
        tensors = {n: np.array(f.numpy(n)) for n in f.names()}
        metadata = dict(f.metadata)
    training = metadata.get("training")
    if not isinstance(training, dict) or "step" not in training:
        raise FormatError(f"{path}: not a training checkpoint (no 'training' metadata)")
    for part in ("config", "state", "optimizer", "rng"):
        if not isinstance(training.get(part), dict):
            raise MetadataError(f"{path}: training.{part} is missing or not an object")
    weights = {k: v for k, v in tensors.items() if not k.startswith(P)}
    state = {k: v for k, v in tensors.items() if k.startswith(P)}
    return Checkpoint(path, weights, {"tensors": state}, training, metadata)


MOMENTS = ("exp_avg", "exp_avg_sq", "step")  # AdamW's per-parameter state: all three, or none before a step
MT_WORDS = 624  # the Mersenne Twister's state: 624 32-bit words (Python's tuple adds the position)


def _expected_state(model: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Every `__training__.*` tensor a checkpoint of this model may hold, with its shape and dtype."""
    expected: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    f32 = np.dtype(np.float32)
    for name, param in model.named_parameters():
        shape, dtype = tuple(param.shape), _numpy_dtype(param)
        expected |= {f"{P}optim.{name}.exp_avg": (shape, dtype), f"{P}optim.{name}.exp_avg_sq": (shape, dtype),
                     f"{P}optim.{name}.step": ((), f32)}  # fmt: skip
    for name, weight in model.weights().items():
        expected[f"{P}average.{name}"] = (tuple(weight.shape), _numpy_dtype(weight))
    expected[P + "rng.python"] = ((MT_WORDS + 1,), np.dtype(np.int64))
    expected[P + "rng.numpy"] = ((MT_WORDS,), np.dtype(np.int64))
    expected[P + "rng.torch"] = (tuple(torch.get_rng_state().shape), np.dtype(np.uint8))
    return expected


def _numpy_dtype(tensor: torch.Tensor) -> np.dtype:
    return np.dtype(str(tensor.dtype).removeprefix("torch."))


def _check_tensors(where: str, tensors: dict[str, np.ndarray], model: Any) -> None:
    """Every training tensor by name, shape and dtype; each parameter's AdamW state complete; RNG words in range."""
    expected = _expected_state(model)
    for name, array in tensors.items():
        if name.startswith(P + "rng.cuda."):
            continue
        if name not in expected or tuple(array.shape) != expected[name][0]:
            raise MetadataError(f"{where}: training tensor {name!r} {tuple(array.shape)} does not fit the model")
        if array.dtype != expected[name][1]:
            raise MetadataError(
                f"{where}: training tensor {name!r} is {array.dtype}, the model's is {expected[name][1]}"
            )
    for name, _ in model.named_parameters():
        held = [k for k in MOMENTS if f"{P}optim.{name}.{k}" in tensors]
        if held and len(held) != len(MOMENTS):
            missing = next(k for k in MOMENTS if k not in held)
            raise MetadataError(f"{where}: training tensor '{P}optim.{name}.{missing}' is missing")
    for name in (P + "rng.python", P + "rng.numpy"):
        words = tensors.get(name)
        if words is None:
            raise MetadataError(f"{where}: training tensor {name!r} is missing")
        if words.size and (words.min() < 0 or words.max() >= 1 << 32):
            raise MetadataError(f"{where}: training tensor {name!r} holds a value outside 0..2^32-1")


def _check_rng_metadata(where: str, rng: dict[str, Any], python_words: np.ndarray) -> None:
    """The RNG metadata as `rng_metadata` writes it, checked before random/numpy are handed it."""
    py, n = rng.get("python"), rng.get("numpy")
    ok = (
        isinstance(py, dict) and type(py.get("version")) is int and _float_or_none(py.get("gauss_next"))
        and isinstance(n, dict) and n.get("kind") == "MT19937" and type(n.get("pos")) is int
        and 0 <= n["pos"] <= MT_WORDS and n.get("has_gauss") in (0, 1) and _float_or_none(n.get("cached_gaussian"))
        and 0 <= int(python_words[-1]) <= MT_WORDS
    )  # fmt: skip
    if not ok:
        raise MetadataError(f"{where}: training.rng is not the state of Python's and numpy's MT19937 generators")


def _float_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value))


def check_state(ckpt: Checkpoint, model: Any, optimizer: torch.optim.Optimizer) -> None:
    """Everything a restore reads fits this model, before anything is restored (MetadataError, exit 4):
    the weights and every training tensor by name, shape and dtype, and the metadata parts by type."""
    where = ckpt.path.name
    weights = {n: tuple(w.shape) for n, w in model.weights().items()}
    got = {n: tuple(a.shape) for n, a in ckpt.weights.items()}
    for name in sorted(set(weights) | set(got)):
        if weights.get(name) != got.get(name):
            raise MetadataError(f"{where}: tensor {name!r} is {got.get(name)}, the model's is {weights.get(name)}")
    tensors = ckpt.optimizer["tensors"]
    _check_tensors(where, tensors, model)
    _check_rng_metadata(where, ckpt.training["rng"], tensors[P + "rng.python"])
    groups = ckpt.training["optimizer"].get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(optimizer.param_groups):
        raise MetadataError(f"{where}: training.optimizer.param_groups does not match the model's parameter groups")
    for saved, live in zip(groups, optimizer.param_groups, strict=True):
        if not isinstance(saved, dict) or any(
            _kind(saved.get(k)) != _kind(v) for k, v in live.items() if k != "params"
        ):
            raise MetadataError(f"{where}: training.optimizer.param_groups holds a value of the wrong type")


def _kind(value: Any) -> str:
    """A hyperparameter's type as JSON keeps it (a tuple comes back a list, a float may be written as an int)."""
    if value is None or isinstance(value, bool):
        return type(value).__name__
    if isinstance(value, int | float):
        return "number" if math.isfinite(value) else "non-finite"
    if isinstance(value, list | tuple):
        return "list:" + ",".join(_kind(v) for v in value)
    return type(value).__name__


def restore_training(ckpt: Checkpoint, model: Any, optimizer: torch.optim.Optimizer, names: list[str]) -> dict:
    """Put a checkpoint's weights, optimizer state and RNG states back; returns its loop state dict.
    Everything is checked against the model first; what the libraries still refuse is exit 4 too."""
    check_state(ckpt, model, optimizer)
    tensors = ckpt.optimizer["tensors"]
    stages = {
        "weights": lambda: model.load_weights(ckpt.weights),
        "training.optimizer": lambda: optimizer.load_state_dict(
            optimizer_state(tensors, ckpt.training["optimizer"], names)
        ),
        "training.rng": lambda: restore_rng(tensors, ckpt.training["rng"]),
    }
    for part, restore in stages.items():
        try:
            restore()
        except (AprError, KeyError, IndexError, TypeError, ValueError, OverflowError, RuntimeError) as exc:
            detail = f"{type(exc).__name__}: {str(exc)[:120]}"
            raise MetadataError(f"{ckpt.path.name}: {part} cannot be restored ({detail})") from None
    return ckpt.training["state"]


class CheckpointDir:
    """The tiers in RUN_DIR/ckpt, with retention, the `latest` pointer and crash-leftover sweeping."""

    def __init__(self, directory: Path, keep_last: int, log: Any, *, prefix: str = STEP_PREFIX) -> None:
        self.dir = directory
        self.keep_last = keep_last
        self.keep_epochs = 0  # the trainer sets it (pretrain: --keep-epochs)
        self.log = log
        self.prefix = prefix  # step checkpoints are PREFIX + NNNNNN + .apr
        self._step_re = re.compile(rf"^{re.escape(prefix)}(\d{{6,}})\.apr$")
        self._worker: ThreadPoolExecutor | None = None

    def save(
        self,
        path: Path,
        weights: dict[str, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        param_names: list[str],
        training: dict[str, Any],
        metadata: dict[str, Any],
        *,
        pointer: bool = True,
        on_saved: Callable[[Path], None] | None = None,
    ) -> None:
        """Snapshot the state on the caller's thread, then write, fsync and verify it in the background.

        At most one save is in flight: the previous one is waited for first. Only a file that verifies
        becomes `latest` (`pointer`), lets retention run, and is passed to `on_saved`. A failed write is
        logged loudly and training goes on."""
        self.finish()
        try:
            tensors, meta = snapshot(weights, optimizer, param_names, training, metadata)
        except (AprError, OSError) as exc:
            self.log(f"WARNING: checkpoint {path.name} FAILED to write ({exc}); training continues")
            return

        def job() -> None:
            if not try_save(path.name, lambda: write_apr(path, tensors, meta), self.log):
                return
            try:
                verify_checkpoint(path, len(tensors))
                if pointer:
                    self.set_latest(path)
                    self.retain()
                    if on_saved is not None:
                        on_saved(path)
                elif EPOCH_RE.match(path.name):
                    self.retain_epochs()
            except (AprError, OSError) as exc:
                self.log(f"WARNING: checkpoint {path.name} FAILED ({exc}); `latest` is unchanged; training continues")

        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aprtool-ckpt")
        self._worker.submit(job)

    def finish(self) -> None:
        """Wait for the save in flight (before the next one, before exiting, before reading `latest`)."""
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None

    def prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        leftovers = sweep_temp_files(self.dir)
        for p in self.dir.glob(DELETING + "*"):
            p.unlink(missing_ok=True)
            leftovers.append(p)
        if leftovers:
            self.log(f"swept {len(leftovers)} leftover file(s) of an interrupted write from {self.dir}")

    def step_path(self, step: int) -> Path:
        return self.dir / f"{self.prefix}{step:06d}.apr"

    def epoch_path(self, epoch: int) -> Path:
        return self.dir / f"epoch-{epoch:03d}.apr"

    @property
    def best_path(self) -> Path:
        return self.dir / "best.apr"

    def set_latest(self, path: Path) -> None:
        atomic_write_text(self.dir / "latest", path.name + "\n")

    def latest(self) -> Path | None:
        pointer = self.dir / "latest"
        if not pointer.is_file():
            return None
        try:
            name = read_input(pointer, 4096).decode("utf-8").strip()
        except (AprError, UnicodeDecodeError):
            raise FormatError(f"{pointer}: unreadable or not text") from None
        if not name or "/" in name or "\\" in name or name.startswith(".") or not name.endswith(".apr"):
            raise FormatError(f"{pointer}: does not name a checkpoint file")
        return self.dir / name

    def resolve(self, resume: str) -> Path:
        """`latest` (the pointer, else the newest step checkpoint that verifies) or a path."""
        if resume != "latest":
            path = Path(resume)
            if not path.is_file():
                raise FileAccessError(f"--resume {resume}: no such checkpoint")
            return path
        candidates, problem = [], None
        try:
            pointed = self.latest()
        except FormatError as exc:
            pointed, problem = None, f"{exc}"
        if pointed is not None:
            candidates.append(pointed)
        candidates += self.step_files()[::-1]  # newest first
        for path in candidates:
            if path.is_file() and verify_file(path).valid:
                if pointed is not None and path != pointed:
                    problem = f"{pointed.name}, which `latest` names, is missing or does not verify"
                if problem:
                    self.log(f"WARNING: {problem}; resuming from {path.name}, the newest checkpoint that verifies")
                return path
        raise FileAccessError(f"--resume latest: no complete checkpoint in {self.dir}")

    def step_files(self) -> list[Path]:
        """Step checkpoints, oldest first (by step number: step 1,000,000 has a seventh digit)."""
        found = [(self._step_re.match(p.name), p) for p in self.dir.glob(f"{self.prefix}*.apr")]
        return [p for _, p in sorted((int(m.group(1)), p) for m, p in found if m is not None)]

    def retain(self) -> None:
        """Keep the newest `keep_last` step checkpoints: rename out of the pattern, then delete."""
        steps = self.step_files()
        latest = self.latest()
        for old in steps[: max(len(steps) - self.keep_last, 0)]:
            if old == latest:
                continue
            doomed = old.with_name(DELETING + old.name)
            old.rename(doomed)
            doomed.unlink()

    def retain_epochs(self) -> None:
        """Keep the newest `keep_epochs` epoch checkpoints (their small .metadata.json records all stay),
        so a heavily wrapped small corpus cannot fill the disk with full training states."""
        found = [(EPOCH_RE.match(p.name), p) for p in self.dir.glob("epoch-*.apr")]
        best = self.best_epoch()
        epochs = sorted((int(m.group(1)), p) for m, p in found if m is not None)
        for n, old in epochs[: max(len(epochs) - self.keep_epochs, 0)]:
            if n == best:  # the newest keep_epochs stay, and the best epoch's file too
                continue
            doomed = old.with_name(DELETING + old.name)
            old.rename(doomed)
            doomed.unlink()

    def best_epoch(self) -> int | None:
        """The epoch whose end-of-epoch held-out loss is the lowest, from the epoch records (unreadable or
        malformed records are passed over: they only decide which file retention spares)."""
        best: tuple[float, int] | None = None
        for path in self.dir.glob("epoch-*.metadata.json"):
            try:
                record = read_json(path)
            except (AprError, OSError):
                continue
            loss = record.get("val_loss") if isinstance(record, dict) else None
            epoch = record.get("epoch") if isinstance(record, dict) else None
            if type(epoch) is int and isinstance(loss, float) and math.isfinite(loss):
                best = min(best or (loss, epoch), (loss, epoch))
        return None if best is None else best[1]

    def write_record(self, epoch: int, data: dict[str, Any]) -> None:
        """epoch-NNN.metadata.json: the epoch's facts; kept when its checkpoint is not (--keep-epochs)."""
        atomic_write_text(self.dir / f"epoch-{epoch:03d}.metadata.json", json.dumps(data, indent=1) + "\n")


def try_save(label: str, save: Any, log: Any) -> bool:
    """Run a checkpoint save; a failure is logged loudly and training goes on."""
    try:
        save()
        return True
    except (AprError, OSError) as exc:
        log(f"WARNING: checkpoint {label} FAILED to write ({exc}); training continues")
        return False
