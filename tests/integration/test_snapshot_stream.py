"""Initial snapshot + stream against a real PostgreSQL 15: no gap, no duplicate, exact end states."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time

import psycopg

from cdc.metrics import Metrics
from tests.integration.helpers import Running, wait_until
from tests.integration.support import (
    POS_TABLE,
    STORE_TABLE,
    diff,
    fen,
    held_rows,
    in_sync,
    pos_prices,
    price_config,
    slot_pids,
    store_prices,
)

TABLE = "public.item_price"


def setup(env, rows: dict[str, int] | None = None, store_table: str = STORE_TABLE) -> None:
    env.pos(POS_TABLE)
    env.store(store_table)
    for code, price in (rows or {}).items():
        env.pos("INSERT INTO item_price VALUES (%s, %s)", code, price)


def events(metrics: Metrics, name: str, op: str) -> int:
    v = metrics.registry.get_sample_value("cdc_events_total", {"connector": name, "table": TABLE, "op": op})
    return int(v or 0)


def wait_synced(env, running: Running, timeout: float = 60, what: str = "storefront == POS") -> None:
    try:
        wait_until(lambda: in_sync(env), timeout=timeout, what=what, running=running)
    except AssertionError as e:
        raise AssertionError(f"{e}: {diff(pos_prices(env), store_prices(env))}") from None


def wait_streaming(env, running: Running, timeout: float = 30) -> None:
    """Until the connector's walsender is streaming from its slot (so later changes are in the stream)."""
    wait_until(lambda: slot_pids(env), timeout=timeout, what="connector streaming", running=running)


def test_snapshot_during_concurrent_writes_has_no_gap_and_no_duplicate(env):
    """The connector starts (and snapshots) while a writer commits 3000 single-row transactions and a few
    multi-row ones; afterwards the storefront equals the POS, and every key was read exactly once (snapshot
    row or streamed insert, never both, never neither)."""
    setup(env, {f"P{i:04d}": 1000 + i for i in range(300)})  # some rows the writer finds in place
    inserted = 300
    updates = 0
    started_at_txn = threading.Event()
    progress = {"txns": 0}
    error: list[BaseException] = []
    rng = random.Random(7)

    def writer() -> None:
        nonlocal inserted, updates
        try:
            with psycopg.connect(env.pos_dsn, autocommit=True) as conn:
                keys = [f"P{i:04d}" for i in range(300)]
                for i in range(3000):
                    if i % 3 == 0:
                        key = rng.choice(keys)
                        conn.execute(
                            "UPDATE item_price SET price_fen = price_fen + 1 WHERE item_code = %s", (key,)
                        )
                        updates += 1
                    else:
                        key = f"N{i:05d}"
                        conn.execute("INSERT INTO item_price VALUES (%s, %s)", (key, i))
                        keys.append(key)
                        inserted += 1
                    if i % 600 == 300:  # a multi-row transaction: 20 inserts and 20 updates
                        with conn.transaction():
                            for j in range(20):
                                key = f"M{i:05d}_{j:02d}"
                                conn.execute("INSERT INTO item_price VALUES (%s, %s)", (key, j))
                                keys.append(key)
                                conn.execute(
                                    "UPDATE item_price SET price_fen = price_fen + 7 WHERE item_code = %s",
                                    (rng.choice(keys[:300]),),
                                )
                        inserted += 20
                        updates += 20
                    progress["txns"] = i + 1
                    if i == 400:
                        started_at_txn.set()
                    time.sleep(0.0015)  # keep it going for a few seconds, across the connector's start
        except BaseException as e:  # noqa: BLE001
            error.append(e)
            started_at_txn.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    assert started_at_txn.wait(60)
    metrics = Metrics()
    with Running(env.write_config(price_config()), metrics=metrics) as r:
        t.join(120)
        assert not t.is_alive() and not error, error
        writer_txns_at_end = progress["txns"]
        wait_synced(env, r, timeout=90)
        reads, creates = events(metrics, env.name, "r"), events(metrics, env.name, "c")
        streamed_updates = events(metrics, env.name, "u")
    assert writer_txns_at_end == 3000
    assert len(pos_prices(env)) == inserted == 300 + 2000 + 5 * 20
    # the snapshot happened in the middle of the load: some keys came from it, some from the stream
    assert reads > 300 and creates > 0, (reads, creates)
    # every key exactly once: a key in both the snapshot and the stream (duplicate) or in neither (gap) breaks this
    assert reads + creates == inserted, (reads, creates, inserted)
    assert 0 < streamed_updates < updates
    assert events(metrics, env.name, "d") == 0
    assert held_rows(env) == []
    assert store_prices(env) == pos_prices(env)


