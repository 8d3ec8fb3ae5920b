"""A lane's DELETEs that are rows leaving the lane, not rows leaving the POS (cdc/lanes.py).

A publication's row filter turns an UPDATE that moves a row from one lane into another into a DELETE in the old
lane's stream and an INSERT in the new one's, at one POS position. Applied alone — the old lane fast, the new
one far behind a bulk reprice — the DELETE would take the product off the storefront until the other lane
brings the INSERT: a state the POS never had. So in a lane, a DELETE whose row still exists in the POS is
passed over: a change of that row at this position or later is in some lane's stream (the INSERT of the
move, or a later one), and the storefront keeps the row's last price until it arrives. A DELETE of a row the
POS no longer has is applied (were the row moved first and deleted later, the end is the same: no row).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import psycopg
from psycopg import sql

from cdc.events import DELETE, ChangeEvent

log = logging.getLogger("cdc.source.postgres")


class LaneExits:
    def __init__(self, connect: Callable[..., psycopg.Connection], connector: str):
        self.connect = connect
        self.connector = connector
        self.passed = 0  # DELETEs passed over as rows that moved to another lane
        self._conn: psycopg.Connection | None = None
        self._queries: dict[tuple, sql.Composed] = {}

    def filter(self, items: Iterator) -> Iterator:
        for item in items:
            if type(item) is ChangeEvent and item.op == DELETE and item.before and self._still_in_pos(item):
                self.passed += 1
                log.debug(
                    "%s: %s.%s %s left this lane (the row is still in the POS): not deleted",
                    self.connector,
                    item.schema,
                    item.table,
                    {k: item.before.get(k) for k in item.key_columns},
                )
                continue
            yield item

    def _still_in_pos(self, ev: ChangeEvent) -> bool:
        keys = ev.key_columns or tuple(ev.before)
        shape = (ev.schema, ev.table, keys)
        q = self._queries.get(shape)
        if q is None:
            q = self._queries[shape] = sql.SQL("SELECT 1 FROM {} WHERE {}").format(
                sql.Identifier(ev.schema, ev.table),
                sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in keys),
            )
        if self._conn is None or self._conn.closed:
            self._conn = self.connect(autocommit=True)
        return self._conn.execute(q, [ev.before[k] for k in keys]).fetchone() is not None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
