"""Text files as every command reads them: UTF-8, one sentence a line, split at "\n" only; a file that
cannot be read, or a byte that is not UTF-8, is one line naming the file (and the line)."""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

from nmt.errors import NMTError


@contextlib.contextmanager
def reading(path: Path):
    try:
        yield
    except FileNotFoundError:
        raise NMTError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise NMTError(f"{path}: is a folder; give a text file, one sentence a line") from None
    except OSError as error:
        raise NMTError(f"{path}: cannot read ({error.strerror})") from None


def read_text_lines(path: Path) -> list[str]:
    with reading(path):
        data = path.read_bytes()
    return _decode_lines(data, path, 1) if data else []


def count_text_lines(path: Path) -> int:
    """The lines `read_line_chunks` will give, read through once to check the whole file is UTF-8, so that a
    bad byte on line 9,000,000 is reported before any translating, not after."""
    return sum(map(len, read_line_chunks(path, 1 << 16)))


def read_line_chunks(path: Path, size: int):
    """`read_text_lines`, `size` lines at a time."""
    with reading(path), open(path, "rb") as file:
        first_line = 1
        while raw := list(itertools.islice(file, size)):
            yield _decode_lines(b"".join(raw), path, first_line)
            first_line += len(raw)


def _decode_lines(data: bytes, path: Path, first_line: int) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = first_line + data.count(b"\n", 0, error.start)
        raise NMTError(f"{path}:{line}: invalid UTF-8 (byte {data[error.start]:#04x}); "
                       f"convert the file to UTF-8, e.g. iconv -f LATIN1 -t UTF-8") from None
    return split_lines(text)


def split_lines(text: str) -> list[str]:
    """Lines as every command reads them: split at "\n" only (a U+2028 or a form feed inside a sentence
    stays in it), a "\r" before it dropped, and a final newline ending the last line, not starting another."""
    return [line.rstrip("\r") for line in text.removesuffix("\n").split("\n")]  # a lone "\n": one empty line
