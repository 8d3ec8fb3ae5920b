"""The fast path (cdc/fast/) against the reference path, on real PostgreSQL: two connectors read the same POS
transactions, one with the fast path and one with CDC_FAST_PATH=0, into two storefront databases (PostgreSQL,
or MariaDB); the storefront rows and the held changes must come out the same.

The transactions are built to cross every edge the fast path hands back: text that COPY or a MySQL literal
must escape (quotes, backslashes, tabs, newlines, ^Z, unicode), NULLs, a key the storefront refuses (too long for
its column: that run goes the reference way and the row is dead-lettered), a key the storefront has before the
POS inserts it (PostgreSQL: the plain INSERT of an inserts-only run meets it, and the upsert goes instead), a
price that is NaN (held by the money stage in the middle of a bulk run), a key change (an
old tuple), deletes between runs, the same keys updated many times in one transaction, and a table whose
plan cannot be made (a float column the storefront keeps as text).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import SimpleNamespace

from cdc.sinks.sql.pg_merge import PgMerge
from tests.integration.helpers import Running, wait_until

POS = [
    "CREATE TABLE item_price (item_code text PRIMARY KEY, store_id int NOT NULL, channel text,"
    " price_fen numeric, note text, updated_at timestamptz, active boolean, secret text, weight numeric)",
    "CREATE TABLE item_extra (item_code text PRIMARY KEY, store_id int NOT NULL, price_fen bigint NOT NULL,"
    " ratio float8)",
]
STORE = [
    "CREATE TABLE product_price (sku varchar(12) PRIMARY KEY, store_id int NOT NULL, channel text,"
    " price numeric(14,2), note text, updated_at timestamptz, active boolean, weight numeric,"
    " ratio text)",
]
MARIADB_STORE = (
    "CREATE TABLE product_price (sku varchar(12) PRIMARY KEY, store_id int NOT NULL, channel text,"
    " price decimal(14,2), note text, updated_at datetime(6), active boolean, weight decimal(40,20),"
    " ratio text)"
)
CONFIG = """
name: {name}
source: {{type: postgres, dsn: "@POS@", tables: [public.item_price, public.item_extra]}}
transforms:
  - {{type: rename, fields: {{item_code: sku, price_fen: price}}}}
  - {{type: money, field: price, divide_by: 100, scale: 2}}
  - {{type: drop, fields: [secret]}}
