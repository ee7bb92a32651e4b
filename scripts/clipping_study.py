#!/usr/bin/env python
"""Same as `nmt study clipping`: python scripts/clipping_study.py --config CONFIG [--minutes M] [--out DIR]."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from nmt.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["study", "clipping", *sys.argv[1:]]))
