"""The pipeline (read -> stages -> sink -> checkpoint) against in-memory fakes (tests/unit/fakes.py).

Every test reads the shared log of the fakes: which changes reached the sink, when the sink committed which
position, and when the source was confirmed. Commits happen at an Idle (or a snapshot's end) only: the
batches' time limit is set far away, so the logs are exact.
"""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal

import pytest

from cdc.checkpoint import Checkpointer
from cdc.config import ConnectorConfig
from cdc.errors import TerminalError, TransientError
from cdc.events import Idle, TxnEnd
from cdc.metrics import Metrics
from cdc.pipeline import Pipeline
from tests.unit.fakes import Crash, Do, Fail, Pos, SinkStore, Upstream, change, txn

NAME = "unit"
RENAME = {"type": "rename", "fields": {"item_code": "sku", "price_fen": "price"}}
MONEY = {"type": "money", "field": "price", "divide_by": 100, "scale": 2}
FILTER = {"type": "filter", "where": "channel == 'ONLINE'"}


def config(batch_size: int = 20000, transforms: list | None = None) -> ConnectorConfig:
    """A postgres -> sql config whose URLs are never contacted (the fakes stand in for both)."""
    return ConnectorConfig.model_validate(
        {
            "name": NAME,
            "source": {
                "type": "postgres",
                "dsn": "host=unused.invalid",
                "tables": ["public.item_price"],
                "heartbeat_interval_s": 0,
                "snapshot": "never",
            },
            "transforms": [RENAME, MONEY] if transforms is None else transforms,
            "sink": {
                "type": "sql",
                "url": "postgresql+psycopg://unused.invalid/store",
                "table": "product_price",
                "key": ["sku"],
                "batch_size": batch_size,
                "batch_max_ms": 600_000,  # never by time: a batch ends at an Idle, a snapshot or batch_size
            },
        }
    )


def stored(lsn: int) -> dict[str, str]:
    """What the sink is given to store for Pos(lsn)."""
    return {"fake": f'{{"lsn": {lsn}}}'}


def P(lsn: int) -> Pos:  # noqa: N802 - reads like a constructor
    return Pos(lsn)


