"""In-memory stand-ins for a Source and a Sink, for unit tests of the pipeline (no database, no network).

Both only behave and record: they never check anything themselves. Every call that matters for the commit
order (read, add, hold, write_async, commit, rollback, confirm) is appended to one shared `log` list, so a
test sees how the pipeline interleaved the sink and the source.

* `Upstream` stands for the POS server: one script per session (the last one repeats), and the positions it
  was confirmed. `upstream.source` is a `make_source` factory; every source it makes is kept in `sources`
  (the pipeline also makes a probe for its gauges, which never reads).
* `SinkStore` stands for the storefront database: the committed rows (by the config's key column), the stored
  positions and the held records, which outlive any one `FakeSink`. `store.sink` is a `make_sink` factory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cdc.errors import TransientError
from cdc.events import DELETE, TRUNCATE, ChangeEvent, Idle, TxnEnd

PARTITION = "fake"  # the offset store's partition for the fake source's position


class Crash(Exception):  # noqa: N818 - a simulated process death, not an error the pipeline knows
    """The process dies here (not a CdcError: nothing retries it)."""


@dataclass(frozen=True, order=True)
class Pos:
    """The fake source's position: one increasing number (a commit LSN)."""

    lsn: int

    def regresses(self, last: Pos) -> bool:
        return self.lsn < last.lsn

    def after(self, last: Pos) -> Pos:
        return self

    def __str__(self) -> str:
        return f"fake@{self.lsn}"


@dataclass
class Fail:
    """Script item: the source raises `error` when the pipeline asks for the next item."""

    error: Exception


@dataclass
class Do:
    """Script item: the source calls `fn()` when the pipeline asks for the next item (e.g. pipeline.stop)."""

    fn: Callable[[], Any]


def change(
    lsn: int, seq: int, code: str, price: Any = 100, channel: str = "ONLINE", op: str = "c"
) -> ChangeEvent:
    """A change of item_price (POS column names: item_code, price_fen, channel) in the transaction at `lsn`."""
    row = {"item_code": code, "price_fen": price, "channel": channel}
    return ChangeEvent(
        op=op,
        schema="public",
        table="item_price",
        before=row if op == DELETE else None,
        after=None if op == DELETE else row,
        lsn=lsn * 1000 + seq,
        commit_lsn=lsn,
        seq=seq,
        ts_ms=int(time.time() * 1000),
        key_columns=("item_code",),
    )


def txn(lsn: int, *changes: tuple, snapshot: bool = False) -> list:
    """One source transaction: its changes ((code, price[, channel[, op]]) each), then its TxnEnd."""
    evs = [change(lsn, i, *c) for i, c in enumerate(changes, start=1)]
    return [*evs, TxnEnd(Pos(lsn), int(time.time() * 1000), snapshot=snapshot)]


class Upstream:
    def __init__(self, *scripts: list, log: list, at_end: str = "end", ignore_resume: bool = False):
        self.scripts = [list(s) for s in scripts]
        self.log = log
        self.at_end = at_end  # "end": read() returns; "stop": calls on_end (pipeline.stop), then idles
        self.on_end: Callable[[], Any] | None = None
        self.ignore_resume = ignore_resume  # a replaced slot: sends everything, whatever was stored
        self.confirmed: list[Pos] = []
        self.sources: list[FakeSource] = []
        self.reads = 0
        self.commits_overlap = True  # what its sources answer (a Kafka source: False)

    def source(self, cfg: Any, metrics: Any = None) -> FakeSource:
        src = FakeSource(self)
        self.sources.append(src)
        return src

    def next_script(self) -> list:
        script = self.scripts[min(self.reads, len(self.scripts) - 1)]
        self.reads += 1
        return script

    @property
    def sessions(self) -> list[FakeSource]:
        """The sources that read (the gauges' probe does not)."""
        return [s for s in self.sources if s.resumed_from is not _UNREAD]


