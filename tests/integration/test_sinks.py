"""The core end-to-end scenarios on every storefront dialect: PostgreSQL, MariaDB and SQLite."""

from __future__ import annotations

import json
from contextlib import contextmanager
from decimal import Decimal

import pytest

from tests.integration.helpers import Running, wait_until


@contextmanager
def opened_sink(path):
    """The connector's sink on its own (no source, no pipeline), opened, closed at the end."""
    from cdc.config import load_config
    from cdc.sinks.sql import SqlSink

    sink = SqlSink(load_config(path))
    sink.open()
    try:
        yield sink
    finally:
        sink.close()


def commit_at(sink, commit_lsn: int, end_lsn: int) -> None:
    """Commits what the sink holds at a PostgreSQL source position, as the pipeline does."""
    sink.commit({"wal": json.dumps({"commit_lsn": commit_lsn, "end_lsn": end_lsn})}, floor=commit_lsn)


CONFIG = """
name: @NAME@
source: {type: postgres, dsn: "@POS@", tables: [public.item_price]}
transforms:
  - {type: rename, fields: {item_code: sku, price_fen: price}}
  - {type: money, field: price, divide_by: 100, scale: 2}
sink: {type: sql, url: "@STORE@", table: product_price, key: [sku], delete: @DELETE@, batch_size: @BATCH@}
"""

DDL = {
    "postgresql": "CREATE TABLE product_price (sku varchar(64) PRIMARY KEY, price numeric(12,2), "
    "name varchar(20), deleted_at timestamptz)",
    "mariadb": "CREATE TABLE product_price (sku varchar(64) PRIMARY KEY, price decimal(12,2), "
    "name varchar(20), deleted_at datetime(6))",
    # SQLite has no exact decimal type: prices are kept as exact decimal strings; it does not enforce
    # varchar lengths either, so the storefront's schema says it with a CHECK
    "sqlite": "CREATE TABLE product_price (sku varchar(64) PRIMARY KEY, price text, "
    "name varchar(20) CHECK (length(name) <= 20), deleted_at timestamp)",
}


def make(env, store, delete="hard", batch=20000):
    env.pos("CREATE TABLE item_price (item_code text PRIMARY KEY, price_fen bigint, name text)")
    store(DDL[store.kind])
    body = CONFIG.replace("@DELETE@", delete).replace("@BATCH@", str(batch))
    return env.write_config(body.replace("@STORE@", store.url))


def rows(store, where=""):
    return sorted(
        (sku, Decimal(str(price)), name)
        for sku, price, name in store(f"SELECT sku, price, name FROM product_price {where}")
    )


def expected(env):
    return sorted(
        (k, Decimal(p) / 100, n) for k, p, n in env.pos("SELECT item_code, price_fen, name FROM item_price")
    )


def test_core_scenarios(env, store):
    path = make(env, store)
    env.pos(
        "INSERT INTO item_price VALUES ('A', 100, 'apple'), ('B', 250, 'bread'), ('Z', 99999999999, 'big')"
    )
    with Running(path) as r:
        wait_until(lambda: rows(store) == expected(env), running=r, what="snapshot")
        # multi-row transaction, update, delete, key change, rolled-back transaction
        env.pos(
            "BEGIN; INSERT INTO item_price VALUES ('C', 5, 'cake'); UPDATE item_price SET price_fen = 199 "
            "WHERE item_code = 'A'; DELETE FROM item_price WHERE item_code = 'B'; COMMIT"
        )
        env.pos("UPDATE item_price SET item_code = 'D' WHERE item_code = 'C'")
        env.pos("BEGIN; INSERT INTO item_price VALUES ('E', 1, 'egg'); ROLLBACK")
        env.pos("INSERT INTO item_price VALUES ('F', -1, NULL)")
        wait_until(lambda: rows(store) == expected(env), running=r, what="stream applied")
        assert rows(store) == [
            ("A", Decimal("1.99"), "apple"),
            ("D", Decimal("0.05"), "cake"),
            ("F", Decimal("-0.01"), None),
            ("Z", Decimal("999999999.99"), "big"),
        ]
        if store.kind == "sqlite":  # exact text, trailing zeros kept
            assert store("SELECT price FROM product_price WHERE sku = 'Z'") == [("999999999.99",)]
        env.pos("TRUNCATE item_price")
        wait_until(lambda: rows(store) == [], running=r, what="truncate")
        env.pos("INSERT INTO item_price VALUES ('G', 700, 'grape')")
        wait_until(lambda: rows(store) == [("G", Decimal("7.00"), "grape")], running=r)
    # restart resumes exactly after the last committed transaction
    env.pos("UPDATE item_price SET price_fen = 701")
    with Running(path) as r:
        wait_until(lambda: rows(store) == [("G", Decimal("7.01"), "grape")], running=r, what="resume")


