"""Transactions streamed before they commit (cdc/sources/pg_streamed.py): kept until the stream commit, in order,
in memory and spilled to a file, without what an aborted (sub)transaction did."""

from __future__ import annotations

from cdc.sources.pg_streamed import StreamedTxns, without_xid


def test_changes_come_out_in_order_at_commit_spilled_or_not_and_without_aborted_subtransactions():
    spool = StreamedTxns(spill_bytes=500)  # spills every few changes
    spool.start(7, first=True)
    spool.start(9, first=True)
    for i in range(100):
        spool.add(7, 70 if i % 10 else 71, 1000 + i, b"I%03d" % i)  # subtransaction 71: every tenth change
        spool.add(9, 9, 5000 + i, b"U%03d" % i)
    assert spool.open[7].file is not None  # spilled
    spool.abort(7, 71)  # a rolled-back savepoint
    spool.abort(9, 9)  # the whole of 9
    got = list(spool.commit(7))
    assert [lsn for lsn, _ in got] == [1000 + i for i in range(100) if i % 10]
    assert got[0][1] == b"I001" and got[-1][1] == b"I099"
    assert spool.open == {} and spool.held == 0
    assert list(spool.commit(9)) == []


def test_a_first_block_again_starts_the_transaction_over():
    spool = StreamedTxns()
    spool.start(5, first=True)
    spool.add(5, 5, 1, b"x")
    spool.start(5, first=True)  # streamed again from its start (after a reconnect)
    spool.add(5, 5, 1, b"x")
    spool.start(5, first=False)
    spool.add(5, 5, 2, b"y")
    assert list(spool.commit(5)) == [(1, b"x"), (2, b"y")]


def test_a_block_message_loses_its_xid():
    assert without_xid(b"I\x00\x00\x00\x2a" + b"rest") == (42, b"Irest")
