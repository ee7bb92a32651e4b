"""Files the commands write: checked before any work starts, and written whole or not at all.

An output may not be a file the command reads (its input, the checkpoint), a folder, or a symbolic link
(replacing a link's target silently is how a mistyped path destroys a file elsewhere), and its folder must
exist. Content goes to a temporary file beside the target, renamed over it when complete, so an
interrupted write leaves the previous file, never half of a new one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from nmt.errors import NMTError


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet)
        return a.resolve() == b.resolve()


def check_output(path: str | Path, *, reads: Iterable[str | Path] = (), flag: str = "--output",
                 folder_checked: bool = False) -> Path:
    """`path`, if it is safe to write; else one line naming it, why, and what to do. `folder_checked`: its
    folder may not exist yet, the command creates it (`check_output_folder` approved it)."""
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
    except OSError as error:
        raise NMTError(f"{path}: cannot write ({error.strerror or error})") from None
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with replacing(path) as partial:
        partial.write_text(text, encoding="utf-8")


def write_lines(path: Path, lines: list[str]) -> None:
    write_text(path, "".join(line + "\n" for line in lines))
