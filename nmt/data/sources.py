"""Parallel corpora from the hub, a local hub-layout folder, or plain-text files; and filtering.

`data.dataset` names one of three sources, told apart by what it names:
  * a folder holding `{split}.{lang}` text files (`train.en`, `train.de`, ...): plain text;
  * any other existing folder: a dataset in the hub's layout, read by `datasets.load_dataset`;
  * anything else: a hub dataset name, read by `datasets.load_dataset(name, config)`.
Rows may be flat (`{"en": ..., "de": ...}`) or carry a `translation` dict column.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import os
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nmt.config import DataConfig
from nmt.errors import NMTError

log = logging.getLogger(__name__)

VALID_ALIASES = ("validation", "valid", "val", "dev")


@dataclass
class Corpus:
    """One split: line i of `src` translates line i of `tgt`."""

    src: list[str]
    tgt: list[str]
    name: str  # where it came from, for messages

    def __len__(self) -> int:
        return len(self.src)


def _split_candidates(split: str) -> list[str]:
    return [split] + [a for a in VALID_ALIASES if a != split] if split in VALID_ALIASES else [split]


def _resolve_split(split: str, available: list[str], where: str) -> str:
    for candidate in _split_candidates(split):
        if candidate in available:
            return candidate
    raise NMTError(
        f"{where}: no split '{split}'; it has {', '.join(sorted(available)) or 'none'} "
        f"(name one: data.train_split / data.valid_split / data.test_split in a config, --split for nmt evaluate)"
    )


# ---------------------------------------------------------------- plain text

NOT_LANGUAGES = {"json", "jsonl", "csv", "tsv", "parquet", "arrow", "txt", "md", "py", "gz", "zip", "yaml", "lock"}


def text_languages(path: Path) -> list[str]:
    """The `lang` of every `{split}.{lang}` plain-text file in a folder."""
    if not path.is_dir():
        return []
    return sorted({p.suffix[1:] for p in path.iterdir() if p.is_file() and p.suffix[1:].isalpha()
                   and len(p.suffix) <= 9 and p.suffix[1:].lower() not in NOT_LANGUAGES})


@contextlib.contextmanager
def _reading(path: Path):
    """A text file that cannot be read is one line naming it."""
    try:
        yield
    except FileNotFoundError:
        raise NMTError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise NMTError(f"{path}: is a folder; give a text file, one sentence a line") from None
    except OSError as error:
        raise NMTError(f"{path}: cannot read ({error.strerror})") from None


def read_text_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 file, without newlines; invalid UTF-8 is an error naming the line."""
    with _reading(path):
        data = path.read_bytes()
    return _decode_lines([data], path, 1) if data else []


def count_text_lines(path: Path) -> int:
    """The lines `read_line_chunks` will give, counted in one streaming pass that also checks the whole file
    is UTF-8, so a bad byte on line 9,000,000 is reported before any translating, not after."""
    lines, carry = 0, b""
    with _reading(path), open(path, "rb") as file:
        while block := file.read(1 << 22):
            block, cut = carry + block, (carry + block).rfind(b"\n") + 1
            _decode_lines([block[:cut]], path, lines + 1)
            lines, carry = lines + block.count(b"\n", 0, cut), block[cut:]
    _decode_lines([carry], path, lines + 1)
    return lines + (1 if carry else 0)


def read_line_chunks(path: Path, size: int):
    """`read_text_lines`, `size` lines at a time."""
    with _reading(path), open(path, "rb") as file:
        first_line = 1
        while raw := list(itertools.islice(file, size)):
            yield _decode_lines(raw, path, first_line)
            first_line += len(raw)


def _text_splits(folder: Path, src_lang: str, tgt_lang: str) -> list[str]:
    return sorted(
        p.name[: -len(src_lang) - 1] for p in folder.glob(f"*.{src_lang}") if (folder / f"{p.stem}.{tgt_lang}").exists()
    )


def _load_text_split(folder: Path, split: str, src_lang: str, tgt_lang: str) -> Corpus:
    split = _resolve_split(split, _text_splits(folder, src_lang, tgt_lang), str(folder))
    src_path, tgt_path = folder / f"{split}.{src_lang}", folder / f"{split}.{tgt_lang}"
    src, tgt = read_text_lines(src_path), read_text_lines(tgt_path)
    if len(src) != len(tgt):
        raise NMTError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; "
            f"line N of one side must translate line N of the other"
        )
    return Corpus(src, tgt, f"{folder}/{split}.{{{src_lang},{tgt_lang}}}")


# ---------------------------------------------------------------- hub layout

@functools.cache
def _hub_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        return False
    return True


def _offline_hint() -> str:
    if not _hub_reachable():
        return ("this machine cannot reach huggingface.co (offline?); save the dataset to a folder where you have a "
                "connection and set data.dataset to that folder (README: \"Without the hub\")")
    return "check the name on huggingface.co/datasets"


