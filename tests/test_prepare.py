"""The prepared-data store: built once, reused, rebuilt when anything it depends on changes or when it is
damaged, the same batches as tokenizing in memory, shared by ranks."""

import fcntl
import json
import logging
import os
import shutil
import socket
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from nmt.batching import collate, plan_batches
from nmt.config import load_config
from nmt.data import encode, store
from nmt.data import prepare as prepare_module
from nmt.data.filters import drop_empty, filter_by_length
from nmt.data.prepare import prepare
from nmt.data.sources import load_splits
from nmt.data.store import TokenizedPairs
from nmt.data.text import read_text_lines
from nmt.errors import NMTError
from nmt.tokenizer import Side
from tests.conftest import DAMAGE, TINY_CONFIG, TINY_DATA, damage_file, run_nmt


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """A private copy of the tiny corpus and an empty cache."""
    folder = tmp_path / "corpus"
    shutil.copytree(TINY_DATA, folder)
    monkeypatch.setenv("NMT_CACHE", str(tmp_path / "cache"))
    return folder


@pytest.fixture
def encoded_chunks(monkeypatch):
    """How many chunks were tokenized in this process."""
    calls = []
    real = encode.ChunkEncoder.__call__
    monkeypatch.setattr(encode.ChunkEncoder, "__call__", lambda self, chunk: calls.append(1) or real(self, chunk))
    return calls


def config(folder, *overrides):
    return load_config(TINY_CONFIG, [f"data.dataset={folder}", *overrides])


def test_second_prepare_reads_the_store_and_tokenizes_nothing(corpus, encoded_chunks):
    first = prepare(config(corpus))
    assert encoded_chunks and first.store.folder.is_dir()
    encoded_chunks.clear()
    again = prepare(config(corpus))
    assert encoded_chunks == []
    assert again.store.folder == first.store.folder
    assert again.tokenizer.src.keep == first.tokenizer.src.keep
    everything = range(len(first.train))
    assert all(np.array_equal(a, b) for a, b in zip(again.train.rows(everything)[0], first.train.rows(everything)[0]))


@pytest.mark.parametrize("change", ["data", "tokenizer.vocab_size=130", "data.max_len=12",
                                    "data.max_len_ratio=1.5", "data.max_train_pairs=300"])
def test_a_change_of_data_tokenizer_or_filters_builds_another_store(corpus, encoded_chunks, change):
    first = prepare(config(corpus))
    encoded_chunks.clear()
    overrides = []
    if change == "data":
        lines = (corpus / "train.en").read_text(encoding="utf-8").splitlines()
        lines[7] = "an edited sentence"
        (corpus / "train.en").write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        overrides.append(change)
    other = prepare(config(corpus, *overrides))
    assert encoded_chunks and other.store.folder != first.store.folder


def test_a_copied_corpus_is_the_same_corpus(corpus, tmp_path, encoded_chunks):
    first = prepare(config(corpus))
    encoded_chunks.clear()
    copy = tmp_path / "copy"
    shutil.copytree(corpus, copy)
    os.utime(copy / "train.en", (1, 1))
    assert prepare(config(copy)).store.meta["files"] == first.store.meta["files"]
    assert encoded_chunks == []  # found by content, not by path or modification time


def test_store_batches_equal_tokenizing_in_memory(corpus):
    """The pairs, ids, filters and vocabulary pruning of the store are those of tokenizing the whole split at
    once with the same sentencepiece model, each side keeping a row for every piece its text uses."""
    cfg = config(corpus, "data.max_len=14", "data.max_len_ratio=2.0")
    data = prepare(cfg)
    train, _ = drop_empty(load_splits(cfg.data, ["train"])[0])

    def in_memory(model_proto: bytes, texts: list[str]) -> tuple[Side, list[list[int]]]:
        spm_ids = Side(model_proto).sp.encode(texts)
        side = Side(model_proto).keeping([i for ids in spm_ids for i in ids])
        return side, side.encode(texts)

    (src_side, src), (tgt_side, tgt) = (in_memory(side.model_proto, texts) for side, texts in (
        (data.tokenizer.src, train.src), (data.tokenizer.tgt, train.tgt)))
    keep, dropped = filter_by_length([len(s) for s in src], [len(t) for t in tgt], max_len=14, max_ratio=2.0)
    assert dropped and data.store.meta["dropped"] == dict(dropped)
    expected = TokenizedPairs.from_lists([s for s, k in zip(src, keep) if k], [t for t, k in zip(tgt, keep) if k])
    assert data.tokenizer.src.keep == src_side.keep and data.tokenizer.tgt.keep == tgt_side.keep
    plan = plan_batches(data.train.src_lengths, data.train.tgt_lengths, batch_tokens=60, batch_sentences=None,
                        seed=5, epoch=2)
    assert list(plan) == list(plan_batches(expected.src_lengths, expected.tgt_lengths, batch_tokens=60,
                                           batch_sentences=None, seed=5, epoch=2))
    for indices in plan:
        a, b = collate(data.train, indices), collate(expected, indices)
        assert torch.equal(a.src, b.src) and torch.equal(a.tgt_in, b.tgt_in) and torch.equal(a.tgt_out, b.tgt_out)


