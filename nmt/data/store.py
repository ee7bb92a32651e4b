"""Tokenized pairs on disk, built once and never half-used, read a batch at a time.

A prepared split is a folder of raw little-endian arrays (fairseq's `.bin/.idx` layout): per side `ids` (every
sentence's sentencepiece ids in a row), `offsets` (int64, where sentence i starts, and where the last one ends)
and `lengths` (pieces per sentence), and `meta.json` with every file's size. A build writes a `.partial-HOST-PID`
folder renamed when complete, so a killed build is never read; a folder unlike what a build leaves is `Damaged`
(set aside and rebuilt by `prepare`).

A training process keeps only the lengths in RAM and `pread`s each batch's rows from the page cache that every
process and rank shares. (Mapping the files instead grows the resident size by whole page-cache folios, hundreds
of KB each on current kernels, per random row, until most of the store counts as resident.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nmt.errors import NMTError

FORMAT = 1
META = "meta.json"
BUILDING = ".building"  # the lock a builder holds in its partial folder
SIDES = ("src", "tgt")
PARTS = ("ids", "offsets", "lengths")
REQUIRED = ("split", "pairs", "offered", "tokens", "id_dtype", "length_dtype", "files", "src_pieces", "tgt_pieces")


class FileArray:
    """A read-only array in a file: slicing reads just that slice (`pread`), never the whole file."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        self._fd = os.open(path, os.O_RDONLY)
        self._length = os.fstat(self._fd).st_size // self.dtype.itemsize

    def __getitem__(self, window: slice) -> np.ndarray:
        start, stop, _ = window.indices(self._length)
        data = os.pread(self._fd, max(0, stop - start) * self.dtype.itemsize, start * self.dtype.itemsize)
        return np.frombuffer(data, dtype=self.dtype)

    def __del__(self, close=os.close):  # `os` may be gone when this runs at interpreter exit
        if getattr(self, "_fd", None) is not None:
            close(self._fd)


