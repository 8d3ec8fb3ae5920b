"""The PostgreSQL replication stream: a libpq replication connection (psycopg's `pq` layer, COPY BOTH) that
streams a logical slot with pgoutput, decoded into events (cdc/sources/pgoutput.py), and standby status
updates that report what downstream made durable.

`WalStream.stream(start, skip_through)` yields a `ChangeEvent` per row change (or, with `batching`, runs of a
table's inserts and updates as one `ChangeBatch`, still in pgoutput's form: see cdc/fast/), a `TxnEnd` after each
transaction, and an `Idle` whenever nothing more is waiting on the socket, carrying the WAL that keepalives
and skipped transactions (already applied downstream) let the checkpointer confirm once everything before it
is durable. It reports as flushed only what `confirm` was told.
"""

from __future__ import annotations

import logging
import select
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from psycopg import pq

from cdc.config import ConnectorConfig
from cdc.errors import TerminalError, TransientError
from cdc.events import CREATE, DELETE, TRUNCATE, UPDATE, ChangeBatch, ChangeEvent, Idle, TxnEnd, lsn_to_str
from cdc.sources import pgoutput as po
from cdc.sources.pg_conn import open_replication, quote_ident, quote_literal, slot_lost_message
from cdc.sources.pg_run import take_run
from cdc.sources.pg_streamed import STREAM_COMMIT, TWO_XIDS, XID, StreamedTxns, without_xid

log = logging.getLogger("cdc.source.postgres")

PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in µs since the Unix epoch
HDR_W = struct.Struct("!QQQ")  # XLogData: start, end, send time
HDR_K = struct.Struct("!QQB")  # keepalive: wal end, send time, reply requested
STATUS = struct.Struct("!cQQQQB")  # standby status update
STREAM_TAGS = frozenset((b"S", b"E", b"c", b"A"))  # protocol 2's stream start, stop, commit, abort
CHANGES = frozenset((po.Insert, po.Update, po.Delete, po.Truncate))
OID = struct.Struct("!I")
RUN_MAX = 2000  # changes in one ChangeBatch at most (a bulk transaction is yielded in runs of this size)


@dataclass(frozen=True, slots=True)
class WalPosition:
    """Where the stream stands: a transaction's commit LSN, and its end LSN (what to confirm to the server once
    it is durable downstream). `snapshot`: the end of the initial snapshot (X, X)."""

    commit_lsn: int
    end_lsn: int
    snapshot: bool = False

    def regresses(self, last: WalPosition) -> bool:
        return self.end_lsn < last.end_lsn

    def after(self, last: WalPosition) -> WalPosition:
        return self

    def __str__(self) -> str:
        return f"{lsn_to_str(self.commit_lsn)} (end {lsn_to_str(self.end_lsn)})"


def now_pg_us() -> int:
    return int(time.time() * 1_000_000) - PG_EPOCH_US