sink: {{type: sql, url: "{url}", table: product_price, key: [sku], batch_size: 700}}
"""

OLD7 = "INSERT INTO product_price (sku, store_id, price) VALUES ('OLD7', 9, 99.99)"
NOTES = ["plain", "tab\there", "line\nbreak", "back\\slash", "crlf\r\n", "ünïcødé ✓", None, "", "\\N"]
NOTES += ['it\'s "quoted"', "\\'", "ctrl-z \x1a", "nul-ish \\0"]


def _load(env) -> None:
    notes = "ARRAY[" + ", ".join("NULL" if n is None else _lit(n) for n in NOTES) + "]"
    env.pos(
        "INSERT INTO item_price SELECT 'SKU' || lpad(g::text, 6, '0'), g % 7, CASE WHEN g % 5 = 0 THEN NULL"
        f" ELSE 'ONLINE' END, g * 101, ({notes})[g % {len(NOTES)} + 1], '2024-05-06 07:08:09.123456+00'::timestamptz"
        " + g * interval '1 second', g % 2 = 0, 'x', g / 7.0 FROM generate_series(1, 3000) g"
    )
    # a key the storefront refuses (varchar(12)) in the middle of a bulk insert
    with_refused = (
        "BEGIN; INSERT INTO item_price SELECT 'NEW' || g, 1, 'POS', g, 'n', now(), true, 's', 1"
        " FROM generate_series(1, 400) g; INSERT INTO item_price VALUES ('MUCH-TOO-LONG-KEY', 1, 'POS', 5,"
        " 'n', now(), true, 's', 1); INSERT INTO item_price SELECT 'NEW' || g, 1, 'POS', g, 'n', now(), true,"
        " 's', 1 FROM generate_series(401, 800) g; COMMIT"
    )
    env.pos(with_refused)
    env.pos(  # new keys, but one the storefront has already
        "INSERT INTO item_price SELECT 'OLD' || g, 2, 'POS', g, 'o', now(), false, 's', 2"
        " FROM generate_series(1, 800) g"
    )
    # a reprice of everything, with a NaN price in the middle of the run
    env.pos(
        "BEGIN; UPDATE item_price SET price_fen = price_fen * 3 + 7 WHERE item_code < 'SKU001500';"
        " UPDATE item_price SET price_fen = 'NaN' WHERE item_code = 'SKU001500';"
        " UPDATE item_price SET price_fen = price_fen + 1, note = 'after\\tNaN' WHERE item_code > 'SKU001500';"
        " COMMIT"
    )
    # a key change (an old tuple) and deletes between runs, in one transaction
    env.pos(
        "BEGIN; UPDATE item_price SET price_fen = price_fen + 2 WHERE item_code < 'SKU000300';"
        " UPDATE item_price SET item_code = 'SKU-MOVED' WHERE item_code = 'SKU000150';"
        " DELETE FROM item_price WHERE item_code BETWEEN 'SKU000400' AND 'SKU000420';"
        " UPDATE item_price SET price_fen = price_fen + 3 WHERE item_code >= 'SKU000300'"
        " AND item_code < 'SKU000600'; COMMIT"
    )
    # the same keys many times in one transaction
    env.pos(
        "DO $$ BEGIN FOR i IN 1..40 LOOP UPDATE item_price SET price_fen = price_fen + i"
        " WHERE item_code < 'SKU000010'; END LOOP; END $$"
    )
    # a table whose plan cannot be made (float8 into text), in bulk
    env.pos(
        "INSERT INTO item_extra SELECT 'EXT' || g, 1, g, g / 3.0 FROM generate_series(1, 200) g",
    )
    # single sales back to back (PostgreSQL: short runs' VALUES tuples, committed in groups in one round trip),
    # with a NaN price, NULLs, text to escape, and a key the storefront refuses among them
    env.pos(
        "DO $$ BEGIN FOR i IN 1..600 LOOP UPDATE item_price SET price_fen = CASE WHEN i = 300 THEN 'NaN'"
        " ELSE price_fen + i END, note = CASE i % 4 WHEN 0 THEN NULL WHEN 1 THEN E'q''\\t' WHEN 2 THEN"
        " E'back\\\\slash ''\\\\'' \\\\N ünï' ELSE 's' END, active = i % 5 = 0, weight = i / 3.0"
        " WHERE item_code = 'SKU' || lpad((i * 7 % 2900 + 100)::text, 6, '0'); COMMIT;"
        " IF i = 450 THEN INSERT INTO item_price VALUES ('SALE-TOO-LONG-KEY', 1, 'POS', 5, 'n', now(), true,"
        " 's', 1); COMMIT; END IF; END LOOP; END $$"
    )
    env.pos("INSERT INTO item_price VALUES ('~marker', 0, 'x', 1, 'done', now(), true, 's', 0)")


def _lit(text: str) -> str:
    return (
        "E'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r") + "'"
    )


def _rows(env, dsn) -> list:
    import psycopg

    with psycopg.connect(dsn) as c:
        return c.execute("SELECT * FROM product_price ORDER BY sku").fetchall()


def _held(dsn) -> list:
    import psycopg

    with psycopg.connect(dsn) as c:
        return c.execute(
            "SELECT kind, status, row_key, source_table, rule, reason, commit_lsn, seq FROM cdc_held"
            " ORDER BY commit_lsn, seq"
        ).fetchall()


def _run_both(
    env, monkeypatch, fast_url: str, ref_url: str, marked: Callable[[str], bool], load=_load
) -> tuple:
    """The reference connector (CDC_FAST_PATH=0) and the fast one, each into its storefront, through _load's
    transactions until `marked(which)` sees the marker row in both; the changes the fast path encoded, and its
    sink's merger."""
    fast_cfg = env.write_config(CONFIG.format(name=f"{env.name}_fast", url=fast_url), "fast.yaml")
    ref_cfg = env.write_config(CONFIG.format(name=f"{env.name}_ref", url=ref_url), "ref.yaml")
    monkeypatch.setenv("CDC_FAST_PATH", "0")
    with Running(ref_cfg) as ref:
        wait_until(lambda: ref.pipeline.runner is not None, 30, "the reference connector", running=ref)
        monkeypatch.delenv("CDC_FAST_PATH")
        with Running(fast_cfg) as fast:
            wait_until(lambda: fast.pipeline.runner is not None, 30, "the fast connector", running=fast)
            assert fast.pipeline.runner.fast is not None, "the fast path did not apply"
            assert ref.pipeline.runner.fast is None
            load(env)
            for r, which in ((fast, "fast"), (ref, "ref")):
                wait_until(lambda which=which: marked(which), 90, "the marker", running=r)
            return fast.pipeline.runner.fast.encoded, fast.pipeline.sink.writer.merger