def _load_hub(name: str, config_name: str | None):
    # offline, the hub client retries for half a minute before giving up, and datasets still finds a copy in
    # its local cache without it; a folder in the hub's layout needs no hub
    if not Path(name).is_dir() and "HF_HUB_OFFLINE" not in os.environ and not _hub_reachable():
        log.info("huggingface.co is unreachable: looking for '%s' in the local datasets cache only", name)
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets  # imported here: slow to import, and not needed for plain text

    datasets.logging.set_verbosity_error()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # importing it reset the level set at start-up
    try:
        return datasets.load_dataset(name, config_name)
    except ValueError as error:
        if "Config name is missing" in str(error) or "BuilderConfig" in str(error):
            raise NMTError(f"dataset '{name}': {str(error).splitlines()[0]} (set data.dataset_config)") from None
        raise NMTError(f"dataset '{name}': {str(error).splitlines()[0]}") from None
    except (FileNotFoundError, ConnectionError, OSError) as error:
        raise NMTError(
            f"dataset '{name}' is not a local folder and could not be loaded from the hub "
            f"({type(error).__name__}); {_offline_hint()}"
        ) from None
    except Exception as error:  # datasets raises its own DatasetNotFoundError and friends
        if "NotFound" in type(error).__name__ or "offline" in str(error).lower():
            raise NMTError(
                f"dataset '{name}' is not a local folder and was not found on the hub; {_offline_hint()}"
            ) from None
        raise


def _check_languages(table, langs: tuple[str, str], name: str) -> None:
    columns = table.column_names
    for lang in langs:
        if lang in columns:
            continue
        if "translation" not in columns:
            raise NMTError(f"dataset '{name}' has no language '{lang}'; its columns are {', '.join(columns)}")
        first = table[0]["translation"] if len(table) else {}
        if first and lang not in first:
            raise NMTError(f"dataset '{name}' has no language '{lang}'; it has {', '.join(sorted(first))}")


def _values(batch: dict, lang: str) -> list:
    """One side's values of a batch of rows (datasets' python format: its features decoded), from a flat
    column or the `translation` dicts."""
    if lang in batch:
        return batch[lang]
    return [row.get(lang) if row else None for row in batch["translation"]]


def _texts(values: list, lang: str, name: str, split: str, first_row: int = 1) -> list[str]:
    """The sentences of one side; a missing value is an empty sentence, anything but text an error."""
    texts = []
    for row, value in enumerate(values, first_row):
        if value is not None and not isinstance(value, str):
            files = sorted(Path(name).glob(f"{split}.*")) if Path(name).is_dir() else []
            where = f"{files[0]}, row {row}" if len(files) == 1 else f"dataset '{name}' [{split}], row {row}"
            raise NMTError(f"{where}: the '{lang}' value {value!r} is a {type(value).__name__}, not text; "
                           f"every '{lang}' value must be a string")
        texts.append(value or "")
    return texts


# ---------------------------------------------------------------- streams of training pairs


class TextPairs:
    """Two `{split}.{lang}` files read in step, chunk by chunk; never the whole corpus in memory."""

    def __init__(self, src_path: Path, tgt_path: Path, name: str):
        self.paths, self.name = (src_path, tgt_path), name
        (src_digest, src_lines), (tgt_digest, tgt_lines) = _digest_and_count(src_path), _digest_and_count(tgt_path)
        if src_lines != tgt_lines:
            raise NMTError(
                f"{src_path} has {src_lines} lines but {tgt_path} has {tgt_lines}; "
                f"line N of one side must translate line N of the other"
            )
        self.pairs, self._fingerprint = src_lines, f"text:{src_digest}:{tgt_digest}"

    def __len__(self) -> int:
        return self.pairs

    def fingerprint(self) -> str:
        """The files' content: a copied or touched corpus is the same corpus, an edited one is not."""
        return self._fingerprint

    def chunks(self, size: int):
        yield from zip(*(read_line_chunks(path, size) for path in self.paths))  # in step: the counts match


def _digest_and_count(path: Path) -> tuple[str, int]:
    """sha256 of a file and its line count as `read_text_lines` counts them, in one streaming pass."""
    digest, newlines, last = hashlib.sha256(), 0, b""
    with _reading(path), open(path, "rb") as file:
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


def _decode_lines(raw: list[bytes], path: Path, first_line: int) -> list[str]:
    data = b"".join(raw)
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
    lines = text.split("\n")
    if text.endswith("\n"):  # a lone "\n" is one empty line
        lines.pop()
    return [line.rstrip("\r") for line in lines]