def test_insert_update_delete(env):
    setup(env, {"A": 100, "B": 250, "C": 999})
    with Running(env.write_config(price_config())) as r:
        wait_synced(env, r, what="snapshot applied")
        assert store_prices(env) == {"A": fen(100), "B": fen(250), "C": fen(999)}
        env.pos("INSERT INTO item_price VALUES ('D', 1)")
        env.pos("UPDATE item_price SET price_fen = 199 WHERE item_code = 'A'")
        env.pos("DELETE FROM item_price WHERE item_code = 'B'")
        env.pos("UPDATE item_price SET price_fen = 0 WHERE item_code = 'C'")
        env.pos("INSERT INTO item_price VALUES ('B', 12345678)")  # the deleted key comes back
        env.pos("DELETE FROM item_price WHERE item_code = 'D'")
        wait_synced(env, r)
    assert store_prices(env) == {"A": fen(199), "B": fen(12345678), "C": fen(0)}


def test_multi_row_transactions(env):
    setup(env, {"A": 100, "B": 200, "C": 300, "D": 400})
    with Running(env.write_config(price_config())) as r:
        wait_synced(env, r, what="snapshot applied")
        with psycopg.connect(env.pos_dsn) as conn:
            conn.execute("INSERT INTO item_price VALUES ('E', 500), ('F', 600), ('G', 700)")
            conn.execute("UPDATE item_price SET price_fen = price_fen * 2 WHERE item_code IN ('A', 'B')")
            conn.execute("DELETE FROM item_price WHERE item_code IN ('C', 'F')")
            conn.execute("UPDATE item_price SET price_fen = 1 WHERE item_code = 'E'")
            conn.execute("UPDATE item_price SET price_fen = 2 WHERE item_code = 'E'")
            conn.commit()
            # one big transaction across many keys
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO item_price VALUES (%s, %s)", [(f"X{i:05d}", i) for i in range(5000)]
                )
            conn.commit()
        wait_synced(env, r)
    expected = {"A": fen(200), "B": fen(400), "D": fen(400), "E": fen(2), "G": fen(700)}
    expected.update({f"X{i:05d}": fen(i) for i in range(5000)})
    assert store_prices(env) == expected


def test_transactions_are_applied_atomically(env):
    """200 transactions each move 1 between two of 10 keys, so the total is constant: the storefront never
    shows half of one (checked on every poll while they stream)."""
    setup(env, {f"T{i}": 1000 for i in range(10)})
    total = fen(10 * 1000)
    seen: list = []
    stop = threading.Event()

    def poll() -> None:
        with psycopg.connect(env.store_dsn, autocommit=True) as conn:
            while not stop.is_set():
                n, s = conn.execute("SELECT count(*), sum(price) FROM product_price").fetchone()
                if n == 10:
                    seen.append(s)
                time.sleep(0.005)

    with Running(env.write_config(price_config())) as r:
        wait_synced(env, r, what="snapshot applied")
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        rng = random.Random(3)
        with psycopg.connect(env.pos_dsn) as conn:
            for _ in range(200):
                a, b = rng.sample(range(10), 2)
                conn.execute(
                    "UPDATE item_price SET price_fen = price_fen - 1 WHERE item_code = %s", (f"T{a}",)
                )
                conn.execute(
                    "UPDATE item_price SET price_fen = price_fen + 1 WHERE item_code = %s", (f"T{b}",)
                )
                conn.commit()
                time.sleep(0.002)
        wait_synced(env, r)
        stop.set()
        poller.join(10)
    assert len(seen) > 20
    assert set(seen) == {total}, sorted(set(seen) - {total})[:5]
    assert store_prices(env) == pos_prices(env)


