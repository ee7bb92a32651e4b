"""Where nmt keeps what it can rebuild or measure again: `$NMT_CACHE`, by default ~/.cache/nmt.

Tokenizers, prepared data, compiled kernels and the timed product routes live under it; deleting it loses no
result, only the time to rebuild them. Each kind checks what it reads; a damaged entry is renamed `<name>.bad-<time>`
(kept to look at, never read again) and rebuilt, because a cache that fails a command, or that is silently redone
on every run, is worse than none. `nmt prepare --clean DAYS` removes what was set aside and unused prepared data.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

SET_ASIDE = ".bad-"
_SET_ASIDE_TIME = re.compile(r"\.bad-(\d{8}-\d{6})(?:-\d+)?$")


def cache_root() -> Path:
    return Path(os.environ.get("NMT_CACHE", Path.home() / ".cache" / "nmt"))


def set_aside(path: Path, problem: str, remedy: str) -> None:
    """Rename the damaged cache entry `path` (a file or a folder) out of the way and say so in one line:
    `problem` is what is wrong with it, `remedy` what happens instead ("measuring them again")."""
    name = f"{path.name}{SET_ASIDE}{time.strftime('%Y%m%d-%H%M%S')}"
    aside, count = path.with_name(name), 1
    while aside.exists():
        aside, count = path.with_name(f"{name}-{count}"), count + 1
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another process set it aside first, and said so
    except OSError as error:
        log.warning("%s: %s; cannot set it aside (%s); %s", path, problem, error.strerror or error, remedy)
        return
    log.warning("%s: %s; set aside as %s; %s", path, problem, aside.name, remedy)


def read_json(path: Path, problem, unreadable: str, remedy: str):
    """A cache file's parsed JSON, or None: when there is none yet, when it cannot be read (one warning, ending
    in `unreadable`), or when it is damaged: not JSON, or `problem(content)` names what is wrong. A damaged
    file is set aside (`remedy`: what happens instead)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):  # none yet
        return None
    except OSError as error:
        log.warning("%s: cannot read it (%s); %s", path, error.strerror or error, unreadable)
        return None
    try:
        content = json.loads(text)
    except ValueError:
        set_aside(path, "not JSON (truncated?)", remedy)
        return None
    wrong = problem(content)
    if wrong:
        set_aside(path, wrong, remedy)
        return None
    return content


def set_aside_before(cutoff: float) -> list[Path]:
    """The entries set aside before the time `cutoff` (seconds since the epoch), anywhere in the cache."""
    root, found = cache_root(), []
    for folder in (root, *(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())) if root.is_dir() else ():
        for path in folder.glob(f"*{SET_ASIDE}*"):
            stamp = _SET_ASIDE_TIME.search(path.name)
            if stamp and time.mktime(time.strptime(stamp.group(1), "%Y%m%d-%H%M%S")) < cutoff:
                found.append(path)
    return found


def file_lock(path: Path, waiting: str) -> contextlib.AbstractContextManager:
    """An exclusive lock on the file `path` (created if need be), held by one process at a time while the
    returned context's block runs; a process that must wait logs `waiting` first. The file is opened here,
    so that where it cannot be (OSError) the caller decides before any block runs."""
    file = open(path, "a")

    @contextlib.contextmanager
    def held() -> Iterator[None]:
        with file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("%s", waiting)
                fcntl.flock(file, fcntl.LOCK_EX)
            yield

    return held()


def unwritable(path: Path, error: OSError, consequence: str) -> None:
    """One warning for a cache entry that cannot be written: the process goes on with what it has."""
    log.warning("%s: cannot write it (%s); %s; set NMT_CACHE to a writable folder to keep it",
                path, error.strerror or error, consequence)


def unwritable_folder(folder: Path) -> OSError | None:
    """Why `folder` cannot be created or written, or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return error
    return None if os.access(folder, os.W_OK) else PermissionError(errno.EACCES, os.strerror(errno.EACCES))


@contextlib.contextmanager
def written_whole(path: Path, durable: bool = False, keep_suffix: bool = True) -> Iterator[Path]:
    """A temporary path beside `path` that replaces `path` when the block ends without an error, and is removed
    if it raises (OSError included, which the caller reports). `keep_suffix`: it ends in `path`'s suffix, for
    tools that read it; not where a search for that suffix must miss it (a run's checkpoints/*.pt).
    `durable`: on the disk when the block ends (the file synced before the rename, its folder after), for what a
    power cut must not take back, such as the checkpoint a run resumes from."""
    base, suffix = (path.stem, path.suffix) if keep_suffix else (path.name, "")
    # unique across processes and containers: every container's first process has pid 1
    partial = path.with_name(f".{base}.{os.getpid()}-{secrets.token_hex(4)}.partial{suffix}")
    try:
        yield partial
        if durable:
            _sync(partial)
        os.replace(partial, path)
        if durable:
            _sync(path.parent)
    finally:
        partial.unlink(missing_ok=True)


def _sync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
