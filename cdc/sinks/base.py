"""What the pipeline knows of a sink: the Sink protocol.

A sink buffers changes (`add`), holds the ones a stage refused (`hold`: quarantine or dead letter, with the
reason), sends what it buffered inside its open transaction when memory says so (`write`), and makes it all
durable together with the source positions it covers (`commit`; or `commit_begin` ... `commit_end`, the
commit running beside the caller, who buffers the next batch meanwhile), or forgets it (`rollback`). Positions are
opaque text per partition here, written by the source (cdc/sources/base.py); the checkpointer
(cdc/checkpoint.py) is the only caller of `commit` with positions.

Hooks beside the data path, each with a harmless default for sinks that have nothing to do there:
`wire(stages)` gives stages their lookups in the sink's storefront; `prefetch` reads a run of keys at once;
`tick` does timed work while idle (scheduled prices); `caught_up` tells background work that the source
has nothing waiting; `drain_held` reports what committed transactions held (for metrics).
"""

from __future__ import annotations

from typing import Any, Protocol

from cdc.errors import HoldError
from cdc.events import ChangeEvent


class Sink(Protocol):
    caught_up: bool

    def open(self) -> None: ...

    def start_folding(self) -> None:
        """Starts the sink's background work for a running connector (none by default)."""

    def load_offsets(self) -> dict[str, str]:
        """The stored positions of this connector: partition -> text."""

    def set_floor(self, floor: int | None) -> None:
        """Changes above this POS position need no never-backwards lookup (None: look every change up)."""

    def forget_offsets(self) -> None: ...

    def add(self, ev: ChangeEvent) -> None: ...

    def hold(self, ev: ChangeEvent, err: HoldError, kind: str = "dead_letter") -> None: ...

    def write_async(self) -> None:
        """Sends what is buffered inside the open transaction (bounded memory); may overlap the caller."""

    def writer_idle(self) -> bool:
        """Whether a write_async() now would start at once beside the caller (nothing runs on the sink's own
        thread): the pipeline then sends a bulk transaction's rows as they come, not batch_size at a time, so
        that the storefront works while the rest is read. False where writes do not overlap the caller."""

    def commit(self, positions: dict[str, str] | None, floor: int | None = None) -> None:
        """Makes everything added and held since the last commit durable with `positions`, atomically."""

    def commit_begin(self, positions: dict[str, str], floor: int | None = None) -> bool:
        """Starts commit(positions, floor) of everything added and held so far on the sink's own thread and
        returns True: the caller goes on adding (to the next commit) meanwhile, and learns the outcome from
        commit_end(). False: this commit cannot overlap the caller (nothing was done; call commit)."""

    def commit_end(self, block: bool = True) -> bool:
        """The commit commit_begin started: True once it is durable (and when none was started), raising its
        error if it failed; False while it runs (only with block=False)."""

    def rollback(self) -> None: ...

    def drain_held(self) -> dict[str, int]: ...

    def wire(self, stages: list) -> None: ...

    def prefetch(self, field: str, rows: list[dict[str, Any]]) -> None: ...

    def tick(self) -> None: ...

    def close(self) -> None: ...


SINKS = {
    "sql": "cdc.sinks.sql:SqlSink",
    "kafka": "cdc.sinks.kafka:KafkaSink",
}


def build_sink(cfg, metrics=None) -> Sink:
    """The sink for `cfg.sink.type` (imported on first use: a Kafka sink needs kafka-python); `metrics`: the
    process's Metrics, for sinks with gauges of their own."""
    import importlib

    module, _, cls = SINKS[cfg.sink.type].partition(":")
    return getattr(importlib.import_module(module), cls)(cfg, metrics)
