"""Transactions PostgreSQL streams before they commit (pgoutput protocol 2, `streaming 'on'`, PostgreSQL 14+).

Without streaming, the walsender holds a large transaction (spilled to its disk) until its commit, then passes
every change of it through the output plugin before anything committed after it: a million-row reprice delays
the next transaction by the time that takes (~1.5 s here) — in every slot, also a lane's whose row filter
keeps none of the million rows. With streaming, the walsender sends a transaction's changes in blocks while it
runs, once it holds more than `logical_decoding_work_mem`, so its commit is a single message.

Here the streamed changes wait until their transaction commits (a stream commit) and then go out as one
transaction, in commit order like any other; an aborted transaction (or subtransaction) is dropped. They are
kept as the raw messages (their xid taken out, so the decoder reads them as protocol 1's), in memory up to
SPILL_BYTES per connector and in a temporary file beyond, so a connector's memory stays bounded whatever the
transaction's size. Positions need nothing more: what is confirmed to the server is only ever the end of a
transaction applied downstream (or WAL between transactions), and after a reconnect the server streams a
transaction that has not committed again from its start.

Message layouts (protocol 2): Stream Start 'S' xid u32, first-segment u8; Stream Stop 'E'; Stream Commit 'c'
xid u32, flags u8, commit LSN u64, end LSN u64, commit time i64; Stream Abort 'A' xid u32, subxact xid u32;
inside a stream block every data and schema message carries the (sub)transaction's xid u32 after its type.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Iterator
from typing import IO

SPILL_BYTES = 64 * 1024 * 1024
_FRAME = struct.Struct("!IQI")  # subxact xid, change LSN, payload length
STREAM_COMMIT = struct.Struct("!IBQQq")
XID = struct.Struct("!I")
TWO_XIDS = struct.Struct("!II")


class _Txn:
    __slots__ = ("changes", "size", "file", "aborted")

    def __init__(self) -> None:
        self.changes: list[tuple[int, int, bytes]] = []
        self.size = 0
        self.file: IO[bytes] | None = None
        self.aborted: set[int] = set()


class StreamedTxns:
    """The changes of the transactions being streamed, by top-level xid, until each commits or aborts."""

    def __init__(self, spill_bytes: int = SPILL_BYTES):
        self.spill_bytes = spill_bytes
        self.open: dict[int, _Txn] = {}
        self.held = 0  # bytes in memory, all transactions

    def start(self, xid: int, first: bool) -> None:
        if first or xid not in self.open:
            self.drop(xid)
            self.open[xid] = _Txn()

    def add(self, xid: int, subxid: int, lsn: int, payload: bytes) -> None:
        txn = self.open.get(xid)
        if txn is None:  # a block of a transaction whose first block came before a reconnect: all is resent
            txn = self.open[xid] = _Txn()
        txn.changes.append((subxid, lsn, payload))
        txn.size += len(payload) + 48
        self.held += len(payload) + 48
        if self.held > self.spill_bytes:
            self._spill(max(self.open.values(), key=lambda t: t.size))

    def abort(self, xid: int, subxid: int) -> None:
        if xid == subxid:
            self.drop(xid)
        elif xid in self.open:
            self.open[xid].aborted.add(subxid)

    def commit(self, xid: int) -> Iterator[tuple[int, bytes]]:
        """(LSN, message) of each change of the committed transaction, in order; then it is forgotten."""
        txn = self.open.get(xid)
        if txn is None:
            return
        try:
            aborted = txn.aborted
            if txn.file is not None:
                f = txn.file
                f.seek(0)
                while head := f.read(_FRAME.size):
                    subxid, lsn, n = _FRAME.unpack(head)
                    payload = f.read(n)
                    if subxid not in aborted:
                        yield lsn, payload
            for subxid, lsn, payload in txn.changes:
                if subxid not in aborted:
                    yield lsn, payload
        finally:
            self.drop(xid)

    def drop(self, xid: int) -> None:
        txn = self.open.pop(xid, None)
        if txn is not None:
            self.held -= sum(len(p) + 48 for _, _, p in txn.changes)
            if txn.file is not None:
                txn.file.close()

    def close(self) -> None:
        for xid in list(self.open):
            self.drop(xid)

    def _spill(self, txn: _Txn) -> None:
        if txn.file is None:
            txn.file = tempfile.TemporaryFile(prefix="pos-cdc-streamed-")  # noqa: SIM115 - closed by drop()
        txn.file.seek(0, 2)
        txn.file.write(b"".join(_FRAME.pack(s, lsn, len(p)) + p for s, lsn, p in txn.changes))
        self.held -= sum(len(p) + 48 for _, _, p in txn.changes)
        txn.changes, txn.size = [], 0


def without_xid(data: bytes) -> tuple[int, bytes]:
    """A message of a stream block -> (its xid, the message as protocol 1 writes it)."""
    return XID.unpack_from(data, 1)[0], bytes(data[:1]) + bytes(data[5:])