def test_rolled_back_transaction_leaves_no_trace(env):
    setup(env, {"A": 100, "B": 200})
    with Running(env.write_config(price_config())) as r:
        wait_synced(env, r, what="snapshot applied")
        with psycopg.connect(env.pos_dsn) as conn:
            conn.execute("INSERT INTO item_price VALUES ('X', 1)")
            conn.execute("UPDATE item_price SET price_fen = 555 WHERE item_code = 'A'")
            conn.execute("DELETE FROM item_price WHERE item_code = 'B'")
            conn.execute("TRUNCATE item_price")
            conn.execute("INSERT INTO item_price VALUES ('Y', 2)")
            conn.rollback()
            # a savepoint rolled back inside a committed transaction
            conn.execute("INSERT INTO item_price VALUES ('Z', 3)")
            with conn.transaction():
                conn.execute("UPDATE item_price SET price_fen = 666 WHERE item_code = 'B'")
                conn.execute("SAVEPOINT sp")
                conn.execute("DELETE FROM item_price WHERE item_code = 'A'")
                conn.execute("INSERT INTO item_price VALUES ('W', 4)")
                conn.execute("ROLLBACK TO SAVEPOINT sp")
            conn.commit()
        env.pos("INSERT INTO item_price VALUES ('MARK', 9)")  # committed after all of it
        wait_until(lambda: "MARK" in store_prices(env), running=r, what="marker row")
        time.sleep(0.5)
    assert store_prices(env) == {"A": fen(100), "B": fen(666), "Z": fen(3), "MARK": fen(9)}
    assert held_rows(env) == []


def test_truncate_empties_the_sink_table(env):
    setup(env, {"A": 100, "B": 200, "C": 300})
    with Running(env.write_config(price_config())) as r:
        wait_synced(env, r, what="snapshot applied")
        env.pos("TRUNCATE item_price")
        wait_until(lambda: store_prices(env) == {}, running=r, what="truncate applied")
        env.pos("INSERT INTO item_price VALUES ('A', 7), ('D', 8)")  # keys come back after the truncate
        wait_synced(env, r)
        assert store_prices(env) == {"A": fen(7), "D": fen(8)}
        # changes before and after a TRUNCATE in one transaction
        with psycopg.connect(env.pos_dsn) as conn:
            conn.execute("UPDATE item_price SET price_fen = 70 WHERE item_code = 'A'")
            conn.execute("INSERT INTO item_price VALUES ('E', 9)")
            conn.execute("TRUNCATE item_price")
            conn.execute("INSERT INTO item_price VALUES ('F', 10)")
            conn.execute("UPDATE item_price SET price_fen = 11 WHERE item_code = 'F'")
            conn.commit()
        wait_synced(env, r)
    assert store_prices(env) == {"F": fen(11)}


def test_primary_key_change_moves_the_row(env):
    setup(env, {"A": 100, "C": 300})
    with Running(env.write_config(price_config())) as r:
        wait_synced(env, r, what="snapshot applied")
        env.pos("UPDATE item_price SET item_code = 'B' WHERE item_code = 'A'")
        wait_synced(env, r)
        assert store_prices(env) == {"B": fen(100), "C": fen(300)}
        # key and price change together, then the old key is reused, all in one transaction
        with psycopg.connect(env.pos_dsn) as conn:
            conn.execute("UPDATE item_price SET item_code = 'D', price_fen = 301 WHERE item_code = 'C'")
            conn.execute("INSERT INTO item_price VALUES ('C', 5)")
            conn.commit()
        # swap-like chain in separate transactions
        env.pos("UPDATE item_price SET item_code = 'A' WHERE item_code = 'B'")
        env.pos("UPDATE item_price SET price_fen = 101 WHERE item_code = 'A'")
        wait_synced(env, r)
    assert store_prices(env) == {"A": fen(101), "C": fen(5), "D": fen(301)}


