"""Which sentence pairs are kept: none with an empty side, none too long or too lopsided. The spawned
preparation workers import this module, so it imports numpy alone."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from nmt.data.sources import Corpus


def drop_empty(corpus: Corpus) -> tuple[Corpus, int]:
    """Strip whitespace and drop pairs with an empty side."""
    kept = [(s.strip(), t.strip()) for s, t in zip(corpus.src, corpus.tgt) if s.strip() and t.strip()]
    return dataclasses.replace(corpus, src=[s for s, _ in kept], tgt=[t for _, t in kept]), len(corpus) - len(kept)


def filter_by_length(src_lengths, tgt_lengths, *, max_len: int, max_ratio: float) -> tuple[np.ndarray, Counter]:
    """Which pairs to keep (a boolean mask), and how many were dropped for each reason (lengths in pieces)."""
    src, tgt = np.asarray(src_lengths, dtype=np.int64), np.asarray(tgt_lengths, dtype=np.int64)
    too_long = (src > max_len) | (tgt > max_len)
    lopsided = ~too_long & (np.maximum(src, tgt) > max_ratio * np.maximum(1, np.minimum(src, tgt)))
    dropped = Counter({f"longer than data.max_len={max_len} pieces": int(too_long.sum()),
                       f"length ratio above data.max_len_ratio={max_ratio}": int(lopsided.sum())})
    return ~(too_long | lopsided), +dropped