def test_worker_processes_build_the_same_store(corpus, tmp_path, monkeypatch):
    one = prepare(config(corpus, "data.num_workers=1"))
    monkeypatch.setenv("NMT_CACHE", str(tmp_path / "cache2"))
    monkeypatch.setattr(prepare_module, "CHUNK_PAIRS", 37)  # many chunks, out of step with the pool's order
    monkeypatch.setattr(prepare_module, "POOL_MIN_PAIRS", 0)
    two = prepare(config(corpus, "data.num_workers=2"))
    assert two.store.folder.name == one.store.folder.name
    for name in one.store.meta["files"]:
        assert (two.store.folder / name).read_bytes() == (one.store.folder / name).read_bytes(), name


def test_a_damaged_store_is_rebuilt_never_used(corpus, encoded_chunks, caplog):
    first = prepare(config(corpus))
    ids = first.store.folder / "train.tgt.ids"
    ids.write_bytes(ids.read_bytes()[:-2])  # one id short
    encoded_chunks.clear()
    with caplog.at_level(logging.WARNING):
        again = prepare(config(corpus))
    assert "incomplete or damaged" in caplog.text and encoded_chunks
    assert again.store.meta == first.store.meta


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_store_with_a_damaged_meta_is_named_set_aside_and_built_again(corpus, encoded_chunks, caplog, damage):
    """A list or a string stopped the command with an AttributeError naming no file; the store is set aside
    whole (meta and arrays) and built again."""
    first = prepare(config(corpus))
    meta = first.store.folder / "meta.json"
    bad = damage_file(meta, damage, wrong_types={**first.store.meta, "files": list(first.store.meta["files"])})
    encoded_chunks.clear()
    with caplog.at_level(logging.WARNING):
        again = prepare(config(corpus))
    assert encoded_chunks and again.store.folder == first.store.folder and again.store.meta == first.store.meta
    (warning,) = caplog.records
    assert warning.getMessage().startswith(f"{first.store.folder}: the prepared data is incomplete or damaged")
    (aside,) = first.store.folder.parent.glob(first.store.folder.name + ".bad-*")
    assert (aside / "meta.json").read_bytes() == bad and (aside / "train.src.ids").is_file()
    assert json.loads(meta.read_text()) == first.store.meta  # a good one in its place


def test_a_killed_builds_folder_goes_at_the_next_look_up_of_a_store(corpus):
    """Once the store existed, a later build never came, so a killed build's folder stayed for good."""
    first = prepare(config(corpus))
    stale = first.store.folder.parent / f"{first.store.folder.name}.partial-{socket.gethostname()}-999999999"
    stale.mkdir()
    (stale / store.BUILDING).touch()  # its builder was killed: nobody holds the lock
    (stale / "train.src.ids").write_bytes(b"\0" * 4096)
    os.utime(stale, (1, 1))
    assert prepare(config(corpus)).store.folder == first.store.folder  # found, not built
    assert not stale.exists()