_UNREAD = object()
IDLE_LIMIT = (
    1000  # in "stop" mode, idles yielded after the script before giving up (a pipeline that never stops)
)


class FakeSource:
    def __init__(self, upstream: Upstream):
        self.up = upstream
        self.log = upstream.log
        self.prepared = False
        self.closed = False
        self.ticks = 0
        self.resumed_from: Any = _UNREAD
        self.skipped: list[Pos] = []  # transactions not sent again: at or before the resume position

    def check(self) -> None:
        pass

    def undo_prepare(self) -> None:
        pass

    def prepare(self) -> None:
        self.prepared = True

    def wire(self, stages: list) -> Any:
        return None

    def batch_changes(self, min_run: int = 1) -> bool:
        return False

    def commits_overlap(self) -> bool:
        return self.up.commits_overlap

    def read(self, resume: Pos | None, reload: Callable[[], Any] | None = None):
        """`reload` (the stored position, read again) is of no use with one partition."""
        self.resumed_from = resume
        self.log.append(("read", resume))
        return self._items(self.up.next_script(), resume)

    def _items(self, script: list, resume: Pos | None):
        skip = resume is not None and not self.up.ignore_resume
        for item in script:
            if type(item) is Fail:
                raise item.error
            if type(item) is Do:
                item.fn()
                continue
            if skip and type(item) is ChangeEvent and item.commit_lsn <= resume.lsn:
                continue
            if skip and type(item) is TxnEnd and item.position <= resume:
                self.skipped.append(item.position)
                continue
            yield item
        if self.up.at_end == "stop":
            if self.up.on_end is not None:
                self.up.on_end()
            for _ in range(IDLE_LIMIT):
                yield Idle()

    def load_position(self, stored: dict[str, str]) -> Pos | None:
        text = stored.get(PARTITION)
        return None if text is None else Pos(**json.loads(text))

    def dump_position(self, position: Pos) -> dict[str, str]:
        return {PARTITION: json.dumps({"lsn": position.lsn})}

    def floor(self, position: Pos | None) -> int | None:
        return None if position is None else position.lsn

    def confirm(self, position: Pos) -> None:
        self.log.append(("confirm", position))
        self.up.confirmed.append(position)

    def tick(self) -> None:
        self.ticks += 1

    def observe(self, metrics: Any) -> None:
        pass

    def reset(self) -> None:
        self.up.confirmed.clear()

    def close(self) -> None:
        self.closed = True


class SinkStore:
    """The storefront database: what is durable, shared by every FakeSink made from it."""

    def __init__(
        self,
        log: list,
        fail_commits: int = 0,
        crash_after_commit: int | None = None,
        overlap: bool = False,
        commit_polls: int = 0,
        writer_idle: bool = False,
    ):
        self.log = log
        self.rows: dict[Any, dict] = {}
        self.offsets: dict[str, str] = {}
        self.held: list[tuple[Any, str, str]] = []  # (key, reason, kind), committed
        self.commits = 0  # successful commits, over all sinks
        self.fail_commits = fail_commits  # the next n commits raise TransientError, storing nothing
        self.crash_after_commit = crash_after_commit  # the n-th commit is durable, then the process dies
        self.sinks: list[FakeSink] = []
        self.overlap = overlap  # commit_begin overlaps: the commit is applied at commit_end
        self.commit_polls = commit_polls  # commit_end(block=False) says "still running" this many times each
        self.writer_idle = writer_idle  # what FakeSink.writer_idle answers

    def sink(self, cfg: Any, metrics: Any = None) -> FakeSink:
        s = FakeSink(self, cfg.sink.key[0])
        self.sinks.append(s)
        return s