SOFT_STORE = "CREATE TABLE product_price (sku text PRIMARY KEY, price numeric(12,2), deleted_at timestamptz)"


def test_soft_delete_marks_and_reinsert_clears(env):
    setup(env, {"A": 100, "B": 200}, store_table=SOFT_STORE)
    cfg = env.write_config(price_config(sink_extra=", delete: soft"))

    def rows():
        return {sku: (price, deleted) for sku, price, deleted in env.store("SELECT * FROM product_price")}

    with Running(cfg) as r:
        wait_until(lambda: len(rows()) == 2, running=r, what="snapshot applied")
        assert rows() == {"A": (fen(100), None), "B": (fen(200), None)}
        before = dt.datetime.now(dt.UTC)
        env.pos("DELETE FROM item_price WHERE item_code = 'A'")
        wait_until(lambda: rows()["A"][1] is not None, running=r, what="soft delete applied")
        after = dt.datetime.now(dt.UTC)
        price, deleted = rows()["A"]
        assert price == fen(100)  # the row stays, marked
        assert before - dt.timedelta(seconds=2) <= deleted <= after + dt.timedelta(seconds=2)
        assert rows()["B"] == (fen(200), None)
        env.pos("INSERT INTO item_price VALUES ('A', 150)")
        wait_until(lambda: rows()["A"] == (fen(150), None), running=r, what="re-insert clears deleted_at")
        # delete and re-insert in one transaction, then a plain delete of another row
        with psycopg.connect(env.pos_dsn) as conn:
            conn.execute("DELETE FROM item_price WHERE item_code = 'B'")
            conn.execute("INSERT INTO item_price VALUES ('B', 250)")
            conn.commit()
        env.pos("INSERT INTO item_price VALUES ('C', 1)")
        wait_until(lambda: rows().get("C") == (fen(1), None), running=r, what="C inserted")
        env.pos("DELETE FROM item_price WHERE item_code = 'C'")
        wait_until(lambda: rows().get("C", (0, None))[1] is not None, running=r, what="C soft-deleted")
    final = rows()
    assert {k: v[0] for k, v in final.items()} == {"A": fen(150), "B": fen(250), "C": fen(1)}
    assert final["A"][1] is None and final["B"][1] is None and final["C"][1] is not None


def test_snapshot_never_streams_from_the_slot_without_copying(env):
    setup(env, {"A": 100, "B": 200})
    metrics = Metrics()
    with Running(env.write_config(price_config(source_extra=", snapshot: never")), metrics=metrics) as r:
        wait_streaming(env, r)
        env.pos("UPDATE item_price SET price_fen = 101 WHERE item_code = 'A'")
        env.pos("INSERT INTO item_price VALUES ('C', 300)")
        env.pos("DELETE FROM item_price WHERE item_code = 'B'")  # not in the storefront: nothing to do
        wait_until(lambda: store_prices(env) == {"A": fen(101), "C": fen(300)}, running=r, what="stream")
        time.sleep(0.5)
        assert events(metrics, env.name, "r") == 0
    assert store_prices(env) == {"A": fen(101), "C": fen(300)}
    assert held_rows(env) == []


def test_dba_created_slot_and_publication_are_used_as_they_are(env):
    """The DBA made the publication and the slot (the connector's role may not be allowed to); changes made
    after the slot was created and before the connector first runs are part of the result, exactly once."""
    setup(env, {"OLD": 1})
    env.pos("CREATE PUBLICATION dba_pub FOR TABLE item_price")
    slot_lsn = env.pos("SELECT lsn FROM pg_create_logical_replication_slot('dba_slot', 'pgoutput')")[0][0]
    env.pos("INSERT INTO item_price VALUES ('A', 100), ('B', 200), ('C', 300)")
    env.pos("DELETE FROM item_price WHERE item_code = 'C'")
    env.pos("UPDATE item_price SET price_fen = 101 WHERE item_code = 'A'")
    metrics = Metrics()
    cfg = env.write_config(price_config(source_extra=", slot: dba_slot, publication: dba_pub"))
    with Running(cfg, metrics=metrics) as r:
        wait_synced(env, r, what="snapshot applied")
        assert store_prices(env) == {"OLD": fen(1), "A": fen(101), "B": fen(200)}
        env.pos("INSERT INTO item_price VALUES ('D', 400)")
        env.pos("DELETE FROM item_price WHERE item_code = 'OLD'")
        wait_synced(env, r)
        # the snapshot covered what happened before it; the stream only what came after
        assert events(metrics, env.name, "r") == 3
        assert events(metrics, env.name, "c") == 1 and events(metrics, env.name, "d") == 1
        assert events(metrics, env.name, "u") == 0
    assert store_prices(env) == {"A": fen(101), "B": fen(200), "D": fen(400)}
    assert env.pos("SELECT pubname FROM pg_publication") == [("dba_pub",)]
    slots = env.pg.execute(
        f"SELECT slot_name, plugin, confirmed_flush_lsn > '{slot_lsn}'::pg_lsn FROM pg_replication_slots "
        f"WHERE database = '{env.pos_db}'"
    )
    assert slots == [("dba_slot", "pgoutput", True)]