class TokenizedPairs:
    """Sentence pairs as ids: `rows(indices)` in the model's id space, lengths in RAM. On disk the ids are
    sentencepiece ids; `maps` (per side, indexed by a sentencepiece id) turn them into model ids, so one prepared
    corpus serves any vocabulary pruning of the same sentencepiece model."""

    def __init__(self, arrays: dict, maps: dict | None = None, folder: Path | None = None):
        self.arrays, self.maps = arrays, maps or {}
        self.folder = folder  # on disk: named when its content turns out damaged
        self.src_lengths, self.tgt_lengths = arrays["src.lengths"], arrays["tgt.lengths"]  # (pairs,) pieces, no EOS

    @classmethod
    def from_lists(cls, src: list[list[int]], tgt: list[list[int]]) -> TokenizedPairs:
        """In memory, ids already in the model's space (tests, validation sets)."""
        arrays = {}
        for side, rows in (("src", src), ("tgt", tgt)):
            lengths = arrays[f"{side}.lengths"] = np.array([len(r) for r in rows], dtype=np.int64)
            arrays[f"{side}.offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            arrays[f"{side}.ids"] = np.array([i for r in rows for i in r], dtype=np.int64)
        return cls(arrays)

    @classmethod
    def open(cls, folder: Path, meta: dict, src_map: np.ndarray, tgt_map: np.ndarray) -> TokenizedPairs:
        arrays = {}
        split = meta["split"]
        for side in SIDES:
            arrays[f"{side}.ids"] = FileArray(folder / f"{split}.{side}.ids", meta["id_dtype"])
            arrays[f"{side}.offsets"] = FileArray(folder / f"{split}.{side}.offsets", np.int64)
            arrays[f"{side}.lengths"] = np.fromfile(folder / f"{split}.{side}.lengths", meta["length_dtype"])
        return cls(arrays, {"src": src_map, "tgt": tgt_map}, folder)

    def __len__(self) -> int:
        return len(self.tgt_lengths)

    def _row(self, side: str, index: int) -> np.ndarray:
        start, stop = self.arrays[f"{side}.offsets"][index: index + 2]
        ids = self.arrays[f"{side}.ids"][int(start): int(stop)]
        table = self.maps.get(side)
        try:
            return table[ids] if table is not None else ids.astype(np.int64)
        except IndexError:  # sizes intact (read_meta checks them), content not
            raise NMTError(f"{self.folder}: the prepared data is damaged (pair {index + 1} holds a {side} piece id "
                           "beyond the tokenizer's); delete that folder and it is built again") from None

    def rows(self, indices) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Both sides of the pairs `indices`, as int64 model ids."""
        return [self._row("src", int(i)) for i in indices], [self._row("tgt", int(i)) for i in indices]


class StoreWriter:
    """Appends encoded chunks of one split to a `.partial-PID` folder; `finish` makes it the cache entry."""

    def __init__(self, final: Path, split: str, id_type: np.dtype, length_type: np.dtype):
        self.final, self.split, self.folder = final, split, partial_folder(final)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        # held while this process builds: `remove_stale_partials` leaves a folder alone while anyone holds it
        self._building = open(self.folder / BUILDING, "w")
        fcntl.flock(self._building, fcntl.LOCK_EX)
        self.id_type, self.length_type = id_type, length_type
        self.files = {f"{side}.{part}": open(self.folder / f"{split}.{side}.{part}", "wb")
                      for side in SIDES for part in PARTS}
        for side in SIDES:
            self.files[f"{side}.offsets"].write(np.zeros(1, np.int64).tobytes())
        self.tokens, self.pairs = dict.fromkeys(SIDES, 0), 0

    def append(self, side: str, ids: np.ndarray, lengths: np.ndarray) -> None:
        self.files[f"{side}.ids"].write(ids.astype(self.id_type, copy=False).tobytes())
        self.files[f"{side}.lengths"].write(lengths.astype(self.length_type, copy=False).tobytes())
        self.files[f"{side}.offsets"].write((self.tokens[side] + np.cumsum(lengths, dtype=np.int64)).tobytes())
        self.tokens[side] += int(lengths.sum())
        if side == "tgt":
            self.pairs += len(lengths)

    def finish(self, meta: dict) -> None:
        """Flush, record every file's size, and rename into place (or keep another builder's finished copy)."""
        for file in self.files.values():
            file.flush()
            os.fsync(file.fileno())
            file.close()
        meta = {**meta, "format": FORMAT, "split": self.split, "pairs": self.pairs, "tokens": self.tokens,
                "id_dtype": self.id_type.name, "length_dtype": self.length_type.name,
                "files": {p.name: p.stat().st_size for p in sorted(self.folder.iterdir()) if p.name != BUILDING}}
        (self.folder / META).write_text(json.dumps(meta) + "\n", encoding="utf-8")
        try:
            os.rename(self.folder, self.final)
            (self.final / BUILDING).unlink(missing_ok=True)
        except OSError:  # another process (another node on shared storage) finished first: use theirs
            if finished_meta(self.final) is None:
                raise
            shutil.rmtree(self.folder, ignore_errors=True)
        finally:
            self._building.close()

    def abandon(self) -> None:
        """Remove the partial folder, even when closing its files fails again (a full disk)."""
        for file in self.files.values():
            with contextlib.suppress(OSError):
                file.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        self._building.close()


class Damaged(Exception):
    """What is wrong with a store's folder, in a few words."""


