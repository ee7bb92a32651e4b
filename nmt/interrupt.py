"""SIGINT and SIGTERM (what `docker stop` sends): finish the step, save, say how to resume, exit."""

from __future__ import annotations

import signal


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; last.pt holds the run and `--resume` continues it."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """First SIGINT/SIGTERM: finish the current step, save, exit. During validation: abandon it."""

    def __init__(self):
        self.signum: int | None = None
        self.abandon_now = False

    def __enter__(self):
        self._previous = {signum: signal.signal(signum, self._handle) for signum in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        first = self.signum is None
        self.signum = signum
        if not first or self.abandon_now:
            raise Interrupted(signum, "")
