"""pos-cdc's own tables in the storefront database (created on first run), and a dialect-aware upsert.

- cdc_offsets:   the source position per connector (and Kafka partition), written with the data it covers;
- cdc_row_state: per storefront key, the source position of the change that put the row there
                 (never backwards; `cdc explain`);
- cdc_applied:   the same facts, appended by each write as one JSON row per chunk of keys, with no index but
                 the row id (a fraction of a per-key upsert's cost on the hot path), and folded into
                 cdc_row_state by `fold()` before anything reads cdc_row_state, and in steps of the oldest
                 rows while the connector is idle;
- cdc_held:      changes held back, quarantine or dead letter, with the event, the reason and the resolution;
- cdc_scheduled: per storefront key, the next time its scheduled price starts or ends (`schedule` stage),
                 with the source change it comes from (cdc/schedule.py);
- cdc_price_history: every applied change's old and new values, source transaction and who made it
                 (`sink.history`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging

import sqlalchemy as sa
import sqlalchemy.dialects.mysql

log = logging.getLogger("cdc.sink.sql")

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
    # how the change came: stream, snapshot, schedule, approve:<who>#<entry>, retry:<who>#<entry>, repair,
    # pick_fallback
    sa.Column("via", sa.String(200)),
)
applied_table = sa.Table(  # append-only, no index but the id (insertion order): see fold()
    "cdc_applied",
    meta,
    sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("connector", sa.String(200), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),  # how many entries
    # JSON [[row_key, commit_lsn, seq, ts_ms, txid, op, via], ...]: one row per written chunk, not per key
    # (entries written before `via` have six elements: folded with via NULL)
    sa.Column("entries", sa.Text().with_variant(sa.dialects.mysql.LONGTEXT(), "mysql"), nullable=False),
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
    sa.Column("op", sa.String(1), nullable=False),  # c created | u updated | d deleted | x rejected
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


# columns added since the tables were first made: (table, column, type), added at start to older tables
ADDED_COLUMNS = (("cdc_held", "typed_event", "TEXT"), ("cdc_row_state", "via", "VARCHAR(200)"))


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def key_text(key: tuple) -> str:
    """A storefront key as one string (the bookkeeping tables' key column)."""
    if len(key) == 1 and type(key[0]) is str:  # the common case, and the same text
        return key[0]
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


PG_LOCK = "SELECT pg_advisory_xact_lock(hashtext('pos-cdc'), hashtext(%s))"


def lock_connector(conn: sa.Connection, connector: str) -> None:
    """Takes the connector's lock for the rest of the transaction. The connector takes it at the start of
    every sink transaction, and `cdc quarantine approve` / `cdc deadletter retry` before they read a key's
    position, so the two never interleave. PostgreSQL: a transaction-level advisory lock (no row to write,
    and it holds before the connector's first position is stored); MariaDB: the connector's LOCK_PARTITION
    row of cdc_offsets (made by ensure_lock_row: a row that exists whatever the source, where a missing row
    would lock nothing); SQLite locks the whole file anyway."""
    if conn.dialect.name == "postgresql":
        pg = conn.connection.driver_connection
        with pg.pipeline():  # the transaction's BEGIN and the lock in one round trip
            pg.execute(PG_LOCK, (connector,))
        return
    t = offsets_table
    conn.execute(
        sa.select(t.c.connector)
        .where(t.c.connector == connector, t.c.partition == LOCK_PARTITION)
        .with_for_update()
    ).all()


LOCK_PARTITION = "lock"  # cdc_offsets' row that MariaDB's connector lock holds (not a position)


def ensure_lock_row(conn: sa.Connection, connector: str) -> None:
    """MariaDB/MySQL: the row lock_connector locks exists (inserted once; a no-op after)."""
    if conn.dialect.name != "mysql":
        return
    from sqlalchemy.dialects.mysql import insert as mysql_insert

    conn.execute(
        mysql_insert(offsets_table)
        .values(connector=connector, partition=LOCK_PARTITION, position="{}", updated_at=utcnow())
        .prefix_with("IGNORE")
    )


def via_of(ev) -> str | None:
    """How a change came, as recorded per key (None: the stream, the common case, stored as NULL)."""
    return ev.headers.get("via") or (None if ev.snapshot == "false" else "snapshot")


def pack_entries(entries: list) -> str:
    """One cdc_applied row's entries: [(row_key, commit_lsn, seq, ts_ms, txid, op, via), ...] as JSON."""
    return json.dumps(entries, separators=(",", ":"))


APPLIED_COLUMNS = ("row_key", "commit_lsn", "seq", "ts_ms", "txid", "op", "via")

# cdc_applied's entries as rows (row_key, commit_lsn, seq, ts_ms, txid, op), per dialect's JSON functions
# (PostgreSQL: jsonb, parsed once, where each ->> of a json value parses its text again: a fold of 200k entries
# took 8.5-11.6 µs an entry instead of 9.8-16.0, folded 10k at a time, new keys and keys seen before)
_ENTRIES_SQL = {
    "postgresql": "SELECT e->>0 AS row_key, (e->>1)::bigint AS commit_lsn, (e->>2)::bigint AS seq,"
    " (e->>3)::bigint AS ts_ms, (e->>4)::bigint AS txid, e->>5 AS op, e->>6 AS via"
    " FROM cdc_applied a CROSS JOIN LATERAL jsonb_array_elements(a.entries::jsonb) e"
    " WHERE a.connector = :c AND a.id <= :upto",
    "mysql": "SELECT j.row_key, j.commit_lsn, j.seq, j.ts_ms, j.txid, j.op, j.via FROM cdc_applied a,"
    " JSON_TABLE(a.entries, '$[*]' COLUMNS (row_key VARCHAR(500) PATH '$[0]', commit_lsn BIGINT PATH '$[1]',"
    " seq BIGINT PATH '$[2]', ts_ms BIGINT PATH '$[3]', txid BIGINT PATH '$[4]', op VARCHAR(1) PATH '$[5]',"
    " via VARCHAR(200) PATH '$[6]')) j"
    " WHERE a.connector = :c AND a.id <= :upto",
    "sqlite": "SELECT json_extract(e.value, '$[0]') AS row_key, json_extract(e.value, '$[1]') AS commit_lsn,"
    " json_extract(e.value, '$[2]') AS seq, json_extract(e.value, '$[3]') AS ts_ms,"
    " json_extract(e.value, '$[4]') AS txid, json_extract(e.value, '$[5]') AS op,"
    " json_extract(e.value, '$[6]') AS via"
    " FROM cdc_applied a, json_each(a.entries) e WHERE a.connector = :c AND a.id <= :upto",
}


BOOKKEEPING_LOCK = (
    "pos_cdc_bookkeeping"  # MariaDB GET_LOCK name; PostgreSQL: its hashtext as advisory lock key
)


def compress_entries_lz4(conn: sa.Connection) -> None:
    """PostgreSQL 14 and later built with lz4: cdc_applied's entries compressed by lz4, not the default pglz.
    A bulk write's entries are one value of ~1.3 MB a 20k rows, which pglz took ~11 ms to compress on the
    storefront, a sixth of the write, and lz4 ~4 (both with their insert). Once per table; a table in use
    by another connector (the ALTER waits for its lock), or owned by another role (a least-privilege
    connector's: `cdc grants` makes them with the owner), keeps pglz, said in the log."""
    has_lz4 = conn.execute(
        sa.text("SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'")
    ).scalar()
    if not has_lz4:
        return
    current = conn.execute(
        sa.text(
            "SELECT attcompression FROM pg_attribute WHERE attrelid = 'cdc_applied'::regclass"
            " AND attname = 'entries'"
        )
    ).scalar()
    if current == "l":
        return
    try:
        with conn.begin_nested():
            conn.execute(sa.text("SET LOCAL lock_timeout = '500ms'"))
            conn.execute(sa.text("ALTER TABLE cdc_applied ALTER COLUMN entries SET COMPRESSION lz4"))
    except sa.exc.DBAPIError as e:  # in use (lock_timeout), or not this role's table (least privilege)
        log.info("cdc_applied.entries stays compressed by pglz (%s)", str(e.orig).strip().splitlines()[0])


def create_bookkeeping(engine: sa.Engine) -> None:
    """Creates the bookkeeping tables that are missing. Connectors started at the same moment on a fresh
    storefront would race (each sees a table missing; one then fails on the catalog's unique index, e.g.
    PostgreSQL's pg_type_typname_nsp_index): they take turns under a lock of the database (PostgreSQL's
    advisory lock, MariaDB's GET_LOCK), and the one that waited finds the tables made. SQLite has no such
    lock; a table another process made meanwhile ("already exists") is tried again there."""
    dialect = engine.dialect.name
    for attempt in range(3):
        try:
            with engine.connect() as conn:
                if dialect == "postgresql":
                    with conn.begin():
                        conn.execute(
                            sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": BOOKKEEPING_LOCK}
                        )
                        meta.create_all(conn, checkfirst=True)
                        compress_entries_lz4(conn)
                elif dialect == "mysql":
                    conn.execute(sa.text("SELECT GET_LOCK(:k, 120)"), {"k": BOOKKEEPING_LOCK})
                    try:
                        meta.create_all(conn, checkfirst=True)
                        conn.commit()
                    finally:
                        conn.execute(sa.text("SELECT RELEASE_LOCK(:k)"), {"k": BOOKKEEPING_LOCK})
                else:
                    meta.create_all(conn, checkfirst=True)
                    conn.commit()
            return
        except sa.exc.DBAPIError as e:
            if attempt == 2 or "already exists" not in str(e.orig):
                raise


def applied_entries(dialect: str, connector: str, upto: int = 2**63 - 1) -> sa.Subquery:
    """The connector's not yet folded entries (of the cdc_applied rows up to id `upto`) as a subquery with
    APPLIED_COLUMNS."""
    s, big = sa.String(500), sa.BigInteger
    return (
        sa.text(_ENTRIES_SQL[dialect])
        .bindparams(c=connector, upto=upto)
        .columns(row_key=s, commit_lsn=big, seq=big, ts_ms=big, txid=big, op=sa.String(1), via=sa.String(200))
        .subquery("applied")
    )


def fold(conn: sa.Connection, connector: str, limit: int | None = None) -> int:
    """Moves the connector's recorded entries into cdc_row_state, all of them or (`limit`) those of its oldest
    cdc_applied rows up to about `limit` entries (at least one row) — the newest per key wins, never an older
    over a newer, so any slice can be folded on its own — inside the caller's transaction. The connector
    writes one transaction at a time and ids grow with its commits, so what a fold sees of another
    transaction is a committed prefix (and of its own, its own rows too). Returns how many it folded."""
    a = applied_table
    mine = a.c.connector == connector
    n, upto = 0, None
    for row_id, size in conn.execute(sa.select(a.c.id, a.c.size).where(mine).order_by(a.c.id)):
        n, upto = n + size, row_id
        if limit is not None and n >= limit:
            break
    if upto is None:
        return 0
    dialect = conn.dialect.name
    e, cols = applied_entries(dialect, connector, upto), list(APPLIED_COLUMNS)
    rank = sa.func.row_number().over(
        partition_by=e.c.row_key, order_by=(e.c.commit_lsn.desc(), e.c.seq.desc())
    )
    ranked = sa.select(*(e.c[c] for c in cols), rank.label("rn")).subquery()
    latest = (  # in key order: two folds at once lock the keys in the same order (no deadlock)
        sa.select(
            sa.literal(connector, sa.String(200)), *(ranked.c[c] for c in cols), sa.func.current_timestamp()
        )
        .where(ranked.c.rn == 1)
        .order_by(ranked.c.row_key)
    )
    into = ["connector", *cols, "applied_at"]
    stmt = _newest_wins(dialect, lambda insert: insert.from_select(into, latest), ties=False)
    conn.execute(stmt)
    conn.execute(a.delete().where(mine, a.c.id <= upto))
    return n


def _newest_wins(dialect: str, make, ties: bool):
    """An INSERT into cdc_row_state (`make(insert)` gives it its rows) that updates a key's row only where the
    new position is newer — `ties`: or the same, unless that would put a delete over an upsert (claim())."""
    rs = row_state_table

    def cond(new):
        newer = sa.tuple_(rs.c.commit_lsn, rs.c.seq) < sa.tuple_(new.commit_lsn, new.seq)
        if not ties:
            return newer
        same = sa.tuple_(rs.c.commit_lsn, rs.c.seq) == sa.tuple_(new.commit_lsn, new.seq)
        # literals inline: pymysql's executemany sends the ON DUPLICATE KEY part without binding parameters
        u, d = sa.literal_column("'u'"), sa.literal_column("'d'")
        return sa.or_(newer, sa.and_(same, sa.or_(new.op == u, rs.c.op == d)))

    if dialect == "mysql":
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        stmt = make(mysql_insert(rs))
        new = stmt.inserted
        # MySQL applies the assignments left to right, each seeing the ones before: positions go last,
        # commit_lsn after seq, so the condition holds for every column it decides
        order = ("ts_ms", "txid", "op", "via", "applied_at", "seq", "commit_lsn")
        return stmt.on_duplicate_key_update([(c, sa.func.IF(cond(new), new[c], rs.c[c])) for c in order])
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = make(insert(rs))
    new = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=["connector", "row_key"],
        set_={c: new[c] for c in ("commit_lsn", "seq", "ts_ms", "txid", "op", "via", "applied_at")},
        where=cond(new),
    )


