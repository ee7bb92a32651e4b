"""Datasets read by `datasets.load_dataset`: a hub name, or a local folder in the hub's layout. Rows may be
flat (`{"en": ..., "de": ...}`) or carry a `translation` dict column."""

from __future__ import annotations

import functools
import logging
import os
import socket
from pathlib import Path

from nmt.errors import NMTError

log = logging.getLogger(__name__)


@functools.cache
def _hub_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        return False
    return True


def _offline_hint() -> str:
    return ("check the name on huggingface.co/datasets" if _hub_reachable() else
            "this machine cannot reach huggingface.co (offline?); save the dataset to a folder where you have a "
            "connection and set data.dataset to that folder (README: \"Without the hub\")")


def load_hub(name: str, config_name: str | None):
    """The `DatasetDict` named; what keeps it from loading is one line saying what to do."""
    # offline, the hub client retries for half a minute before giving up, and datasets still finds a copy in
    # its local cache without it; a folder in the hub's layout needs no hub
    offline = not Path(name).is_dir() and "HF_HUB_OFFLINE" not in os.environ and not _hub_reachable()
    if offline:
        log.info("huggingface.co is unreachable: looking for '%s' in the local datasets cache only", name)
    import datasets  # imported here: slow to import, and not needed for plain text

    datasets.logging.set_verbosity_error()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # importing it reset the level set at start-up
    import huggingface_hub.constants as hub

    # offline for this load only, not for the rest of the process: both clients read the setting at each request
    # from the module attribute their import set from HF_HUB_OFFLINE
    saved = hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE
    if offline:
        hub.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    try:
        return datasets.load_dataset(name, config_name)
    except ValueError as error:
        if "Config name is missing" in str(error) or "BuilderConfig" in str(error):
            raise NMTError(f"dataset '{name}': {str(error).splitlines()[0]} (set data.dataset_config)") from None
        raise NMTError(f"dataset '{name}': {str(error).splitlines()[0]}") from None
    except OSError as error:  # FileNotFoundError and ConnectionError among them
        raise NMTError(f"dataset '{name}' is not a local folder and could not be loaded from the hub "
                       f"({type(error).__name__}); {_offline_hint()}") from None
    except Exception as error:  # datasets raises its own DatasetNotFoundError and friends
        if "NotFound" in type(error).__name__ or "offline" in str(error).lower():
            raise NMTError(f"dataset '{name}' is not a local folder and was not found on the hub; "
                           f"{_offline_hint()}") from None
        raise
    finally:
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = saved


def check_languages(table, langs: tuple[str, str], name: str) -> None:
    columns = table.column_names
    for lang in [lang for lang in langs if lang not in columns]:
        if "translation" not in columns:
            raise NMTError(f"dataset '{name}' has no language '{lang}'; its columns are {', '.join(columns)}")
        first = table[0]["translation"] if len(table) else {}
        if first and lang not in first:
            raise NMTError(f"dataset '{name}' has no language '{lang}'; it has {', '.join(sorted(first))}")


def side_texts(batch: dict, lang: str, name: str, split: str, first_row: int = 1) -> list[str]:
    """One side's sentences of a batch of rows (datasets' python format: its features decoded), from a flat
    column or the `translation` dicts; a missing value is an empty sentence, anything but text an error."""
    values = batch[lang] if lang in batch else [row.get(lang) if row else None for row in batch["translation"]]
    for row, value in enumerate(values, first_row):
        if value is not None and not isinstance(value, str):
            files = sorted(Path(name).glob(f"{split}.*")) if Path(name).is_dir() else []
            where = f"{files[0]}, row {row}" if len(files) == 1 else f"dataset '{name}' [{split}], row {row}"
            raise NMTError(f"{where}: the '{lang}' value {value!r} is a {type(value).__name__}, not text; "
                           f"every '{lang}' value must be a string")
    return [value or "" for value in values]
