"""`nmt train | prepare | translate | evaluate | average | serve | plot | bench | study`: parse (`parser`),
call the command's handler (`commands`, `translate`), print; every expected failure is one line on stderr and
exit status 1."""

from __future__ import annotations

import logging
import os
import sys

from nmt.cli import commands
from nmt.cli.parser import build_parser
from nmt.errors import NMTError
from nmt.interrupt import Interrupted


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")  # on stderr
    for noisy in ("datasets", "huggingface_hub", "fsspec", "urllib3", "matplotlib", "sacrebleu"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        getattr(commands, args.command)(args)
        return 0
    except NMTError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Interrupted as error:
        print(str(error) or "interrupted", file=sys.stderr)
        return 128 + error.signum
    except Exception as error:  # noqa: BLE001 - one line, unless --debug or NMT_DEBUG asks for the traceback
        if args.debug or os.environ.get("NMT_DEBUG"):
            raise
        print(f"error: {type(error).__name__}: {error} (run with --debug for the traceback)", file=sys.stderr)
        return 1