def test_soft_delete_and_reinsert(env, store):
    path = make(env, store, delete="soft")
    env.pos("INSERT INTO item_price VALUES ('A', 100, 'apple')")
    with Running(path) as r:
        wait_until(lambda: len(rows(store)) == 1, running=r)
        env.pos("DELETE FROM item_price WHERE item_code = 'A'")
        wait_until(lambda: store("SELECT deleted_at FROM product_price")[0][0] is not None, running=r)
        env.pos("INSERT INTO item_price VALUES ('A', 300, 'apple')")
        wait_until(lambda: store("SELECT deleted_at, price FROM product_price")[0][0] is None, running=r)
        assert rows(store) == [("A", Decimal("3.00"), "apple")]


def test_refused_row_is_dead_lettered_while_the_rest_flows(env, store):
    path = make(env, store)
    with Running(path) as r:
        wait_until(lambda: r.pipeline.sink is not None and r.pipeline.source is not None, running=r)
        env.pos(
            "BEGIN; INSERT INTO item_price VALUES ('A', 100, 'apple'); "
            "INSERT INTO item_price VALUES ('LONG', 200, repeat('x', 50)); "
            "INSERT INTO item_price VALUES ('C', 300, 'cake'); COMMIT"
        )
        env.pos("INSERT INTO item_price VALUES ('D', 400, 'date')")
        wait_until(lambda: len(rows(store)) == 3, running=r, what="good rows applied")
        assert [k for k, _, _ in rows(store)] == ["A", "C", "D"]
        # a refused row alone in its transaction (merged without a savepoint, then found again with one)
        env.pos("INSERT INTO item_price VALUES ('LONG2', 500, repeat('y', 60))")
        env.pos("INSERT INTO item_price VALUES ('E', 600, 'egg')")
        wait_until(lambda: len(rows(store)) == 4, running=r, what="row after the lone refused one")
        assert [k for k, _, _ in rows(store)] == ["A", "C", "D", "E"]
        held = store("SELECT kind, status, row_key, reason, event FROM cdc_held ORDER BY id")
        assert [h[2] for h in held] == ["LONG", "LONG2"]
        kind, status, key, reason, event = held[0]
        assert (kind, status, key) == ("dead_letter", "held", "LONG")
        assert "refused" in reason and any(w in reason.lower() for w in ("long", "too", "check"))
        assert json.loads(event)["after"]["name"] == "x" * 50
        counter = r.pipeline.metrics.held.labels(r.cfg.name, "dead_letter")._value.get()
        assert counter == 2