def _count_calls(monkeypatch, cls, name: str):
    """`cls.name` wrapped to count its calls that returned (the real method runs)."""
    real, counter = getattr(cls, name), SimpleNamespace(done=0)

    def counted(*args, **kw):
        out = real(*args, **kw)
        counter.done += 1
        return out

    monkeypatch.setattr(cls, name, counted)
    return counter


def _same_held(fast_held: list, ref_held: list) -> None:
    # the same changes held for the same reasons; a key refused again and again is held once per write of
    # its newest change, and where writes fall differs between the paths: its newest held change is the same
    assert {h[:6] for h in fast_held} == {h[:6] for h in ref_held}
    assert {h[2]: h[6:] for h in fast_held} == {h[2]: h[6:] for h in ref_held}
    kinds = {(h[2], h[4]) for h in fast_held}
    assert ("MUCH-TOO-LONG-KEY", "sink.write") in kinds
    assert ("SKU001500", "money#2") in kinds
    assert ("SALE-TOO-LONG-KEY", "sink.write") in kinds  # among single sales (pg-values: the usual way)
    assert ("EXT1", "sink.write") not in kinds  # float text into a text column: applied, the reference way


def _two_storefronts(env) -> tuple[str, str]:
    """The POS tables, the fast connector's storefront (env's) and the reference one's: (its name, its DSN)."""
    for sql in POS:
        env.pos(sql)
    ref_db = f"{env.store_db}_ref"
    ref_dsn = env.pg.create_database(ref_db)
    for sql in STORE:
        env.store(sql)
        _exec(ref_dsn, sql)
    return ref_db, ref_dsn


def test_fast_path_writes_what_the_reference_path_writes(env, monkeypatch, caplog):
    ref_db, ref_dsn = _two_storefronts(env)
    for dsn in (env.store_dsn, ref_dsn):  # a key the storefront has already: the bulk insert's plain INSERT
        _exec(dsn, OLD7)
    caplog.set_level(logging.INFO, logger="cdc.fast")
    dsns = {"fast": env.store_dsn, "ref": ref_dsn}
    marker = "SELECT count(*) FROM product_price WHERE sku = '~marker'"
    encoded, merger = _run_both(
        env, monkeypatch, env.store_url, env.pg.url(ref_db), lambda which: _exec(dsns[which], marker)[0][0]
    )
    assert encoded > 3000
    assert merger.plain_tries > merger.plain_misses >= 1  # (OLD7 made one miss)
    assert (
        "fast path on" in caplog.text
        and "(copy rows)" in caplog.text
        and "lean pg-values rows" in caplog.text
    )
    assert "item_extra goes the reference way" in caplog.text
    fast_rows, ref_rows = _rows(env, env.store_dsn), _rows(env, ref_dsn)
    assert len(fast_rows) > 3500
    assert fast_rows == ref_rows
    _same_held(_held(env.store_dsn), _held(ref_dsn))
    notes = dict(_exec(env.store_dsn, "SELECT sku, note FROM product_price WHERE sku LIKE 'SKU00001%'"))
    assert [notes[f"SKU00001{d}"] for d in range(9)] == [NOTES[(10 + d) % len(NOTES)] for d in range(9)]


