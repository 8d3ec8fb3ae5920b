"""The pure parts of cdc reconcile: merging key-ordered streams, checksum buckets, value comparison, the
report's arithmetic, and the daily schedule."""

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.ops.chunks import (
    OrderError,
    bucket_count,
    bucket_of,
    differing_buckets,
    merge_sorted,
    number_text,
    same_value,
)
from cdc.ops.daily import next_run
from cdc.ops.reconcile_repair import Candidate
from cdc.ops.reconcile_report import EXIT_DRIFT, EXIT_IN_SYNC, ReconcileReport


def test_merge_groups_source_rows_of_a_key_and_pairs_them_with_the_storefront_row():
    source = [("a", 1), ("b", 2), ("b", 3), ("d", 4)]
    store = [("b", "B"), ("c", "C"), ("d", "D")]
    assert list(merge_sorted(source, store)) == [
        ("a", [1], None),
        ("b", [2, 3], "B"),
        ("c", [], "C"),
        ("d", [4], "D"),
    ]
    assert list(merge_sorted([], [])) == []


def test_merge_refuses_a_stream_out_of_bytewise_order_instead_of_reporting_false_drift():
    with pytest.raises(OrderError, match="POS rows do not come in the bytewise order"):
        list(merge_sorted([("b", 1), ("a", 2)], []))
    with pytest.raises(OrderError, match="storefront rows"):
        list(merge_sorted([], [("a", 1), ("a", 2)]))  # one storefront row per key


@given(
    st.lists(st.text(min_size=1, max_size=4), max_size=30),
    st.lists(st.text(min_size=1, max_size=4), max_size=30, unique=True),
)
def test_merge_sees_every_key_of_either_side_once_in_order(src_keys, store_keys):
    source = [(k, i) for i, k in enumerate(sorted(src_keys))]
    store = [(k, k) for k in sorted(store_keys)]
    out = list(merge_sorted(source, store))
    keys = [k for k, _, _ in out]
    assert keys == sorted(set(src_keys) | set(store_keys))
    for k, group, stored in out:
        assert len(group) == src_keys.count(k)
        assert stored == (k if k in store_keys else None)


def test_bucket_counts_scale_with_the_table_and_are_bounded():
    assert bucket_count(10) == 1
    assert bucket_count(1_000_000) == 62_500
    assert bucket_count(10**9) == 200_000


def test_a_keys_bucket_is_the_md5_of_its_text_as_the_databases_compute_it():
    import hashlib

    assert bucket_of("SKU0000001", 1) == 0
    digest = hashlib.md5(b"SKU0000001").hexdigest()
    assert bucket_of("SKU0000001", 62_500) == int(digest[:8], 16) % 62_500
    assert bucket_of("价格", 7) == int(hashlib.md5("价格".encode()).hexdigest()[:8], 16) % 7


def test_differing_buckets_include_a_bucket_only_one_side_has_and_count_rows():
    source = [(0, 2, 10), (1, 3, 7), (4, 1, 5)]
    store = [(0, 2, 10), (1, 3, 8), (2, 1, 1), (4, 1, 5)]
    assert differing_buckets(source, store) == ([1, 2], 6, 7)
    assert differing_buckets([(0, 2, 10)], [(0, 2, 10)]) == ([], 2, 2)
    assert differing_buckets([], [(3, 1, 1)]) == ([3], 0, 1)


def test_numbers_compare_exactly_whatever_the_scale_or_spelling():
    assert number_text(Decimal("12.50")) == "12.5" and number_text(Decimal("-0.00")) == "0"
    assert number_text(Decimal("1.2E+3")) == "1200" and number_text("abc") is None
    assert same_value(Decimal("12.5"), Decimal("12.50"))
    assert same_value(Decimal("12.50"), "12.5")  # SQLite's exact decimal text
    assert not same_value(Decimal("12.50"), Decimal("12.51"))
    assert same_value(True, 1) and not same_value(True, 0)
    assert not same_value(Decimal("0.1"), 0.1000000001)


