"""Where nmt keeps what it can rebuild or measure again: `$NMT_CACHE`, by default ~/.cache/nmt.

Tokenizers, prepared data, compiled kernels, the timed product routes and the record of the files the
commands wrote all live under it; deleting it loses no result, only the time to rebuild them.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("NMT_CACHE", Path.home() / ".cache" / "nmt"))