def read_meta(folder: Path) -> dict | None:
    """The folder's meta when every file it names has the recorded size and the offsets end where the ids do;
    None when there is no folder; `Damaged` when there is one but not what a finished build leaves."""
    if not folder.exists():
        return None
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise Damaged(f"no {META}") from None
    except (OSError, ValueError) as error:
        raise Damaged(f"{META} does not read as JSON ({getattr(error, 'strerror', None) or error})") from None
    if problem := _meta_problem(meta):
        raise Damaged(f"{META} {problem}")
    for name, size in meta["files"].items():
        try:
            actual = (folder / name).stat().st_size
        except OSError:
            raise Damaged(f"{name} is missing") from None
        if actual != size:
            raise Damaged(f"{name} has {actual} bytes where {META} says {size}")
    split, width = meta["split"], np.dtype(meta["id_dtype"]).itemsize
    for side in SIDES:
        if meta["files"].get(f"{split}.{side}.offsets", 0) < 8:
            raise Damaged(f"{split}.{side}.offsets holds no offset")
        last = int(FileArray(folder / f"{split}.{side}.offsets", np.int64)[-1:][0])
        if last != meta["tokens"][side] or last * width != meta["files"][f"{split}.{side}.ids"]:
            raise Damaged(f"{split}.{side}.offsets ends at {last}, not where its ids do")
    return meta


def finished_meta(folder: Path) -> dict | None:
    """`read_meta`, None for a damaged folder too."""
    try:
        return read_meta(folder)
    except Damaged:
        return None


def _meta_problem(meta) -> str | None:
    """What is wrong with the shape of a parsed meta.json, or None: every later read trusts it."""
    if not isinstance(meta, dict):
        return "is not a JSON object"
    missing = [key for key in ("format", *REQUIRED) if key not in meta]
    if missing or meta["format"] != FORMAT:
        return f"lacks {', '.join(missing)}" if missing else f"has format {meta['format']!r}, not {FORMAT}"
    dtypes = ("uint16", "uint32")
    if not isinstance(meta["split"], str) or meta["id_dtype"] not in dtypes or meta["length_dtype"] not in dtypes:
        return "has a split or dtypes that no build writes"
    files = {f"{meta['split']}.{side}.{part}" for side in SIDES for part in PARTS}
    if not (isinstance(meta["files"], dict) and set(meta["files"]) == files
            and all(type(size) is int for size in meta["files"].values())):
        return f"does not give the size of each of {', '.join(sorted(files))}"
    if not (isinstance(meta["tokens"], dict) and all(type(meta["tokens"].get(side)) is int for side in SIDES)):
        return "does not give each side's token count"
    counts = all(type(meta[key]) is int for key in ("pairs", "offered"))
    pieces = all(isinstance(meta[key], list) and all(type(i) is int for i in meta[key])
                 for key in ("src_pieces", "tgt_pieces"))
    return None if counts and pieces else "has counts or piece lists of the wrong type"


def partial_folder(final: Path) -> Path:
    """Where this process builds `final` (or moves it aside to delete it); named for host and pid."""
    return final.with_name(f"{final.name}.partial-{socket.gethostname()}-{os.getpid()}")


def modified(path: Path) -> float:
    """When `path` last changed; never, for one gone meanwhile."""
    try:
        return path.stat().st_mtime
    except OSError:
        return float("inf")


def remove_stale_partials(parent: Path) -> None:
    """Partial folders whose builder, on this host, is gone (killed mid-build)."""
    for folder in parent.glob(f"*.partial-{socket.gethostname()}-*"):
        # a folder just made is left alone: its builder may not hold the lock yet
        if time.time() - modified(folder) >= 60 and abandoned(folder):
            shutil.rmtree(folder, ignore_errors=True)


def abandoned(folder: Path) -> bool:
    """Whether no builder holds the partial folder `folder`. A builder holds a lock in it: a pid alone can
    mislead, since containers sharing a cache and a host name each number their processes from 1."""
    try:
        with open(folder / BUILDING, "r+") as building:
            fcntl.flock(building, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # being built
    except OSError:  # no lock: a folder being deleted, or one from before the lock: ask its pid, on this host
        host, _, pid = folder.name.rpartition(".partial-")[2].rpartition("-")
        return host != socket.gethostname() or (pid.isdigit() and not _alive(int(pid)))
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class StoreInfo:
    folder: Path
    meta: dict

    @property
    def bytes(self) -> int:
        return sum(self.meta["files"].values())
