"""`nmt prepare --clean DAYS`: the space of prepared data nobody used for DAYS days, given back on request.

Stores are never removed on their own: the next run with the same data would spend minutes (hours, at WMT size)
building one again. A look-up touches a store's folder, so its modification time says when it was last used.
Also removed, once as old: partial folders no builder holds (another host's, which a look-up leaves alone) and
cache entries set aside as damaged.
"""

from __future__ import annotations

import fcntl
import re
import shutil
import time
from pathlib import Path

from nmt.cache import set_aside_before
from nmt.data import store
from nmt.data.prepare import store_root
from nmt.errors import NMTError

# a store's folder (a hash), or one being built or removed: nothing else under prepared/ is touched
_STORE_NAME = re.compile(r"[0-9a-f]{24}(\.partial-.+)?")


def reclaim(days: float) -> list[tuple[Path, int]]:
    """Remove what was not used for `days` days; each removed path and the bytes it held."""
    cutoff = time.time() - days * 86400
    removed = []
    root = store_root()
    for path in sorted(root.iterdir()) if root.is_dir() else ():
        if not (path.is_dir() and _STORE_NAME.fullmatch(path.name)) or store.modified(path) >= cutoff:
            continue  # lock files, entries set aside (below), anything nmt did not name, anything used since
        if ".partial-" in path.name:
            if store.abandoned(path):
                removed.append((path, _delete(path)))
        elif (size := _delete_unless_locked(path)) is not None:
            removed.append((path, size))
    return removed + [(path, _delete(path)) for path in set_aside_before(cutoff)]


def _delete(path: Path) -> int:
    """Remove `path`; the bytes it held. A store is first renamed to a partial folder's name, so a removal cut
    short leaves a folder that is never read and that a later look-up removes."""
    try:
        size = (sum(file.stat().st_size for file in path.rglob("*") if file.is_file() and not file.is_symlink())
                if path.is_dir() else path.stat().st_size)
    except OSError:
        size = 0
    try:
        if path.is_dir() and ".partial-" not in path.name:
            path = path.rename(store.partial_folder(path))
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError as error:
        raise NMTError(f"{path}: cannot remove it ({error.strerror or error})") from None
    return size


def _delete_unless_locked(folder: Path) -> int | None:
    """Remove the store `folder` unless a process holds its lock (building it, or waiting to read it); the
    bytes it held, or None. Its lock file goes with it."""
    lock_path = folder.with_name(folder.name + ".lock")
    try:
        lock = open(lock_path, "a")
    except OSError:
        return None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        size = _delete(folder)
        lock_path.unlink(missing_ok=True)
    return size
