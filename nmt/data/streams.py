"""A training split read as a stream of chunks of pairs, never the whole corpus in memory, and named by its
content: a fingerprint that keys the tokenizer and the prepared data, so a copied or touched corpus is the
same corpus and an edited one is not."""

from __future__ import annotations

import hashlib
from pathlib import Path

from nmt.data.hub import check_languages, side_texts
from nmt.data.text import read_line_chunks, reading
from nmt.errors import NMTError


class TextPairs:
    """Two `{split}.{lang}` files read in step, chunk by chunk."""

    def __init__(self, src_path: Path, tgt_path: Path, name: str):
        self.paths, self.name = (src_path, tgt_path), name
        (src_digest, src_lines), (tgt_digest, tgt_lines) = _digest_and_count(src_path), _digest_and_count(tgt_path)
        if src_lines != tgt_lines:
            raise NMTError(f"{src_path} has {src_lines} lines but {tgt_path} has {tgt_lines}; "
                           "line N of one side must translate line N of the other")
        self.pairs, self.fingerprint = src_lines, f"text:{src_digest}:{tgt_digest}"

    def __len__(self) -> int:
        return self.pairs

    def chunks(self, size: int):
        yield from zip(*(read_line_chunks(path, size) for path in self.paths))  # in step: the counts match


class HubPairs:
    """A split of a hub dataset, read from its memory-mapped Arrow table chunk by chunk. A local folder is
    fingerprinted by its files' content, as text files are (datasets' own fingerprint follows paths and modification
    times); one from the hub by datasets' fingerprint of the table (its files and the transforms applied to them)."""

    def __init__(self, table, langs: tuple[str, str], name: str, split: str):
        check_languages(table, langs, name)
        self.table, self.langs, self.split = table, langs, split
        self.name, self._dataset = f"{name}[{split}]", name
        if Path(name).is_dir():
            config_name = getattr(table.info, "config_name", None)  # two configs of one folder differ
            self.fingerprint = f"hub-folder:{_folder_digest(Path(name))}:{config_name}:{split}:{'-'.join(langs)}"
        else:
            self.fingerprint = f"hub:{name}:{split}:{table._fingerprint}:{'-'.join(langs)}"

    def __len__(self) -> int:
        return len(self.table)

    def chunks(self, size: int):
        for index, batch in enumerate(self.table.iter(batch_size=size)):  # every batch but the last holds `size`
            yield tuple(side_texts(batch, lang, self._dataset, self.split, index * size + 1) for lang in self.langs)


def _digest_and_count(path: Path) -> tuple[str, int]:
    """sha256 of a file and its line count as `read_text_lines` counts them, in one streaming pass."""
    digest, newlines, last = hashlib.sha256(), 0, b""
    with reading(path), open(path, "rb") as file:
        while block := file.read(1 << 22):
            digest.update(block)
            newlines += block.count(b"\n")
            last = block
    return digest.hexdigest(), newlines + (1 if last and not last.endswith(b"\n") else 0)


def _folder_digest(folder: Path) -> str:
    """sha256 over a folder's files (names relative to it, then content), hidden ones left out."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(folder).parts)):
        digest.update(f"{path.relative_to(folder)}\0{_digest_and_count(path)[0]}".encode())
    return digest.hexdigest()