def test_other_types_compare_as_each_storefront_keeps_them():
    aware = dt.datetime(2026, 12, 4, 3, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    assert same_value(aware, dt.datetime(2026, 12, 3, 19, 0))  # naive storefront value taken as UTC
    assert same_value(aware, "2026-12-03 19:00:00")
    assert same_value(dt.date(2026, 12, 4), "2026-12-04")
    u = uuid.uuid4()
    assert same_value(u, str(u))
    assert same_value(None, None) and not same_value(None, "") and not same_value("", None)
    assert not same_value("A", "a")  # two strings compare exactly


def test_the_report_counts_drift_left_after_a_repair_per_kind():
    found = ReconcileReport("c")
    found.found(Candidate("a", "missing", out=None))
    found.found(Candidate("b", "extra", stored={"sku": "b", "price": Decimal("5")}))
    found.finish()
    assert found.exit_code == EXIT_DRIFT
    assert found.left_by_kind() == {"missing": 1, "extra": 1, "different": 0}
    assert found.as_dict()["examples"][1] == {
        "kind": "extra",
        "key": "b",
        "columns": [],
        "pos": None,
        "storefront": {"price": "5", "sku": "b"},
    }

    repaired = ReconcileReport("c", repair=True)
    for key, kind in (("a", "missing"), ("b", "extra"), ("c", "different")):
        repaired.found(Candidate(key, kind))
    repaired.repaired.update(upserted=1, deleted=1, refused=1)
    repaired.refused.append("c")
    repaired.finish()
    assert repaired.exit_code == EXIT_DRIFT and repaired.left == 1
    assert repaired.left_by_kind() == {"missing": 0, "extra": 0, "different": 1}
    repaired.refused.clear()
    repaired.repaired.update(upserted=2, refused=0)
    repaired.finish()
    assert repaired.exit_code == EXIT_IN_SYNC
    assert "verdict: repaired" in repaired.summary()


def test_the_daily_reconcile_runs_at_the_next_wall_clock_time_in_its_zone():
    now = dt.datetime(2026, 12, 3, 18, 30, tzinfo=dt.UTC)  # 02:30 the next day in Shanghai
    assert next_run("03:00", "Asia/Shanghai", now).isoformat() == "2026-12-04T03:00:00+08:00"
    assert next_run("02:00", "Asia/Shanghai", now).isoformat() == "2026-12-05T02:00:00+08:00"
    assert next_run("18:30:01", "UTC", now).isoformat() == "2026-12-03T18:30:01+00:00"


class _Pos:
    """A POS side whose connector releases its slot for a moment (a retry after a storefront deadlock), then
    takes it again and commits past the snapshot point."""

    point = 100

    def __init__(self, sink, idle_polls: int):
        self.sink, self.idle_polls, self.polls = sink, idle_polls, 0

    def slot_state(self, cfg):
        self.polls += 1
        if self.polls > self.idle_polls:
            self.sink.stored = 150  # back, and caught up
            return (True, None)
        return (False, None)

    def pending(self, stored, cfg):
        return 7

    def heartbeat(self):
        return True


class _Sink:
    stored = 50


@pytest.fixture(autouse=False)
def stored_in_sink(monkeypatch):
    import cdc.ops.reconcile as reconcile

    monkeypatch.setattr(reconcile, "_stored_lsn", lambda sink, connector: sink.stored)


def _settler(timeout: float):
    from cdc.ops.reconcile import _Run

    run = object.__new__(_Run)
    run.cfg = type("Cfg", (), {"name": "c1", "slot": "s", "path": "c.yaml"})()
    run.report = ReconcileReport(connector="c1", repair=False)
    run.settle_timeout_s = timeout
    return run


def test_settle_waits_for_a_connector_that_released_its_slot_between_retries(stored_in_sink):
    sink = _Sink()
    run = _settler(60)
    assert run._settle(_Pos(sink, idle_polls=5), sink, run.cfg) is None
    assert "past the snapshot" in run.report.settled


def test_settle_calls_a_slot_idle_past_the_grace_a_stopped_connector(monkeypatch, stored_in_sink):
    import cdc.ops.reconcile as reconcile

    monkeypatch.setattr(reconcile, "REJOIN_GRACE_S", 0.3)
    sink = _Sink()
    run = _settler(60)
    why = run._settle(_Pos(sink, idle_polls=10**6), sink, run.cfg)
    assert why.startswith("c1 is stopped with 7 POS change(s) before the snapshot point"), why
