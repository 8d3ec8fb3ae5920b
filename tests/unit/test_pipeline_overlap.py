"""Commits beside the reading (Checkpointer.begin / finish, Sink.commit_begin / commit_end), against the
in-memory fakes of tests/unit/fakes.py: the sink commits a batch while the pipeline buffers the next
transactions, one commit at a time, in source order, each confirmed only once it ended.

The fake sink applies a begun commit at commit_end; `commit_polls` makes commit_end(block=False) answer "still
running" that many times first, so the logs show what was read while a commit ran.
"""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from cdc.events import Idle, TxnEnd
from tests.unit.fakes import Do, FakeSink, SinkStore, change, txn
from tests.unit.test_pipeline import P, Rig, assert_never_backwards, commits, config, confirms, stored


def overlapping(log: list | None = None, **kw) -> SinkStore:
    return SinkStore([] if log is None else log, overlap=True, **kw)


def gap(ms: int = 0):
    """The test config with sink.min_commit_interval_ms = `ms` (0 unless a test is about it: exact logs)."""
    cfg = config()
    cfg.sink.min_commit_interval_ms = ms
    return cfg


def test_transactions_read_while_a_commit_runs_go_in_the_next_and_each_confirm_follows_its_commit():
    from cdc.pipeline import IDLE_POLL_S

    waiting = Idle(P(35))
    rig = Rig(
        [
            *txn(10, ("A", 100)),
            Idle(P(12)),  # the first commit begins here; P(12) comes after it: not confirmed while it runs
            *txn(20, ("B", 200)),  # read while P(10) commits: "still running" at its end (one poll)
            *txn(30, ("C", 300), ("A", 110)),  # P(10) ended: confirmed, and P(30) begins at once
            waiting,  # nothing to read, nothing buffered, P(30) still runs: read on, and look again soon
            Idle(P(35)),  # P(30) ended: confirmed, then P(35)
        ],
        cfg=gap(),
        store=overlapping(commit_polls=1),
    )
    assert rig.run() is None
    assert rig.log == [
        ("read", None),
        ("add", "A"),
        ("commit_begin", stored(10)),
        ("add", "B"),
        ("add", "C"),
        ("add", "A"),
        ("commit", stored(10)),  # (the fake applies a begun commit when it ends)
        ("confirm", P(10)),
        ("commit_begin", stored(30)),
        ("commit", stored(30)),
        ("confirm", P(30)),
        ("confirm", P(35)),
        ("rollback", 0),
    ]
    assert rig.rows() == {"A": Decimal("1.10"), "B": Decimal("2.00"), "C": Decimal("3.00")}
    assert rig.store.offsets == stored(30)
    assert waiting.wake_s == IDLE_POLL_S  # (the source's wait, shortened)


def test_with_the_commit_ended_at_each_transaction_end_every_transaction_commits_alone():
    """Group commit: a transaction end with no commit running begins one at once (not after batch_max_ms)."""
    rig = Rig(
        [
            *txn(10, ("A", 100)),
            Idle(),
            *txn(20, ("B", 200)),
            *txn(30, ("C", 300)),
            *txn(40, ("D", 400)),
            Idle(),
        ],
        cfg=gap(),
        store=overlapping(),
    )
    assert rig.run() is None
    assert commits(rig.log) == [stored(10), stored(20), stored(30), stored(40)]
    assert confirms(rig.log) == [P(10), P(20), P(30), P(40)]
    begun = [i for i, e in enumerate(rig.log) if e[0] == "commit_begin"]
    confirmed = [i for i, e in enumerate(rig.log) if e[0] == "confirm"]
    assert all(c < b for c, b in zip(confirmed, begun[1:], strict=False))  # one commit at a time


