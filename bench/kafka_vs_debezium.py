#!/usr/bin/env python
"""pos-cdc's POS -> Kafka connector next to the genuine Debezium PostgreSQL connector, in ONE run.

    python bench/kafka_vs_debezium.py [--rows 200000] [--json out.json]

One throwaway PostgreSQL cluster, one local Kafka broker (cdc.localkafka), and Kafka Connect standalone with
debezium-connector-postgres 3.6.1.Final (cdc.localconnect; `scripts/setup.sh --with-test-tools` fetches it).
Each connector runs alone on a POS database of its own with the same table, as deployed with the same output:
JSON with schemas, decimals precise (Debezium's defaults; pos-cdc's `schemas: true, decimal_handling: precise`),
no snapshot. Two loads each: N rows INSERTed in one transaction, then the N rows repriced in one transaction
(after a round of both at N/10 that is not counted: the JVM's JIT warm, a TRUNCATE between);
from the POS commit until the topic holds the N records (end offsets; Debezium also writes nothing else for
inserts and updates). CPU seconds of each connector's process (the Connect JVM for Debezium) come from /proc.

Goal (issue 12): pos-cdc's events/s >= 2x Debezium's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import psycopg  # noqa: E402
from kafka_e2e import POS_TABLE, Connector, cpu_seconds, wait  # noqa: E402  (bench/kafka_e2e.py)
from psycopg.conninfo import conninfo_to_dict  # noqa: E402

from cdc.kafka_admin import Admin  # noqa: E402
from cdc.localconnect import LocalConnect, debezium_postgres  # noqa: E402
from cdc.localkafka import LocalKafka  # noqa: E402
from cdc.localpg import LocalPostgres  # noqa: E402

OURS = """name: bench-ours
source: {{type: postgres, dsn: "{pos}", tables: [public.item_price], snapshot: never, heartbeat_interval_s: 0}}
sink: {{type: kafka, bootstrap_servers: "{kafka}", topic_prefix: ours, partitions: 1, schemas: true, decimal_handling: precise}}
"""
INSERT = (
    "INSERT INTO item_price (item_code, store_id, channel, price_fen) SELECT 'SKU-' || lpad(i::text, 7, '0'),"
    " i %% 50, 'ONLINE', 100 + i %% 9000 FROM generate_series(1, %s) i"
)
REPRICE = "UPDATE item_price SET price_fen = price_fen + 1, updated_at = now()"


class _Jvm:
    """Kafka Connect as a process to watch (CPU, exit) like a connector."""

    def __init__(self, connect: LocalConnect):
        self.connect = connect

    def cpu(self) -> float:
        return cpu_seconds(self.connect.proc.pid)

    def check(self) -> None:
        self.connect.assert_running()


def measure(pos: str, admin: Admin, topic: str, proc, n: int) -> dict:
    """The two loads, after a first round of both at a tenth of the size that is not counted (the JVM's JIT
    and both clients' buffers warm), the table emptied between."""
    measure_loads(pos, admin, topic, proc, max(n // 10, 1))
    with psycopg.connect(pos) as c:
        c.execute("TRUNCATE item_price")
    time.sleep(3)
    return measure_loads(pos, admin, topic, proc, n)


def measure_loads(pos: str, admin: Admin, topic: str, proc, n: int) -> dict:
    out = {}
    for load, statement, params in (("insert", INSERT, (n,)), ("reprice", REPRICE, None)):
        before = sum(admin.end_offsets([(topic, 0)]).values()) if topic in admin.topics() else 0
        with psycopg.connect(pos) as c:
            c.execute(statement, params)
            cpu0 = proc.cpu()
            c.commit()
            t0 = time.monotonic()
        t1 = wait(
            lambda before=before: (
                topic in admin.topics() and sum(admin.end_offsets([(topic, 0)]).values()) - before >= n
            ),
            f"{n} records in {topic}",
            [proc],
            1800,
        )
        out[load] = {
            "events_per_s": round(n / (t1 - t0)),
            "seconds": round(t1 - t0, 2),
            "cpu_us": round((proc.cpu() - cpu0) / n * 1e6, 1),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    n = args.rows
    logs = Path(tempfile.mkdtemp(prefix="pos-cdc-dbz-bench-"))
    figures: dict = {"rows": n}
    with LocalPostgres(settings={"autovacuum": "off"}) as pg, LocalKafka() as kafka:
        admin = Admin(kafka.bootstrap)
        try:
            # pos-cdc
            pos = pg.create_database("pos_ours")
            pg.execute(POS_TABLE, "pos_ours")
            cfg = logs / "ours.yaml"
            cfg.write_text(OURS.format(pos=pos, kafka=kafka.bootstrap))
            ours = Connector(cfg, logs / "ours.log")
            try:
                _warm_up(pos, admin, "ours.public.item_price", ours)
                figures["pos_cdc"] = measure(pos, admin, "ours.public.item_price", ours, n)
            finally:
                ours.stop()
            # Debezium
            pos = pg.create_database("pos_dbz")
            pg.execute(POS_TABLE, "pos_dbz")
            info = conninfo_to_dict(pos)
            props = debezium_postgres(
                "bench_dbz",
                {k: info[k] for k in ("host", "port", "user", "dbname")},
                ["public.item_price"],
                topic_prefix="dbz",
                snapshot_mode="no_data",
                topic_creation_default_partitions=1,
                topic_creation_default_replication_factor=1,
            )
            with LocalConnect(kafka.bootstrap, props, base_dir=str(logs / "connect")) as connect:
                jvm = _Jvm(connect)
                _warm_up(pos, admin, "dbz.public.item_price", jvm)
                figures["debezium"] = measure(pos, admin, "dbz.public.item_price", jvm, n)
        finally:
            admin.close()
    for load in ("insert", "reprice"):
        figures[f"{load}_ratio"] = round(
            figures["pos_cdc"][load]["events_per_s"] / figures["debezium"][load]["events_per_s"], 2
        )
    print(f"POS -> Kafka, {n:,} changes in one transaction, JSON with schemas, precise decimals:")
    for load in ("insert", "reprice"):
        o, d = figures["pos_cdc"][load], figures["debezium"][load]
        print(
            f"  {load:8s} pos-cdc {o['events_per_s']:>8,}/s ({o['cpu_us']} µs CPU/event)   Debezium 3.6.1"
            f" {d['events_per_s']:>8,}/s ({d['cpu_us']} µs CPU/event)   ratio {figures[f'{load}_ratio']}x"
        )
    print("  goal: >= 2x")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def _warm_up(pos: str, admin: Admin, topic: str, proc) -> None:
    """One change through, so the connector streams and its topic exists before the clock runs."""
    deadline = time.monotonic() + 180
    with psycopg.connect(pos, autocommit=True) as c:
        while time.monotonic() < deadline:
            c.execute(
                "INSERT INTO item_price (item_code, store_id, channel, price_fen) VALUES ('WARM', 0, 'X', 1)"
                " ON CONFLICT (item_code) DO UPDATE SET price_fen = item_price.price_fen + 1"
            )
            try:
                wait(lambda: topic in admin.topics(), f"topic {topic}", [proc], 5)
                c.execute("DELETE FROM item_price WHERE item_code = 'WARM'")
                time.sleep(3)  # the delete (and its tombstone) through
                return
            except SystemExit:
                continue
    raise SystemExit(f"{topic} never appeared")


if __name__ == "__main__":
    main()
