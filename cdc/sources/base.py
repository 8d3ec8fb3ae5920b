"""What the pipeline knows of a source: the Source protocol and its position type.

A source reads changes from somewhere (PostgreSQL's write-ahead log, Kafka topics) and yields, in order:
`ChangeEvent`s, a `TxnEnd` after the last change of each source transaction, and `Idle` whenever nothing more
is waiting (cdc/events.py). Each TxnEnd and Idle carries a position of the source's own type, opaque to the
pipeline: the checkpointer (cdc/checkpoint.py) gives it back to the source to turn into text for the sink's
offset store (`dump_position`), to read back at start (`load_position`), and to confirm once durable
downstream (`confirm`). A source never confirms anything by itself.

Everything a source knows at start comes from the stored position (`read(resume)`): a crash at any point,
with `close()` never called, replays from there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

from cdc.events import ChangeEvent, Idle, TxnEnd


@runtime_checkable
class SourcePosition(Protocol):
    """A source's position. `regresses(last)`: whether storing it after `last` would move any part of the
    stored position backwards (the checkpointer refuses that); `after(last)`: the stored position once it is
    stored on top of `last` (a Kafka position covers only the partitions it moved)."""

    def regresses(self, last: Any) -> bool: ...

    def after(self, last: Any) -> Any: ...


class Source(Protocol):
    def check(self) -> None:
        """Checks the privileges reading needs (naming each GRANT missing), before the sink or this source
        creates anything."""

    def undo_prepare(self) -> None:
        """A first run failed before anything was committed: removes what prepare() made this session (the
        slot, which would hold the POS's WAL back meanwhile)."""

    def prepare(self) -> None:
        """Checks (and creates, where it may) what reading needs: publication and slot, topics."""

    def wire(self, stages: list) -> Any:
        """Gives the stages the source lookups they need (a pick's fallback store reads the POS); returns the
        fallback the pipeline uses to refill a key, or None."""

    def batch_changes(self, min_run: int = 1) -> bool:
        """Asked by a fast path (cdc/fast/) before read(): whether the source will yield runs of a table's
        inserts and updates (of `min_run` changes or more) as ChangeBatch (in the wire form the fast path
        encodes from), and switches that on. False: every change comes as a ChangeEvent."""

    def commits_overlap(self) -> bool:
        """Whether the sink may commit a batch while the next is read (its confirm comes after those reads).
        False where something else must see each commit ended before the source reads on (a consumer group's
        rebalance, which hands the partitions over at the stored positions)."""

    def read(
        self, resume: Any | None, reload: Callable[[], Any | None]
    ) -> Iterator[ChangeEvent | TxnEnd | Idle]:
        """Everything after `resume` (None: nothing stored yet: a snapshot first, when configured). `reload()`
        reads the stored position again (a Kafka source asks at each partition assignment: another member of
        its group may have moved it)."""

    def load_position(self, stored: dict[str, str]) -> Any | None:
        """The position in the sink's offset store (partition -> text), or None when there is none."""

    def dump_position(self, position: Any) -> dict[str, str]:
        """`position` as the offset store's rows (partition -> text)."""

    def floor(self, position: Any | None) -> int | None:
        """The highest event position (POS commit LSN) that a change at or before `position` can carry, so
        the sink can skip its never-backwards lookup for changes above it; None when the source cannot bound
        it (duplicates and replays from a log)."""

    def confirm(self, position: Any) -> None:
        """Everything up to `position` is durable downstream (called by the checkpointer only)."""

    def tick(self) -> None:
        """Called while idle: keep the source's own progress moving (a heartbeat)."""

    def observe(self, metrics: Any) -> None:
        """Sets the source's gauges (lag, retained WAL) as the server sees them; called on a timer on a
        probe instance of its own, whatever the stream is doing."""

    def reset(self) -> None:
        """Forgets the server-side progress for a fresh start (drops the slot); positions are forgotten by the
        sink."""

    def close(self) -> None: ...


SOURCES = {
    "postgres": "cdc.sources.postgres:PostgresSource",
    "kafka": "cdc.sources.kafka:KafkaSource",
}


def build_source(cfg, metrics=None) -> Source:
    """The source for `cfg.source.type` (imported on first use: a Kafka source needs kafka-python); `metrics`:
    the process's Metrics, for sources with gauges of their own."""
    import importlib

    module, _, cls = SOURCES[cfg.source.type].partition(":")
    return getattr(importlib.import_module(module), cls)(cfg, metrics)