class WalStream:
    def __init__(self, cfg: ConnectorConfig, db: str = ""):
        self.cfg = cfg
        self.scfg = cfg.source
        self.db = db
        self.decoder = po.Decoder()
        self._repl: pq.PGconn | None = None
        self.confirmed = 0  # flushed LSN we report to the server
        self.wal_end = 0  # server's WAL end from the latest message
        self._mark = 0  # WAL that needs nothing downstream (keepalives, skipped transactions): see Idle
        self._in_txn = False
        self._last_status = 0.0
        self.streamed = StreamedTxns()  # transactions streamed before their commit (pg_streamed.py)
        # (schema, table) -> primary key columns, for tables with REPLICA IDENTITY FULL (PostgresSource.prepare)
        self.primary_keys: dict[tuple[str, str], tuple[str, ...]] = {}
        self.tables = frozenset(self.scfg.tables)
        self._listed: dict[int, tuple[po.Relation, bool]] = {}  # oid -> (its Relation, in source.tables)
        # yield runs of a table's inserts and updates as ChangeBatch (set when a fast path takes them); a run
        # shorter than batch_min comes as its ChangeEvents (the fast path would expand it anyway)
        self.batching = False
        self.batch_min = 1

    def key_columns(self, rel: po.Relation) -> tuple[str, ...]:
        """The key of a relation's events: its replica identity's columns, except under REPLICA IDENTITY FULL,
        where PostgreSQL flags every column and the primary key (when there is one) is the row's key: a
        Kafka record's key, its partition and log compaction must not change with the identity setting."""
        if rel.replica_identity == "f":
            return self.primary_keys.get((rel.schema or "pg_catalog", rel.name)) or rel.key_columns
        return rel.key_columns

    def stream(self, start_lsn: int, skip_through: int = 0) -> Iterator[ChangeEvent | TxnEnd | Idle]:
        """Streams changes of transactions committed after `start_lsn`. Transactions whose commit LSN is at or
        below `skip_through` (already applied downstream) are skipped."""
        self.confirmed = max(self.confirmed, start_lsn)
        conn = open_replication(self.scfg.dsn, self.cfg.name)
        self._repl = conn
        pubs = quote_literal(self.cfg.publication)
        proto = "proto_version '2', streaming 'on'" if self.scfg.stream_in_progress else "proto_version '1'"
        cmd = (
            f"START_REPLICATION SLOT {quote_ident(self.cfg.slot)} LOGICAL {lsn_to_str(start_lsn)} "
            f"({proto}, publication_names {pubs}, messages 'true')"
        )
        try:
            conn.send_query(cmd.encode())
            res = conn.get_result()
        except psycopg.Error as e:
            conn.finish()
            raise TransientError(f"cannot start replication: {str(e).strip().splitlines()[0]}") from e
        if res is None or res.status != pq.ExecStatus.COPY_BOTH:
            msg = ((res.error_message if res else b"") or conn.error_message).decode(errors="replace").strip()
            conn.finish()
            if "invalidated" in msg or "can no longer get changes" in msg:  # lost while it was away
                raise TerminalError(f"{slot_lost_message(self.cfg)} ({msg.splitlines()[0]})")
            if "does not exist" in msg or "is active" in msg or "wal_status" in msg or "removed" in msg:
                raise TerminalError(f"cannot stream from slot {self.cfg.slot}: {msg}")
            raise TransientError(f"cannot start replication: {msg}")
        conn.nonblocking = 1
        log.info("streaming from slot %s at %s", self.cfg.slot, lsn_to_str(start_lsn))
        try:
            yield from self.read_loop(conn, skip_through)
        except psycopg.Error as e:  # libpq raises for a connection lost while reading or sending status
            raise TransientError(f"replication connection lost: {str(e).strip().splitlines()[0]}") from e
        finally:
            self._repl = None
            self.streamed.close()  # a transaction not committed yet is streamed again from its start
            conn.finish()

    def read_loop(self, conn: pq.PGconn, skip_through: int):
        """The messages of a replication connection in COPY BOTH mode, as events (bench/replay.py feeds it
        recorded messages)."""
        decode = self.decoder.decode
        interval = self.scfg.status_interval_s
        skipping = False
        commit_lsn = ts_ms = xid = 0
        in_stream: int | None = None  # the xid of the stream block being read (protocol 2)
        streamed = self.streamed
        sock = conn.socket
        data = b""
        batching, relations = self.batching, self.decoder.relations
        run: list[bytes] = []  # the open run of one table's inserts and updates (batching)
        run_lsns: list[int] = []
        run_rel: po.Relation | None = None
        inserts = 0
        pending = None  # a frame take_run read and did not take: the next to handle
        try:
            while True:
                if pending is None:
                    n, data = conn.get_copy_data(1)
                else:
                    (n, data), pending = pending, None
                if n == 0:  # nothing buffered: read what has arrived (non-blocking), so batches stay large
                    conn.consume_input()
                    n, data = conn.get_copy_data(1)
                if run and (n <= 0 or (data[0] == 0x77 and data[25] not in b"IU")):  # the run ends
                    yield from self._run_out(run_rel, run, run_lsns, inserts, commit_lsn, ts_ms, xid)
                    run, run_lsns, inserts = [], [], 0
                if n == 0:
                    # really nothing waiting: tell the pipeline (it may commit), send status if due, then wait
                    mark, self._mark = self._mark, 0
                    idle = Idle(WalPosition(mark, mark) if mark and not self._in_txn else None)
                    yield idle
                    self._maybe_status(conn, interval)
                    wait = min(interval, 1.0) if idle.wake_s is None else idle.wake_s
                    r, _, _ = select.select([sock], [], [], wait)
                    if r:
                        conn.consume_input()
                    continue
                if n == -1:
                    conn.get_result()
                    raise TransientError("the POS ended replication (walsender stopped); reconnecting")
                if n < 0:
                    raise TransientError(
                        f"replication connection lost: {conn.error_message.decode(errors='replace').strip()}"
                    )
                kind = data[0]
                if kind == 0x6B:  # 'k' keepalive
                    wal_end, _, reply = HDR_K.unpack_from(data, 1)
                    self.wal_end = max(self.wal_end, wal_end)
                    if not self._in_txn:
                        # once everything received is durable downstream, the idle WAL in between is ours to
                        # confirm (the checkpointer does, at the next Idle)
                        self._mark = max(self._mark, wal_end)
                    if reply:
                        self._send_status(conn)
                    continue
                if kind != 0x77:  # 'w'
                    continue
                lsn, wal_end, _ = HDR_W.unpack_from(data, 1)
                if wal_end > self.wal_end:
                    self.wal_end = wal_end
                body = data[25:]
                tag = bytes(body[:1])
                if (
                    in_stream is not None or tag in STREAM_TAGS
                ):  # protocol 2: a transaction streamed as it runs
                    if tag == b"c":
                        x, _, c_lsn, e_lsn, ts = STREAM_COMMIT.unpack_from(body, 1)
                        if c_lsn <= skip_through:  # applied downstream already
                            streamed.drop(x)
                            self._mark = max(self._mark, e_lsn)
                            continue
                        t_ms = po.pg_epoch_us_to_unix_ms(ts)
                        for change_lsn, payload in streamed.commit(x):
                            yield from self._events(decode(payload), change_lsn, c_lsn, t_ms, x)
                        yield TxnEnd(WalPosition(c_lsn, e_lsn), t_ms)
                    elif tag == b"S":
                        in_stream = XID.unpack_from(body, 1)[0]
                        streamed.start(in_stream, body[5] == 1)
                    elif tag == b"E":
                        in_stream = None
                    elif tag == b"A":
                        streamed.abort(*TWO_XIDS.unpack_from(body, 1))
                    else:  # a message of the block: its (sub)transaction's xid after the type
                        subxid, plain = without_xid(body)
                        if tag in b"IUDT":
                            streamed.add(in_stream, subxid, lsn, plain)
                        elif tag in b"RY":
                            decode(plain)  # the relation (or type) as it is now, for the changes that follow
                    continue
                if batching and (tag == b"I" or tag == b"U"):
                    if skipping:
                        continue
                    rel = relations.get(OID.unpack_from(body, 1)[0])
                    if rel is not None and self.listed(rel):
                        if run and rel is not run_rel:
                            yield from self._run_out(run_rel, run, run_lsns, inserts, commit_lsn, ts_ms, xid)
                            run, run_lsns, inserts = [], [], 0
                        run_rel = rel
                        run.append(body if type(body) is bytes else bytes(body))
                        run_lsns.append(lsn)
                        inserts += tag == b"I"
                        # the frames that continue the run, read in one call (compiled: pg_run.py)
                        pending, more, wal_end = take_run(conn, run, run_lsns, rel.oid, RUN_MAX)
                        inserts += more
                        if wal_end > self.wal_end:
                            self.wal_end = wal_end
                        if pending is None:  # RUN_MAX changes: yielded in runs of that size
                            yield from self._run_out(run_rel, run, run_lsns, inserts, commit_lsn, ts_ms, xid)
                            run, run_lsns, inserts = [], [], 0
                        continue
                # Begin and Commit, unpacked here (two of a single sale's three frames; a malformed one is
                # left to the decoder, which says what is wrong with it)
                if tag == b"B" and len(body) == 21:
                    commit_lsn, ts_us, xid = po.unpack_begin(body, 1)
                    self._in_txn, ts_ms = True, po.pg_epoch_us_to_unix_ms(ts_us)
                    skipping = commit_lsn <= skip_through
                elif tag == b"C" and len(body) == 26:
                    _, c_lsn, end_lsn, _ = po.unpack_commit(body, 1)
                    self._in_txn = False
                    if skipping:
                        self._mark = max(self._mark, end_lsn)
                    else:
                        yield TxnEnd(WalPosition(c_lsn, end_lsn), ts_ms)
                else:
                    msg = decode(body)
                    if type(msg) in CHANGES and not skipping:
                        yield from self._events(msg, lsn, commit_lsn, ts_ms, xid)
                    # Relation, Type, Origin and logical messages need nothing more here
        except (
            struct.error,
            IndexError,
        ) as exc:  # a frame shorter than its layout (pgoutput's own are checked)
            raise po.MalformedMessage(
                f"malformed replication message {bytes(data[:1])!r} from the walsender ({len(data)} bytes; "
                f"last WAL position {lsn_to_str(self.wal_end)}): it ends too early"
            ) from exc

    def _run_out(
        self, rel: po.Relation, run: list, lsns: list, inserts: int, commit_lsn: int, ts_ms: int, xid: int
    ) -> list[ChangeBatch] | list[ChangeEvent]:
        """A run ended: its batch, or, shorter than batch_min (the single sale), its changes as events."""
        batch = self._batch(rel, run, lsns, inserts, commit_lsn, ts_ms, xid)
        return [batch] if len(run) >= self.batch_min else self._expand(batch, 0, len(run))

    def _batch(
        self, rel: po.Relation, run: list, lsns: list, inserts: int, commit_lsn: int, ts_ms: int, xid: int
    ) -> ChangeBatch:
        return ChangeBatch(
            rel.schema, rel.name, rel, run, lsns, commit_lsn, ts_ms, xid, inserts, self._expand
        )

    def _expand(self, batch: ChangeBatch, start: int, stop: int) -> list[ChangeEvent]:
        """A batch's changes `start:stop` as events (the reference path), decoded with the batch's relation (a
        listed one: its messages are inserts and updates)."""
        rel, lsns, payloads, out = batch.relation, batch.lsns, batch.payloads, []
        event, commit_lsn, ts_ms, xid = self._event, batch.commit_lsn, batch.ts_ms, batch.txid
        for i in range(start, stop):
            buf, lsn = payloads[i], lsns[i]
            if buf[0] == 0x49:
                out.append(
                    event(rel, CREATE, None, po.decode_insert(buf, rel).new, lsn, commit_lsn, ts_ms, xid)
                )
            else:
                msg = po.decode_update(buf, rel)
                out.append(event(rel, UPDATE, msg.old, msg.new, lsn, commit_lsn, ts_ms, xid, msg.toasted))
        return out

    def _events(self, msg, lsn: int, commit_lsn: int, ts_ms: int, xid: int) -> list[ChangeEvent]:
        """A change message's events; `seq` is the change's own WAL position, the same in every slot (see
        ChangeEvent.seq)."""
        t = type(msg)
        if t is po.Truncate:
            rels, op, before, after = [r for r in msg.relations if self.listed(r)], TRUNCATE, None, None
        else:
            rels = (msg.relation,)
            if not self.listed(msg.relation):
                return []
            if t is po.Insert:
                op, before, after = CREATE, None, msg.new
            elif t is po.Update:
                op, before, after = UPDATE, msg.old, msg.new
            else:
                op, before, after = DELETE, msg.old, None
        toast = t is po.Update and msg.toasted
        return [self._event(rel, op, before, after, lsn, commit_lsn, ts_ms, xid, toast) for rel in rels]

    def _event(
        self,
        rel,
        op: str,
        before,
        after,
        lsn: int,
        commit_lsn: int,
        ts_ms: int,
        xid: int,
        toast: bool = False,
    ) -> ChangeEvent:
        """One change of a listed relation as an event (streamed: its seq is its own LSN)."""
        return ChangeEvent(
            op,
            rel.schema,
            rel.name,
            before,
            after,
            lsn,
            commit_lsn,
            lsn,
            ts_ms,
            xid,
            "false",
            self.db,
            self.cfg.name,
            self.key_columns(rel),
            toast=toast,
            types=rel.types,
        )

    def listed(self, rel: po.Relation) -> bool:
        """Whether a relation is one of source.tables. The publication may send others (a DBA added a table to
        it, or it is shared): their changes are not this connector's, and are skipped, said once per table."""
        known = self._listed.get(rel.oid)
        if known is not None and known[0] is rel:
            return known[1]
        table = f"{rel.schema or 'pg_catalog'}.{rel.name}"
        ok = table in self.tables
        if not ok:
            log.warning(
                "%s: publication %s sends changes of %s, which is not in source.tables: skipped (add it to "
                "source.tables to capture it, or ALTER PUBLICATION %s DROP TABLE %s)",
                self.cfg.name,
                self.cfg.publication,
                table,
                self.cfg.publication,
                table,
            )
        self._listed[rel.oid] = (rel, ok)
        return ok

    def confirm(self, end_lsn: int) -> None:
        """Everything up to `end_lsn` is durable downstream: reported as flushed in the next status update."""
        if end_lsn > self.confirmed:
            self.confirmed = end_lsn
        if self._repl is not None and time.monotonic() - self._last_status > 1.0:
            self._send_status(self._repl)

    def _maybe_status(self, conn: pq.PGconn, interval: float) -> None:
        if time.monotonic() - self._last_status >= min(interval, 1.0):
            self._send_status(conn)

    def _send_status(self, conn: pq.PGconn) -> None:
        lsn = self.confirmed
        msg = STATUS.pack(b"r", lsn, lsn, lsn, now_pg_us(), 0)
        try:
            sent = conn.put_copy_data(msg) == 1 and conn.flush() >= 0
        except psycopg.Error:
            sent = False
        if not sent:
            raise TransientError(
                f"replication connection lost: {conn.error_message.decode(errors='replace').strip()}"
            )
        self._last_status = time.monotonic()

    def close(self) -> None:
        if self._repl is not None:
            self._repl.finish()
            self._repl = None
