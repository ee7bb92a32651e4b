"""Length-bucketed batches, reproducible from (seed, epoch), and padded tensors for them.

An epoch's batch plan is a pure function of the lengths, the seed and the epoch number, so a resumed run (or
another rank) rebuilds exactly the same plan and skips the batches already done.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nmt.data.store import TokenizedPairs
from nmt.tokenizer import BOS, EOS, PAD


@dataclass
class Batch:
    src: torch.Tensor  # (B, S) int64, EOS-terminated, right-padded with PAD
    src_lengths: torch.Tensor  # (B,) int64 on the CPU (pack_padded_sequence wants it there)
    tgt_in: torch.Tensor  # (B, T) BOS y1 .. yn, padded
    tgt_out: torch.Tensor  # (B, T) y1 .. yn EOS, padded
    n_tokens: int  # real target tokens, EOS included

    @property
    def n_sentences(self) -> int:
        return self.src.size(0)

    def to(self, device: torch.device) -> Batch:
        if device.type == "cpu":
            return self
        move = lambda t: t.pin_memory().to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.src), self.src_lengths, move(self.tgt_in), move(self.tgt_out), self.n_tokens)


def pad(sequences: list[list[int]], prefix: list[int] = (), suffix: list[int] = ()) -> torch.Tensor:
    width = max(len(s) for s in sequences) + len(prefix) + len(suffix)
    out = np.full((len(sequences), width), PAD, dtype=np.int64)
    for row, seq in enumerate(sequences):
        out[row, : len(prefix)] = prefix
        out[row, len(prefix): len(prefix) + len(seq)] = seq
        out[row, len(prefix) + len(seq): len(prefix) + len(seq) + len(suffix)] = suffix
    return torch.from_numpy(out)


def source_tensor(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) EOS-terminated sources and their lengths; the EOS gives even an empty line one position."""
    lengths = torch.tensor([len(s) + 1 for s in sequences], dtype=torch.long)
    return pad(sequences, suffix=[EOS]), lengths


def collate(pairs: TokenizedPairs, indices) -> Batch:
    sources, targets = pairs.rows(indices)
    return Batch(*source_tensor(sources), tgt_in=pad(targets, prefix=[BOS]), tgt_out=pad(targets, suffix=[EOS]),
                 n_tokens=sum(len(t) + 1 for t in targets))


@dataclass
class BatchPlan:
    """An epoch's batches without a Python list per batch: batch j is `order[starts[b]:starts[b + 1]]`
    for b = `batch_order[j]`."""

    order: np.ndarray  # (pairs,) pair indices, shortest first
    starts: np.ndarray  # (batches + 1,) where each batch begins in `order`
    batch_order: np.ndarray  # (batches,) the order in which batches are trained on

    def __len__(self) -> int:
        return len(self.batch_order)

    def __getitem__(self, j: int) -> list[int]:
        b = self.batch_order[j]
        return self.order[self.starts[b]: self.starts[b + 1]].tolist()

    def __iter__(self):
        return (self[j] for j in range(len(self)))


def plan_batches(src_lengths, tgt_lengths, *, batch_tokens: int, batch_sentences: int | None, seed: int, epoch: int,
                 shuffle: bool = True) -> BatchPlan:
    """Group pairs of similar length into batches; shuffle pairs within a length and the batch order. A batch
    holds `batch_sentences` pairs when that is set, else as many as keep (pairs x longest side, EOS included,
    padding included) within `batch_tokens`."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    src, tgt = np.asarray(src_lengths), np.asarray(tgt_lengths)
    n = len(tgt)
    tie_break = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
    order = np.lexsort((tie_break, src, tgt))  # by target length, then source length, then at random
    del tie_break
    starts = (range(0, n, batch_sentences) if batch_sentences
              else _token_budget_starts(np.maximum(src, tgt)[order], batch_tokens))
    starts = np.array([*starts, n], dtype=np.int64)
    batches = len(starts) - 1
    batch_order = torch.randperm(batches, generator=generator).numpy() if shuffle else np.arange(batches)
    return BatchPlan(order.astype(np.int32 if n < 2**31 else np.int64), starts, batch_order)


def _token_budget_starts(longest_side: np.ndarray, batch_tokens: int) -> list[int]:
    """Greedy: a batch grows until (its pairs + 1) x its longest side (+1 for EOS/BOS) would pass the budget."""
    starts, count, longest = [0], 0, 0
    for position, width in enumerate(longest_side.tolist()):
        width += 1
        longest = longest if longest > width else width
        if count and longest * (count + 1) > batch_tokens:
            starts.append(position)
            count, longest = 0, width
        count += 1
    return starts


def shard(plan: BatchPlan, rank: int, world_size: int) -> BatchPlan:
    """This rank's disjoint share; every rank gets the same number of batches (extras are dropped)."""
    usable = len(plan) - len(plan) % world_size
    return BatchPlan(plan.order, plan.starts, plan.batch_order[rank:usable:world_size])
