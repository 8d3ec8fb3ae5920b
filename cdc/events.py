"""What flows from a source to the pipeline: change events, transaction ends, idle marks.

A ChangeEvent holds the fields of Debezium's change-event envelope (before, after, op, ts_ms, source
info) in a flat, cheap form; `to_envelope()` builds the Debezium JSON shape when one is needed (Kafka,
quarantine, dead letters, `cdc explain`). An event's `Position` (POS commit LSN, then its sequence inside the
transaction) orders changes of a key, whatever transport they came through: the sink never moves a row to
an older one.

A source yields, besides the events, a `TxnEnd` after the last change of each source transaction (where a
sink transaction may end) and an `Idle` whenever nothing more is waiting. Both carry the source's own
position type, opaque to the pipeline (PostgreSQL: commit LSN + end LSN; Kafka: offsets per partition):
the checkpointer hands it back to the source to store and to confirm (cdc/checkpoint.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

CONNECTOR_VERSION = "0.1.0"

# op codes, as in Debezium
CREATE, UPDATE, DELETE, READ, TRUNCATE = "c", "u", "d", "r", "t"


class _UnchangedToast:
    """An unchanged TOASTed value: the source did not send it, so the sink keeps what it has."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self):
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST = _UnchangedToast()

# ChangeEvent.headers key: a source's note on why the storefront may refuse this change's values (e.g. a record
# without a schema); the SQL sink adds it to the reason of a refused row
REFUSAL_HINT = "refusal_hint"


def lsn_to_str(lsn: int) -> str:
    """0x16B3748 -> '0/16B3748', PostgreSQL's spelling of an LSN."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def str_to_lsn(text: str) -> int:
    hi, _, lo = text.partition("/")
    if not lo:
        raise ValueError(f"not an LSN: {text!r} (expected e.g. 0/16B3748)")
    return (int(hi, 16) << 32) | int(lo, 16)


@dataclass(slots=True, order=True, frozen=True)
class Position:
    """Where a change stands in the source's history: (commit LSN of its transaction, sequence inside it).

    `commit_lsn` is the transaction's commit record LSN (unique and increasing in stream order); `seq` orders a
    key's changes inside the transaction: for a streamed change it is the change's own WAL position (its LSN),
    which is the same whichever slot delivers it — so positions that lanes (publications with row filters, a
    slot each) give the same key compare rightly — and grows with every change of a row in a transaction
    (rows of one multi-row insert record share it, but they are different rows). Snapshot rows carry the
    snapshot's consistent point and their ordinal in the snapshot; a repair, its own ordinal above that point.
    """

    commit_lsn: int
    seq: int = 0

    def __str__(self) -> str:
        return f"{lsn_to_str(self.commit_lsn)}#{self.seq}"


@dataclass(slots=True)
class TxnEnd:
    """The end of one source transaction: everything before it may be committed at `position`."""

    position: Any  # the source's own position type (see cdc/sources/base.py)
    ts_ms: int  # source commit time, ms since the epoch
    snapshot: bool = False  # the end of the initial snapshot


@dataclass(slots=True)
class Idle:
    """Nothing more is waiting at the source (a good moment to commit). `position`, when set, is a position
    the source may be confirmed at once everything it yielded before is durable downstream (a keepalive's
    WAL end, transactions skipped as already applied): nothing of it needs the sink. `wake_s`, set by the
    consumer: look again within this many seconds even if nothing arrives (a commit it waits for runs
    beside the reading); None: the source's own wait."""

    position: Any = None
    wake_s: float | None = None


@dataclass(slots=True)
class Abandon:
    """The source can no longer stand behind what it yielded since the last commit (a Kafka rebalance took
    partitions away): the open batch is rolled back, and the source reads again, from the stored positions,
    whatever is still its own."""


