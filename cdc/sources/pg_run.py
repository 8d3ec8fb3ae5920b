"""The replication stream's inner loop for a bulk transaction: the rest of a run of one table's inserts and
updates, read off the connection at C speed (compiled by Cython, cdc/hotpath.py).

WalStream.read_loop (pg_stream.py) opens a run at a listed table's Insert or Update when the fast path takes
batches, and hands the connection to `take_run`, which appends each following XLogData frame that continues
the run (an Insert or Update of the same relation) as the loop itself would: the pgoutput message (the frame
past its 25-byte header) to `run`, its WAL position to `lsns`. It stops at the first frame that does not
continue it (a Commit, a keepalive, another table, a Relation message, anything short or strange) and returns
it untouched, with what it got from get_copy_data, for the loop to handle as any other; or when the run holds
`limit` changes (then nothing is pending).

Interpreted, the same steps run in Python; compiled, the frame's header and tag are read as C bytes.
"""

from __future__ import annotations

try:
    import cython
except ImportError:  # interpreted without Cython: its declarations are no-ops
    from cdc import cython_shim as cython

HEADER = 25  # an XLogData frame: 'w', start LSN, end LSN, send time (8 bytes each), then the message


@cython.locals(
    p=cython.p_uchar,
    frame=bytes,
    k=cython.Py_ssize_t,
    inserts=cython.Py_ssize_t,
    limit=cython.Py_ssize_t,
    want=cython.ulonglong,
    got=cython.ulonglong,
    lsn=cython.ulonglong,
    wal=cython.ulonglong,
    wal_max=cython.ulonglong,
)
def take_run(conn, run: list, lsns: list, oid: int, limit: int) -> tuple:
    """Appends the frames that continue the run of relation `oid`'s inserts and updates (see above). Returns
    (pending, inserts, wal_end): the (n, data) of the first frame it did not take, as get_copy_data gave them
    (n 0: nothing buffered; n < 0: the copy ended), or None when the run reached `limit`; how many of the
    taken were inserts; the highest server WAL end among them (0: none)."""
    inserts, wal_max, want = 0, 0, oid
    get = conn.get_copy_data
    while len(run) < limit:
        n, data = get(1)
        if n < HEADER + 5:  # nothing buffered (0), the end (< 0), or no room for a tag and a relation
            return (n, data), inserts, wal_max
        frame = bytes(data)
        if cython.compiled:
            p = frame
            if len(frame) < HEADER + 5 or p[0] != 0x77 or (p[HEADER] != 73 and p[HEADER] != 85):
                return (n, data), inserts, wal_max
            got = 0
            for k in range(HEADER + 1, HEADER + 5):
                got = (got << 8) | p[k]
            if got != want:
                return (n, data), inserts, wal_max
            lsn = wal = 0
            for k in range(1, 9):
                lsn = (lsn << 8) | p[k]
                wal = (wal << 8) | p[k + 8]
            inserts += p[HEADER] == 73
        else:
            if len(frame) < HEADER + 5 or frame[0] != 0x77 or frame[HEADER] not in (73, 85):
                return (n, data), inserts, wal_max
            if int.from_bytes(frame[HEADER + 1 : HEADER + 5], "big") != want:
                return (n, data), inserts, wal_max
            lsn = int.from_bytes(frame[1:9], "big")
            wal = int.from_bytes(frame[9:17], "big")
            inserts += frame[HEADER] == 73
        if wal > wal_max:
            wal_max = wal
        run.append(frame[HEADER:])
        lsns.append(lsn)
    return None, inserts, wal_max