def test_prepare_clean_removes_what_was_not_used_for_days_and_says_what_it_freed(corpus, tmp_path):
    old, recent, busy = (prepare(config(corpus, *overrides)).store.folder
                         for overrides in ([], ["data.max_len=12"], ["data.max_len=13"]))
    root, old_size = old.parent, sum(f.stat().st_size for f in old.iterdir())
    month_ago = time.time() - 30 * 86400
    partial = root / f"{'0' * 24}.partial-another-host-7"  # a dead build on another machine sharing the cache
    partial.mkdir()
    (partial / "train.src.ids").write_bytes(b"\0" * 3000)
    aside = root / f"{'1' * 24}.bad-{time.strftime('%Y%m%d-%H%M%S', time.localtime(month_ago))}"
    aside.mkdir()  # damaged, set aside a month ago
    users = root / "notes"  # not a name nmt gives: left alone
    users.mkdir()
    for path in (old, busy, partial, aside, users):
        os.utime(path, (month_ago, month_ago))
    with open(busy.with_name(busy.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process building or about to read it
        result = run_nmt("prepare", "--clean", "7")  # NMT_CACHE: the corpus fixture's
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(lines[:-1]) == sorted(f"removed {p} ({size / 2**20:,.1f} MiB)" for p, size in (
        (old, old_size), (partial, 3000), (aside, 0)))
    assert lines[-1].startswith("freed ") and "(3 entries unused for 7 days)" in lines[-1]
    assert not old.exists() and not partial.exists() and not aside.exists()
    assert recent.is_dir() and busy.is_dir() and users.is_dir()
    assert not old.with_name(old.name + ".lock").exists()


def test_prepare_clean_takes_no_config(corpus):
    result = run_nmt("prepare", "--clean", "7", "--config", str(TINY_CONFIG))
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith("error: --clean takes no")


def test_a_store_damaged_in_place_is_one_line_naming_it(corpus):
    """Same sizes, so the store is reused; its first batch finds an id no tokenizer has and says what to do."""
    first = prepare(config(corpus))
    ids = first.store.folder / "train.src.ids"
    ids.write_bytes(b"\xff" * ids.stat().st_size)
    again = prepare(config(corpus))
    with pytest.raises(NMTError, match=rf"^{first.store.folder}: the prepared data is damaged \(pair 1 holds a src "
                                       r"piece id beyond the tokenizer's\); delete that folder"):
        again.train.rows([0])


def test_a_build_killed_midway_leaves_nothing_that_is_read(corpus, encoded_chunks, monkeypatch):
    cfg = config(corpus)

    def killed(self, meta):
        raise KeyboardInterrupt

    monkeypatch.setattr(store.StoreWriter, "finish", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg)
    monkeypatch.undo()
    monkeypatch.setenv("NMT_CACHE", str(corpus.parent / "cache"))
    root = prepare_module.store_root()
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []  # the partial folder is gone
    # a SIGKILL leaves its partial folder behind: the next build removes it and never reads it
    stale = root / f"whatever.partial-{socket.gethostname()}-999999999"
    stale.mkdir()
    (stale / "meta.json").write_text("{}")
    os.utime(stale, (1, 1))  # not one made a moment ago, whose builder may not have locked it yet
    data = prepare(cfg)
    assert not stale.exists() and data.store.meta["source"].endswith("train.{en,de}")


def test_a_full_disk_while_writing_the_store_is_one_line_and_leaves_nothing(corpus, monkeypatch):
    import errno

    def full(self, side, ids, lengths):
        for file in self.files.values():  # what a full disk does: the write fails, and so does every flush
            file.close = lambda: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.StoreWriter, "append", full)
    with pytest.raises(NMTError, match=r"cannot write the prepared data under .*prepared \(No space left on device\); "
                                       r"free space there or set NMT_CACHE"):
        prepare(config(corpus))
    root = prepare_module.store_root()
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []


def test_a_folder_being_built_is_never_removed_even_where_its_pid_looks_dead(corpus):
    """Containers sharing a cache and a host name number their processes alike: a pid dead here may be
    building there. The builder's lock decides; the pid only for folders without one."""
    prepare(config(corpus))
    root = prepare_module.store_root()
    writer = store.StoreWriter(root / "other", "train", np.dtype(np.uint16), np.dtype(np.uint8))
    building = root / f"other.partial-{socket.gethostname()}-999999999"  # as the other container's looks here
    writer.folder.rename(building)
    stale = root / f"old.partial-{socket.gethostname()}-999999998"
    stale.mkdir()
    (stale / store.BUILDING).touch()  # its builder was killed: nobody holds the lock
    young = root / f"young.partial-{socket.gethostname()}-999999997"
    young.mkdir()  # just made, its builder about to lock it
    for folder in (building, stale):
        os.utime(folder, (1, 1))
    store.remove_stale_partials(root)
    assert young.exists()
    assert building.exists() and not stale.exists()
    writer.folder = building
    writer.abandon()  # the build ends: the lock is released with it
    assert not building.exists()


def test_sentencepiece_trains_on_a_sample_of_max_sentences(corpus, caplog):
    with caplog.at_level(logging.INFO):
        data = prepare(config(corpus, "tokenizer.max_sentences=100"))
    assert "model, vocab 150, on 100 lines" in caplog.text  # 50 pairs, both sides
    assert data.store.meta["offered"] == 500  # the store still holds every pair


def test_line_count_mismatch_and_bad_utf8_in_a_streamed_split_are_one_line_errors(corpus):
    lines = read_text_lines(corpus / "train.de")
    (corpus / "train.de").write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    with pytest.raises(NMTError, match=r"train.en has 500 lines but .*train.de has 499"):
        prepare(config(corpus))
    raw = (corpus / "train.en").read_bytes().splitlines(keepends=True)
    raw[41] = b"bad \xe9 byte\n"
    (corpus / "train.en").write_bytes(b"".join(raw))
    (corpus / "train.de").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(NMTError, match=r"train.en:42: invalid UTF-8"):
        prepare(config(corpus))


def test_hub_layout_streams_to_the_same_store_content(corpus, tmp_path, encoded_chunks):
    hub = tmp_path / "hub"
    hub.mkdir()
    for split in ("train", "valid", "test"):
        src, tgt = read_text_lines(corpus / f"{split}.en"), read_text_lines(corpus / f"{split}.de")
        rows = [{"translation": {"en": s, "de": t}} for s, t in zip(src, tgt)]
        (hub / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    text, from_hub = prepare(config(corpus)), prepare(config(hub))
    assert from_hub.store.folder != text.store.folder  # another source, another fingerprint
    for name in text.store.meta["files"]:
        assert (from_hub.store.folder / name).read_bytes() == (text.store.folder / name).read_bytes(), name
    copy = tmp_path / "hub copy"  # copied and touched: the same content, so the same tokenizer and store
    shutil.copytree(hub, copy)
    os.utime(copy / "valid.jsonl", (1, 1))
    encoded_chunks.clear()
    assert prepare(config(copy)).store.folder == from_hub.store.folder
    assert encoded_chunks == []


def _rank(rank: int, port: int, cache: str, dataset: str, out: str) -> None:
    from nmt.data import encode as encode_in_rank
    from nmt.data.prepare import prepare_on_each_node
    from nmt.distributed import init_world, shutdown

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", NMT_CACHE=cache)
    calls = []
    real = encode_in_rank.ChunkEncoder.__call__
    encode_in_rank.ChunkEncoder.__call__ = lambda self, chunk: calls.append(1) or real(self, chunk)
    world = init_world("cpu")
    data = prepare_on_each_node(load_config(TINY_CONFIG, [f"data.dataset={dataset}"]), None, world)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as file:
        json.dump({"chunks": len(calls), "folder": str(data.store.folder), "pairs": len(data.train)}, file)
    shutdown(world)


@pytest.mark.slow
def test_two_gloo_ranks_prepare_once_and_map_one_store(corpus, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, str(tmp_path / "cache"), str(corpus), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["chunks"] > 0 and ranks[1]["chunks"] == 0  # rank 1 waited, then mapped rank 0's store
    assert ranks[0]["folder"] == ranks[1]["folder"] and ranks[0]["pairs"] == ranks[1]["pairs"] > 0


def test_sentencepiece_in_a_child_process_trains_the_same_model(corpus, tmp_path, monkeypatch):
    from nmt import tokenizer as tokenizer_module

    here = prepare(config(corpus)).tokenizer
    monkeypatch.setenv("NMT_CACHE", str(tmp_path / "cache2"))
    monkeypatch.setattr(tokenizer_module, "TRAIN_IN_CHILD_LINES", 0)
    child = prepare(config(corpus)).tokenizer
    assert child.src.encode(["a test sentence"]) == here.src.encode(["a test sentence"])
    assert child.src.keep == here.src.keep