def test_a_commit_that_fails_beside_the_reading_confirms_nothing_and_the_session_reads_it_again(no_backoff):
    log: list = []
    rig = Rig(
        [*txn(10, ("A", 100)), Idle(P(12)), *txn(20, ("B", 200)), Idle(P(25))],
        cfg=gap(),
        store=overlapping(log, fail_commits=1),
    )
    assert rig.run() is None
    assert log[:6] == [
        ("read", None),
        ("add", "A"),
        ("commit_begin", stored(10)),
        ("add", "B"),
        ("commit_failed", stored(10)),  # ended at B's transaction end, failed: the session ends
        ("rollback", 1),  # the teardown's: B (A's batch was the commit's, taken from the buffer)
    ]
    assert confirms(log)[0] == P(10)  # the first confirm: after the second session's commit of P(10)
    assert log.index(("commit", stored(10))) < log.index(("confirm", P(10)))
    assert_never_backwards(confirms(log))
    assert set(rig.rows()) == {"A", "B"}  # (the script's events are read twice: their prices converted twice)
    assert rig.store.offsets == stored(20)
    assert len(no_backoff) == 1


def test_a_stop_inside_a_transaction_confirms_the_commit_running_and_rolls_back_the_open_one():
    rig = Rig(cfg=gap(), store=overlapping(commit_polls=5))
    rig.up.scripts = [
        [
            *txn(10, ("A", 100)),
            Idle(),
            change(20, 1, "B", 200),
            Do(rig.stop),
            change(20, 2, "C", 300),
            TxnEnd(P(20), 0),
            Idle(),
        ]
    ]
    assert rig.run() is None
    assert rig.log == [
        ("read", None),
        ("add", "A"),
        ("commit_begin", stored(10)),
        ("add", "B"),
        ("add", "C"),  # (the stop is seen after the change read next)
        ("commit", stored(10)),
        ("confirm", P(10)),
        ("rollback", 2),  # the half-read transaction
        ("rollback", 0),
    ]
    assert rig.rows() == {"A": Decimal("1.00")}
    assert rig.up.confirmed == [P(10)]


def test_a_sink_that_cannot_overlap_commits_at_once_and_batches_by_time_as_before():
    rig = Rig([*txn(10, ("A", 100)), Idle(), *txn(20, ("B", 200)), *txn(30, ("C", 300)), Idle()])
    assert rig.run() is None
    assert commits(rig.log) == [stored(10), stored(30)]  # 20 and 30 together, at the Idle
    assert "commit_begin" not in {e[0] for e in rig.log}


def test_a_source_whose_commits_must_not_overlap_gets_each_commit_ended_before_it_reads_on():
    """A Kafka source: a rebalance inside its poll must find every commit ended."""
    rig = Rig(
        [*txn(10, ("A", 100)), Idle(), *txn(20, ("B", 200)), *txn(30, ("C", 300)), Idle()],
        cfg=gap(),
        store=overlapping(),
    )
    rig.up.commits_overlap = False
    assert rig.run() is None
    assert commits(rig.log) == [stored(10), stored(30)]
    assert "commit_begin" not in {e[0] for e in rig.log}


def test_a_stop_at_an_idle_ends_and_confirms_the_commit_begun_there():
    rig = Rig(cfg=gap(), store=overlapping(commit_polls=3))
    rig.up.scripts = [[*txn(10, ("A", 100)), Do(rig.stop), Idle(P(12))]]
    assert rig.run() is None
    assert rig.log == [
        ("read", None),
        ("add", "A"),
        ("commit_begin", stored(10)),
        ("commit", stored(10)),
        ("confirm", P(10)),
        ("rollback", 0),
    ]


def test_under_load_commits_start_no_closer_than_min_commit_interval_ms():
    """Transactions ending within the interval of the last commit's start join the next commit; an Idle with
    one buffered waits out the rest of the interval (nothing to read meanwhile), then commits."""
    rig = Rig(
        [
            *txn(10, ("A", 100)),
            Idle(),  # the first commit (overlapped from here on)
            *txn(20, ("B", 200)),  # within 300 ms of it: buffered
            *txn(30, ("C", 300)),
            Idle(),  # waits until 300 ms after the first began, then commits 20 and 30 together
            *txn(40, ("D", 400)),
            Idle(),
        ],
        cfg=gap(300),
        store=overlapping(),
    )
    began: list[float] = []
    begin = FakeSink.commit_begin

    def timed_begin(self, positions, floor=None):
        began.append(time.monotonic())
        return begin(self, positions, floor)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FakeSink, "commit_begin", timed_begin)
        assert rig.run() is None
    assert commits(rig.log) == [stored(10), stored(30), stored(40)]
    assert all(b - a >= 0.29 for a, b in zip(began, began[1:], strict=False)), began