def _sales(env) -> None:
    """Single sales only (after one bulk insert), no change held until the last few: each group of them is
    committed in one round trip as VALUES tuples, then a key the storefront refuses is held and the sales
    after it go the usual way."""
    notes = "ARRAY[" + ", ".join("NULL" if n is None else _lit(n) for n in NOTES) + "]"
    env.pos(
        "INSERT INTO item_price SELECT 'SKU' || lpad(g::text, 6, '0'), g % 7, 'ONLINE', g * 101, 'n',"
        " '2024-05-06 07:08:09.123456+00'::timestamptz, true, 'x', g FROM generate_series(1, 200) g"
    )
    env.pos(
        "DO $$ BEGIN FOR i IN 1..500 LOOP UPDATE item_price SET price_fen = price_fen + i,"
        f" note = ({notes})[i % {len(NOTES)} + 1], active = i % 3 = 0, weight = i / 7.0,"
        " updated_at = updated_at + i * interval '1.5 second', channel = CASE WHEN i % 4 = 0 THEN NULL"
        " ELSE 'ch' || i END WHERE item_code = 'SKU' || lpad((i % 200 + 1)::text, 6, '0'); COMMIT;"
        " IF i % 100 = 0 THEN PERFORM pg_sleep(0.3); END IF;"  # (so that they come in several groups)
        " IF i = 480 THEN INSERT INTO item_price VALUES ('SALE-TOO-LONG-KEY', 1, 'POS', 5, 'n', now(), true,"
        " 's', 1); COMMIT; END IF; END LOOP; END $$"
    )
    env.pos("INSERT INTO item_price VALUES ('~marker', 0, 'x', 1, 'done', now(), true, 's', 0)")


def test_single_sales_go_as_values_tuples_committed_in_one_round_trip(env, monkeypatch, caplog):
    """PostgreSQL: runs shorter than MIN_RUN (the single sale) are encoded as VALUES tuples and committed with
    their position in one round trip (PgMerge.commit_encoded); the rows and held changes are the reference
    path's."""
    ref_db, ref_dsn = _two_storefronts(env)
    caplog.set_level(logging.INFO, logger="cdc.fast")
    one_trip = _count_calls(monkeypatch, PgMerge, "commit_encoded")
    dsns = {"fast": env.store_dsn, "ref": ref_dsn}
    marker = "SELECT count(*) FROM product_price WHERE sku = '~marker'"
    encoded, _ = _run_both(
        env,
        monkeypatch,
        env.store_url,
        env.pg.url(ref_db),
        lambda which: _exec(dsns[which], marker)[0][0],
        load=_sales,
    )
    assert "lean pg-values rows" in caplog.text
    assert encoded >= 400 and one_trip.done >= 3, (encoded, one_trip.done)
    fast_rows, ref_rows = _rows(env, env.store_dsn), _rows(env, ref_dsn)
    assert len(fast_rows) == 201 and fast_rows == ref_rows
    held = _held(env.store_dsn)
    assert [h[2] for h in held] == ["SALE-TOO-LONG-KEY"] and held == _held(ref_dsn)


