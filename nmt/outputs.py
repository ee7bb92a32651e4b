"""Files the commands write: checked before any work starts, and written whole or not at all.

An output may not be a file the command reads (its input, the checkpoint), a folder, or a symbolic link
(replacing a link's target silently is how a mistyped path destroys a file elsewhere), and its folder must
exist. A file that already exists is replaced only if nmt wrote it and it has not changed since (same
size, modification time and inode as when written; recorded in `$NMT_CACHE/written.json`), so running a
command again replaces its own output, while a file the user wrote or edited needs `--overwrite`. Content
goes to a temporary file beside the target, renamed over it when complete, so an interrupted write leaves
the previous file, never half of a new one. The caches are written the same way (`cache.written_whole`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from nmt.cache import cache_root, read_json, unwritable, written_whole
from nmt.errors import NMTError

log = logging.getLogger(__name__)

# the files recorded at most; the oldest go first (a record lost only means asking for --overwrite)
MAX_RECORDED = 5000

# what this process wrote and could not record: it still knows its own files
_written_here: dict[str, list[int]] = {}


def _record_file() -> Path:
    return cache_root() / "written.json"


def _identity(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def _record_problem(content: object) -> str | None:
    """What is wrong with the record's parsed content, or None."""
    if not isinstance(content, dict) or not isinstance(content.get("files"), dict):
        return "not a JSON object with a \"files\" object"
    for name, identity in content["files"].items():
        if not (isinstance(identity, list) and len(identity) == 3 and all(type(n) is int for n in identity)):
            return f"the entry for {name} is not [size, modification time, inode]"
    return None


def _read_record(record: Path) -> dict[str, list[int]]:
    """The recorded files; a damaged record is set aside (every file then counts as the user's)."""
    content = read_json(record, _record_problem, "files nmt wrote count as yours",
                        "starting a new record (replacing a file written before needs --overwrite)")
    return content["files"] if content is not None else {}


@contextlib.contextmanager
def _record_lock(record: Path) -> Iterator[None]:
    """Held while the record is read or written: two commands finishing at once lose neither's entry, and a
    damaged record is set aside once. Without one (a cache that cannot be written) the record is only read."""
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        lock = open(record.with_name(record.name + ".lock"), "a")
    except OSError:
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def written_by_nmt(path: Path) -> bool:
    """Whether nmt wrote `path` and nothing changed it since."""
    identity, name = _identity(path), str(path.resolve())
    if identity is None:
        return False
    if _written_here.get(name) == identity:
        return True
    record = _record_file()
    with _record_lock(record):
        return _read_record(record).get(name) == identity


def remember(path: Path) -> None:
    """Record `path` as nmt's. If the cache cannot be written, this process still knows it, and a later run
    asks for --overwrite, which is the safe side."""
    record, name, identity = _record_file(), str(path.resolve()), _identity(path)
    try:
        with _record_lock(record):
            files = {other: known for other, known in _read_record(record).items()
                     if other != name and _identity(Path(other)) == known}  # forget files deleted or changed
            if identity is not None:
                files[name] = identity  # last: the newest
            kept = dict(list(files.items())[-MAX_RECORDED:])
            with written_whole(record) as partial:
                partial.write_text(json.dumps({"version": 1, "files": kept}), encoding="utf-8")
    except OSError as error:
        if identity is not None:
            _written_here[name] = identity
        unwritable(record, error, f"{path} is not recorded as nmt's, so running this command again will ask "
                                  "for --overwrite")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet)
        return a.resolve() == b.resolve()


def check_output(path: str | Path, *, reads: Iterable[str | Path] = (), flag: str = "--output",
                 folder_checked: bool = False, overwrite: bool = False) -> Path:
    """`path`, if it is safe to write; else one line naming it, why, and what to do. `folder_checked`: its
    folder may not exist yet, the command creates it (`check_output_folder` approved it). `overwrite`: the
    user allowed replacing an existing file nmt did not write."""
    path = Path(path)
    if path.is_symlink():
        raise NMTError(f"{flag} {path}: is a symbolic link; give the path of the file itself")
    if path.is_dir():
        raise NMTError(f"{flag} {path}: is a folder; give a file name")
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
    if not folder.exists():
        existing = next(parent for parent in folder.absolute().parents if parent.exists())
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