def test_refused_rows_in_two_groups_of_one_write_lose_no_good_row(env, store):
    """One write, two column sets (two merges), a refused row in each: the first merge goes without a
    savepoint, is refused, starts the transaction again and is bisected; the second must then use a savepoint
    too, or its refusal would roll the first group's good rows back."""
    from cdc.events import ChangeEvent

    path = make(env, store)
    long = "x" * 50

    def change(seq, **after):
        return ChangeEvent("c", "public", "item_price", None, after, 100, 100, seq, 1000, 7, toast=False)

    with opened_sink(path) as sink:
        sink.set_floor(0)
        sink.add(change(1, sku="K1", price=Decimal("1.00"), name="ok"))
        sink.add(change(2, sku="K2", price=Decimal("2.00"), name=long))
        sink.add(change(3, sku="K3", name="ok"))  # no price: another group
        sink.add(change(4, sku="K4", name=long))
        commit_at(sink, 100, 101)
    assert store("SELECT sku FROM product_price ORDER BY sku") == [("K1",), ("K3",)]
    assert sorted(r[0] for r in store("SELECT row_key FROM cdc_held WHERE kind = 'dead_letter'")) == [
        "K2",
        "K4",
    ]


def test_unchanged_toast_value_of_a_required_column_is_kept(env, store):
    """An Update that did not resend a TOASTed value of a NOT NULL storefront column: every dialect checks NOT
    NULL on the row an upsert proposes, even when it ends in an update, so the stored value goes with it and
    the row is updated, not refused. A row the storefront does not have cannot be inserted without the value:
    a dead letter saying so, while the rest lands."""
    from cdc.events import UNCHANGED_TOAST, ChangeEvent

    env.pos("CREATE TABLE item_price (item_code text PRIMARY KEY, price_fen bigint, name text)")
    store(DDL[store.kind].replace("name varchar(20)", "name varchar(20) NOT NULL"))
    path = env.write_config(
        CONFIG.replace("@DELETE@", "hard").replace("@BATCH@", "100").replace("@STORE@", store.url)
    )

    def change(lsn, seq, **after):
        return ChangeEvent("u", "public", "item_price", None, after, lsn, lsn, seq, 1000, 7)

    with opened_sink(path) as sink:
        sink.set_floor(0)
        sink.add(change(100, 1, sku="A", price=Decimal("1.00"), name="apple"))
        sink.add(change(100, 2, sku="B", price=Decimal("2.00"), name="bread"))
        commit_at(sink, 100, 101)
        sink.add(change(200, 1, sku="A", price=Decimal("1.10"), name=UNCHANGED_TOAST))
        sink.add(change(200, 2, sku="N", price=Decimal("9.00"), name=UNCHANGED_TOAST))
        sink.add(change(200, 3, sku="B", price=Decimal("2.20"), name="bun"))
        commit_at(sink, 200, 201)
    assert rows(store) == [("A", Decimal("1.10"), "apple"), ("B", Decimal("2.20"), "bun")]
    held = store("SELECT kind, row_key, reason FROM cdc_held")
    assert [(k, key) for k, key, _ in held] == [("dead_letter", "N")]
    assert "name" in held[0][2]


def test_postgresql_parses_values_as_copy_does_in_every_way_of_writing(env, store):
    """PostgreSQL takes a write three ways (one round trip for a small commit, an INSERT with the merge for a
    small group, COPY for a large one); values go untyped in all three, so the column's type parses them:
    1.50 for an integer column is refused (a dead letter), never rounded to 2 by a numeric cast."""
    import pytest

    from cdc.events import ChangeEvent

    if store.kind != "postgresql":
        pytest.skip("PostgreSQL's ways of writing")
    env.pos("CREATE TABLE item_price (item_code text PRIMARY KEY, price_fen bigint, name text)")
    store("CREATE TABLE product_price (sku text PRIMARY KEY, price int, name text)")
    path = env.write_config(
        CONFIG.replace("@DELETE@", "hard").replace("@BATCH@", "1000").replace("@STORE@", store.url)
    )

    def change(lsn, seq, sku, price):
        return ChangeEvent(
            "c", "public", "item_price", None, {"sku": sku, "price": price}, lsn, lsn, seq, 0, 7
        )

    with opened_sink(path) as sink:
        sink.set_floor(0)
        for lsn, n in ((100, 2), (200, 70)):  # a small commit, then a large one
            for i in range(n):
                sink.add(change(lsn, i + 1, f"{lsn}-{i}", Decimal("1.50") if i == 1 else Decimal(i)))
            commit_at(sink, lsn, lsn + 1)
    stored = dict(store("SELECT sku, price FROM product_price"))
    assert len(stored) == 70 and stored["100-0"] == 0 and stored["200-69"] == 69
    held = store("SELECT row_key, reason FROM cdc_held ORDER BY row_key")
    assert [k for k, _ in held] == ["100-1", "200-1"]
    assert all("integer" in reason for _, reason in held)


