"""Progress for long-running work (snapshot, reconcile): a rich bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time


class Progress:
    def __init__(self, what: str, total: int | None, log: logging.Logger, every_s: float = 5.0):
        self.what, self.total, self.log, self.every_s = what, total, log, every_s
        self.done = 0
        self._last = time.monotonic()
        self._bar = None
        if sys.stderr.isatty():
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(transient=True)
            self._bar.start()
            self._task = self._bar.add_task(what, total=total)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            of = f"/~{self.total}" if self.total else ""
            self.log.info("%s: %d%s rows", self.what, self.done, of)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        self.log.info("%s: %d rows, done", self.what, self.done)
