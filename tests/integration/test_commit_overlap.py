"""A sink commit beside the reading (SqlSink.commit_begin / commit_end, Checkpointer.begin) on a real
storefront: the batch is committed on the writer thread while the next one is buffered, its rows and position
land together, and a commit that fails stores nothing of it (its position stays the one before).

The commit is made to wait by another session holding the connector's lock (as `cdc quarantine approve` does),
so "it runs while the next batch is buffered" is seen, not assumed.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest

from cdc.errors import TransientError
from cdc.events import ChangeEvent
from tests.integration.test_sinks import commit_at, make, opened_sink, rows


def change(key: str, price: str, lsn: int) -> ChangeEvent:
    after = {"sku": key, "price": Decimal(price), "name": "n"}
    return ChangeEvent("u", "public", "item_price", None, after, lsn, lsn, 1, 1000, 7)


def wal(lsn: int) -> dict[str, str]:
    return {"wal": json.dumps({"commit_lsn": lsn, "end_lsn": lsn + 1})}


def stored_lsn(sink) -> int:
    return json.loads(sink.load_offsets()["wal"])["commit_lsn"]


def backend_id(sink) -> int:
    driver = sink.store.conn.connection.driver_connection
    return driver.info.backend_pid if sink.store.dialect == "postgresql" else driver.thread_id()


def test_a_commit_runs_beside_the_next_batch_and_one_that_fails_stores_nothing(env, store):
    path = make(env, store)
    with opened_sink(path) as sink, opened_sink(path) as approver:
        for k in range(100):
            sink.add(change(f"K{k}", "1.00", 100))
        commit_at(sink, 100, 101)
        sink.set_floor(100)
        for k in range(100):
            sink.add(change(f"K{k}", "2.00", 200))
        if store.kind == "sqlite":  # one writer on a local file: nothing to overlap
            assert sink.commit_begin(wal(200), floor=200) is False
            return
        approver.begin()  # holds the connector's lock: the commit below waits for it

        assert sink.commit_begin(wal(200), floor=200) is True
        for k in range(100, 150):  # the next batch, buffered while the commit runs
            sink.add(change(f"K{k}", "3.00", 300))
        time.sleep(0.3)
        assert sink.commit_end(block=False) is False  # still waiting for the lock
        assert stored_lsn(sink) == 100
        approver.rollback()
        assert sink.commit_end() is True
        assert stored_lsn(sink) == 200
        got = {k: p for k, p, _ in rows(store)}
        assert len(got) == 100 and set(got.values()) == {Decimal("2.00")}  # the next batch is not in it
        commit_at(sink, 300, 301)
        got = {k: p for k, p, _ in rows(store)}
        assert len(got) == 150 and got["K120"] == Decimal("3.00") and got["K7"] == Decimal("2.00")

        # a commit that fails beside the reading: its error at commit_end, nothing of it stored
        approver.begin()
        sink.add(change("K0", "4.00", 400))
        assert sink.commit_begin(wal(400), floor=400) is True
        time.sleep(0.2)
        kill = "SELECT pg_terminate_backend(%s)" if store.kind == "postgresql" else "KILL CONNECTION %s"
        store(kill, backend_id(sink))
        approver.rollback()
        with pytest.raises(TransientError, match="storefront database unavailable"):
            sink.commit_end()
        sink.rollback()
    assert {k: p for k, p, _ in rows(store)}["K0"] == Decimal("2.00")
    with opened_sink(path) as sink:
        assert stored_lsn(sink) == 300