def test_a_required_column_the_changes_do_not_carry_stops_the_connector(env, store):
    """A storefront column that is NOT NULL without a default, which no transform fills: every insert would
    fail, so the connector stops with one line naming the column (not a dead letter per row)."""
    import pytest

    from cdc.errors import TerminalError

    env.pos("CREATE TABLE item_price (item_code text PRIMARY KEY, price_fen bigint, name text)")
    extra = {"postgresql": "text", "mariadb": "varchar(20)", "sqlite": "text"}[store.kind]
    store(DDL[store.kind].replace("name varchar(20)", f"category {extra} NOT NULL, name varchar(20)"))
    path = env.write_config(
        CONFIG.replace("@DELETE@", "hard").replace("@BATCH@", "100").replace("@STORE@", store.url)
    )
    env.pos("INSERT INTO item_price VALUES ('A', 100, 'apple')")
    r = Running(path).__enter__()
    try:
        with pytest.raises(TerminalError, match="requires category \\(NOT NULL without a default\\)"):
            wait_until(lambda: False, timeout=30, running=r, what="the connector to stop")
    finally:
        r.pipeline.stop()
        r.thread.join(30)
    assert store("SELECT count(*) FROM cdc_held")[0][0] == 0


def test_column_added_mid_stream(env, store, caplog):
    path = make(env, store)
    env.pos("INSERT INTO item_price VALUES ('A', 100, 'apple')")
    with Running(path) as r:
        wait_until(lambda: len(rows(store)) == 1, running=r)
        env.pos("ALTER TABLE item_price ADD COLUMN color text")  # the storefront has no such column
        env.pos("INSERT INTO item_price VALUES ('B', 200, 'bread', 'brown')")
        env.pos("ALTER TABLE item_price DROP COLUMN name")  # the storefront keeps its names
        env.pos("UPDATE item_price SET price_fen = 150 WHERE item_code = 'A'")
        wait_until(
            lambda: rows(store) == [("A", Decimal("1.50"), "apple"), ("B", Decimal("2.00"), "bread")],
            running=r,
            what="stream goes on across schema changes",
        )
    assert any("color" in rec.getMessage() and "ignored" in rec.getMessage() for rec in caplog.records)


def test_an_older_change_never_overwrites_a_newer_row(env, store):
    """Duplicates and replays (a restart that re-reads, a Kafka redelivery, an old approval) reach the sink with
    positions at or below what a row already reflects: older ones are skipped, per key, in the same
    transaction; the same change again (its own position) is applied again, which changes nothing, or puts
    back a row that was changed behind pos-cdc's back."""
    from cdc.events import ChangeEvent

    path = make(env, store, batch=500)

    def change(key, price, lsn, seq=1, op="u"):
        after = {"sku": key, "price": Decimal(price), "name": "n"}
        return ChangeEvent(
            op,
            "public",
            "item_price",
            None if op == "u" else after,
            after if op == "u" else None,
            lsn,
            lsn,
            seq,
            1000,
            7,
        )

    with opened_sink(path) as sink:
        for k in range(1000):
            sink.add(change(f"K{k}", "5.00", 100))
        commit_at(sink, 100, 101)
        assert json.loads(sink.load_offsets()["wal"]) == {"commit_lsn": 100, "end_lsn": 101}
        sink.set_floor(100)
        store("UPDATE product_price SET price = 1.23 WHERE sku IN ('K0', 'K1')")  # by hand
        # a replay: older positions with other prices, the same changes again, one genuinely newer change
        for k in range(1000):
            sink.add(change(f"K{k}", "3.00", 50) if k % 2 else change(f"K{k}", "5.00", 100))
        sink.add(change("K7", "9.00", 100, seq=2))
        sink.add(change("K8", "0", 60, op="d"))
        commit_at(sink, 100, 101)
    got = {k: p for k, p, _ in rows(store)}
    assert len(got) == 1000
    assert got.pop("K7") == Decimal("9.00")
    assert got.pop("K0") == Decimal("5.00")  # the same change again put the hand-made change right
    assert got.pop("K1") == Decimal("1.23")  # an older change did not touch it
    assert set(got.values()) == {Decimal("5.00")}


