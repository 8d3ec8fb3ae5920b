#!/usr/bin/env python
"""POS -> Kafka -> storefront through pos-cdc's two connectors, next to Kafka's own producer, in ONE run.

    python bench/kafka_e2e.py [--rows N] [--partitions P] [--json out.json]

One throwaway PostgreSQL cluster (a POS database and a storefront database) and one local Kafka broker
(cdc.localkafka). The connectors run as deployed: `python -m cdc.cli run` subprocesses, connectors/pos-to-
kafka.yaml's shape (no transforms, schemas and precise decimals) and kafka-to-storefront's (rename + money into
product_price, a consumer group).

* producer   — only the POS -> Kafka connector runs: N rows INSERTed in one POS transaction; from the POS commit
               until the topic holds all N records (its end offsets), acknowledged by the broker.
* consumer   — then the Kafka -> storefront connector starts on the full topic: from the first row visible in
               the storefront until all N are (the group join before it is not counted).
* end to end — both running: the N rows repriced in one POS transaction; from the POS commit until the
               storefront's sum of prices is the POS's.
* java       — org.apache.kafka.tools.ProducerPerformance from the broker's jars: N records of the average size
               of pos-cdc's records, acks=all, idempotence, the same linger and batch size as pos-cdc's producer.

CPU seconds of each connector process per phase come from /proc. The machine's other load counts: run it on
a quiet machine, and compare within one run. Target (issue 10): end to end >= 25k changes/s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import psycopg  # noqa: E402
from kafka_client import java_produce  # noqa: E402  (bench/kafka_client.py)

from cdc.kafka_admin import Admin  # noqa: E402
from cdc.localkafka import LocalKafka  # noqa: E402
from cdc.localpg import LocalPostgres  # noqa: E402

POS_TABLE = (
    "CREATE TABLE item_price (item_code text PRIMARY KEY, store_id int NOT NULL, channel text NOT NULL,"
    " price_fen bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
)
STORE_TABLE = (
    "CREATE TABLE product_price (sku text PRIMARY KEY, store_id int, channel text, price numeric(12,2),"
    " updated_at timestamptz)"
)
P2K = """
name: bench-p2k
source: {{type: postgres, dsn: "{pos}", tables: [public.item_price], snapshot: never, heartbeat_interval_s: 0}}
sink: {{type: kafka, bootstrap_servers: "{kafka}", topic_prefix: bench, partitions: {partitions}, client: {client}, schemas: {schemas}, decimal_handling: {decimals}}}
"""
K2S = """
name: bench-k2s
source: {{type: kafka, bootstrap_servers: "{kafka}", topics: [bench.public.item_price], group: bench, client: {client}}}
transforms:
  - {{type: rename, fields: {{item_code: sku, price_fen: price}}}}
  - {{type: money, field: price, divide_by: 100, scale: 2}}
sink: {{type: sql, url: "{store}", table: product_price, key: [sku]}}
"""
TOPIC = "bench.public.item_price"
LINGER_MS, BATCH_SIZE = 5, 256 * 1024  # cdc.kafka_client.Producer's


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Connector:
    def __init__(self, config: Path, log: Path, args: tuple[str, ...] = ()):
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cdc.cli", "run", str(config), *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise SystemExit(f"a connector exited with {self.proc.returncode}; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def wait(predicate, what: str, procs: list[Connector], timeout: float = 600, every: float = 0.02) -> float:
    """Polls until `predicate()`; returns the time it first held."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p in procs:
            p.check()
        if predicate():
            return time.monotonic()
        time.sleep(every)
    raise SystemExit(f"timed out waiting for {what}")


