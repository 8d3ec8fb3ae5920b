"""Price history (`sink.history`): one row in cdc_price_history per applied change, in the sink transaction
that applies it — the audit trail for "who changed this price, when, from what".

Each row has the key, the op (what happened to the storefront row: c created, u updated, d deleted; `via`
says how the change came), the recorded columns' old value (as the storefront had it just before; null when
there was no row) and new value (null for a delete), the source transaction (txid, commit LSN, sequence), its
commit time, the POS's "changed by" column (`sink.history.changed_by`, read by the pipeline from the source row
before any transform) and how the change came: stream, snapshot, schedule (a promotion starting or ending),
approve:<who>#<entry> (from quarantine entry <entry>) or retry:<who>#<entry> (a dead letter). A change that
leaves the recorded columns as they were (and the row visible) is not recorded. Values are JSON; Decimals are
exact strings.

A rejected quarantine entry is a decision too: `refused` records it as op `x` (not applied), old_value the
storefront's values (which it keeps), new_value the refused ones, via reject:<who>#<entry>.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa

from cdc.config import HistoryConfig
from cdc.events import UNCHANGED_TOAST, jsonable
from cdc.sinks.sql.bookkeeping import history_table, key_text
from cdc.sinks.sql.target import Target


class History:
    """Writes cdc_price_history for the changes a sink transaction applies."""

    def __init__(self, config: HistoryConfig, target: Target, connector: str):
        self.fields = config.fields
        self.target = target
        self.connector = connector

    def old_rows(self, conn: sa.Connection, items: list) -> dict[str, dict]:
        """The storefront's rows for the keys of `items` (key text -> {column: value}), before they are
        written."""
        t = self.target
        cols = self.fields or list(t.c.keys())
        if t.soft_delete_column:
            cols = [*cols, t.soft_delete_column]
        cols = [c for c in cols if c in t.c]
        rows = t.stored_rows(conn, [k for k, _ in items], cols)
        return {key_text(tuple(r[k] for k in t.key_cols)): dict(r) for r in rows}

    def record(
        self, conn: sa.Connection, applied: list, old: dict[str, dict], now: dt.datetime, again: bool = False
    ) -> None:
        """One row per change of the applied keys, oldest first; a key's changes that this batch buffered
        together (the buffer keeps the last per key) each get theirs, each from the value the one before
        left. `again`: the changes may have been applied before (a replay, a redelivery): those already in
        the history are not written twice."""
        soft = self.target.soft_delete_column
        rows = []
        for kt, last in applied:
            state = old.get(kt)  # the row as the storefront has it, then as each change leaves it
            if state is not None and soft and state.get(soft) is not None:
                state = None  # soft-deleted: not there for the customer
            for p in [*(last.earlier or ()), last]:
                entry, state = self._entry(kt, p, state, now)
                if entry is not None:
                    rows.append(entry)
        if rows and again:
            rows = self._new_only(conn, rows)
        if rows:
            rows.sort(key=lambda r: (r["commit_lsn"], r["seq"]))  # ids in source order
            conn.execute(history_table.insert(), rows)

    def refused(self, conn: sa.Connection, kt: str, ev, via: str, now: dt.datetime) -> bool:
        """Records the rejection of held change `ev` (key text `kt`); False when its row lacks the key."""
        t, row = self.target, ev.after
        if row is None or t.table is None or any(k not in row for k in t.key_cols):
            return False
        cols = self.fields or [c for c in row if c not in t.key_cols and c in t.c]
        cols = [c for c in cols if c in t.c]
        stored = list(t.stored_rows(conn, [tuple(row[k] for k in t.key_cols)], cols, visible=True))
        by = ev.headers.get("changed_by")
        conn.execute(
            history_table.insert(),
            {
                "connector": self.connector,
                "row_key": kt,
                "op": "x",
                "old_value": json.dumps(jsonable({c: stored[0].get(c) for c in cols})) if stored else None,
                "new_value": json.dumps(jsonable({c: row.get(c) for c in cols})),
                "commit_lsn": ev.commit_lsn,
                "seq": ev.seq,
                "txid": ev.txid,
                "commit_time": dt.datetime.fromtimestamp(ev.ts_ms / 1000, dt.UTC),
                "changed_by": None if by is None else str(by)[:200],
                "via": via[:200],
                "applied_at": now,
            },
        )
        return True

    def _new_only(self, conn: sa.Connection, rows: list[dict]) -> list[dict]:
        h, seen = history_table, set()
        keys = sorted({r["row_key"] for r in rows})
        for i in range(0, len(keys), 500):
            q = sa.select(h.c.row_key, h.c.commit_lsn, h.c.seq).where(
                h.c.connector == self.connector, h.c.row_key.in_(keys[i : i + 500])
            )
            seen.update(tuple(r) for r in conn.execute(q))
        return [r for r in rows if (r["row_key"], r["commit_lsn"], r["seq"]) not in seen]

    def _entry(self, kt: str, p, state: dict | None, now: dt.datetime) -> tuple[dict | None, dict | None]:
        """(the history row of change `p` or None when it changes nothing recorded, the row state after
        it)."""
        fields, keys, soft = self.fields, self.target.key_cols, self.target.soft_delete_column
        if p.op == "d":
            if state is None:
                return None, None  # nothing was there to delete
            cols = fields or [c for c in state if c not in keys and c != soft]
            old_v, new_v, after = {c: state.get(c) for c in cols}, None, None
        else:
            target = self.target.c
            cols = fields or [c for c in p.row if c not in keys and c in target and c != soft]
            after = dict(state or {})
            for c, v in p.row.items():
                if v is not UNCHANGED_TOAST:
                    after[c] = v
            old_v = None if state is None else {c: state.get(c) for c in cols}
            new_v = {c: after.get(c) for c in cols}
            if old_v is not None and all(_same(old_v[c], new_v[c]) for c in cols):
                return None, after
        ev = p.ev
        by = ev.headers.get("changed_by")
        return {
            "connector": self.connector,
            "row_key": kt,
            # what happened to the storefront row: c created, u updated, d deleted (via says how the change came)
            "op": "d" if p.op == "d" else ("c" if old_v is None else "u"),
            "old_value": None if old_v is None else json.dumps(jsonable(old_v)),
            "new_value": None if new_v is None else json.dumps(jsonable(new_v)),
            "commit_lsn": ev.commit_lsn,
            "seq": ev.seq,
            "txid": ev.txid,
            "commit_time": dt.datetime.fromtimestamp(ev.ts_ms / 1000, dt.UTC),
            "changed_by": None if by is None else str(by)[:200],
            "via": str(ev.headers.get("via") or ("stream" if ev.snapshot == "false" else "snapshot"))[:200],
            "applied_at": now,
        }, after


def _same(a: Any, b: Any) -> bool:
    if a == b:
        return True
    if a is None or b is None:
        return False
    try:
        return Decimal(str(a)) == Decimal(str(b))
    except (InvalidOperation, ValueError):
        return False
