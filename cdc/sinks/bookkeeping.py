"""pos-cdc's own tables in the storefront database (created on first run), and a dialect-aware upsert.

- cdc_offsets:   the source position per connector (and Kafka partition), written with the data it covers;
- cdc_row_state: per storefront key, the source position of the change that put the row there
                 (never backwards; `cdc explain`);
- cdc_held:      changes held back, quarantine or dead letter, with the event, the reason and the resolution;
- cdc_scheduled: per storefront key, the next time its scheduled price starts or ends (`schedule` stage),
                 with the source change it comes from (cdc/schedule.py);
- cdc_price_history: every applied change's old and new values, source transaction and who made it
                 (`sink.history`).
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

KEY_SEP = "\x1f"

meta = sa.MetaData()
offsets_table = sa.Table(
    "cdc_offsets",
    meta,
    sa.Column("connector", sa.String(200), primary_key=True),
    sa.Column("partition", sa.String(200), primary_key=True),
    sa.Column("position", sa.Text, nullable=False),  # JSON
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
row_state_table = sa.Table(
    "cdc_row_state",
    meta,
    sa.Column("connector", sa.String(200), primary_key=True),
    sa.Column("row_key", sa.String(500), primary_key=True),
    sa.Column("commit_lsn", sa.BigInteger, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Column("txid", sa.BigInteger),
    sa.Column("op", sa.String(1), nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True)),
)
held_table = sa.Table(
    "cdc_held",
    meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("connector", sa.String(200), nullable=False, index=True),
    sa.Column("kind", sa.String(20), nullable=False),  # quarantine | dead_letter
    sa.Column("status", sa.String(20), nullable=False),  # held | applied | rejected | dropped | superseded
    sa.Column("row_key", sa.String(500)),
    sa.Column("source_table", sa.String(200)),
    sa.Column("commit_lsn", sa.BigInteger),
    sa.Column("seq", sa.BigInteger),
    sa.Column("rule", sa.String(200)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("details", sa.Text),  # JSON
    sa.Column("event", sa.Text, nullable=False),  # Debezium envelope, JSON
    sa.Column("typed_event", sa.Text),  # the same event with its value types (cdc/stored.py), to apply it
    sa.Column("held_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("resolved_by", sa.String(200)),
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
)

scheduled_table = sa.Table(
    "cdc_scheduled",
    meta,
    sa.Column("connector", sa.String(200), primary_key=True),
    sa.Column("row_key", sa.String(500), primary_key=True),
    sa.Column("due_ms", sa.BigInteger, nullable=False, index=True),  # ms since the epoch
    sa.Column("what", sa.String(20), nullable=False),  # start | end
    sa.Column("commit_lsn", sa.BigInteger, nullable=False),  # the source change it comes from
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("stage", sa.String(100), nullable=False),  # the schedule stage to run again, e.g. schedule#2
    sa.Column("event", sa.Text, nullable=False),  # the change as it reached that stage (cdc/stored.py)
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
history_table = sa.Table(
    "cdc_price_history",
    meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("connector", sa.String(200), nullable=False),
    sa.Column("row_key", sa.String(500), nullable=False),
    sa.Column("op", sa.String(1), nullable=False),  # u (insert or update) | d
    sa.Column("old_value", sa.Text),  # JSON: the recorded columns before (null: no row)
    sa.Column("new_value", sa.Text),  # JSON: after (null: deleted)
    sa.Column("commit_lsn", sa.BigInteger, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("txid", sa.BigInteger),
    sa.Column("commit_time", sa.DateTime(timezone=True), nullable=False),  # the source commit
    sa.Column("changed_by", sa.String(200)),  # the POS's "changed by" column (sink.history.changed_by)
    sa.Column("via", sa.String(200), nullable=False),  # stream | snapshot | schedule | approve:<who> | ...
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_cdc_price_history_key", "connector", "row_key"),
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def key_text(key: tuple) -> str:
    """A storefront key as one string (the bookkeeping tables' key column)."""
    return KEY_SEP.join(map(str, key))


def upsert(
    dialect: str, table: sa.Table, keys: tuple[str, ...], update: list[str], constants: dict | None = None
) -> sa.Insert:
    """INSERT ... ON CONFLICT (keys) DO UPDATE / ON DUPLICATE KEY UPDATE, for executemany with dict rows.
    `update` columns take the new row's value on conflict; `constants` are set to fixed values."""
    constants = constants or {}
    if dialect == "mysql":
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        stmt = mysql_insert(table)
        sets = {c: stmt.inserted[c] for c in update or keys[:1]}
        return stmt.on_duplicate_key_update({**sets, **constants})
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise ValueError(f"no upsert for dialect {dialect}")
    stmt = insert(table)
    if not update and not constants:
        return stmt.on_conflict_do_nothing(index_elements=list(keys))
    sets = {c: stmt.excluded[c] for c in update}
    return stmt.on_conflict_do_update(index_elements=list(keys), set_={**sets, **constants})


def row_state_upsert(dialect: str) -> sa.Insert:
    return upsert(
        dialect,
        row_state_table,
        ("connector", "row_key"),
        ["commit_lsn", "seq", "ts_ms", "txid", "op", "applied_at"],
    )