def test_recorded_positions_fold_newest_per_key(env, store):
    """Writes append each key's position to cdc_applied; fold_step() keeps the newest per key in cdc_row_state,
    in steps of the oldest rows, and never lets an older entry (out of order) overwrite a newer recorded
    position."""
    from cdc.events import ChangeEvent

    path = make(env, store, batch=500)

    def change(key, price, lsn, seq=1):
        after = {"sku": key, "price": Decimal(price), "name": "n"}
        return ChangeEvent("u", "public", "item_price", None, after, lsn, lsn, seq, lsn * 10, 7)

    def state():
        got = store("SELECT row_key, commit_lsn, seq, ts_ms, txid, op FROM cdc_row_state")
        return {r[0]: tuple(r[1:]) for r in got}

    with opened_sink(path) as sink:
        assert sink.load_offsets() == {}  # no stored position: changes above 0 need no check
        sink.set_floor(0)
        for lsn in (100, 200, 300):  # three transactions; K0..K9 change in each, K10.. only in the first
            for k in range(10 if lsn > 100 else 50):
                sink.add(change(f"K{k}", f"{lsn}.00", lsn, seq=k + 1))
            commit_at(sink, lsn, lsn + 1)
        # one JSON row per written chunk: here one per transaction
        assert store("SELECT size FROM cdc_applied ORDER BY id") == [(50,), (10,), (10,)]
        assert sink.backlog == 70
        assert (
            sink.fold_step(40) == 50
        )  # the oldest rows up to 40 entries, at least one: the first transaction
        assert sink.backlog == 20 and store("SELECT size FROM cdc_applied") == [(10,), (10,)]
        assert state()["K3"] == (100, 4, 1000, 7, "u")
        assert sink.fold_step(50) == 20
        assert sink.backlog == 0 and store("SELECT count(*) FROM cdc_applied")[0][0] == 0
        got = state()
        assert len(got) == 50
        assert got["K3"] == (300, 4, 3000, 7, "u")
        assert got["K42"] == (100, 43, 1000, 7, "u")
        # an older entry (as a replay would have recorded without the check) does not win over the newer one
        store(
            "INSERT INTO cdc_applied (connector, size, entries) VALUES (%s, 2, %s)",
            env.name,
            '[["K3", 200, 9, 2000, 7, "u"], ["K42", 150, 1, 1500, null, "d"]]',
        )
        sink.folder.appended += 2
        assert sink.fold_step(10) == 2
        got = state()
        assert got["K3"] == (300, 4, 3000, 7, "u")  # older: kept the newer one
        assert got["K42"] == (150, 1, 1500, None, "d")  # newer: replaced, every column
        assert sink.backlog == 0