CLAIM_CHUNK = 500


def claim(conn: sa.Connection, positions: str, entries: list[tuple]) -> set[str]:
    """Shared positions (sink.position_group: lanes writing the same keys): records each entry (row_key,
    commit_lsn, seq, ts_ms, txid, op, via) in cdc_row_state where it is newer than the key's recorded position
    — in key order, each key's row locked until the caller commits, so another lane's claim of it waits and is
    then judged against this one — and returns the keys whose entry is now the recorded one: the changes to
    apply. (PostgreSQL does the same inside its merge statement: pg_merge.CLAIM.)"""
    rs, dialect, now = row_state_table, conn.dialect.name, utcnow()
    stmt = _newest_wins(dialect, lambda insert: insert, ties=True)
    won: set[str] = set()
    entries = sorted(entries)
    for i in range(0, len(entries), CLAIM_CHUNK):
        chunk = entries[i : i + CLAIM_CHUNK]
        conn.execute(
            stmt,
            [
                dict(zip(("connector", *APPLIED_COLUMNS, "applied_at"), (positions, *e, now), strict=True))
                for e in chunk
            ],
        )
        q = sa.select(rs.c.row_key, rs.c.commit_lsn, rs.c.seq, rs.c.op).where(
            rs.c.connector == positions, rs.c.row_key.in_([e[0] for e in chunk])
        )
        recorded = {r.row_key: (r.commit_lsn, r.seq, r.op) for r in conn.execute(q.with_for_update())}
        won.update(e[0] for e in chunk if recorded.get(e[0]) == (e[1], e[2], e[5]))
    return won


def positions_of(cfg) -> str:
    """Whose recorded key positions a connector checks and records: its position group's, else its own."""
    return getattr(cfg.sink, "position_group", None) or cfg.name
