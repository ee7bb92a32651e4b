"""Encoding a chunk of sentence pairs to flat id arrays: the work each preparation worker does. Workers are
spawned (not forked from a process that may hold torch's thread pools), so this module imports only numpy,
sentencepiece and the filters."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass

import numpy as np
import sentencepiece as spm

from nmt.data.filters import filter_by_length


@dataclass
class EncodedChunk:
    """The kept pairs of one chunk as flat sentencepiece ids, and what the chunk taught about the corpus."""

    # src, then tgt: (ids, lengths, used): the kept pairs' ids one sentence after another, their lengths, and
    # (pieces,) bool: the pieces used by the chunk's non-empty pairs, kept or not
    sides: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    offered: int  # pairs in the chunk
    empty: int  # pairs dropped for an empty side
    dropped: Counter  # pairs dropped by the length filters, by reason


class ChunkEncoder:
    def __init__(self, src_proto: bytes, tgt_proto: bytes, max_len: int, max_ratio: float):
        self.src = spm.SentencePieceProcessor(model_proto=src_proto)
        self.tgt = self.src if tgt_proto == src_proto else spm.SentencePieceProcessor(model_proto=tgt_proto)
        self.max_len, self.max_ratio = max_len, max_ratio

    def __call__(self, chunk: tuple[list[str], list[str]]) -> EncodedChunk:
        pairs = [(s.strip(), t.strip()) for s, t in zip(*chunk)]
        kept = [(s, t) for s, t in pairs if s and t]
        sides = [_flat(self.src, [s for s, _ in kept]), _flat(self.tgt, [t for _, t in kept])]
        src_lengths, tgt_lengths = (lengths for _, lengths, _ in sides)
        keep, dropped = filter_by_length(src_lengths, tgt_lengths, max_len=self.max_len, max_ratio=self.max_ratio)
        return EncodedChunk([(ids[np.repeat(keep, lengths)], lengths[keep], used) for ids, lengths, used in sides],
                            offered=len(pairs), empty=len(pairs) - len(kept), dropped=dropped)


def _flat(sp: spm.SentencePieceProcessor, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    encoded = sp.encode(texts)
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    ids = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64, count=int(lengths.sum()))
    return ids, lengths, np.bincount(ids, minlength=sp.get_piece_size()) > 0


_encoder: ChunkEncoder | None = None  # a worker process's, made once by `start_worker`


def start_worker(src_proto: bytes, tgt_proto: bytes, max_len: int, max_ratio: float) -> None:
    global _encoder
    _encoder = ChunkEncoder(src_proto, tgt_proto, max_len, max_ratio)


def encode_in_worker(chunk: tuple[list[str], list[str]]) -> EncodedChunk:
    return _encoder(chunk)
