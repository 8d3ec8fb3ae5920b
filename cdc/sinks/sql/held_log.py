"""Changes held back (cdc_held): quarantined by a guard, or dead-lettered (a stage, a decoder or the storefront
refused them), written in the sink transaction of the batch they came in, with the reason and the event.

A held quarantine entry is superseded when a newer change of its key is applied (approving it would move the
price backwards), and everything held before a source TRUNCATE is superseded by it (approving it would bring
back a row the POS truncated). `held_keys` (key -> newest held quarantine position) spares the writer a
lookup for keys with nothing held.
"""

from __future__ import annotations

import json
import logging
from collections import Counter

import sqlalchemy as sa

from cdc.errors import HoldError
from cdc.events import ChangeEvent, Position, jsonable
from cdc.sinks.sql.bookkeeping import held_table, key_text, utcnow
from cdc.stored import dump_event

log = logging.getLogger("cdc.sink.sql")


class HeldLog:
    def __init__(self, connector: str, key_cols: tuple[str, ...]):
        self.connector = connector
        self.key_cols = key_cols
        self.records: list[dict] = []  # held in the open transaction, not yet written
        self.held_keys: dict[str, tuple[int, int]] = {}
        self.committed: Counter[str] = Counter()  # kinds held by committed transactions, not yet reported
        self._uncommitted: Counter[str] = Counter()

    def load(self, conn: sa.Connection) -> None:
        h = held_table
        self.held_keys = {}
        for kt, lsn, seq in conn.execute(
            sa.select(h.c.row_key, h.c.commit_lsn, h.c.seq).where(
                h.c.connector == self.connector,
                h.c.kind == "quarantine",
                h.c.status == "held",
                h.c.row_key.is_not(None),
            )
        ):
            self.held_keys[kt] = max(self.held_keys.get(kt, (-1, -1)), (lsn, seq))

    def hold(self, ev: ChangeEvent, err: HoldError, kind: str = "dead_letter") -> None:
        self.records.append(self.record(ev, err, kind))

    def record(self, ev: ChangeEvent, err: HoldError, kind: str = "dead_letter") -> dict:
        """cdc_held's row for `ev` (counted, and its key noted when quarantined)."""
        row = ev.row or {}
        key = tuple(row.get(k) for k in self.key_cols)
        row_key = key_text(key) if None not in key else None
        if kind == "quarantine" and row_key is not None:
            self.held_keys[row_key] = max(self.held_keys.get(row_key, (-1, -1)), (ev.commit_lsn, ev.seq))
        self._uncommitted[kind] += 1
        log.warning(
            "%s: %s of %s at %s (%s): %s",
            self.connector,
            kind.replace("_", " "),
            row_key if row_key is not None else f"{ev.schema}.{ev.table} (no key)",
            ev.position,
            err.rule or "?",
            err.reason,
        )
        return {
            "connector": self.connector,
            "kind": kind,
            "status": "held",
            "row_key": row_key,
            "source_table": f"{ev.schema}.{ev.table}",
            "commit_lsn": ev.commit_lsn,
            "seq": ev.seq,
            "rule": err.rule,
            "reason": err.reason,
            "details": json.dumps(jsonable(err.details)),
            "event": json.dumps(ev.to_envelope()),
            "typed_event": _typed(ev),
            "held_at": utcnow(),
        }

    def take(self) -> list[dict]:
        taken, self.records = self.records, []
        return taken

    def insert(self, conn: sa.Connection, records: list[dict]) -> None:
        if records:
            conn.execute(held_table.insert(), records)

    def committed_now(self) -> None:
        """The open transaction committed: what it held counts (see `drain`)."""
        self.committed.update(self._uncommitted)
        self._uncommitted.clear()

    def rolled_back(self) -> None:
        self.records.clear()
        self._uncommitted.clear()

    def uncommitted(self, kind: str) -> int:
        """Changes of `kind` held in the open transaction."""
        return self._uncommitted[kind]

    def drain(self) -> dict[str, int]:
        """Changes held by committed transactions since the last call, by kind (for metrics)."""
        out, self.committed = dict(self.committed), Counter()
        return out

    # --- superseding ----------------------------------------------------------------------------------

    def supersede(self, conn: sa.Connection, applied: list, now) -> None:
        """Quarantined changes of these keys older than the change just applied are superseded by it."""
        h = held_table
        for kt, p in applied:
            newest = self.held_keys.get(kt)
            if newest is None:
                continue
            self.mark_superseded(
                conn,
                p.ev.position,
                f"newer change {p.ev.position}",
                now,
                h.c.kind == "quarantine",
                h.c.row_key == kt,
            )
            if newest < (p.ev.commit_lsn, p.ev.seq):
                del self.held_keys[kt]

    def before_truncate(self, conn: sa.Connection, at: Position) -> None:
        """What was held before a source truncate (in earlier batches or earlier in this one) is superseded by
        it: approving or retrying it would bring back a row the POS truncated."""
        self.mark_superseded(conn, at, f"source TRUNCATE at {at}", utcnow())
        self.held_keys = {
            k: newest for k, newest in self.held_keys.items() if newest > (at.commit_lsn, at.seq)
        }

    def mark_superseded(self, conn: sa.Connection, at: Position, by: str, now, *where) -> None:
        """Marks this connector's held entries older than `at` (and matching `where`) superseded `by` it."""
        h, lsn, seq = held_table, at.commit_lsn, at.seq
        conn.execute(
            h.update()
            .where(
                h.c.connector == self.connector,
                h.c.status == "held",
                *where,
                sa.or_(h.c.commit_lsn < lsn, sa.and_(h.c.commit_lsn == lsn, h.c.seq < seq)),
            )
            .values(status="superseded", resolved_by=f"pos-cdc: {by}", resolved_at=now)
        )


def _typed(ev: ChangeEvent) -> str | None:
    try:
        return dump_event(ev)
    except TypeError as e:  # a value of a type the store does not know: keep the envelope only
        log.warning("held change at %s kept without value types: %s", ev.position, e)
        return None
