"""A config file read into plain values, with one-line errors: YAML whose keys are unique, and a relative
`data.dataset` resolved against the file's folder. `nmt.config` turns the values into typed settings."""

from __future__ import annotations

import typing
from pathlib import Path

import yaml

from nmt.errors import NMTError


def read_config_file(path: Path) -> dict:
    try:
        values = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise NMTError(f"{path}: config file not found; see configs/ for examples") from None
    except IsADirectoryError:
        raise NMTError(f"{path}: is a folder; --config takes a YAML file such as configs/tiny.yaml") from None
    except UnicodeDecodeError:
        raise NMTError(f"{path}: not a text file; --config takes a YAML file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise NMTError(f"{path}{line}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if values is None:
        raise NMTError(f"{path}: the file is empty; a config names its sections (data:, model:, train:, ...), "
                       "or leave out --config for the defaults")
    if not isinstance(values, dict):
        raise NMTError(f"{path}: expected a mapping of sections (data:, model:, train:, ...)")
    data = values.get("data")  # a relative `data.dataset` means a folder beside the file, when there is one
    dataset = data.get("dataset") if isinstance(data, dict) else None
    if isinstance(dataset, str) and not Path(dataset).is_absolute() and (path.parent / dataset).is_dir():
        data["dataset"] = str((path.parent / dataset).resolve())
    return values


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, but a key given twice in one mapping is an error: YAML would silently keep the last."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):  # left to SafeLoader's own error
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(problem=f"'{key}' is given twice",
                                                        problem_mark=key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)
