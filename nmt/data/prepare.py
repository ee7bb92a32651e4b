"""A run's data, ready to batch: sentencepiece trained on a sample, the small splits in memory, and the training
split tokenized and filtered once into a store under `$NMT_CACHE/prepared` that a restart, a resume and every
torchrun rank find (by the data's content, the sentencepiece models and the filters) instead of tokenizing again.
Building it streams the corpus in chunks through `data.num_workers` processes, so memory does not grow with it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass
from itertools import compress
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nmt.cache import cache_root, file_lock, set_aside
from nmt.config import Config, TokenizerConfig
from nmt.data import store
from nmt.data.encode import ChunkEncoder, encode_in_worker, start_worker
from nmt.data.filters import drop_empty, filter_by_length
from nmt.data.sources import Corpus, load_data
from nmt.data.store import StoreInfo, StoreWriter, TokenizedPairs
from nmt.distributed import World, any_rank
from nmt.errors import NMTError
from nmt.tokenizer import Side, Tokenizer, cached_model

log = logging.getLogger(__name__)

CHUNK_PAIRS = 20_000  # pairs a worker encodes at a time
POOL_MIN_PAIRS = 100_000  # below this, starting workers costs more than it saves


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    train: TokenizedPairs  # the kept training pairs, read from the store a batch at a time
    valid: Corpus  # raw text, for BLEU
    valid_ids: TokenizedPairs  # model ids of the validation pairs within data.max_len, for the loss
    test: Corpus | None
    store: StoreInfo | None = None


def prepare(cfg: Config, tokenizer: Tokenizer | None = None) -> PreparedData:
    """Tokenize with `tokenizer` (a resumed run's), or train one and prune its vocabularies to the pieces
    the training split uses."""
    data = cfg.data
    splits = [data.valid_split] + ([data.test_split] if data.test_split else [])
    (valid, *rest), stream = load_data(data, splits, stream_split=data.train_split)
    test = rest[0] if rest else None
    valid, _ = drop_empty(valid)
    if not len(valid):
        raise NMTError(f"{valid.name}: the validation split has no non-empty sentence pairs")
    limit = min(len(stream), data.max_train_pairs or len(stream))
    try:  # before minutes of sentencepiece training, not after
        store_root().mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise NMTError(f"cannot create {store_root()} ({error.strerror or error}); "
                       "set NMT_CACHE to a writable folder") from None
    unpruned = tokenizer if tokenizer is not None else train_on_sample(cfg.tokenizer, stream, limit)
    info = build_or_find_store(cfg, stream, limit, unpruned)
    meta = info.meta
    if tokenizer is None:
        tokenizer = Tokenizer(unpruned.src.keeping(meta["src_pieces"]), unpruned.tgt.keeping(meta["tgt_pieces"]),
                              unpruned.joint)
    train = TokenizedPairs.open(info.folder, meta, tokenizer.src.to_model.numpy(), tokenizer.tgt.to_model.numpy())
    log.info("training pairs: %d kept of %d; vocabulary: %d source, %d target pieces",
             len(train), meta["offered"], len(tokenizer.src), len(tokenizer.tgt))

    valid_src, valid_tgt = tokenizer.src.encode(valid.src), tokenizer.tgt.encode(valid.tgt)
    keep, _ = filter_by_length([len(s) for s in valid_src], [len(t) for t in valid_tgt],
                               max_len=data.max_len, max_ratio=float("inf"))
    valid_ids = TokenizedPairs.from_lists(list(compress(valid_src, keep)), list(compress(valid_tgt, keep)))
    return PreparedData(tokenizer, train, valid, valid_ids, test, info)


def prepare_on_each_node(cfg: Config, tokenizer: Tokenizer | None, world: World) -> PreparedData:
    """Under torchrun, local rank 0 of each node prepares (or finds) the store while the other ranks wait,
    then they read the same files: one tokenization per node, one copy in the page cache."""
    data, failure = None, None
    if world.local_rank == 0:
        try:
            data = prepare(cfg, tokenizer)
        except Exception as error:  # noqa: BLE001 - raised below, after the other ranks have heard of it
            failure = error
    if any_rank(failure is not None, world):
        raise failure or NMTError("another rank could not prepare the data; its error is in its log")
    return data if data is not None else prepare(cfg, tokenizer)


def train_on_sample(settings: TokenizerConfig, stream, limit: int) -> Tokenizer:
    """Sentencepiece trained on at most `tokenizer.max_sentences` sentences drawn from the first `limit`
    pairs, streamed to a file (never a list of the corpus); cached by the data's fingerprint. Its
    vocabularies are not yet pruned to the pieces the training split uses: building the store finds those."""
    per_model = settings.max_sentences // (2 if settings.joint else 1)
    chosen = None  # every pair
    if per_model and per_model < limit:
        chosen = np.sort(np.random.default_rng(0).choice(limit, per_model, replace=False))
    key = f"stream:{stream.fingerprint}:{limit}"
    sample = functools.partial(_write_sample, stream, limit, chosen)  # then the sides, then the path to write
    if settings.joint:
        proto = cached_model(settings, f"{key}:joint", functools.partial(sample, (0, 1)))
        return Tokenizer(Side(proto), Side(proto), joint=True)
    return Tokenizer(Side(cached_model(settings, f"{key}:src", functools.partial(sample, (0,)))),
                     Side(cached_model(settings, f"{key}:tgt", functools.partial(sample, (1,)))), joint=False)


def _write_sample(stream, limit: int, chosen: np.ndarray | None, sides: tuple[int, ...], path: Path) -> int:
    """The chosen pairs' non-empty sides, stripped, one a line: every source sentence, then every target."""
    log.info("sentencepiece: drawing %s pairs of %s for its training sample",
             f"{len(chosen):,}" if chosen is not None else "all", stream.name)
    lines = 0
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        parts = [Path(tmp) / f"side{side}.txt" for side in sides]
        with contextlib.ExitStack() as stack:
            files = [stack.enter_context(open(part, "w", encoding="utf-8")) for part in parts]
            for start, chunk in _limited(stream, limit):
                rows = range(len(chunk[0]))
                if chosen is not None:
                    rows = chosen[np.searchsorted(chosen, start):np.searchsorted(chosen, start + len(chunk[0]))] - start
                for row in rows:
                    pair = (chunk[0][row].strip(), chunk[1][row].strip())
                    if pair[0] and pair[1]:
                        for file, side in zip(files, sides):
                            file.write(pair[side].replace("\n", " ") + "\n")
                        lines += len(sides)
        with open(path, "wb") as out:
            for part in parts:
                with open(part, "rb") as file:
                    shutil.copyfileobj(file, out)
    if not lines:
        raise NMTError(f"{stream.name}: the training split has no non-empty sentence pairs")
    return lines


def _limited(stream, limit: int):
    """(index of the chunk's first pair, chunk) for the first `limit` pairs."""
    start = 0
    for src, tgt in stream.chunks(CHUNK_PAIRS):
        if start >= limit:
            return
        src, tgt = src[: limit - start], tgt[: limit - start]
        yield start, (src, tgt)
        start += len(src)


def store_root() -> Path:
    return cache_root() / "prepared"


def build_or_find_store(cfg: Config, stream, limit: int, tokenizer: Tokenizer) -> StoreInfo:
    # named by a hash of the data, the tokenizer and the filters (the data by content, so a copied corpus finds its
    # store; `meta.json` inside names the source)
    sha = lambda proto: hashlib.sha256(proto).hexdigest()  # noqa: E731
    key = json.dumps({"format": store.FORMAT, "data": stream.fingerprint, "pairs": limit,
                      "max_len": cfg.data.max_len, "max_len_ratio": cfg.data.max_len_ratio,
                      "src_model": sha(tokenizer.src.model_proto), "tgt_model": sha(tokenizer.tgt.model_proto)},
                     sort_keys=True)
    folder = store_root() / hashlib.sha256(key.encode()).hexdigest()[:24]
    store.remove_stale_partials(folder.parent)  # at every look-up: a killed build's folder never outlives it long
    meta = store.finished_meta(folder)  # a damaged one is set aside below, by the one process that holds the lock
    if meta is not None:
        log.info("prepared data: reusing %s", folder)
    else:
        try:  # another process preparing the same data: wait for it, then use its result
            lock = file_lock(folder.with_name(folder.name + ".lock"),
                             f"prepared data: another process is preparing {folder.name}; waiting for it")
        except OSError as error:
            raise NMTError(f"cannot write in {folder.parent} ({error.strerror or error}); set NMT_CACHE to a "
                           "writable folder") from None
        with lock:
            try:
                meta = store.read_meta(folder)
            except store.Damaged as damage:
                set_aside(folder, f"the prepared data is incomplete or damaged ({damage})", "building it again")
            if meta is None:
                _build_store(cfg, stream, limit, tokenizer, folder)
                meta = store.finished_meta(folder)
                if meta is None:
                    raise NMTError(f"{folder}: the prepared data did not read back; check the disk (df -h)")
    with contextlib.suppress(OSError):  # not in a cache shared read-only
        os.utime(folder)  # when it was last used, for `nmt prepare --clean`
    return StoreInfo(folder, meta)


def _build_store(cfg: Config, stream, limit: int, tokenizer: Tokenizer, folder: Path) -> None:
    data, sizes = cfg.data, (tokenizer.src.sp.get_piece_size(), tokenizer.tgt.sp.get_piece_size())
    encoder_args = (tokenizer.src.model_proto, tokenizer.tgt.model_proto, data.max_len, data.max_len_ratio)
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, data.num_workers or available) if limit >= POOL_MIN_PAIRS else 1
    log.info("prepared data: tokenizing %s pairs of %s with %d process(es) into %s",
             f"{limit:,}", stream.name, workers, folder)
    used = [np.zeros(size, bool) for size in sizes]
    empty, done, dropped, started = 0, 0, Counter(), time.perf_counter()
    logged, writer = started, None
    try:
        with tqdm(total=limit, desc="tokenizing", unit=" pairs", unit_scale=True, dynamic_ncols=True,
                  disable=not sys.stderr.isatty(), mininterval=1.0) as bar:
            # ids and lengths in two bytes where they fit (0xFFFF: the largest uint16), else in four
            writer = StoreWriter(folder, "train", np.dtype(np.uint16 if max(sizes) <= 0xFFFF else np.uint32),
                                 np.dtype(np.uint16 if data.max_len < 0xFFFF else np.uint32))
            for chunk in _encoded(stream, limit, workers, encoder_args):
                for side, (ids, lengths, seen), side_used in zip(store.SIDES, chunk.sides, used):
                    writer.append(side, ids, lengths)
                    side_used |= seen
                empty += chunk.empty
                dropped += chunk.dropped
                bar.update(chunk.offered)
                done += chunk.offered
                if bar.disable and time.perf_counter() - logged > 30:  # no terminal (docker logs, a file): a line
                    logged = time.perf_counter()
                    rate = done / (logged - started)
                    log.info("tokenizing: %s of %s pairs, %s pairs/s, about %.0f s left", f"{done:,}", f"{limit:,}",
                             f"{rate:,.0f}", (limit - done) / rate)
        if empty:
            log.info("%s: dropped %d pair(s) with an empty side", stream.name, empty)
        for reason, count in dropped.items():
            log.info("%s: dropped %d pair(s): %s", stream.name, count, reason)
        if empty == limit:
            raise NMTError(f"{stream.name}: the training split has no non-empty sentence pairs")
        if not writer.pairs:
            raise NMTError(f"{stream.name}: filtering dropped every pair ({', '.join(dropped)}); "
                           f"raise data.max_len or data.max_len_ratio")
        writer.finish({"source": stream.name, "offered": limit, "empty": empty, "dropped": dict(dropped),
                       "src_pieces": used[0].nonzero()[0].tolist(), "tgt_pieces": used[1].nonzero()[0].tolist()})
    except BaseException as error:
        if writer is not None:
            writer.abandon()
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            # a full disk, a quota: the partial store is gone again
            raise NMTError(f"cannot write the prepared data under {folder.parent} ({error.strerror or error}); "
                           "free space there or set NMT_CACHE to a folder with room") from None
        raise
    seconds = time.perf_counter() - started
    log.info("prepared data: %s pairs in %.0f s (%s pairs/s)", f"{limit:,}", seconds, f"{limit / seconds:,.0f}")


def _encoded(stream, limit: int, workers: int, encoder_args: tuple):
    """Encoded chunks in corpus order; at most two chunks per worker in flight, so memory stays bounded."""
    chunks = (chunk for _, chunk in _limited(stream, limit))
    if workers == 1:
        yield from map(ChunkEncoder(*encoder_args), chunks)
        return
    # spawned, not forked: the parent may hold torch's thread pools, which a fork does not carry over safely
    with multiprocessing.get_context("spawn").Pool(workers, initializer=start_worker, initargs=encoder_args) as pool:
        pending = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(encode_in_worker, (chunk,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
