"""Files the commands write: checked before any work starts, and written whole or not at all.

An output may not be a file the command reads (its input, the checkpoint), a folder, or a symbolic link
(replacing a link's target silently is how a mistyped path destroys a file elsewhere), and its folder must
exist. A file that already exists is replaced only if nmt wrote it and it has not changed since (same
size, modification time and inode as when written; recorded in `$NMT_CACHE/written.json`), so running a
command again replaces its own output, while a file the user wrote or edited needs `--overwrite`. Content
goes to a temporary file beside the target, renamed over it when complete, so an interrupted write leaves
the previous file, never half of a new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from nmt.cache import cache_root
from nmt.errors import NMTError

log = logging.getLogger(__name__)

# the files recorded at most; the oldest go first (a record lost only means asking for --overwrite)
MAX_RECORDED = 5000


def _record_file() -> Path:
    return cache_root() / "written.json"


def _identity(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def _read_record(record: Path) -> dict[str, list[int]]:
    try:
        files = json.loads(record.read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):  # none yet, or damaged: start again
        return {}
    return files if isinstance(files, dict) else {}


def written_by_nmt(path: Path) -> bool:
    """Whether nmt wrote `path` and nothing changed it since."""
    identity = _identity(path)
    return identity is not None and _read_record(_record_file()).get(str(path.resolve())) == identity


def remember(path: Path) -> None:
    """Record `path` as nmt's. Best effort: if the cache cannot be written, a later run asks for
    --overwrite, which is the safe side."""
    record = _record_file()
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        with open(record.with_name(record.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two commands finishing at once: neither loses the other's entry
            name, identity = str(path.resolve()), _identity(path)
            files = {other: known for other, known in _read_record(record).items()
                     if other != name and _identity(Path(other)) == known}  # forget files deleted or changed
            if identity is not None:
                files[name] = identity  # last: the newest
            kept = dict(list(files.items())[-MAX_RECORDED:])
            partial = record.with_name(f".{record.name}.{os.getpid()}.partial")
            partial.write_text(json.dumps({"version": 1, "files": kept}), encoding="utf-8")
            os.replace(partial, record)
    except OSError as error:
        log.debug("could not record %s as written by nmt: %s", path, error)


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
    """A temporary path beside `path` (same suffix, for tools that read it) that replaces `path` on success."""
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        yield partial
        os.replace(partial, path)
        remember(path)
    except OSError as error:
        raise NMTError(f"{path}: cannot write ({error.strerror or error})") from None
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with replacing(path) as partial:
        partial.write_text(text, encoding="utf-8")


def write_lines(path: Path, lines: list[str]) -> None:
    write_text(path, "".join(line + "\n" for line in lines))