def test_lanes_sharing_positions_apply_only_the_newest_change_of_a_key(env, store):
    """Two connectors of one position group (priority lanes) write the same keys: each change claims its key's
    position in cdc_row_state, so the newest POS change wins whichever lane brings it and whenever it commits,
    also while the other lane's claim of the key is not yet committed; at the same position an upsert wins
    over a delete (what a row filter makes of an UPDATE that leaves one lane for another)."""
    import threading

    from cdc.events import ChangeEvent

    path = make(env, store, batch=500)
    body = path.read_text().replace("delete: hard,", f"delete: hard, position_group: {env.name}-lanes,")
    fast, bulk = (path.with_name(f"{lane}.yaml") for lane in ("fast", "bulk"))
    fast.write_text(body.replace(f"name: {env.name}", f"name: {env.name}-fast"))
    bulk.write_text(body.replace(f"name: {env.name}", f"name: {env.name}-bulk"))

    def change(key, price, lsn, seq=1, op="u"):
        row = {"sku": key, "price": Decimal(price), "name": "n"}
        return ChangeEvent(op, "public", "item_price", row if op == "d" else None, None if op == "d" else row,
                           lsn, lsn, seq, 1000, 7)  # fmt: skip

    def price(key):
        got = store(f"SELECT price FROM product_price WHERE sku = '{key}'")
        return Decimal(str(got[0][0])) if got else None

    with opened_sink(fast) as a, opened_sink(bulk) as b:
        for k in ("K1", "K2", "K3", "K4", "K5", "K6"):
            b.add(change(k, "1.00", 100))
        commit_at(b, 100, 101)
        a.add(change("K1", "9.00", 200))  # the fast lane is ahead ...
        commit_at(a, 200, 201)
        b.add(change("K1", "3.00", 150))  # ... and the bulk lane's older change of the key comes late
        b.add(change("K2", "3.00", 150))
        commit_at(b, 150, 151)
        assert (price("K1"), price("K2")) == (Decimal("9.00"), Decimal("3.00"))
        a.add(change("K5", "7.00", 400, seq=2))  # same position: the upsert stays, the delete is skipped
        commit_at(a, 400, 401)
        b.add(change("K5", "0", 400, seq=2, op="d"))
        b.add(change("K6", "0", 410, seq=1, op="d"))  # ... whichever comes first
        commit_at(b, 410, 411)
        a.add(change("K6", "8.00", 410, seq=1))
        commit_at(a, 410, 411)
        assert (price("K5"), price("K6")) == (Decimal("7.00"), Decimal("8.00"))
        if store.kind != "sqlite":  # SQLite has one writer at a time anyway
            # the fast lane's claims of K3 and K4 are not committed yet when the bulk lane writes them
            a.add(change("K3", "7.00", 300))
            a.add(change("K4", "7.00", 300))
            a.write()
            b.add(change("K3", "4.00", 250))  # older: must lose, though nothing committed says so yet
            b.add(change("K4", "6.00", 350))  # newer: must win
            behind = threading.Thread(target=commit_at, args=(b, 350, 351))
            behind.start()
            behind.join(1.0)
            assert behind.is_alive()  # waiting for the fast lane's claims
            commit_at(a, 300, 301)
            behind.join(30)
            assert (price("K3"), price("K4")) == (Decimal("7.00"), Decimal("6.00"))
    states = dict(
        store("SELECT row_key, commit_lsn FROM cdc_row_state WHERE connector = %s", f"{env.name}-lanes")
    )
    assert states == {
        "K1": 200,
        "K2": 150,
        "K5": 400,
        "K6": 410,
        **({"K3": 100, "K4": 100} if store.kind == "sqlite" else {"K3": 300, "K4": 350}),
    }
    assert store("SELECT count(*) FROM cdc_applied")[0][0] == 0  # claims are recorded in place


