"""Parallel corpora from the hub, a local hub-layout folder, or plain-text files; and filtering.

`data.dataset` names one of three sources, told apart by what it names:
  * a folder holding `{split}.{lang}` text files (`train.en`, `train.de`, ...): plain text;
  * any other existing folder: a dataset in the hub's layout, read by `datasets.load_dataset`;
  * anything else: a hub dataset name, read by `datasets.load_dataset(name, config)`.
Rows may be flat (`{"en": ..., "de": ...}`) or carry a `translation` dict column.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

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
        f"(set data.train_split / data.valid_split / data.test_split)"
    )


# ---------------------------------------------------------------- plain text

NOT_LANGUAGES = {"json", "jsonl", "csv", "tsv", "parquet", "arrow", "txt", "md", "py", "gz", "zip", "yaml", "lock"}


def text_languages(path: Path) -> list[str]:
    """The `lang` of every `{split}.{lang}` plain-text file in a folder."""
    if not path.is_dir():
        return []
    return sorted({p.suffix[1:] for p in path.iterdir() if p.is_file() and p.suffix[1:].isalpha()
                   and len(p.suffix) <= 9 and p.suffix[1:].lower() not in NOT_LANGUAGES})


def read_text_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 file, without newlines; invalid UTF-8 is an error naming the line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NMTError(f"{path}: file not found") from None
    except OSError as error:
        raise NMTError(f"{path}: cannot read ({error.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise NMTError(
            f"{path}:{line}: invalid UTF-8 (byte {data[error.start]:#04x}); "
            f"convert the file to UTF-8, e.g. iconv -f LATIN1 -t UTF-8"
        ) from None
    if not text:
        return []
    if text.endswith("\n"):  # the last line's newline ends it; it does not start another (a lone "\n" is one line)
        text = text[:-1]
    return [line.rstrip("\r") for line in text.split("\n")]


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
    if "HF_HUB_OFFLINE" not in os.environ and not _hub_reachable():
        # without this, the hub client retries for half a minute before giving up; offline, datasets
        # still finds a copy in its local cache
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


def _column(table, lang: str, name: str, split: str) -> list[str]:
    columns = table.column_names
    if lang in columns:
        return _texts(table[lang], lang, name, split)
    if "translation" in columns:
        rows = table["translation"]
        if rows and lang not in rows[0]:
            raise NMTError(f"dataset '{name}' has no language '{lang}'; it has {', '.join(sorted(rows[0]))}")
        return _texts([row.get(lang) for row in rows], lang, name, split)
    raise NMTError(f"dataset '{name}' has no language '{lang}'; its columns are {', '.join(columns)}")


def _texts(values: list, lang: str, name: str, split: str) -> list[str]:
    """The sentences of one side; a missing value is an empty sentence, anything but text an error."""
    texts = []
    for row, value in enumerate(values, 1):
        if value is not None and not isinstance(value, str):
            files = sorted(Path(name).glob(f"{split}.*")) if Path(name).is_dir() else []
            where = f"{files[0]}, row {row}" if len(files) == 1 else f"dataset '{name}' [{split}], row {row}"
            raise NMTError(f"{where}: the '{lang}' value {value!r} is a {type(value).__name__}, not text; "
                           f"every '{lang}' value must be a string")
        texts.append(value or "")
    return texts


# ---------------------------------------------------------------- entry points

def load_splits(cfg: DataConfig, splits: list[str]) -> list[Corpus]:
    """Load the named splits of `cfg.dataset`, in order; the hub is read once for all of them."""
    path = Path(cfg.dataset).expanduser()
    languages = text_languages(path)
    if languages:
        for lang in (cfg.src_lang, cfg.tgt_lang):
            if lang not in languages:
                raise NMTError(f"{path}: no language '{lang}' (no *.{lang} files); it has {', '.join(languages)}")
        return [_load_text_split(path, split, cfg.src_lang, cfg.tgt_lang) for split in splits]
    if path.is_dir() or path.exists():
        if not path.is_dir():
            raise NMTError(f"{path}: data.dataset must be a folder or a hub dataset name, not a file")
        name = str(path)
    else:
        name = cfg.dataset
    dataset = _load_hub(name, cfg.dataset_config)
    corpora = []
    for split in splits:
        split = _resolve_split(split, list(dataset.keys()), f"dataset '{name}'")
        table = dataset[split]
        src, tgt = _column(table, cfg.src_lang, name, split), _column(table, cfg.tgt_lang, name, split)
        corpora.append(Corpus(src, tgt, f"{name}[{split}]"))
    return corpora


def drop_empty(corpus: Corpus) -> tuple[Corpus, int]:
    """Strip whitespace and drop pairs with an empty side."""
    kept = [(s.strip(), t.strip()) for s, t in zip(corpus.src, corpus.tgt) if s.strip() and t.strip()]
    return Corpus([s for s, _ in kept], [t for _, t in kept], corpus.name), len(corpus) - len(kept)


def filter_by_length(
    src_lengths: list[int], tgt_lengths: list[int], *, max_len: int, max_ratio: float
) -> tuple[list[int], Counter]:
    """Indices of pairs to keep, and how many were dropped for each reason (lengths in pieces)."""
    keep, dropped = [], Counter()
    for i, (s, t) in enumerate(zip(src_lengths, tgt_lengths)):
        if s > max_len or t > max_len:
            dropped[f"longer than data.max_len={max_len} pieces"] += 1
        elif max(s, t) > max_ratio * max(1, min(s, t)):
            dropped[f"length ratio above data.max_len_ratio={max_ratio}"] += 1
        else:
            keep.append(i)
    return keep, dropped
