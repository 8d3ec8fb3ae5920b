"""The connector's own cost, without a walsender: pgoutput messages replayed through the real source loop
(WalStream.read_loop) inside a PostgreSQL source, through the real pipeline, stages and a real PostgreSQL
storefront (a throwaway cluster).
Repeatable where bench/run.py is noisy, and quick to profile (py-spy record -- python bench/replay.py ...).

    python bench/replay.py bulk  [N]   one N-row INSERT transaction, then one N-row UPDATE (default 200k)
    python bench/replay.py sales [N]   N single-row transactions, each followed by a pause in the stream,
                                       so each is committed on its own (default 2000): the cashier's case
    python bench/replay.py burst [N]   N single-row transactions back to back (default 100k): the cashier at a
                                       rate the connector only just keeps up with (the ladder's top), where
                                       commits group what arrived while the one before ran

The rows are bench/run.py's item_price rows (bench/hotpath_micro.py builds the messages), with its rename and
money stages. Prints wall-clock and process CPU (all threads) per change or per transaction.
"""

from __future__ import annotations

import os
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from hotpath_micro import insert_message, relation_message  # noqa: E402

from cdc.config import ConnectorConfig  # noqa: E402
from cdc.events import Idle  # noqa: E402
from cdc.localpg import LocalPostgres  # noqa: E402
from cdc.pipeline import Pipeline  # noqa: E402
from cdc.sources.pg_stream import HDR_W, WalStream  # noqa: E402
from cdc.sources.postgres import PostgresSource  # noqa: E402

OID = 16384
STOREFRONT = (
    "CREATE TABLE product_price (sku text PRIMARY KEY, store_id int, channel text, price numeric(12,2), "
    "updated_at timestamptz)"
)


class Replayed(Exception):
    """Raised by the fake connection once every message was read and the pipeline had its pauses."""


class FakeReplication:
    """The part of a replication connection (psycopg's pq.PGconn) that the source loop uses, serving
    recorded messages; `None` in the list is an empty read (see PAUSE)."""

    def __init__(self, frames: list[bytes | None]):
        self.frames = frames
        self.i = 0
        self._r, self._w = os.pipe()  # always readable: the loop's select() on a pause returns at once
        os.write(self._w, b"x")
        self.socket = self._r

    def get_copy_data(self, _async: int) -> tuple[int, bytes]:
        if self.i >= len(self.frames):
            raise Replayed
        frame = self.frames[self.i]
        self.i += 1
        return (0, b"") if frame is None else (len(frame), frame)

    def consume_input(self) -> None:
        pass

    def put_copy_data(self, _data: bytes) -> int:
        return 1

    def flush(self) -> int:
        return 0

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


# a pause in the stream, which lets the pipeline commit: the loop reads again once before it reports one
PAUSE = [None, None]


def xlog(payload: bytes, lsn: int) -> bytes:
    return b"w" + HDR_W.pack(lsn, lsn, 0) + payload


def transaction(changes: list[bytes], lsn: int) -> list[bytes]:
    begin = b"B" + struct.pack("!QqI", lsn, 700_000_000_000_000, 777)
    commit = b"C" + struct.pack("!BQQq", 0, lsn, lsn + 1, 700_000_000_000_000)
    return [xlog(begin, lsn), *(xlog(c, lsn) for c in changes), xlog(commit, lsn)]


def update_message(i: int) -> bytes:
    return b"U" + insert_message(OID, i + 1)[1:]


class ReplaySource(PostgresSource):
    """A PostgreSQL source whose replication stream is `frames` (no POS server): positions, confirmations and
    events as the real source makes them. Once every frame is read it stops the pipeline, which returns at
    the next Idle; `times` gets (wall seconds, process CPU seconds) from the first read to the last frame."""

    def __init__(self, cfg: ConnectorConfig, frames: list[bytes | None], stop, times: list):
        super().__init__(cfg)
        self.frames, self.stop, self.times = frames, stop, times

    def check(self) -> None:
        pass  # no POS server: nothing to check

    def prepare(self) -> None:
        self.db = "pos"

    def read(self, resume, reload=None):
        self.wal = WalStream(self.cfg, self.db)
        self.wal.batching = self.batching  # (as PostgresSource.read: runs as ChangeBatch for the fast path)
        self.wal.batch_min = getattr(self, "batch_min", 1)
        conn = FakeReplication([xlog(relation_message(OID), 1), *self.frames, *PAUSE])
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield from self.wal.read_loop(conn, 0)
        except Replayed:
            self.times.append((time.perf_counter() - t0, time.process_time() - c0))
            self.stop()
            yield Idle()
        finally:
            conn.close()

    def tick(self) -> None:
        pass

    def observe(self, metrics) -> None:
        pass


def replay(url: str, frames: list[bytes | None]) -> tuple[float, float]:
    """Runs `frames` through a fresh connector; (wall seconds, process CPU seconds)."""
    cfg = ConnectorConfig.model_validate(
        {
            "name": "replay",
            "source": {
                "type": "postgres",
                "dsn": "host=x",
                "tables": ["public.item_price"],
                "heartbeat_interval_s": 0,
                "snapshot": "never",
            },
            "transforms": [
                {"type": "rename", "fields": {"item_code": "sku", "price_fen": "price"}},
                {"type": "money", "field": "price", "divide_by": 100, "scale": 2},
            ],
            "sink": {"type": "sql", "url": url, "table": "product_price", "key": ["sku"]},
        }
    )
    times: list = []
    pipe = Pipeline(cfg, retry_for_s=0)
    pipe.make_source = lambda c, _metrics: ReplaySource(c, frames, pipe.stop, times)
    pipe.run()
    return times[0]


def main() -> None:
    shape = sys.argv[1] if len(sys.argv) > 1 else "bulk"
    if shape not in ("bulk", "sales", "burst"):
        sys.exit("usage: python bench/replay.py bulk|sales|burst [N]")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else {"bulk": 200_000, "sales": 2000, "burst": 100_000}[shape]
    pg = LocalPostgres(settings={"autovacuum": "off"}).start()
    try:
        pg.execute(STOREFRONT)
        if shape == "bulk":
            for phase, make, lsn in (
                ("insert", lambda i: insert_message(OID, i), 1000),
                ("update", update_message, 2000),
            ):
                wall, cpu = replay(pg.url(), transaction([make(i) for i in range(n)], lsn))
                print(
                    f"bulk {phase}: {n} changes, {n / wall:,.0f} changes/s, {cpu / n * 1e6:.1f} µs CPU per change"
                )
        elif shape == "burst":
            frames = []
            for i in range(n):
                frames += transaction([insert_message(OID, i % 1000)], 1000 + 10 * i)
            wall, cpu = replay(pg.url(), frames)
            print(
                f"burst: {n} single-row transactions back to back: {n / wall:,.0f} transactions/s, "
                f"{cpu / n * 1e6:.1f} µs CPU per transaction"
            )
        else:
            frames: list[bytes | None] = []
            for i in range(n):
                frames += [*transaction([insert_message(OID, i)], 1000 + 10 * i), *PAUSE]
            wall, cpu = replay(pg.url(), frames)
            print(
                f"sales: {n} single-row transactions, each committed: {wall / n * 1000:.2f} ms and "
                f"{cpu / n * 1000:.2f} ms CPU per transaction"
            )
        print(
            "storefront rows, sum of prices:", pg.execute("SELECT count(*), sum(price) FROM product_price")[0]
        )
    finally:
        pg.destroy()


if __name__ == "__main__":
    main()