def test_positions_are_folded_beside_the_stream(env, store):
    """While the connector runs and is caught up, its thread of folding moves the recorded positions into
    cdc_row_state (cdc_applied empties), the stream still flowing meanwhile; a restart finds nothing lost."""
    path = make(env, store, batch=200)
    env.pos("INSERT INTO item_price SELECT 'S' || i, i, 'n' FROM generate_series(1, 1000) i")
    with Running(path) as r:
        wait_until(lambda: len(rows(store)) == 1000, running=r, what="snapshot")
        for k in range(20):  # small transactions while folding goes on
            env.pos(
                f"UPDATE item_price SET price_fen = price_fen + 1 WHERE item_code IN ('S{k}', 'S{k + 500}')"
            )
        wait_until(lambda: rows(store) == expected(env), running=r, what="stream applied")
        wait_until(
            lambda: store("SELECT count(*) FROM cdc_applied")[0][0] == 0, running=r, what="positions folded"
        )
        state = dict(store("SELECT row_key, seq FROM cdc_row_state WHERE commit_lsn > 0"))
        assert len(state) == 1000
        # the folding thread counts what it folded just after its transaction commits
        wait_until(lambda: r.pipeline.sink.backlog == 0, running=r, what="the backlog counted as folded")
    lsns = dict(store("SELECT row_key, commit_lsn FROM cdc_row_state"))
    assert lsns["S3"] > lsns["S30"]  # S3 changed in the stream, S30 only in the snapshot
    env.pos("UPDATE item_price SET price_fen = 7 WHERE item_code = 'S30'")
    with Running(path) as r:
        wait_until(lambda: rows(store) == expected(env), running=r, what="resume")


def cdc_cli(*args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "cdc.cli", *map(str, args)], capture_output=True, text=True, timeout=60
    )


def test_dead_letter_retry_after_schema_fix_and_drop(env, store):
    if store.kind == "sqlite":
        import pytest

        pytest.skip("SQLite cannot widen a column in place; retry is covered on PostgreSQL and MariaDB")
    path = make(env, store)
    with Running(path) as r:
        wait_until(lambda: r.pipeline.source is not None, running=r)
        env.pos(
            "INSERT INTO item_price VALUES ('LONG', 200, repeat('y', 30)), ('LATE', 300, repeat('z', 30))"
        )
        env.pos("INSERT INTO item_price VALUES ('OK', 100, 'fine')")
        wait_until(lambda: len(rows(store)) == 1, running=r)
        # a newer, good change for LATE lands: its dead letter is now stale
        env.pos("UPDATE item_price SET name = 'short' WHERE item_code = 'LATE'")
        wait_until(lambda: len(rows(store)) == 2, running=r)
    status = json.loads(cdc_cli("status", path, "--json").stdout)
    assert status["held"] == {"dead_letter:held": 2}
    listed = json.loads(cdc_cli("deadletter", path, "list", "--json").stdout)
    ids = {e["row_key"]: e["id"] for e in listed}
    assert set(ids) == {"LONG", "LATE"}
    # still too long: retry refuses and changes nothing
    out = cdc_cli("deadletter", path, "retry", ids["LONG"])
    assert out.returncode == 1 and "still refuses" in out.stderr
    alter = {
        "postgresql": "ALTER TABLE product_price ALTER COLUMN name TYPE varchar(100)",
        "mariadb": "ALTER TABLE product_price MODIFY name varchar(100)",
    }
    store(alter[store.kind])
    out = cdc_cli("deadletter", path, "retry", ids["LONG"], "--by", "dba-anna")
    assert out.returncode == 0, out.stderr
    assert "applied" in out.stdout
    assert ("LONG", Decimal("2.00"), "y" * 30) in rows(store)
    out = cdc_cli("deadletter", path, "retry", ids["LATE"])
    assert out.returncode == 0 and "superseded" in out.stdout
    assert ("LATE", Decimal("3.00"), "short") in rows(store)
    resolved = store("SELECT row_key, status, resolved_by FROM cdc_held ORDER BY row_key")
    assert resolved[0][:2] == ("LATE", "superseded") and resolved[1] == ("LONG", "applied", "dba-anna")
    out = cdc_cli("deadletter", path, "drop", ids["LONG"])
    assert out.returncode == 1 and "already applied" in out.stderr


