"""The SQL sink's buffer of changes not yet written: the newest change per storefront key wins.

A change becomes a `Pending` upsert or remove under its key (the configured key columns of the row as the
stages left it); an older change that arrives after a newer one of the same key (a Kafka source reads
partitions side by side) leaves the newer one buffered. An update that did not resend an unchanged TOASTed
value inherits the value buffered for the key; with history, each replaced change is kept on the one that
replaced it, so each gets its history row. A key change moves the row (a remove under the old key, an upsert
under the new one). A source TRUNCATE empties the buffer and remembers its position: the writer empties the
table first.

Beside it, the fast path's rows (`Encoded`, cdc/fast/): COPY lines of the staging table (PostgreSQL) or VALUES
tuples (MariaDB; PostgreSQL's short runs), newest per key, of one set of columns and one form. The sink never
holds both kinds at once: whichever arrives while the other is buffered has the other written first, so the
order of changes holds.

Pure bookkeeping: no database here (a key change whose unchanged values must be kept asks `on_rename`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cdc.errors import HoldError
from cdc.events import DELETE, TRUNCATE, UNCHANGED_TOAST, ChangeEvent, Position

UPSERT, REMOVE = "u", "d"


@dataclass(slots=True)
class Pending:
    op: str  # UPSERT | REMOVE
    row: dict[str, Any]
    ev: ChangeEvent
    earlier: list[Pending] | None = None  # with history: the key's changes this one replaced in the buffer


@dataclass(slots=True)
class Encoded:
    """Rows the fast path encoded (cdc/fast/encode.py, encode_mysql.py): key text -> COPY line of the staging
    table, or VALUES tuple, the newest change per key; the storefront columns they carry; and where they came
    from, (ChangeBatch, start, stop) spans, which `expand(spans)` turns into the reference path's (key,
    Pending) items should the storefront refuse a row (or the write need to know each change)."""

    cols: list[str]
    expand: Callable[[list], list[tuple[tuple, Pending]]]
    # None: each line carries its key's position; else the lines are lean (the storefront columns alone) and
    # this holds each key's cdc_applied entry (JSON)
    entries: dict[bytes, bytes] | None = None
    lines: dict[bytes, bytes] = field(default_factory=dict)
    spans: list[tuple[Any, int, int]] = field(default_factory=list)
    min_commit_lsn: int = 0
    inserts_only: bool = True  # every change came from an insert at the source (new keys, most likely)
    # "pg-values": PostgreSQL VALUES tuples, lean (SqlSink.short_form); "": the connector's form (fast_form)
    form: str = ""

    def add_span(self, batch: Any, start: int, stop: int) -> None:
        if not self.spans or batch.commit_lsn < self.min_commit_lsn:
            self.min_commit_lsn = batch.commit_lsn
        if batch.inserts != len(batch):
            self.inserts_only = False
        self.spans.append((batch, start, stop))


class KeyBuffer:
    def __init__(
        self,
        key_cols: tuple[str, ...],
        keep_earlier: bool = False,
        truncate: str = "delete",
        on_rename: Callable[[tuple, tuple], None] | None = None,
    ):
        self.key_cols = key_cols
        k0 = key_cols[0]
        self.keyget = operator.itemgetter(*key_cols) if len(key_cols) > 1 else lambda row: (row[k0],)
        self.keep_earlier = keep_earlier
        self.truncate = truncate
        self.on_rename = on_rename
        self.pending: dict[tuple, Pending] = {}
        self.truncate_first: Position | None = None  # a source TRUNCATE's position: empty the table first
        self.encoded: Encoded | None = None  # the fast path's rows (never beside pending changes)

    def __len__(self) -> int:
        return len(self.pending) + (len(self.encoded.lines) if self.encoded is not None else 0)

    def take(self) -> tuple[dict[tuple, Pending], Position | None, Encoded | None]:
        """What is buffered, leaving the buffer empty."""
        taken = (self.pending, self.truncate_first, self.encoded_with_rows())
        self.pending, self.truncate_first, self.encoded = {}, None, None
        return taken

    def encoded_with_rows(self) -> Encoded | None:
        """The fast path's rows buffered, or None. An Encoded with no rows is dropped: the fast path opens one
        before it knows whether a run's first change is encoded, or held, or goes the reference way."""
        if self.encoded is not None and not self.encoded.lines:
            self.encoded = None
        return self.encoded

    def clear(self) -> None:
        self.pending, self.truncate_first, self.encoded = {}, None, None

    def key(self, row: dict[str, Any] | None) -> tuple:
        """The storefront key of `row`; HoldError when a key column is missing or NULL."""
        try:
            key = self.keyget(row)
        except (KeyError, TypeError):
            raise HoldError(
                f"the change has no value for key column(s) {', '.join(self.key_cols)} "
                f"(check the transforms' rename/drop)",
                rule="sink.key",
            ) from None
        if None in key or UNCHANGED_TOAST in key:
            raise HoldError(f"key column(s) {', '.join(self.key_cols)} are NULL", rule="sink.key")
        return key

    def add(self, ev: ChangeEvent) -> None:
        op = ev.op
        if op == TRUNCATE:
            if self.truncate == "delete":
                self.pending.clear()
                self.truncate_first = ev.position  # what was held before it is superseded by it
            return
        if self.truncate_first is not None and ev.position < self.truncate_first:
            return  # older than a truncate buffered after it (another Kafka partition): the truncate wins
        if op == DELETE:
            self._put(self.key(ev.before), REMOVE, ev.before, ev)
            return
        after = ev.after
        key = self.key(after)
        before = ev.before
        if before is not None and op == "u":
            try:
                old = tuple(before[k] for k in self.key_cols)
            except KeyError:
                old = key
            if old != key and None not in old:  # the key changed: the row moves
                if ev.toast and UNCHANGED_TOAST in after.values() and self.on_rename is not None:
                    self.on_rename(old, key)  # the source did not resend some values: keep them
                self._put(old, REMOVE, before, ev)
        self._put(key, UPSERT, after, ev)

    def _put(self, key: tuple, op: str, row: dict, ev: ChangeEvent) -> None:
        prev = self.pending.get(key)
        if prev is not None and (prev.ev.commit_lsn, prev.ev.seq) > (ev.commit_lsn, ev.seq):
            return  # an older change arriving after a newer one (another Kafka partition): the newer stays
        if (
            prev is not None
            and op == UPSERT
            and prev.op == UPSERT
            and ev.toast
            and UNCHANGED_TOAST in row.values()
        ):
            row = {c: (prev.row.get(c, v) if v is UNCHANGED_TOAST else v) for c, v in row.items()}
        earlier = None
        if prev is not None and self.keep_earlier:  # each change gets its own history entry
            earlier, prev.earlier = prev.earlier or [], None
            earlier.append(prev)
        self.pending[key] = Pending(op, row, ev, earlier)
