"""`compress --budget BYTES`: each quantized tensor's width, clip and rounding chosen so that the file fits.

Every quantized tensor gets candidates (each width 4..8 bits, with every clip `compress` may choose, and
with calibration GPTQ's symbols too), each coded for real, so its size is the exact payload, not a
nominal bits/weight. A matrix below --min-elements (of at least BUDGET_MIN_ELEMENTS) has these and its
unquantized self (`Unquantized`), so it is quantized only where that buys more than it costs. A
candidate's cost is an estimate of what the rounding does to the model: with calibration, the model's
loss on calibration text with the tensor so rounded (after a first cut by the layer's output error
tr(E·H·Eᵀ) under its input Hessian); without, the squared error of the weights ||E||². The allocation
starts every tensor at its smallest candidate and spends the remaining bytes greedily on the upgrade
with the largest cost saved per byte (on each tensor's lower convex hull, so the greedy choice is the
knapsack's optimum up to the last upgrade). Then the file is written and measured; while it is over the
budget, the upgrade that saved least per byte is undone. With calibration a short local search
(`refine`) then corrects the allocation on the loss with every tensor rounded at once. Bytes still left
(no upgrade lowers the estimated cost) buy lower weight error (`fill`). A budget even the smallest file
cannot meet is refused, naming that size.
"""

from __future__ import annotations

import heapq
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aprtool.codecs.quant import Quantized, as_rows, error_sums
from aprtool.container import write_apr

# Joint-loss evaluations the local search (refine) may spend, per quantized tensor: one forward pass over
# the calibration selection each.
REFINE_EVALS_PER_TENSOR = 4
# A move is kept only if it lowers the loss by this many standard errors of its per-window change: smaller
# gains on the 8,192 selection tokens did not hold on held-out text (docs/performance.md).
REFINE_MIN_Z = 2.0


@dataclass(frozen=True)
class Unquantized:
    """A matrix below --min-elements left unquantized, as `compress` stores such tensors (fp16 unless
    --passthrough keep): one of its choices under --budget, beside its quantized ones."""

    array: np.ndarray

    @property
    def bits(self) -> int:
        return self.array.dtype.itemsize * 8

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def width(self) -> str:
        return f"f{self.bits}"

    def dequantize(self, dtype: Any = np.float32) -> np.ndarray:
        return np.asarray(self.array, dtype)

    def dequantize_rows(self, rows: slice, dtype: Any = np.float32) -> np.ndarray:
        return np.asarray(self.array.reshape(as_rows(self.shape))[rows], dtype)


@dataclass
class Choice:
    """One way to store one tensor."""

    q: Quantized | Unquantized
    record: dict[str, Any]
    payload: int  # exact bytes the codec writes (scales + body)
    cost: float  # the estimated loss increase (see the module docstring)
    error: float | None = None  # the weights' rounding error tr(E·H·Eᵀ) or ||E||², when cost is not it

    @property
    def weight_error(self) -> float:
        return self.cost if self.error is None else self.error

    @property
    def bits(self) -> int:
        return self.q.bits

    @property
    def width(self) -> str:
        """`int5`, or `f16` for a matrix left unquantized."""
        return self.q.width if isinstance(self.q, Unquantized) else f"int{self.q.bits}"


def payload_of(choices: dict[str, list[Choice]], chosen: dict[str, int]) -> int:
    """The payload bytes of an allocation (each tensor's chosen candidate)."""
    return sum(choices[n][i].payload for n, i in chosen.items())


def rounding_cost(weights: np.ndarray, q: Quantized | Unquantized, hessian: np.ndarray | None) -> float:
    """tr(E·H·Eᵀ) with the layer's Hessian, else ||E||²: E is the rounding error of the weights."""
    return error_sums(weights, q, hessian)[0]


def lower_hull(choices: list[Choice]) -> list[int]:
    """Indices of the choices on the lower convex hull of (payload, cost), by payload: the only upgrades
    a greedy allocation should take (a dearer choice that costs more is never worth its bytes)."""
    order = sorted(range(len(choices)), key=lambda i: (choices[i].payload, choices[i].cost))
    kept: list[int] = []
    for i in order:
        if kept and choices[i].cost >= choices[kept[-1]].cost:
            continue  # more bytes, no less cost
        while len(kept) >= 2:
            a, b = choices[kept[-2]], choices[kept[-1]]
            c = choices[i]
            # b is above the segment a-c: c's saving per byte beats b's
            if (a.cost - b.cost) * (c.payload - a.payload) <= (a.cost - c.cost) * (b.payload - a.payload):
                kept.pop()
            else:
                break
        kept.append(i)
    return kept


def allocate(choices: dict[str, list[Choice]], payload_budget: int) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """Per tensor the index of its choice, and the upgrades taken in order (name, index), so the
    least valuable ones can be undone last-first."""
    hulls = {name: lower_hull(c) for name, c in choices.items()}
    at = {name: 0 for name in choices}  # position on the hull
    spent = sum(choices[n][h[0]].payload for n, h in hulls.items())
    heap: list[tuple[float, str]] = []

    def push(name: str) -> None:
        h, k = hulls[name], at[name]
        if k + 1 < len(h):
            cur, nxt = choices[name][h[k]], choices[name][h[k + 1]]
            gain = (cur.cost - nxt.cost) / max(nxt.payload - cur.payload, 1)
            heapq.heappush(heap, (-gain, name))

    for name in choices:
        push(name)
    taken: list[tuple[str, int]] = []
    while heap:
        _, name = heapq.heappop(heap)
        h, k = hulls[name], at[name]
        extra = choices[name][h[k + 1]].payload - choices[name][h[k]].payload
        if spent + extra > payload_budget:
            continue  # this upgrade does not fit; a smaller one elsewhere still may
        spent += extra
        at[name] = k + 1
        taken.append((name, h[k + 1]))
        push(name)
    return {name: hulls[name][at[name]] for name in choices}, taken