class FakeSink:
    def __init__(self, store: SinkStore, key: str):
        self.store = store
        self.log = store.log
        self.key = key
        self.caught_up = False
        self.opened = False
        self.closed = False
        self.floors: list[int | None] = []  # set_floor calls
        self.buffer: list[ChangeEvent] = []  # added in the open transaction
        self.held_buffer: list[tuple[Any, str, str]] = []
        self.undrained: dict[str, int] = {}  # committed holds not yet reported by drain_held
        self.writes = 0
        self.ticks = 0
        self.pending_at_tick: list[int] = []  # what was buffered at each tick (timed work wants nothing)
        self.running: tuple | None = None  # (buffer, positions, polls left) of the commit begun

    def _key(self, ev: ChangeEvent) -> Any:
        row = ev.row or {}
        return row.get(self.key)

    def open(self) -> None:
        self.opened = True

    def start_folding(self) -> None:
        pass

    def load_offsets(self) -> dict[str, str]:
        return dict(self.store.offsets)

    def set_floor(self, floor: int | None) -> None:
        self.floors.append(floor)

    def forget_offsets(self) -> None:
        self.store.offsets.clear()

    def add(self, ev: ChangeEvent) -> None:
        self.buffer.append(ev)
        self.log.append(("add", self._key(ev)))

    def hold(self, ev: ChangeEvent, err: Any, kind: str = "dead_letter") -> None:
        self.held_buffer.append((self._key(ev), err.reason, kind))
        self.log.append(("hold", self._key(ev), kind))

    def write_async(self) -> None:
        self.writes += 1
        self.log.append(("write_async",))

    def writer_idle(self) -> bool:
        return self.store.writer_idle

    def commit_begin(self, positions: dict[str, str], floor: int | None = None) -> bool:
        if not self.store.overlap or self.held_buffer:
            return False
        assert self.running is None, "a commit begun while another runs"
        self.running = (self.buffer, positions, self.store.commit_polls)
        self.buffer = []
        self.log.append(("commit_begin", positions))
        return True

    def commit_end(self, block: bool = True) -> bool:
        if self.running is None:
            return True
        buffer, positions, polls = self.running
        if not block and polls:
            self.running = (buffer, positions, polls - 1)
            return False
        self.running = None
        later, self.buffer = self.buffer, buffer
        try:
            self.commit(positions)
        finally:
            self.buffer = later  # (a failed commit's batch is gone, as it was taken from the buffer)
        return True

    def commit(self, positions: dict[str, str] | None, floor: int | None = None) -> None:
        store = self.store
        assert self.running is None or self.buffer is self.running[0], "a commit while another runs"
        if store.fail_commits:
            store.fail_commits -= 1
            self.log.append(("commit_failed", positions))
            raise TransientError("storefront: server closed the connection during COMMIT")
        for ev in self.buffer:
            if ev.op == TRUNCATE:
                store.rows.clear()
            elif ev.op == DELETE:
                store.rows.pop(self._key(ev), None)
            else:
                store.rows[self._key(ev)] = dict(ev.after or {})
        if positions:
            store.offsets.update(positions)
        store.held.extend(self.held_buffer)
        for _key, _reason, kind in self.held_buffer:
            self.undrained[kind] = self.undrained.get(kind, 0) + 1
        self.buffer, self.held_buffer = [], []
        store.commits += 1
        self.log.append(("commit", positions))
        if store.crash_after_commit == store.commits:
            raise Crash(f"killed after sink commit #{store.commits}")

    def rollback(self) -> None:
        self.log.append(("rollback", len(self.buffer) + len(self.held_buffer)))
        self.buffer, self.held_buffer, self.running = [], [], None

    def drain_held(self) -> dict[str, int]:
        out, self.undrained = self.undrained, {}
        return out

    def wire(self, stages: list) -> None:
        pass

    def prefetch(self, field: str, rows: list[dict[str, Any]]) -> None:
        pass

    def tick(self) -> None:
        self.ticks += 1
        self.pending_at_tick.append(len(self.buffer) + len(self.held_buffer))

    def close(self) -> None:
        self.closed = True