class HubPairs:
    """A split of a hub dataset, read from its memory-mapped Arrow table chunk by chunk."""

    def __init__(self, table, langs: tuple[str, str], name: str, split: str):
        _check_languages(table, langs, name)
        self.table, self.langs, self.name, self.split = table, langs, f"{name}[{split}]", split
        self._dataset, self._digest = name, None

    def __len__(self) -> int:
        return len(self.table)

    def fingerprint(self) -> str:
        """A local folder: its files' content, as for text files (datasets' own fingerprint follows paths and
        modification times, so a copied or touched folder would be tokenized again). From the hub: datasets'
        fingerprint of the table (its files and the transforms applied to them)."""
        if Path(self._dataset).is_dir():
            if self._digest is None:  # asked for twice (tokenizer and store): the files are read once
                self._digest = _folder_digest(Path(self._dataset))
            config_name = getattr(self.table.info, "config_name", None)  # two configs of one folder differ
            return f"hub-folder:{self._digest}:{config_name}:{self.split}:{'-'.join(self.langs)}"
        return f"hub:{self._dataset}:{self.split}:{self.table._fingerprint}:{'-'.join(self.langs)}"

    def chunks(self, size: int):
        first_row = 1
        for batch in self.table.iter(batch_size=size):
            texts = tuple(_texts(_values(batch, lang), lang, self._dataset, self.split, first_row)
                          for lang in self.langs)
            yield texts
            first_row += len(texts[0])


# ---------------------------------------------------------------- entry points

def _open(cfg: DataConfig):
    """(folder, None) for plain-text files, (name, DatasetDict) for a hub dataset or hub-layout folder."""
    path = Path(cfg.dataset).expanduser()
    languages = text_languages(path)
    if languages:
        for lang in (cfg.src_lang, cfg.tgt_lang):
            if lang not in languages:
                raise NMTError(f"{path}: no language '{lang}' (no *.{lang} files); it has {', '.join(languages)}")
        return path, None
    if path.exists() and not path.is_dir():
        raise NMTError(f"{path}: data.dataset must be a folder or a hub dataset name, not a file")
    name = str(path) if path.is_dir() else cfg.dataset
    return name, _load_hub(name, cfg.dataset_config)


def load_data(cfg: DataConfig, splits: list[str], stream_split: str | None = None):
    """The named splits of `cfg.dataset` in memory, in order, and `stream_split` (the training split)
    as a stream of pairs; the hub is read once for all of them."""
    where, dataset = _open(cfg)
    langs = (cfg.src_lang, cfg.tgt_lang)
    if dataset is None:
        corpora = [_load_text_split(where, split, *langs) for split in splits]
        if stream_split is None:
            return corpora, None
        split = _resolve_split(stream_split, _text_splits(where, *langs), str(where))
        stream = TextPairs(where / f"{split}.{langs[0]}", where / f"{split}.{langs[1]}",
                           f"{where}/{split}.{{{langs[0]},{langs[1]}}}")
        return corpora, stream
    corpora = []
    for split in splits:
        split = _resolve_split(split, list(dataset.keys()), f"dataset '{where}'")
        table = dataset[split]
        _check_languages(table, langs, where)
        rows = table[:]
        src, tgt = (_texts(_values(rows, lang), lang, where, split) for lang in langs)
        corpora.append(Corpus(src, tgt, f"{where}[{split}]"))
    if stream_split is None:
        return corpora, None
    split = _resolve_split(stream_split, list(dataset.keys()), f"dataset '{where}'")
    return corpora, HubPairs(dataset[split], langs, where, split)


def load_splits(cfg: DataConfig, splits: list[str]) -> list[Corpus]:
    """The named (small) splits of `cfg.dataset` in memory, in order."""
    return load_data(cfg, splits)[0]


def drop_empty(corpus: Corpus) -> tuple[Corpus, int]:
    """Strip whitespace and drop pairs with an empty side."""
    kept = [(s.strip(), t.strip()) for s, t in zip(corpus.src, corpus.tgt) if s.strip() and t.strip()]
    return Corpus([s for s, _ in kept], [t for _, t in kept], corpus.name), len(corpus) - len(kept)


def filter_by_length(src_lengths, tgt_lengths, *, max_len: int, max_ratio: float) -> tuple[np.ndarray, Counter]:
    """Which pairs to keep (a boolean mask), and how many were dropped for each reason (lengths in pieces)."""
    src, tgt = np.asarray(src_lengths, dtype=np.int64), np.asarray(tgt_lengths, dtype=np.int64)
    too_long = (src > max_len) | (tgt > max_len)
    lopsided = ~too_long & (np.maximum(src, tgt) > max_ratio * np.maximum(1, np.minimum(src, tgt)))
    dropped = Counter({f"longer than data.max_len={max_len} pieces": int(too_long.sum()),
                       f"length ratio above data.max_len_ratio={max_ratio}": int(lopsided.sum())})
    return ~(too_long | lopsided), +dropped