def topic_records(admin: Admin, partitions: int) -> int:
    return sum(admin.end_offsets([(TOPIC, p) for p in range(partitions)]).values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--client", choices=["kafka-python", "confluent-kafka"], default="kafka-python")
    ap.add_argument("--schemas", choices=["true", "false"], default="true", help="the Kafka sink's schemas")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--keep-logs", help="a directory for the connectors' logs")
    args = ap.parse_args()
    n, parts = args.rows, args.partitions
    logs = Path(args.keep_logs or tempfile.mkdtemp(prefix="pos-cdc-kafka-bench-"))
    logs.mkdir(parents=True, exist_ok=True)
    figures: dict = {"rows": n, "partitions": parts, "client": args.client, "schemas": args.schemas == "true"}
    procs: list[Connector] = []
    with LocalPostgres(settings={"autovacuum": "off"}) as pg, LocalKafka() as kafka:
        pos = pg.create_database("pos")
        pg.create_database("store")
        pg.execute(POS_TABLE, "pos")
        pg.execute(STORE_TABLE, "store")
        p2k, k2s = logs / "p2k.yaml", logs / "k2s.yaml"
        p2k.write_text(
            P2K.format(
                pos=pos,
                kafka=kafka.bootstrap,
                partitions=parts,
                client=args.client,
                schemas=args.schemas,
                decimals="precise" if args.schemas == "true" else "string",
            )
        )
        k2s.write_text(K2S.format(kafka=kafka.bootstrap, store=pg.url("store"), client=args.client))
        admin = Admin(kafka.bootstrap)
        try:
            producer = Connector(p2k, logs / "p2k.log")
            procs.append(producer)
            wait(
                lambda: TOPIC in admin.topics() or _slot_active(pos), "the POS connector to stream", procs, 60
            )
            time.sleep(2)  # its first status update: streaming
            with psycopg.connect(pos) as c:  # producer: N inserts, one transaction
                c.execute(
                    "INSERT INTO item_price (item_code, store_id, channel, price_fen)"
                    " SELECT 'SKU-' || lpad(i::text, 7, '0'), i %% 50, 'ONLINE', 100 + i %% 9000"
                    " FROM generate_series(1, %s) i",
                    (n,),
                )
                cpu0 = producer.cpu()
                c.commit()
                t0 = time.monotonic()
            t1 = wait(
                lambda: TOPIC in admin.topics() and topic_records(admin, parts) >= n, "the topic", procs
            )
            figures["producer"] = _rate(n, t1 - t0, producer.cpu() - cpu0)

            consumer = Connector(k2s, logs / "k2s.log")  # consumer: the full topic
            procs.append(consumer)
            count = _store_query(pg.dsn("store"), "SELECT count(*) FROM product_price")
            c0 = consumer.cpu()
            first = wait(lambda: count() > 0, "the first row in the storefront", procs, every=0.005)
            cpu_first = consumer.cpu()
            last = wait(lambda: count() >= n, "every row in the storefront", procs)
            figures["consumer"] = _rate(n, last - first, consumer.cpu() - cpu_first)
            figures["consumer"]["start_cpu_s"] = round(cpu_first - c0, 2)

            total = _store_query(pg.dsn("store"), "SELECT coalesce(sum(price), 0) FROM product_price")
            with psycopg.connect(pos) as c:  # end to end: reprice everything, one transaction
                c.execute("UPDATE item_price SET price_fen = price_fen + 1, updated_at = now()")
                want = Decimal(c.execute("SELECT sum(price_fen) FROM item_price").fetchone()[0]) / 100
                cpus = producer.cpu(), consumer.cpu()
                c.commit()
                t0 = time.monotonic()
            t1 = wait(lambda: total() == want, "the reprice in the storefront", procs, every=0.05)
            figures["end_to_end"] = _rate(n, t1 - t0, None)
            figures["end_to_end"]["producer_cpu_us"] = round((producer.cpu() - cpus[0]) / n * 1e6, 1)
            figures["end_to_end"]["consumer_cpu_us"] = round((consumer.cpu() - cpus[1]) / n * 1e6, 1)
            for p in procs:
                p.stop()
            procs.clear()
            size = _record_size(kafka.bootstrap)
            admin.ensure_topics(["bench-java"], partitions=parts)
            java = java_produce(kafka, "bench-java", n, size, LINGER_MS, BATCH_SIZE)
            figures["java_producer"] = {
                "msgs_per_s": java["msgs_per_s"],
                "record_size": size,
                "summary": java["summary"],
            }
        finally:
            for p in procs:
                p.stop()
            admin.close()
    figures["producer_vs_java"] = round(
        figures["producer"]["changes_per_s"] / figures["java_producer"]["msgs_per_s"], 3
    )
    print(
        f"POS -> Kafka -> storefront, {n} changes, {parts} partitions, one local broker, client {args.client},"
        f" schemas {args.schemas}:"
    )
    for key, label in (
        ("producer", "producer (POS -> Kafka)"),
        ("consumer", "consumer (Kafka -> storefront)"),
        ("end_to_end", "end to end (reprice)"),
    ):
        f = figures[key]
        cpu = f" , {f['cpu_us']} µs CPU/change" if "cpu_us" in f else ""
        print(f"  {label:32s} {f['changes_per_s']:>9,} changes/s{cpu}")
    e2e = figures["end_to_end"]
    print(
        f"    (end to end: producer {e2e['producer_cpu_us']} µs, consumer {e2e['consumer_cpu_us']} µs CPU/change)"
    )
    j = figures["java_producer"]
    print(
        f"  {'Kafka ProducerPerformance':32s} {j['msgs_per_s']:>9,} records/s ({j['record_size']} B records)"
    )
    print(
        f"  pos-cdc producer / ProducerPerformance: {figures['producer_vs_java']}; target end to end >= 25,000/s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def _rate(n: int, seconds: float, cpu: float | None) -> dict:
    out = {"changes_per_s": round(n / seconds), "seconds": round(seconds, 2)}
    if cpu is not None:
        out["cpu_us"] = round(cpu / n * 1e6, 1)
    return out


def _store_query(dsn: str, sql: str):
    conn = psycopg.connect(dsn, autocommit=True)

    def run():
        try:
            return conn.execute(sql).fetchone()[0]
        except psycopg.errors.UndefinedTable:
            return 0

    return run


def _slot_active(pos_dsn: str) -> bool:
    with psycopg.connect(pos_dsn, autocommit=True) as c:
        return bool(c.execute("SELECT count(*) FROM pg_replication_slots WHERE active").fetchone()[0])


def _record_size(bootstrap: str) -> int:
    """The average key + value size of a sample of pos-cdc's records."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(TOPIC, 0)
        c.assign([tp])
        c.seek(tp, 0)
        sizes: list[int] = []
        deadline = time.monotonic() + 30
        while len(sizes) < 1000 and time.monotonic() < deadline:
            for records in c.poll(500).values():
                sizes += [len(r.key or b"") + len(r.value or b"") for r in records]
        return round(sum(sizes) / max(1, len(sizes)))
    finally:
        c.close()


if __name__ == "__main__":
    main()
