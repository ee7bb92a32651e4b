"""Length-bucketed batches, reproducible from (seed, epoch), and padded tensors for them.

The batch plan of an epoch is a pure function of the lengths, the seed and the
epoch number, so a resumed run (or another rank) rebuilds exactly the same plan
and skips the batches already done.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
    out = torch.full((len(sequences), width), PAD, dtype=torch.long)
    for row, seq in enumerate(sequences):
        full = [*prefix, *seq, *suffix]
        out[row, : len(full)] = torch.tensor(full, dtype=torch.long)
    return out


def source_tensor(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) EOS-terminated sources and their lengths; the EOS gives even an empty line one position."""
    lengths = torch.tensor([len(s) + 1 for s in sequences], dtype=torch.long)
    return pad(sequences, suffix=[EOS]), lengths


def collate(src: list[list[int]], tgt: list[list[int]], indices: list[int]) -> Batch:
    src_tensor, src_lengths = source_tensor([src[i] for i in indices])
    targets = [tgt[i] for i in indices]
    return Batch(
        src=src_tensor,
        src_lengths=src_lengths,
        tgt_in=pad(targets, prefix=[BOS]),
        tgt_out=pad(targets, suffix=[EOS]),
        n_tokens=sum(len(t) + 1 for t in targets),
    )


def plan_batches(
    src_lengths: list[int],
    tgt_lengths: list[int],
    *,
    batch_tokens: int,
    batch_sentences: int | None,
    seed: int,
    epoch: int,
    shuffle: bool = True,
) -> list[list[int]]:
    """Group pairs of similar length into batches; shuffle pairs within a length and the batch order.

    A batch holds `batch_sentences` pairs when that is set, else as many as keep
    (pairs x longest target, padding included) within `batch_tokens`.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    n = len(tgt_lengths)
    tie_break = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    order = sorted(range(n), key=lambda i: (tgt_lengths[i], src_lengths[i], tie_break[i]))
    batches, current, longest = [], [], 0
    for i in order:
        longest_if_added = max(longest, tgt_lengths[i] + 1, src_lengths[i] + 1)
        full = (
            len(current) >= batch_sentences
            if batch_sentences
            else longest_if_added * (len(current) + 1) > batch_tokens
        )
        if current and full:
            batches.append(current)
            current, longest_if_added = [], max(tgt_lengths[i] + 1, src_lengths[i] + 1)
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    if shuffle:
        batches = [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def shard(batches: list[list[int]], rank: int, world_size: int) -> list[list[int]]:
    """This rank's disjoint share; every rank gets the same number of batches (extras are dropped)."""
    usable = len(batches) - len(batches) % world_size
    return batches[rank:usable:world_size]
