"""Files the commands write: checked before any work starts, written whole (`cache.written_whole`), recorded as nmt's.

An output may not be a file the command reads (its input, the checkpoint), a folder, or a symbolic link (replacing a
link's target silently is how a mistyped path destroys a file elsewhere), and its folder must exist. A file that
already exists is replaced only if nmt wrote it and its content has not changed since, so running a command again
replaces its own output, while a file the user wrote or edited needs `--overwrite`. What nmt wrote is recorded beside
it, in the folder's hidden `RECORD` (names, sizes and SHA-256 of the content; a run directory's also marks it as a
run, `run_dir`): a translation cannot carry a marker of its own, and a record of names and content, unlike one of
paths, inodes or times, stays true when the folder is moved or copied and needs no cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from nmt.cache import read_json, written_whole
from nmt.errors import NMTError

log = logging.getLogger(__name__)

RECORD = ".nmt-outputs.json"


def _fingerprint(path: Path) -> list:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        return [handle.tell(), digest.hexdigest()]  # [size, SHA-256]: the position at the end is the size read


def _record_problem(content: object) -> str | None:
    if not (isinstance(content, dict) and isinstance(content.get("files"), dict)
            and isinstance(content.get("run", False), bool)):
        return "not a JSON object with a \"files\" object"
    for name, known in content["files"].items():
        if not (isinstance(known, list) and len(known) == 2 and type(known[0]) is int and isinstance(known[1], str)):
            return f"the entry for {name} is not [size, SHA-256]"
    return None


def read_record(folder: Path) -> dict:
    """The record of `folder` (`{"files": {name: [size, sha256]}, "run": true}` in a run directory); a damaged one
    is set aside, and every file in the folder then counts as the user's."""
    return read_json(folder / RECORD, _record_problem, "files nmt wrote there count as yours",
                     "starting a new record (replacing a file written before needs --overwrite)") or {"files": {}}


def update_record(folder: Path, change: Callable[[dict], None]) -> None:
    """Apply `change` to the record of `folder` and write it whole; files deleted since are forgotten. The folder
    itself (no lock file beside the user's files) is locked meanwhile, so that two commands finishing in one folder
    lose neither's entry; where the file system has no locks, the record is still replaced whole (at worst without
    the other's entry: the safe side, --overwrite)."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(handle, fcntl.LOCK_EX)
        record = read_record(folder)
        record["files"] = {name: known for name, known in record["files"].items() if (folder / name).is_file()}
        change(record)
        with written_whole(folder / RECORD) as partial:
            partial.write_text(json.dumps(record), encoding="utf-8")
    finally:
        os.close(handle)


def written_by_nmt(path: Path) -> bool:
    """Whether nmt wrote `path` and its content is unchanged since (sizes first: a user's file is not read)."""
    known = read_record(path.parent)["files"].get(path.name)
    try:
        return known is not None and path.stat().st_size == known[0] and _fingerprint(path) == known
    except OSError:
        return False


def remember(path: Path) -> None:
    """Record `path`, just written, as nmt's; where that fails, the next run asks for --overwrite."""
    try:
        fingerprint = _fingerprint(path)
        update_record(path.parent, lambda record: record["files"].update({path.name: fingerprint}))
    except OSError as error:
        log.warning("%s: cannot record it as nmt's (%s); running this command again will ask for --overwrite",
                    path, error.strerror or error)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet)
        return a.resolve() == b.resolve()


def check_output(path: str | Path, *, reads: Iterable[str | Path] = (), flag: str = "--output",
                 folder_checked: bool = False, overwrite: bool = False) -> Path:
    """`path`, if it is safe to write; else one line naming it, why, and what to do. `folder_checked`: its folder,
    approved by `check_output_folder`, may not exist yet. `overwrite`: replace an existing file nmt did not write."""
    path = Path(path)
    if path.is_symlink():
        raise NMTError(f"{flag} {path}: is a symbolic link; give the path of the file itself")
    if path.is_dir():
        raise NMTError(f"{flag} {path}: is a folder; give a file name")
    if path.name == RECORD:
        raise NMTError(f"{flag} {path}: is where nmt records the files it wrote in that folder; choose another name")
    if not folder_checked and not path.parent.is_dir():
        raise NMTError(f"{flag} {path}: the folder {path.parent} does not exist; create it first")
    for source in reads:
        if _same_file(path, Path(source)):
            raise NMTError(f"{flag} {path}: is also a file this command reads ({source}); writing it would "
                           "destroy it; choose another output path")
    if path.exists() and not overwrite and not written_by_nmt(path):
        raise NMTError(f"{flag} {path}: already exists and nmt did not write it (or it changed since); choose "
                       "another path, or add --overwrite to replace it")
    return path


def check_output_folder(folder: str | Path, *, flag: str) -> Path:
    """A folder the command will create or add files to."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NMTError(f"{flag} {folder}: is a file, not a folder; give a folder path")
    existing = next(path for path in (folder, *folder.absolute().parents) if path.exists())
    if not existing.is_dir():
        raise NMTError(f"{flag} {folder}: {existing} is a file, not a folder")
    return folder


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """`written_whole` for a command's output: recorded as nmt's, and a failure is one line."""
    try:
        with written_whole(path) as partial:
            yield partial
    except OSError as error:
        raise NMTError(f"{path}: cannot write ({error.strerror or error})") from None
    remember(path)


def write_text(path: Path, text: str) -> None:
    with replacing(path) as partial:
        partial.write_text(text, encoding="utf-8")


def write_lines(path: Path, lines: list[str]) -> None:
    write_text(path, "".join(line + "\n" for line in lines))