class Rig:
    """One pipeline wired to the fakes, sharing one log."""

    def __init__(
        self,
        *scripts: list,
        cfg: ConnectorConfig | None = None,
        store: SinkStore | None = None,
        at_end: str = "end",
        ignore_resume: bool = False,
        retry_for_s: float = 60.0,
    ):
        self.log: list = [] if store is None else store.log
        self.store = store or SinkStore(self.log)
        self.up = Upstream(*scripts, log=self.log, at_end=at_end, ignore_resume=ignore_resume)
        self.metrics = Metrics()
        self.pipe = Pipeline(
            cfg or config(),
            self.metrics,
            retry_for_s=retry_for_s,
            make_source=self.up.source,
            make_sink=self.store.sink,
        )
        self.up.on_end = self.pipe.stop

    def stop(self) -> None:
        self.pipe.stop()

    def run(self, timeout: float = 5.0) -> BaseException | None:
        """Runs the pipeline to its end; the exception run() raised, or None when it returned."""
        raised: list[BaseException] = []

        def target() -> None:
            try:
                self.pipe.run()
            except BaseException as e:  # noqa: BLE001 - handed to the test
                raised.append(e)

        t = threading.Thread(target=target, daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            self.pipe.stop()
            t.join(timeout)
            pytest.fail(f"run() did not return within {timeout}s; log: {self.log}")
        return raised[0] if raised else None

    def rows(self) -> dict:
        return {k: r["price"] for k, r in self.store.rows.items()}

    def held_metric(self, kind: str) -> float:
        return self.metrics.held.labels(NAME, kind)._value.get()


def confirms(log: list) -> list:
    return [e[1] for e in log if e[0] == "confirm"]


def commits(log: list) -> list:
    return [e[1] for e in log if e[0] == "commit"]


def assert_never_backwards(positions: list) -> None:
    assert positions == sorted(positions), positions


# --- 1. ordering ----------------------------------------------------------------------------------------


def test_changes_reach_the_sink_in_order_and_each_confirm_follows_its_commit():
    rig = Rig(
        [
            *txn(10, ("A", 100), ("B", 200)),
            Idle(),
            *txn(20, ("C", 300)),
            Idle(),
            *txn(30, ("A", 150), ("D", 400)),
            Idle(),
        ],
        at_end="stop",  # a live source: the pipeline is stopped at the next Idle
    )
    assert rig.run() is None
    assert rig.log == [
        ("read", None),
        ("add", "A"),
        ("add", "B"),
        ("commit", stored(10)),
        ("confirm", P(10)),
        ("add", "C"),
        ("commit", stored(20)),
        ("confirm", P(20)),
        ("add", "A"),
        ("add", "D"),
        ("commit", stored(30)),
        ("confirm", P(30)),
        ("rollback", 0),  # the teardown's, with nothing left open
    ]
    assert rig.rows() == {
        "A": Decimal("1.50"),
        "B": Decimal("2.00"),
        "C": Decimal("3.00"),
        "D": Decimal("4.00"),
    }
    assert rig.store.offsets == stored(30)
    assert rig.up.confirmed == [P(10), P(20), P(30)]
    (sink,) = rig.store.sinks
    assert sink.floors == [None]  # nothing stored at the start: every change is looked up
    assert sink.ticks >= 3 and set(sink.pending_at_tick) == {0}  # timed work only with nothing buffered
    assert sink.closed and rig.up.sessions[0].closed


# --- 2. batching ----------------------------------------------------------------------------------------


def test_small_transactions_between_idles_are_committed_together_at_the_newest_position():
    rig = Rig([*txn(10, ("A", 100)), *txn(20, ("B", 200)), *txn(30, ("C", 300), ("A", 110)), Idle()])
    assert rig.run() is None
    assert rig.log == [
        ("read", None),
        ("add", "A"),
        ("add", "B"),
        ("add", "C"),
        ("add", "A"),
        ("commit", stored(30)),
        ("confirm", P(30)),
        ("rollback", 0),
    ]
    assert rig.rows() == {"A": Decimal("1.10"), "B": Decimal("2.00"), "C": Decimal("3.00")}


def test_a_transaction_larger_than_batch_size_is_written_in_pieces_and_committed_once():
    rig = Rig(
        [*txn(10, ("A", 1), ("B", 2), ("C", 3), ("D", 4), ("E", 5)), *txn(20, ("F", 6)), Idle()],
        cfg=config(batch_size=2),
    )
    assert rig.run() is None
    assert rig.log == [
        ("read", None),
        ("add", "A"),
        ("add", "B"),
        ("write_async",),
        ("add", "C"),
        ("add", "D"),
        ("write_async",),
        ("add", "E"),
        ("add", "F"),  # the next transaction's change fills the count again: sent, not committed
        ("write_async",),
        ("commit", stored(20)),  # transaction 10 ended with one change pending: below batch_size, no commit
        ("confirm", P(20)),
        ("rollback", 0),
    ]
    assert rig.store.sinks[0].writes == 3
    assert len(rig.store.rows) == 6


def test_a_snapshot_end_is_committed_at_once():
    rig = Rig(
        [
            *txn(5, ("A", 100), ("B", 200), snapshot=True),
            *txn(10, ("C", 300)),
            *txn(20, ("D", 400)),
            Idle(),
        ]
    )
    assert rig.run() is None
    assert rig.log == [
        ("read", None),
        ("add", "A"),
        ("add", "B"),
        ("commit", stored(5)),  # before the next transaction is even read
        ("confirm", P(5)),
        ("add", "C"),
        ("add", "D"),
        ("commit", stored(20)),
        ("confirm", P(20)),
        ("rollback", 0),
    ]


def test_empty_transactions_are_batched_like_the_others():
    """A transaction with no change for us (PostgreSQL before 15 sends BEGIN/COMMIT for transactions on
    tables outside the publication) ends the batch no sooner than any other: nothing is waiting in it."""
    rig = Rig([TxnEnd(P(10), 0), TxnEnd(P(11), 0), *txn(12, ("A", 100)), TxnEnd(P(13), 0), Idle()])
    assert rig.run() is None
    assert rig.log == [
        ("read", None),
        ("add", "A"),
        ("commit", stored(13)),
        ("confirm", P(13)),
        ("rollback", 0),
    ]


def test_a_source_that_ends_inside_a_transaction_gets_no_part_of_it_committed():
    """A batch holds whole source transactions: when the stream ends after a complete transaction and half
    of the next one, the half must not be committed (under the complete one's position or any other)."""
    rig = Rig([*txn(10, ("A", 100)), change(20, 1, "B", 200), change(20, 2, "C", 300)])
    assert rig.run() is None
    assert rig.log[:4] == [("read", None), ("add", "A"), ("add", "B"), ("add", "C")]  # read and buffered...
    committed = set(rig.store.rows)
    assert not committed & {"B", "C"}, (
        f"half of transaction 20 was committed with {rig.store.offsets}: {rig.log[4:]}"
    )  # ...but half a transaction is never durable
    assert rig.store.offsets in ({}, stored(10))  # all of it rolled back, or the complete transaction alone
    assert confirms(rig.log) in ([], [P(10)])


# --- 3. stop inside a transaction -------------------------------------------------------------------------


def test_stop_inside_a_transaction_rolls_the_open_batch_back():
    rig = Rig()  # the script needs the pipeline's stop
    rig.up.scripts = [
        [
            *txn(10, ("A", 100)),
            Idle(),
            change(20, 1, "B", 200),
            change(20, 2, "C", 300),
            Do(rig.stop),
            change(20, 3, "D", 400),
            change(20, 4, "E", 500),
            TxnEnd(P(20), 0),
            Idle(),
        ]
    ]
    assert rig.run() is None
    assert rig.log == [
        ("read", None),
        ("add", "A"),
        ("commit", stored(10)),
        ("confirm", P(10)),
        ("add", "B"),
        ("add", "C"),
        ("add", "D"),
        ("rollback", 3),  # the half-read transaction, abandoned
        ("rollback", 0),
    ]
    assert rig.rows() == {"A": Decimal("1.00")}
    assert rig.store.offsets == stored(10)
    assert rig.up.confirmed == [P(10)]
    assert rig.store.sinks[0].closed and rig.up.sessions[0].closed


# --- 4. a crash between the sink commit and the confirm ---------------------------------------------------


def test_a_crash_between_sink_commit_and_confirm_replays_without_duplicates_or_going_back():
    log1: list = []
    store = SinkStore(log1, crash_after_commit=2)
    first = Rig(
        [
            *txn(10, ("A", 100), ("B", 200)),
            Idle(),
            *txn(20, ("A", 150), ("C", 300)),
            Idle(),
            *txn(30, ("D", 400)),
            Idle(),
        ],
        store=store,
    )
    assert isinstance(first.run(), Crash)
    # the sink has the rows and the new position; the source was never told
    assert first.rows() == {"A": Decimal("1.50"), "B": Decimal("2.00"), "C": Decimal("3.00")}
    assert store.offsets == stored(20)
    assert first.up.confirmed == [P(10)]
    assert log1 == [
        ("read", None),
        ("add", "A"),
        ("add", "B"),
        ("commit", stored(10)),
        ("confirm", P(10)),
        ("add", "A"),
        ("add", "C"),
        ("commit", stored(20)),  # durable; then the process dies
        ("rollback", 0),
    ]

    # restart: new fakes over the same storefront; the POS server sends again from its confirmed P(10)
    log2: list = []
    store.log, store.crash_after_commit = log2, None
    second = Rig(
        [*txn(20, ("A", 150), ("C", 300)), Idle(), *txn(30, ("D", 400), ("B", 250)), Idle()],
        store=store,
    )
    assert second.run() is None
    (source,) = second.up.sessions
    assert source.resumed_from == P(20)  # the checkpointer resumes from the sink's stored position
    assert source.skipped == [P(20)]  # so the committed transaction is not sent again
    assert second.store.sinks[-1].floors == [20]
    assert log2 == [
        ("read", P(20)),
        ("add", "D"),
        ("add", "B"),
        ("commit", stored(30)),
        ("confirm", P(30)),
        ("rollback", 0),
    ]
    assert second.rows() == {
        "A": Decimal("1.50"),
        "B": Decimal("2.50"),
        "C": Decimal("3.00"),
        "D": Decimal("4.00"),
    }
    assert_never_backwards(first.up.confirmed + second.up.confirmed)
    assert_never_backwards([json.loads(c["fake"])["lsn"] for c in commits(log1) + commits(log2)])


# --- 5. idle positions ------------------------------------------------------------------------------------


def test_idle_positions_are_confirmed_after_the_buffer_is_durable_and_never_inside_a_transaction():
    rig = Rig(
        [
            *txn(10, ("A", 100)),
            Idle(P(15)),  # WAL after the transaction: confirmed once the transaction is committed
            change(20, 1, "B", 200),
            Idle(P(18)),  # inside a transaction: never confirmed
            change(20, 2, "C", 300),
            TxnEnd(P(20), 0),
            Idle(P(22)),
            Idle(P(12)),  # behind the stored P(20): ignored
            Idle(None),
            Idle(P(22)),  # the same again: harmless
        ]
    )
    assert rig.run() is None
    assert rig.log == [
        ("read", None),
        ("add", "A"),
        ("commit", stored(10)),
        ("confirm", P(10)),
        ("confirm", P(15)),
        ("add", "B"),
        ("add", "C"),
        ("commit", stored(20)),
        ("confirm", P(20)),
        ("confirm", P(22)),
        ("confirm", P(22)),
        ("rollback", 0),
    ]


def test_idle_positions_behind_the_stored_one_are_ignored_after_a_restart():
    log: list = []
    store = SinkStore(log)
    store.offsets = stored(40)
    rig = Rig([Idle(P(35)), Idle(P(40)), Idle(P(45))], store=store)
    assert rig.run() is None
    assert rig.up.sessions[0].resumed_from == P(40)
    assert confirms(log) == [P(40), P(45)]
    assert commits(log) == []


def test_an_idle_position_is_not_confirmed_when_the_commit_before_it_fails(no_backoff):
    log: list = []
    store = SinkStore(log, fail_commits=1)
    rig = Rig(
        [*txn(10, ("A", 100)), Idle(P(12))],  # the POS server sends it all again on the second session
        store=store,
    )
    assert rig.run() is None
    assert log == [
        ("read", None),
        ("add", "A"),
        ("commit_failed", stored(10)),
        ("rollback", 1),
        ("read", None),
        ("add", "A"),
        ("commit", stored(10)),
        ("confirm", P(10)),
        ("confirm", P(12)),
        ("rollback", 0),
    ]
    assert len(no_backoff) == 1
    assert rig.store.sinks[0].closed and rig.up.sessions[0].closed


# --- 6. the checkpointer refuses a position that goes backwards -------------------------------------------


def test_checkpointer_refuses_a_regressing_position_naming_both():
    log: list = []
    store = SinkStore(log)
    store.offsets = stored(50)
    up = Upstream([], log=log)
    source, sink = up.source(None), store.sink(config())
    cp = Checkpointer(source, sink, NAME)
    assert cp.resume() == P(50)
    assert sink.floors == [50]
    with pytest.raises(TerminalError) as e:
        cp.commit(P(40))
    assert "fake@40" in str(e.value) and "fake@50" in str(e.value) and NAME in str(e.value)
    assert log == []  # neither committed nor confirmed
    assert store.offsets == stored(50)
    cp.commit(P(50))  # the same position is not backwards
    cp.commit(P(60))
    cp.confirm(P(55))  # behind the stored P(60): ignored
    assert log == [
        ("commit", stored(50)),
        ("confirm", P(50)),
        ("commit", stored(60)),
        ("confirm", P(60)),
    ]
    assert cp.last == P(60)


def test_pipeline_stops_on_a_position_that_goes_backwards_inside_a_session():
    rig = Rig([*txn(50, ("A", 100)), Idle(), *txn(40, ("B", 200)), Idle(), *txn(60, ("C", 300)), Idle()])
    err = rig.run()
    assert isinstance(err, TerminalError)
    assert "fake@40" in str(err) and "fake@50" in str(err)
    assert rig.log == [
        ("read", None),
        ("add", "A"),
        ("commit", stored(50)),
        ("confirm", P(50)),
        ("add", "B"),
        ("rollback", 1),  # B is never stored
        # nothing after: terminal errors are not retried
    ]
    assert rig.rows() == {"A": Decimal("1.00")}
    assert rig.store.offsets == stored(50)
    assert rig.up.reads == 1


def test_pipeline_stops_when_the_source_sends_from_before_the_stored_position():
    log: list = []
    store = SinkStore(log)
    store.offsets = stored(50)
    rig = Rig([*txn(40, ("B", 200)), Idle()], store=store, ignore_resume=True)  # e.g. a replaced slot
    err = rig.run()
    assert isinstance(err, TerminalError)
    assert "fake@40" in str(err) and "fake@50" in str(err)
    assert log == [("read", P(50)), ("add", "B"), ("rollback", 1)]
    assert store.rows == {} and store.offsets == stored(50) and rig.up.confirmed == []


# --- 7. transient failures ----------------------------------------------------------------------------------


def test_a_transient_source_failure_tears_down_and_resumes_from_the_stored_position(no_backoff):
    rig = Rig(
        [*txn(10, ("A", 100)), Idle(), change(20, 1, "B", 200), Fail(TransientError("walsender terminated"))],
        # the POS server sends again from its confirmed P(10)
        [*txn(20, ("B", 200), ("C", 300)), Idle()],
    )
    assert rig.run() is None
    assert rig.log == [
        ("read", None),
        ("add", "A"),
        ("commit", stored(10)),
        ("confirm", P(10)),
        ("add", "B"),
        ("rollback", 1),  # the teardown forgets the half transaction
        ("read", P(10)),
        ("add", "B"),
        ("add", "C"),
        ("commit", stored(20)),
        ("confirm", P(20)),
        ("rollback", 0),
    ]
    first, second = rig.up.sessions
    assert first.closed and rig.store.sinks[0].closed
    assert second.resumed_from == P(10)
    assert rig.rows() == {"A": Decimal("1.00"), "B": Decimal("2.00"), "C": Decimal("3.00")}
    assert len(no_backoff) == 1


def test_retry_backoff_doubles_while_nothing_progresses(no_backoff):
    refused = Fail(TransientError("connection refused"))
    rig = Rig([refused], [refused], [refused], [*txn(10, ("A", 100)), Idle()], retry_for_s=60)
    assert rig.run() is None
    assert rig.up.reads == 4
    bases = [0.5, 1.0, 2.0]
    assert len(no_backoff) == len(bases)
    for delay, base in zip(no_backoff, bases, strict=True):
        assert base * 0.5 <= delay <= base * 1.5, (no_backoff, bases)  # jitter: 0.5x to 1.5x
    assert confirms(rig.log) == [P(10)]


def test_a_failure_after_progress_gets_a_fresh_retry_window_and_backoff(no_backoff):
    """run() retries "for up to retry_for_s seconds without progress": a session that committed something
    and then fails must be retried (a new window), after the shortest delay again."""
    rig = Rig(
        [Fail(TransientError("connection refused"))],  # a blip at start: the retry window opens
        [  # then a healthy session, longer than the window, that commits and then loses its connection
            *txn(10, ("A", 100)),
            Idle(),
            Do(lambda: time.sleep(0.08)),
            Fail(TransientError("walsender terminated")),
        ],
        [*txn(20, ("B", 200)), Idle()],
        retry_for_s=0.05,
    )
    err = rig.run()
    assert err is None, f"run() gave up on the first failure after progress: {err}"
    assert rig.up.reads == 3
    assert rig.rows() == {"A": Decimal("1.00"), "B": Decimal("2.00")}
    _first, after_progress = no_backoff
    assert 0.25 <= after_progress <= 0.75, no_backoff  # the backoff starts over too


def test_a_persistent_transient_failure_ends_run_after_the_retry_window(no_backoff):
    rig = Rig([Fail(TransientError("connection refused"))], retry_for_s=0)
    err = rig.run()
    assert isinstance(err, TransientError)
    assert "connection refused" in str(err) and "gave up" in str(err)
    assert rig.up.reads == 2  # the first failure is retried once; the second is past the 0 s window
    assert len(no_backoff) == 1
    assert all(s.closed for s in rig.up.sessions) and all(s.closed for s in rig.store.sinks)
    assert commits(rig.log) == [] and confirms(rig.log) == []
    assert rig.metrics.up.labels(NAME)._value.get() == 0


# --- 8. stage holds and filters ----------------------------------------------------------------------------


def test_held_changes_are_counted_after_their_commit_and_filtered_ones_are_not_added():
    cfg = config(transforms=[RENAME, MONEY, FILTER])
    rig = Rig(cfg=cfg)
    seen: list[float] = []

    def look() -> None:
        seen.append(rig.held_metric("dead_letter"))

    rig.up.scripts = [
        [
            change(10, 1, "A", 100),
            change(10, 2, "B", "twelve"),  # money: not a number -> held
            change(10, 3, "C", 300, "STORE"),  # filter: dropped
            Do(look),
            TxnEnd(P(10), 0),
            Do(look),
            Idle(),
            Do(look),
        ]
    ]
    assert rig.run() is None
    assert seen == [0, 0, 1]  # counted once the transaction holding it is committed
    assert rig.log == [
        ("read", None),
        ("add", "A"),
        ("hold", "B", "dead_letter"),
        ("commit", stored(10)),
        ("confirm", P(10)),
        ("rollback", 0),
    ]
    assert rig.rows() == {"A": Decimal("1.00")}
    ((key, reason, kind),) = rig.store.held
    assert (key, kind) == ("B", "dead_letter") and "not a number" in reason
    assert rig.held_metric("dead_letter") == 1
    assert rig.held_metric("quarantine") == 0


def test_held_changes_of_a_rolled_back_transaction_are_never_counted():
    rig = Rig(cfg=config(transforms=[RENAME, MONEY, FILTER]))
    rig.up.scripts = [
        [
            change(10, 1, "B", "twelve"),
            Do(rig.stop),
            change(10, 2, "A", 100),
            TxnEnd(P(10), 0),
            Idle(),
        ]
    ]
    assert rig.run() is None
    assert rig.log == [
        ("read", None),
        ("hold", "B", "dead_letter"),
        ("add", "A"),
        ("rollback", 2),
        ("rollback", 0),
    ]
    assert rig.store.held == [] and rig.store.rows == {}
    assert rig.held_metric("dead_letter") == 0


# --- positions and buffers of a Kafka source ------------------------------------------------------------


def test_kafka_positions_regress_per_partition_and_merge():
    from cdc.sources.kafka import KafkaPosition

    last = KafkaPosition.of({("t", 0): 10, ("t", 1): 20})
    assert not KafkaPosition.of({("t", 0): 11}).regresses(last)
    assert KafkaPosition.of({("t", 1): 19}).regresses(last)
    assert not KafkaPosition.of({("t", 2): 0}).regresses(last)  # a partition it did not have
    assert KafkaPosition.of({("t", 0): 12}).after(last).as_dict() == {("t", 0): 12, ("t", 1): 20}


def test_the_sql_buffer_keeps_the_newest_change_of_a_key_whatever_arrives_last():
    """Kafka partitions read side by side can hand the sink an older change of a key after a newer one."""
    from cdc.events import ChangeEvent
    from cdc.sinks.sql.buffer import KeyBuffer

    def change(lsn, price, op="u"):
        row = {"sku": "A", "price": price}
        return ChangeEvent(
            op, "public", "t", row if op == "d" else None, None if op == "d" else row, lsn, lsn, 1, 0
        )

    buf = KeyBuffer(("sku",))
    buf.add(change(200, "new"))
    buf.add(change(100, "old"))
    buf.add(change(150, None, op="d"))
    assert buf.pending[("A",)].row["price"] == "new" and buf.pending[("A",)].ev.commit_lsn == 200
    truncated = KeyBuffer(("sku",))
    truncated.add(ChangeEvent("t", "public", "t", None, None, 300, 300, 1, 0))
    truncated.add(change(250, "before the truncate"))  # older than the truncate it came after: dropped
    truncated.add(change(350, "after"))
    assert [p.row["price"] for p in truncated.pending.values()] == ["after"]


def test_the_sql_buffer_takes_an_encoded_group_without_rows_as_none():
    """The fast path opens its buffer of rows before it knows whether a run's first change is encoded; when that
    change is held or goes the reference way, the empty group is nothing to write (its lean lines, with no
    position, would otherwise read as rows at or below the stored position)."""
    from cdc.sinks.sql.buffer import Encoded, KeyBuffer

    buf = KeyBuffer(("sku",))
    buf.encoded = Encoded(["sku", "price"], lambda spans: [], {}, form="pg-values")
    assert buf.take() == ({}, None, None) and buf.encoded is None
    buf.encoded = enc = Encoded(["sku", "price"], lambda spans: [], {}, form="pg-values")
    enc.lines[b"A"], enc.entries[b"A"] = b"('A','1.00')", b'["A",5,5,0,1,"u",null]'
    assert buf.take() == ({}, None, enc) and buf.encoded is None


def test_each_retry_says_its_attempt_the_wait_it_uses_and_when_it_gives_up(no_backoff, caplog):
    refused = Fail(TransientError("POS database unavailable: connection refused"))
    rig = Rig([refused], [refused], [*txn(10, ("A", 100)), Idle()], retry_for_s=60)
    with caplog.at_level("WARNING", logger="cdc.pipeline"):
        assert rig.run() is None
    lines = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
    assert len(lines) == 2 == len(no_backoff)
    for n, (line, used) in enumerate(zip(lines, no_backoff, strict=True), start=1):
        assert f"attempt {n} failed, next in {used:.1f}s (gives up at " in line, (
            line
        )  # the wait printed is used
        assert "--retry-for 60s" in line and "connection refused" in line


def test_giving_up_says_how_long_it_tried_and_the_option_that_sets_it(no_backoff):
    err = Rig([Fail(TransientError("connection refused"))], retry_for_s=0).run()
    assert "gave up after 2 attempts" in str(err) and "--retry-for SECONDS" in str(err), err


def test_a_change_batch_goes_change_by_change_without_a_fast_path():
    """A source's ChangeBatch (a run of a table's changes in wire form) reaches the sink as its events would,
    in order within the stream, and is counted by op; the fakes have no fast path, so the runner expands it."""
    from cdc.events import ChangeBatch

    evs = [change(10, 1, "A", 100), change(10, 2, "B", 200), change(10, 3, "A", 150, op="u")]

    def batch(start: int, stop: int) -> ChangeBatch:
        run = evs[start:stop]
        return ChangeBatch(
            "public",
            "item_price",
            None,
            [b"I" if e.op == "c" else b"U" for e in run],
            [e.seq for e in run],
            10,
            run[0].ts_ms,
            7,
            sum(e.op == "c" for e in run),
            lambda b, s, e, run=run: run[s:e],
        )

    rig = Rig(
        [batch(0, 2), change(10, 3, "C", 300), batch(2, 3), TxnEnd(P(10), int(time.time() * 1000)), Idle()],
        at_end="stop",
    )
    assert rig.run() is None
    assert rig.rows() == {"A": Decimal("1.50"), "B": Decimal("2.00"), "C": Decimal("3.00")}
    assert commits(rig.log) == [stored(10)]
    counted = {op: rig.metrics.events.labels(NAME, "public.item_price", op)._value.get() for op in "cu"}
    assert counted == {"c": 3, "u": 1}


@pytest.mark.parametrize("idle", [True, False])
def test_a_bulk_transaction_s_batches_are_sent_while_the_sink_s_writer_is_idle(monkeypatch, idle):
    """With the fast path's batches, once EAGER_WRITE changes are buffered and the sink's writer is idle, they
    are sent at once (the storefront works while the rest is read); a busy writer lets them fill to
    batch_size. Either way the rows and the one commit are the same."""
    from cdc import pipeline
    from cdc.events import ChangeBatch

    monkeypatch.setattr(pipeline, "EAGER_WRITE", 2)
    evs = [change(10, i, f"K{i}", 100 + i, op="c") for i in range(1, 7)]

    def batch(start: int, stop: int) -> ChangeBatch:
        run = evs[start:stop]
        return ChangeBatch(
            "public", "item_price", None, [b"I"] * len(run), [e.seq for e in run], 10, run[0].ts_ms, 7,
            len(run), lambda b, s, e, run=run: run[s:e],
        )  # fmt: skip

    store = SinkStore([], writer_idle=idle)
    rig = Rig(
        [batch(0, 1), batch(1, 3), batch(3, 4), batch(4, 6), TxnEnd(P(10), int(time.time() * 1000)), Idle()],
        store=store,
        at_end="stop",
    )
    assert rig.run() is None
    assert len(rig.rows()) == 6 and commits(rig.log) == [stored(10)]
    writes = [i for i, entry in enumerate(rig.log) if entry == ("write_async",)]
    adds = [i for i, entry in enumerate(rig.log) if entry[0] == "add"]
    if idle:  # after 3 changes (2 reached in the second batch), then after 3 more (the fourth batch)
        assert len(writes) == 2 and adds[2] < writes[0] < adds[3] and writes[1] > adds[5]
    else:
        assert writes == []