def test_connectors_starting_at_once_on_a_fresh_storefront_all_create_the_bookkeeping(store):
    """Several connectors (one systemd unit each) starting at the same moment on a fresh storefront: before,
    all but one died on `duplicate key value violates unique constraint "pg_type_typname_nsp_index"`."""
    import threading

    import sqlalchemy as sa

    from cdc.sinks.sql.bookkeeping import create_bookkeeping, meta

    errors: list[BaseException] = []
    engines = [sa.create_engine(store.url, poolclass=sa.pool.NullPool) for _ in range(4)]
    go = threading.Barrier(len(engines))

    def start(engine) -> None:
        try:
            go.wait()
            create_bookkeeping(engine)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [], errors
    names = set(sa.inspect(engines[0]).get_table_names())
    assert set(meta.tables) <= names, set(meta.tables) - names
    for e in engines:
        e.dispose()


@pytest.mark.parametrize("store", ["postgresql"], indirect=True)
def test_cdc_applied_entries_are_compressed_by_lz4_where_postgresql_has_it(store):
    """A bulk write's entries are one ~1.3 MB value: lz4 compresses it in a third of pglz's time. Made so, and a
    table made before (pglz) is switched at the next start."""
    import sqlalchemy as sa

    from cdc.sinks.sql.bookkeeping import create_bookkeeping

    engine = sa.create_engine(store.url, poolclass=sa.pool.NullPool)
    has_lz4 = store("SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'")
    compression = "SELECT attcompression FROM pg_attribute WHERE attrelid = 'cdc_applied'::regclass AND attname = 'entries'"
    create_bookkeeping(engine)
    if not has_lz4[0][0]:
        pytest.skip("this PostgreSQL has no lz4")
    assert store(compression) == [("l",)]
    store("ALTER TABLE cdc_applied ALTER COLUMN entries SET COMPRESSION pglz")
    assert store(compression) == [("p",)]
    create_bookkeeping(engine)
    assert store(compression) == [("l",)]
    engine.dispose()


@pytest.mark.parametrize("store", ["mariadb"], indirect=True)
def test_a_number_mariadb_cannot_hold_is_dead_lettered_while_the_rest_flows(env, store):
    """MariaDB has no NaN or infinity: a change carrying one in a number column (not a price, which the money
    stage holds) is dead-lettered with the reason, and the rest of its transaction is applied."""
    env.pos(
        "CREATE TABLE item_price (item_code text PRIMARY KEY, price_fen bigint, name text, weight numeric)"
    )
    store(
        "CREATE TABLE product_price (sku varchar(64) PRIMARY KEY, price decimal(12,2), name varchar(20), "
        "weight decimal(12,4), deleted_at datetime(6))"
    )
    path = env.write_config(
        CONFIG.replace("@DELETE@", "hard").replace("@BATCH@", "500").replace("@STORE@", store.url)
    )
    with Running(path) as r:
        wait_until(lambda: r.pipeline.sink is not None and r.pipeline.source is not None, running=r)
        env.pos(
            "BEGIN; INSERT INTO item_price VALUES ('A', 100, 'apple', 1.5); "
            "INSERT INTO item_price VALUES ('NAN', 200, 'nan', 'NaN'); "
            "INSERT INTO item_price VALUES ('INF', 250, 'inf', 'Infinity'); "
            "INSERT INTO item_price VALUES ('C', 300, 'cake', 2); COMMIT"
        )
        env.pos("INSERT INTO item_price VALUES ('D', 400, 'date', 3)")
        wait_until(lambda: len(rows(store)) == 3, running=r, what="good rows applied")
        assert [k for k, _, _ in rows(store)] == ["A", "C", "D"]
        held = store("SELECT kind, row_key, reason FROM cdc_held ORDER BY row_key")
        assert [(h[0], h[1]) for h in held] == [("dead_letter", "INF"), ("dead_letter", "NAN")]
        assert all("weight" in h[2] and "MariaDB" in h[2] for h in held), held
