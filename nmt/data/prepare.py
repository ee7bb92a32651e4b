"""A run's data, ready to batch: load the splits, clean, tokenize, filter by length."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nmt.config import Config
from nmt.data.sources import Corpus, drop_empty, filter_by_length, load_splits
from nmt.errors import NMTError
from nmt.tokenizer import Tokenizer, prune_to_training_data, train_tokenizer

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    train_src: list[list[int]]
    train_tgt: list[list[int]]
    valid: Corpus  # raw text, for BLEU
    valid_src: list[list[int]]  # model ids of the pairs within data.max_len, for the loss
    valid_tgt: list[list[int]]
    test: Corpus | None


def prepare(cfg: Config, tokenizer: Tokenizer | None = None) -> PreparedData:
    """Tokenize with `tokenizer`, or train one (and its vocabularies) on the training split."""
    data = cfg.data
    splits = [data.train_split, data.valid_split] + ([data.test_split] if data.test_split else [])
    corpora = load_splits(data, splits)
    train, valid = corpora[0], corpora[1]
    test = corpora[2] if data.test_split else None
    if data.max_train_pairs:
        train = Corpus(train.src[: data.max_train_pairs], train.tgt[: data.max_train_pairs], train.name)
    offered = len(train)  # after data.max_train_pairs
    train, empty = drop_empty(train)
    if empty:
        log.info("%s: dropped %d pair(s) with an empty side", train.name, empty)
    if not len(train):
        raise NMTError(f"{corpora[0].name}: the training split has no non-empty sentence pairs")
    valid, _ = drop_empty(valid)
    if not len(valid):
        raise NMTError(f"{corpora[1].name}: the validation split has no non-empty sentence pairs")

    if tokenizer is None:
        tokenizer = train_tokenizer(cfg.tokenizer, train.src, train.tgt)
        train_src, train_tgt = prune_to_training_data(tokenizer, train.src, train.tgt)
    else:
        train_src, train_tgt = tokenizer.src.encode(train.src), tokenizer.tgt.encode(train.tgt)
    keep, dropped = filter_by_length([len(s) for s in train_src], [len(t) for t in train_tgt],
                                     max_len=data.max_len, max_ratio=data.max_len_ratio)
    for reason, count in dropped.items():
        log.info("%s: dropped %d pair(s): %s", train.name, count, reason)
    if not keep:
        raise NMTError(f"{train.name}: filtering dropped every pair ({', '.join(dropped)}); "
                       f"raise data.max_len or data.max_len_ratio")
    log.info("training pairs: %d kept of %d; vocabulary: %d source, %d target pieces",
             len(keep), offered, len(tokenizer.src), len(tokenizer.tgt))

    valid_src, valid_tgt = tokenizer.src.encode(valid.src), tokenizer.tgt.encode(valid.tgt)
    valid_keep, _ = filter_by_length([len(s) for s in valid_src], [len(t) for t in valid_tgt],
                                     max_len=data.max_len, max_ratio=float("inf"))
    return PreparedData(
        tokenizer=tokenizer,
        train_src=[train_src[i] for i in keep],
        train_tgt=[train_tgt[i] for i in keep],
        valid=valid,
        valid_src=[valid_src[i] for i in valid_keep],
        valid_tgt=[valid_tgt[i] for i in valid_keep],
        test=test,
    )
