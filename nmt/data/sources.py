"""Which source `data.dataset` names, and its splits as `Corpus`es in memory or a stream of pairs. A folder
holding `{split}.{lang}` text files (`train.en`, `train.de`, ...) is plain text; any other existing folder is a
dataset in the hub's layout, and anything else a hub dataset name, both read by `datasets.load_dataset`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nmt.config import DataConfig
from nmt.data.hub import check_languages, load_hub, side_texts
from nmt.data.streams import HubPairs, TextPairs
from nmt.data.text import read_text_lines
from nmt.errors import NMTError

VALID_ALIASES = ("validation", "valid", "val", "dev")
NOT_LANGUAGES = {"json", "jsonl", "csv", "tsv", "parquet", "arrow", "txt", "md", "py", "gz", "zip", "yaml", "lock"}


@dataclass
class Corpus:
    """One split: line i of `src` translates line i of `tgt`."""

    src: list[str]
    tgt: list[str]
    name: str  # where it came from, for messages

    def __len__(self) -> int:
        return len(self.src)


def _resolve_split(split: str, available: list[str], where: str) -> str:
    for candidate in [split, *VALID_ALIASES] if split in VALID_ALIASES else [split]:
        if candidate in available:
            return candidate
    raise NMTError(f"{where}: no split '{split}'; it has {', '.join(sorted(available)) or 'none'} (name one: "
                   "data.train_split / data.valid_split / data.test_split in a config, --split for nmt evaluate)")


def _open(cfg: DataConfig):
    """(folder or hub name, its DatasetDict or None for plain-text files, its splits, its name in messages)."""
    path = Path(cfg.dataset).expanduser()
    # the `lang` of every `{split}.{lang}` plain-text file in it
    suffixes = [p.suffix[1:] for p in path.iterdir() if p.is_file()] if path.is_dir() else []
    languages = sorted({s for s in suffixes if s.isalpha() and len(s) <= 8 and s.lower() not in NOT_LANGUAGES})
    if languages:
        for lang in (cfg.src_lang, cfg.tgt_lang):
            if lang not in languages:
                raise NMTError(f"{path}: no language '{lang}' (no *.{lang} files); it has {', '.join(languages)}")
        splits = sorted(p.name[: -len(cfg.src_lang) - 1] for p in path.glob(f"*.{cfg.src_lang}")
                        if (path / f"{p.stem}.{cfg.tgt_lang}").exists())
        return path, None, splits, str(path)
    if path.exists() and not path.is_dir():
        raise NMTError(f"{path}: data.dataset must be a folder or a hub dataset name, not a file")
    name = str(path) if path.is_dir() else cfg.dataset
    dataset = load_hub(name, cfg.dataset_config)
    return name, dataset, list(dataset.keys()), f"dataset '{name}'"


def load_data(cfg: DataConfig, splits: list[str], stream_split: str | None = None):
    """The named splits of `cfg.dataset` in memory, in order, and `stream_split` (the training split)
    as a stream of pairs; the hub is read once for all of them."""
    where, dataset, available, label = _open(cfg)
    langs = (cfg.src_lang, cfg.tgt_lang)
    corpora = [_read_split(where, dataset, _resolve_split(split, available, label), langs) for split in splits]
    if stream_split is None:
        return corpora, None
    split = _resolve_split(stream_split, available, label)
    if dataset is None:
        paths = [where / f"{split}.{lang}" for lang in langs]
        return corpora, TextPairs(*paths, f"{where}/{split}.{{{langs[0]},{langs[1]}}}")
    return corpora, HubPairs(dataset[split], langs, where, split)


def _read_split(where, dataset, split: str, langs: tuple[str, str]) -> Corpus:
    if dataset is not None:
        table = dataset[split]
        check_languages(table, langs, where)
        rows = table[:]
        return Corpus(*(side_texts(rows, lang, where, split) for lang in langs), f"{where}[{split}]")
    src_path, tgt_path = (where / f"{split}.{lang}" for lang in langs)
    src, tgt = read_text_lines(src_path), read_text_lines(tgt_path)
    if len(src) != len(tgt):
        raise NMTError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; "
                       "line N of one side must translate line N of the other")
    return Corpus(src, tgt, f"{where}/{split}.{{{langs[0]},{langs[1]}}}")


def load_splits(cfg: DataConfig, splits: list[str]) -> list[Corpus]:
    """The named (small) splits of `cfg.dataset` in memory, in order."""
    return load_data(cfg, splits)[0]