def test_fast_path_writes_what_the_reference_path_writes_to_mariadb(env, mariadb, monkeypatch, caplog):
    """The same transactions into MariaDB: the fast path's VALUES literals against the reference path's."""
    for sql in POS:
        env.pos(sql)
    dbs = {which: f"{which}_{env.name}" for which in ("fast", "ref")}
    urls = {which: mariadb.create_database(db) for which, db in dbs.items()}
    for db in dbs.values():
        mariadb.execute(MARIADB_STORE, db)
        mariadb.execute(OLD7, db)  # (the upsert updates it)
    caplog.set_level(logging.INFO, logger="cdc.fast")
    marker = "SELECT count(*) FROM product_price WHERE sku = '~marker'"
    encoded, _ = _run_both(
        env, monkeypatch, urls["fast"], urls["ref"], lambda which: mariadb.execute(marker, dbs[which])[0][0]
    )
    assert encoded > 3000
    assert "fast path on" in caplog.text and "(mysql rows)" in caplog.text
    assert "item_extra goes the reference way" in caplog.text
    rows = {w: mariadb.execute("SELECT * FROM product_price ORDER BY sku", db) for w, db in dbs.items()}
    assert len(rows["fast"]) > 3500
    assert rows["fast"] == rows["ref"]
    held = "SELECT kind, status, row_key, source_table, rule, reason, commit_lsn, seq FROM cdc_held"
    held += " ORDER BY commit_lsn, seq"
    _same_held(*(mariadb.execute(held, dbs[w]) for w in ("fast", "ref")))
    notes = dict(
        mariadb.execute("SELECT sku, note FROM product_price WHERE sku LIKE 'SKU00001%'", dbs["fast"])
    )
    assert [notes[f"SKU00001{d}"] for d in range(9)] == [NOTES[(10 + d) % len(NOTES)] for d in range(9)]
    assert set(NOTES) - {None} <= set(r[4] for r in rows["fast"])  # every note, escaped and back


def _exec(dsn: str, sql: str):
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        cur = c.execute(sql)
        return cur.fetchall() if cur.description else cur.rowcount


def test_mariadb_without_backslash_escapes(mariadb, tmp_path):
    """A storefront session with NO_BACKSLASH_ESCAPES: the fast path makes its literals so (quotes doubled,
    backslashes as they are), and writes what the reference path writes."""
    from urllib.parse import quote

    from cdc.config import load_config
    from cdc.fast import FastPath
    from cdc.sinks.sql import SqlSink
    from cdc.sources.pg_stream import WalStream
    from cdc.sources.pgoutput import Decoder
    from tests.unit.test_pgoutput import insert_msg, relation_msg

    db = f"nbe_{tmp_path.name}"[:60]
    mode = "SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')"
    url = f"{mariadb.create_database(db)}?init_command={quote(mode)}"
    sinks = {}
    for which in ("fast", "ref"):
        mariadb.execute(
            f"CREATE TABLE {which}_t (k varchar(40) PRIMARY KEY, note text, price decimal(12,2),"
            " at datetime(6), ok boolean)",
            db,
        )
        path = tmp_path / f"{which}.yaml"
        path.write_text(
            f"name: nbe_{which}\nsource: {{type: postgres, dsn: unused, tables: [public.t]}}\n"
            f"sink: {{type: sql, url: '{url}', table: {which}_t, key: [k]}}\n"
        )
        sinks[which] = SqlSink(load_config(path))
        sinks[which].open()
        sinks[which].set_floor(0)
    try:
        assert sinks["fast"].fast_form() == ("mysql-nbe", None)
        columns = [(1, "k", 25, -1), (0, "note", 25, -1), (0, "price", 1700, -1), (0, "at", 1184, -1)]
        rel = Decoder().decode(relation_msg(16400, "public", "t", "d", [*columns, (0, "ok", 16, -1)]))
        values = [
            [f"K{i}'\\", NOTES[i % len(NOTES)], f"{i}.5", f"2024-05-06 07:08:{i % 60:02d}.5+00", "tf"[i % 2]]
            for i in range(200)
        ]
        msgs = [insert_msg(16400, v) for v in values]
        batch = WalStream(sinks["fast"].cfg, "pos")._batch(rel, msgs, list(range(1, 201)), 200, 500, 1, 7)
        fast = FastPath([], sinks["fast"], form="mysql-nbe")
        fast.push(batch, sinks["fast"].add)
        for ev in batch.events():
            sinks["ref"].add(ev)
        for sink in sinks.values():
            sink.write()
            sink.commit({"wal": '{"commit_lsn": 500, "end_lsn": 500}'}, floor=500)
        assert fast.encoded == 200
    finally:
        for sink in sinks.values():
            sink.close()
    rows = {w: mariadb.execute(f"SELECT * FROM {w}_t ORDER BY k", db) for w in sinks}
    assert len(rows["fast"]) == 200 and rows["fast"] == rows["ref"]
    assert {r[1] for r in rows["fast"]} == set(NOTES)
