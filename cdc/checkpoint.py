"""The checkpointer: the ONLY place positions are committed, always in this order:

  1. the sink commits the batch's rows and the source position in one transaction;
  2. then the source is told to confirm that position (to the PostgreSQL server, to the Kafka group).

A commit may run beside the reading (`begin` ... `finish`: the sink commits on its own thread while the
pipeline buffers the next transactions); it is confirmed only once it ended, and the next one begins only
after that: one commit at a time, in source order, each confirmed after it is durable.

A crash between 1 and 2 costs a replay of what the sink already has, which its never-backwards check
skips; the other order could lose changes. A position that would move the stored one backwards is refused
(a bug or a misconfiguration, never something to store). Positions that need nothing from the sink (WAL
other databases wrote, transactions already applied) are confirmed here too, once everything before them is
durable: no source confirms anything on its own.
"""

from __future__ import annotations

import logging
from typing import Any

from cdc.errors import TerminalError
from cdc.sinks.base import Sink
from cdc.sources.base import Source

log = logging.getLogger("cdc.checkpoint")


class Checkpointer:
    def __init__(self, source: Source, sink: Sink, connector: str):
        self.source = source
        self.sink = sink
        self.connector = connector
        self.last: Any | None = None  # the newest position committed (or loaded)
        self._confirmed: Any | None = None  # the newest position confirmed without a commit
        self._running: Any | None = None  # the position of the commit running beside the reading (begin)
        self.overlaps = source.commits_overlap()

    def resume(self) -> Any | None:
        """The stored position (None: nothing stored); the sink learns which changes need no lookup."""
        self.last = None
        position = self.stored()
        self.sink.set_floor(self.source.floor(position))
        return position

    def stored(self) -> Any | None:
        """The position in the sink's offset store now (a Kafka source asks at every assignment; what it reads
        is what later commits must not go behind: `cdc replay` may have moved it while this process waited)."""
        position = self.source.load_position(self.sink.load_offsets())
        if position is not None:
            self.last = position if self.last is None else position.after(self.last)
        return position

    def commit(self, position: Any) -> None:
        """Sink commit with `position`, then confirm it to the source."""
        self.finish()
        self._check(position)
        self.sink.commit(self.source.dump_position(position), self.source.floor(position))
        self._committed(position)

    def begin(self, position: Any) -> bool:
        """Starts the sink commit with `position` beside the reading and returns True (finish() confirms it);
        when the sink cannot overlap it, commits now (as commit()) and returns False."""
        self.finish()
        self._check(position)
        stored, floor = self.source.dump_position(position), self.source.floor(position)
        if not self.overlaps or not self.sink.commit_begin(stored, floor):
            self.sink.commit(stored, floor)
            self._committed(position)
            return False
        self._running = position
        return True

    def finish(self, block: bool = True) -> bool:
        """The commit begin() started: once it ended, confirms its position and returns True (also when none
        runs); False while it runs (block=False). Its error is raised here, and nothing is confirmed."""
        if self._running is None:
            return True
        if not self.sink.commit_end(block):
            return False
        position, self._running = self._running, None
        self._committed(position)
        return True

    def _check(self, position: Any) -> None:
        if self.last is not None and position.regresses(self.last):
            raise TerminalError(
                f"{self.connector}: refusing to store position {position}: it is behind the stored {self.last} "
                "(was the slot or the topic replaced under a running connector? `cdc status` shows both)"
            )

    def _committed(self, position: Any) -> None:
        self.last = position if self.last is None else position.after(self.last)
        self.source.confirm(position)

    def confirm(self, position: Any) -> None:
        """Confirms a position that needs nothing from the sink (call only with nothing uncommitted before
        it); one behind the stored or the last confirmed position is ignored, and so is one while a commit
        runs (begin): the commit comes before it."""
        if self._running is not None:
            return
        for before in (self.last, self._confirmed):
            if before is not None and position.regresses(before):
                return
        self._confirmed = position
        self.source.confirm(position)