@dataclass(slots=True)
class ChangeEvent:
    op: str  # c u d r t
    schema: str
    table: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    lsn: int  # LSN of this change's WAL record (Debezium source.lsn); the commit LSN for snapshot rows
    commit_lsn: int  # the transaction's commit LSN
    seq: int  # orders the key's changes inside the transaction: the change's LSN when streamed (see Position)
    ts_ms: int  # source commit time, ms since the epoch
    txid: int | None = None
    snapshot: str = "false"  # "true" | "last" | "false", as Debezium
    db: str = ""
    connector_name: str = ""
    key_columns: tuple[str, ...] = ()  # primary key (replica identity) columns of the source table
    lane: str | None = None  # set by a `route` stage
    headers: dict[str, Any] = field(default_factory=dict)  # free-form, for stages that need to leave a mark
    # whether before/after may hold UNCHANGED_TOAST values; False (the source knows) spares the sink a
    # search of every value (comparing a Decimal with the marker is slow)
    toast: bool = True
    # column -> (PostgreSQL type OID, typmod) of the source relation, shared by all events of a relation, so an
    # encoder can give each column the schema Debezium would (None: unknown, the encoder infers from the value)
    types: dict[str, tuple[int, int]] | None = None

    @property
    def position(self) -> Position:
        return Position(self.commit_lsn, self.seq)

    @property
    def row(self) -> dict[str, Any] | None:
        """The row as it is now: `after`, or `before` for a delete."""
        return self.before if self.op == DELETE else self.after

    def to_envelope(self) -> dict[str, Any]:
        """Debezium's change-event envelope (JSON-ready: Decimals as strings, times as ISO strings)."""
        source = {
            "version": CONNECTOR_VERSION,
            "connector": "postgresql",
            "name": self.connector_name,
            "ts_ms": self.ts_ms,
            "snapshot": self.snapshot,
            "db": self.db,
            "sequence": f'["{self.commit_lsn}","{self.lsn}"]',
            "schema": self.schema,
            "table": self.table,
            "txId": self.txid,
            "lsn": self.lsn,
            "xmin": None,
        }
        return {
            "before": jsonable(self.before),
            "after": jsonable(self.after),
            "source": source,
            "op": self.op,
            "ts_ms": self.ts_ms,
            "transaction": None if self.txid is None else {"id": f"{self.txid}:{self.commit_lsn}"},
        }


def jsonable(value: Any) -> Any:
    """A JSON-safe copy: Decimal -> str (exact), datetimes -> ISO, bytes -> hex, unchanged TOAST -> marker."""
    if value is None or isinstance(value, bool | int | str | float):
        return value
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if value is UNCHANGED_TOAST:
        return "__debezium_unavailable_value"
    return str(value)


@dataclass(slots=True)
class ChangeBatch:
    """A run of row inserts and updates of one table in one source transaction, still in the source's wire
    form (PostgreSQL: pgoutput Insert/Update messages). The fast path (cdc/fast/) turns a run into the sink's
    rows in one pass, without an object per change; `events(start, stop)` gives the same changes as
    `ChangeEvent`s, the reference path, for whatever the fast path leaves (and for every other consumer).
    A source yields batches only when asked to (the pipeline does when a fast path applies)."""

    schema: str
    table: str
    relation: Any  # the source's description of the table (PostgreSQL: the pgoutput Relation)
    payloads: list[bytes]  # one message per change
    lsns: list[int]  # each change's own WAL position (its `seq`)
    commit_lsn: int
    ts_ms: int
    txid: int
    inserts: int  # how many of the payloads are inserts (the rest are updates)
    expand: Any  # (batch, start, stop) -> list[ChangeEvent]: the source's decoder for the reference path

    def __len__(self) -> int:
        return len(self.payloads)

    def events(self, start: int = 0, stop: int | None = None) -> list[ChangeEvent]:
        return self.expand(self, start, len(self.payloads) if stop is None else stop)


@dataclass(slots=True)
class Unreadable:
    """A message the source could not turn into a change (not JSON, no key, wrong types): held as a dead letter
    with the reason while the stream goes on. `ev` carries what is known of it (where it came from, its raw
    bytes as text in `after`)."""

    ev: ChangeEvent
    error: Any  # a HoldError