def significantly_lower(trial: np.ndarray, best: np.ndarray) -> bool:
    """Whether per-window losses `trial` are lower than `best` (the same windows) by more than
    REFINE_MIN_Z standard errors of their paired difference: a real gain, not the selection's noise."""
    diff = np.asarray(trial, np.float64) - np.asarray(best, np.float64)
    se = float(diff.std(ddof=1)) / math.sqrt(diff.size) if diff.size > 1 else 0.0
    return float(diff.mean()) < -REFINE_MIN_Z * se  # with se 0 (one window): any fall


def refine(
    choices: dict[str, list[Choice]], chosen: dict[str, int], payload_budget: int,
    joint_loss: Callable[[dict[str, int]], np.ndarray], max_evals: int,
) -> list[dict[str, int]]:  # fmt: skip
    """Local search on the model's measured loss with every tensor rounded at once, which the allocation's
    sum of one-tensor costs misjudges at coarse widths (errors compound): move one tensor a step up its
    hull, or one up and another down, when the payloads fit and the joint loss (per selection window) is
    significantly lower. The sum of costs only orders the tries. Returns the accepted allocations in
    order (each lower than the one before)."""
    hulls = {n: lower_hull(c) for n, c in choices.items()}
    if any(i not in hulls[n] for n, i in chosen.items()):
        return []
    pos = {n: hulls[n].index(i) for n, i in chosen.items()}

    def at(n: str, k: int) -> Choice:
        return choices[n][hulls[n][k]]

    def moves() -> list[tuple[float, tuple[tuple[str, int], ...]]]:
        spent = sum(at(n, k).payload for n, k in pos.items())
        out = []
        for up in (n for n in pos if pos[n] + 1 < len(hulls[n])):
            now, nxt = at(up, pos[up]), at(up, pos[up] + 1)
            more, gain = nxt.payload - now.payload, now.cost - nxt.cost
            if spent + more <= payload_budget:
                out.append((-gain, ((up, 1),)))
            for down in (n for n in pos if n != up and pos[n] > 0):
                less = at(down, pos[down]).payload - at(down, pos[down] - 1).payload
                if spent + more - less <= payload_budget:
                    out.append((at(down, pos[down] - 1).cost - at(down, pos[down]).cost - gain, ((down, -1), (up, 1))))
        return sorted(out)

    def allocation(p: dict[str, int]) -> dict[str, int]:
        return {n: hulls[n][k] for n, k in p.items()}

    best, evals, accepted = joint_loss(allocation(pos)), 1, []
    while evals < max_evals:
        for _, move in moves():
            if evals >= max_evals:
                return accepted
            trial = dict(pos)
            for n, step in move:
                trial[n] += step
            loss, evals = joint_loss(allocation(trial)), evals + 1
            if significantly_lower(loss, best):
                pos, best = trial, loss
                accepted.append(allocation(pos))
                break
        else:
            break  # no move lowers the loss
    return accepted


def fill(choices: dict[str, list[Choice]], chosen: dict[str, int], payload_budget: int) -> list[tuple[str, int]]:
    """Bytes left once no upgrade lowers the estimated cost: the allocation stops there when the model's
    loss cannot tell these tensors' finer settings apart (their differences are below what the
    calibration text measures). They go to the weights' own error instead: the upgrade that divides a
    tensor's error most per byte, again and again, while the payloads fit. Updates `chosen`; returns the
    upgrades in order (name, index), to be undone last-first like the allocation's."""
    spent = payload_of(choices, chosen)
    taken: list[tuple[str, int]] = []
    while True:
        best: tuple[float, str, int] | None = None
        for name, i in chosen.items():
            now = choices[name][i]
            for j, c in enumerate(choices[name]):
                extra = c.payload - now.payload
                if extra <= 0 or spent + extra > payload_budget or c.weight_error >= now.weight_error:
                    continue
                gain = math.inf if c.weight_error <= 0 else math.log(now.weight_error / c.weight_error) / extra
                if best is None or gain > best[0]:
                    best = (gain, name, j)
        if best is None:
            return taken
        _, name, j = best
        spent += choices[name][j].payload - choices[name][chosen[name]].payload
        chosen[name] = j
        taken.append((name, j))


def undo_last(
    chosen: dict[str, int], taken: list[tuple[str, int]], choices: dict[str, list[Choice]],
    before: dict[str, int] | None = None,
) -> bool:  # fmt: skip
    """Step back the most recent upgrade (the one that saved least per byte) to the tensor's previous
    choice: its upgrade before, else its choice in `before` (default: its smallest). False if none is left."""
    if not taken:
        return False
    name, _ = taken.pop()
    earlier = [i for n, i in taken if n == name]
    chosen[name] = earlier[-1] if earlier else (before or {}).get(name, lower_hull(choices[name])[0])
    return True


def measured_size(tensors: dict[str, Any], metadata: dict[str, Any], directory: Path | None) -> int:
    """The exact size of the APR file these tensors and metadata make: written to a temp file of our
    own in `directory` (beside OUT; None: the system's temp directory) and removed."""
    fd, name = tempfile.mkstemp(prefix=".aprtool-budget-", suffix=".apr", dir=directory)
    os.close(fd)
    try:
        return write_apr(Path(name), tensors, metadata).size_bytes
    finally:
        Path(name).unlink(missing_ok=True)
