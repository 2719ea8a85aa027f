"""Batches of training windows that wrap around the corpus, with a position that can be saved.

The training tokens are cut into non-overlapping windows of seq_len + 1 tokens. Each epoch visits
every window once in an order drawn from (seed, epoch), so the position (epoch, cursor) alone fixes
every future batch: resuming from it replays exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aprtool.errors import UsageError


@dataclass
class LoaderState:
    epoch: int = 0  # epochs completed so far
    cursor: int = 0  # windows of the current epoch already used


class BatchLoader:
    def __init__(
        self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, state: LoaderState,
        rank: int = 0, world: int = 1,
    ) -> None:  # fmt: skip
        self.windows = (len(tokens) - 1) // seq_len
        if self.windows < 1:
            raise UsageError(
                f"corpus too small: {len(tokens)} training tokens cannot fill one window of "
                f"{seq_len + 1} tokens; use a larger corpus or a smaller --seq-len"
            )
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.state = state
        self.rank, self.world = rank, world  # data parallel: each step deals world x batch windows
        self._order_epoch = -1
        self._order = np.zeros(0, np.int64)

    def _order_for(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.windows)
            self._order_epoch = epoch
        return self._order

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each [batch, seq_len] int64. Wraps into the next epoch as needed.

        With several ranks, one global batch of world x batch windows is drawn and rank r keeps the
        r-th slice: the ranks read disjoint windows, and the position stays global, so a run
        checkpointed with N ranks resumes with any other number."""
        rows = []
        mine = range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        for i in range(self.batch_size * self.world):
            if self.state.cursor == self.windows:
                self.state.epoch += 1
                self.state.cursor = 0
            if i in mine:
                start = int(self._order_for(self.state.epoch)[self.state.cursor]) * self.seq_len
                rows.append(np.asarray(self.tokens[start : start + self.seq_len + 1], dtype=np.int64))
            self.state.cursor += 1
        batch = torch.from_numpy(np.stack(rows))
        return batch[:, :-1], batch[:, 1:]


def eval_windows(tokens: np.ndarray, seq_len: int, max_tokens: int) -> torch.Tensor:
    """The fixed held-out set: the first windows of the validation split, up to max_tokens targets."""
    count = min((len(tokens) - 1) // seq_len, max(1, max_tokens // seq_len))
    if count < 1:
        raise UsageError(f"held-out split too small: {len(tokens)} tokens cannot fill one window of {seq_len + 1}")
    rows = [np.asarray(tokens[i * seq_len : i * seq_len + seq_len + 1], dtype=np.int64) for i in range(count)]
    return torch.from_numpy(np.stack(rows))