def test_dba_slot_with_snapshot_never_streams_from_the_slot_position(env):
    setup(env, {"OLD": 1, "KEEP": 2})
    env.pos("CREATE PUBLICATION dba_pub FOR TABLE item_price")
    env.pos("SELECT pg_create_logical_replication_slot('dba_slot', 'pgoutput')")
    env.pos("INSERT INTO item_price VALUES ('A', 100), ('B', 200)")
    env.pos("UPDATE item_price SET price_fen = 3 WHERE item_code = 'OLD'")
    env.pos("DELETE FROM item_price WHERE item_code = 'B'")
    cfg = env.write_config(
        price_config(source_extra=", slot: dba_slot, publication: dba_pub, snapshot: never")
    )
    with Running(cfg) as r:
        # the slot holds everything since it was created: those changes arrive, nothing older is copied
        wait_until(
            lambda: store_prices(env) == {"A": fen(100), "OLD": fen(3)}, running=r, what="slot's backlog"
        )
        env.pos("INSERT INTO item_price VALUES ('C', 300)")
        wait_until(lambda: "C" in store_prices(env), running=r, what="new change")
    assert store_prices(env) == {"A": fen(100), "OLD": fen(3), "C": fen(300)}
    assert env.pos("SELECT pubname FROM pg_publication") == [("dba_pub",)]
    assert env.pg.execute(f"SELECT slot_name FROM pg_replication_slots WHERE database = '{env.pos_db}'") == [
        ("dba_slot",)
    ]


def test_second_run_resumes_exactly_after_the_last_committed_transaction(env):
    setup(env, {"A": 100, "B": 200, "C": 300})
    cfg = env.write_config(price_config())
    with Running(cfg) as r:
        wait_synced(env, r, what="snapshot applied")
        env.pos("UPDATE item_price SET price_fen = 101 WHERE item_code = 'A'")
        env.pos("INSERT INTO item_price VALUES ('D', 400)")
        wait_synced(env, r)
    # stopped: the POS goes on
    env.pos("UPDATE item_price SET price_fen = 201 WHERE item_code = 'B'")
    env.pos("DELETE FROM item_price WHERE item_code = 'C'")
    with psycopg.connect(env.pos_dsn) as conn:
        conn.execute("INSERT INTO item_price VALUES ('E', 500), ('F', 600)")
        conn.execute("UPDATE item_price SET price_fen = 102 WHERE item_code = 'A'")
        conn.commit()
    assert store_prices(env) == {"A": fen(101), "B": fen(200), "C": fen(300), "D": fen(400)}
    metrics = Metrics()
    with Running(cfg, metrics=metrics) as r:
        wait_synced(env, r)
        time.sleep(0.5)
        seen = {op: events(metrics, env.name, op) for op in "rcud"}
    # exactly the 5 changes made while it was stopped: no re-snapshot, no replay of applied transactions
    assert seen == {"r": 0, "c": 2, "u": 2, "d": 1}
    assert store_prices(env) == {"A": fen(102), "B": fen(201), "D": fen(400), "E": fen(500), "F": fen(600)}
