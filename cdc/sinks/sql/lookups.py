"""The storefront's current values, as the open sink transaction sees them, for stages that compare with
them (a guard's max_change_pct): the buffered change of the key if there is one, else the stored row.
`prefetch` reads a run of keys in a few statements first, so a run of changes costs one read, not one each.
"""

from __future__ import annotations

from typing import Any

from cdc.errors import HoldError
from cdc.events import UNCHANGED_TOAST
from cdc.sinks.sql.bookkeeping import key_text
from cdc.sinks.sql.buffer import REMOVE, KeyBuffer
from cdc.sinks.sql.storefront import Storefront, classify
from cdc.sinks.sql.target import Target


class StoreLookups:
    def __init__(self, buffer: KeyBuffer, target: Target, store: Storefront):
        self.buffer = buffer
        self.target = target
        self.store = store
        self._fetched: dict[str, Any] = {}  # prefetch(): key text -> stored value of _field
        self._field: str | None = None

    def forget(self) -> None:
        """What is written changes what was read."""
        self._fetched = {}

    def current_value(self, field: str, row: dict[str, Any]) -> Any:
        """The storefront's value of `field` for the key of `row` (None: no such row, or soft-deleted)."""
        try:
            key = self.buffer.keyget(row)
        except (KeyError, TypeError):
            raise HoldError(
                f"the row has no value for key column(s) {', '.join(self.buffer.key_cols)}, so the "
                f"storefront's {field} cannot be looked up (put the guard after the stages that name the key)",
                details={"field": field},
            ) from None
        p = self.buffer.pending.get(key)
        if p is not None:
            if p.op == REMOVE:
                return None
            v = p.row.get(field, UNCHANGED_TOAST)
            if v is not UNCHANGED_TOAST:
                return v
        if self.target.table is None or None in key:
            return None
        if field == self._field:
            kt = key_text(key)
            if kt in self._fetched:
                return self._fetched[kt]
        try:
            rows = self.target.stored_rows(self.store.tx(), [key], [field], visible=True)
            return next(iter(rows), {}).get(field)
        except Exception as e:
            raise classify(e) from e

    def prefetch(self, field: str, rows: list[dict[str, Any]]) -> None:
        """Reads the stored `field` of the keys of `rows` in a few statements, for current_value; forgotten
        when the sink next writes."""
        if self.target.table is None:
            return
        keys: dict[str, tuple] = {}
        for row in rows:
            try:
                key = self.buffer.keyget(row)
            except (KeyError, TypeError):
                continue
            if None not in key and UNCHANGED_TOAST not in key:
                keys[key_text(key)] = key
        if field != self._field:
            self._fetched, self._field = {}, field
        want = [k for kt, k in keys.items() if kt not in self._fetched]
        try:
            for r in self.target.stored_rows(self.store.tx(), want, [field], visible=True):
                self._fetched[key_text(tuple(r[k] for k in self.buffer.key_cols))] = r[field]
        except Exception as e:
            raise classify(e) from e
        for kt in keys:
            self._fetched.setdefault(kt, None)  # no such row
