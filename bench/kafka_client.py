#!/usr/bin/env python
"""How fast a Python process can move change events through the local Kafka broker, against Kafka's own Java
producer in the same run: can the Kafka transport carry ~25k changes/s end to end?

    python bench/kafka_client.py [--messages N] [--size BYTES] [--partitions P] [--linger-ms MS]
                                 [--batch-size BYTES] [--client kafka-python|confluent|all] [--no-java]

One throwaway broker (cdc.localkafka.LocalKafka). For each client, a fresh topic; N keyed JSON values of
about --size bytes (a Debezium-style change envelope, encoded before the clock starts, so the figure is the
client's and the broker's, not json.dumps's):

* produce — an idempotent producer with acks=all sends all N and flushes; every future is then checked to
            have succeeded (an acknowledged offset), so a figure never counts a lost message;
* consume — a consumer in a fresh group reads all N back from the beginning (values as bytes);
* end to end — a producer process and a consumer process of the same client at once (as a Kafka transport
            runs them): from the first send until the consumer has the last message;
* java    — org.apache.kafka.tools.ProducerPerformance from the same jars, same record size and count,
            acks=all, idempotence on, the same linger and batch size (its own process and JVM).

kafka-python is measured as installed: with pos-cdc's `kafka-python[crc32c]` its record-batch checksums are
C; without the `crc32c` package they are pure Python (the header line says which).
confluent-kafka is measured only when it is installed (`pip install confluent-kafka`); it is not a
dependency of pos-cdc. The machine has 2 cores and the broker runs beside the client: the figures are for
comparison within one run, not absolute.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cdc.localkafka import LocalKafka  # noqa: E402


def make_values(n: int, size: int) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs: a change envelope padded to about `size` bytes, keys spread over 10k SKUs."""
    out = []
    for i in range(n):
        sku = f"SKU-{i % 10000:06d}"
        env = {
            "before": None,
            "after": {
                "sku": sku,
                "store_id": 900,
                "channel": "online",
                "price": f"{(i % 9000) / 100 + 1:.2f}",
            },
            "source": {"connector": "pos-cdc", "db": "pos", "table": "item_price", "lsn": 123456789 + i},
            "op": "u",
            "ts_ms": 1796000000000 + i,
            "pad": "",
        }
        raw = json.dumps(env, separators=(",", ":"))
        env["pad"] = "x" * max(0, size - len(raw))
        out.append((sku.encode(), json.dumps(env, separators=(",", ":")).encode()))
    return out


def rate(n: int, nbytes: int, seconds: float, cpu: float | None = None) -> dict:
    """Throughput, and the CPU the client's process spent per message (all its threads: the caller's and
    the client's IO thread), which is what the message costs a pos-cdc process already busy with the rest
    of the pipeline."""
    out = {
        "msgs": n,
        "seconds": round(seconds, 3),
        "msgs_per_s": round(n / seconds),
        "mb_per_s": round(nbytes / seconds / 1e6, 1),
        "done_at": time.time(),
    }
    if cpu is not None:
        out["cpu_us"] = round(cpu / n * 1e6)
        out["summary"] = f"{out['cpu_us']} us CPU/msg"
    return out


def kafka_python_produce(
    bootstrap: str, topic: str, values, linger_ms: int, batch_size: int, on_ready=None
) -> dict:
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=linger_ms,
        batch_size=batch_size,
    )
    send = producer.send
    if on_ready:
        on_ready()
    t0, c0 = time.perf_counter(), time.process_time()
    futures = [send(topic, value=v, key=k) for k, v in values]
    producer.flush()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    failed = [f for f in futures if not f.succeeded()]
    producer.close()
    if failed:
        raise SystemExit(
            f"kafka-python: {len(failed)} of {len(futures)} sends failed: {failed[0].exception!r}"
        )
    return rate(len(values), sum(len(v) for _, v in values), seconds, cpu)


def kafka_python_consume(bootstrap: str, topic: str, n: int, on_ready=None) -> dict:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=5000,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    if on_ready:
        while not consumer.assignment():
            consumer.poll(100)
        on_ready()
    got = nbytes = 0
    t0 = None
    deadline = time.monotonic() + 300
    while got < n and time.monotonic() < deadline:
        for records in consumer.poll(1000).values():
            if t0 is None:
                # from the first batch: the group join is not the client's speed
                t0, c0 = time.perf_counter(), time.process_time()
            got += len(records)
            nbytes += sum(len(r.value) for r in records)
    seconds = time.perf_counter() - (t0 or time.perf_counter())
    cpu = time.process_time() - c0 if t0 else None
    consumer.commit()
    consumer.close()
    if got < n:
        raise SystemExit(f"kafka-python consumer read {got} of {n} messages in 300 s")
    return rate(got, nbytes, seconds, cpu)


def confluent_produce(
    bootstrap: str, topic: str, values, linger_ms: int, batch_size: int, on_ready=None
) -> dict:
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": linger_ms,
            "batch.size": batch_size,
            "queue.buffering.max.kbytes": 65536,
        }
    )
    failed: list = []
    acked = [0]

    def on_delivery(err, msg):
        if err is not None:
            failed.append(err)
        else:
            acked[0] += 1

    if on_ready:
        on_ready()
    t0, c0 = time.perf_counter(), time.process_time()
    for k, v in values:
        while True:
            try:
                producer.produce(topic, v, k, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if failed or acked[0] != len(values):
        raise SystemExit(f"confluent-kafka: {len(failed)} failed, {acked[0]} of {len(values)} acknowledged")
    return rate(len(values), sum(len(v) for _, v in values), seconds, cpu)


def confluent_consume(bootstrap: str, topic: str, n: int, on_ready=None) -> dict:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    if on_ready:
        while not consumer.assignment():
            consumer.poll(0.1)
        on_ready()
    got = nbytes = 0
    t0 = None
    deadline = time.monotonic() + 300
    while got < n and time.monotonic() < deadline:
        for msg in consumer.consume(5000, 1.0):
            if msg.error():
                raise SystemExit(f"confluent-kafka consumer: {msg.error()}")
            if t0 is None:
                t0, c0 = time.perf_counter(), time.process_time()
            got += 1
            nbytes += len(msg.value())
    seconds = time.perf_counter() - (t0 or time.perf_counter())
    cpu = time.process_time() - c0 if t0 else None
    consumer.close()
    if got < n:
        raise SystemExit(f"confluent-kafka consumer read {got} of {n} messages in 300 s")
    return rate(got, nbytes, seconds, cpu)


def java_produce(kafka: LocalKafka, topic: str, n: int, size: int, linger_ms: int, batch_size: int) -> dict:
    """Kafka's own producer benchmark, from the jars the broker runs."""
    cmd = [
        kafka.java,
        "-Xmx512m",
        f"-Dlog4j2.configurationFile={kafka.base / 'log4j2.properties'}",
        "-cp",
        str(kafka.libs / "*"),
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        topic,
        "--num-records",
        str(n),
        "--record-size",
        str(size),
        "--throughput",
        "-1",
        "--producer-props",
        f"bootstrap.servers={kafka.bootstrap}",
        "acks=all",
        "enable.idempotence=true",
        f"linger.ms={linger_ms}",
        f"batch.size={batch_size}",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the finished java process only
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    # every few seconds "N records sent, X records/sec (Y MB/sec), ..." for that window; the last such line
    # is the summary of the whole run
    found = re.findall(r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\)", out.stdout)
    m = found[-1] if found else None
    if out.returncode != 0 or not m:
        raise SystemExit(
            f"ProducerPerformance failed ({out.returncode}):\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
        )
    msgs_per_s = float(m[1])
    return {
        "msgs": int(m[0]),
        "msgs_per_s": round(msgs_per_s),
        "mb_per_s": round(msgs_per_s * size / 1e6, 1),  # its "MB" is MiB; this is the same unit as above
        "summary": f"{cpu / n * 1e6:.0f} us CPU/msg incl. JVM start; " + out.stdout.strip().splitlines()[-1],
    }


CLIENTS = {
    "kafka-python": (kafka_python_produce, kafka_python_consume),
    "confluent": (confluent_produce, confluent_consume),
}


def role(args) -> None:
    """One side of the end-to-end run, in a process of its own: says "ready" once set up (the consumer
    assigned its partitions, the producer its values encoded), waits for "go" (producer), then prints its
    result as JSON."""
    produce, consume = CLIENTS[args.client]

    def ready() -> None:
        print("ready", flush=True)
        if args.role == "produce":
            sys.stdin.readline()

    if args.role == "produce":
        values = make_values(args.messages, args.size)
        result = produce(args.bootstrap, args.topic, values, args.linger_ms, args.batch_size, ready)
    else:
        result = consume(args.bootstrap, args.topic, args.messages, ready)
    print(json.dumps(result), flush=True)


def end_to_end(kafka: LocalKafka, client: str, args) -> dict:
    """A producer process and a consumer process at once, as a Kafka transport would run: the time from
    the producer's first send until the consumer has read the last message."""
    topic = kafka.create_topic(f"bench-e2e-{client}-{uuid.uuid4().hex[:6]}", args.partitions)
    common = [sys.executable, __file__, "--client", client, "--bootstrap", kafka.bootstrap, "--topic", topic]
    common += ["--messages", str(args.messages), "--size", str(args.size)]
    common += ["--linger-ms", str(args.linger_ms), "--batch-size", str(args.batch_size)]
    run = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    consumer = subprocess.Popen([*common, "--role", "consume"], **run)
    producer = subprocess.Popen([*common, "--role", "produce"], **run)
    for proc in (consumer, producer):
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"end-to-end {client}: a side failed to start")
    t0 = time.time()
    producer.stdin.write("go\n")
    producer.stdin.flush()
    produced = json.loads(producer.stdout.readline())
    consumed = json.loads(consumer.stdout.readline())
    producer.wait()
    consumer.wait()
    seconds = consumed["done_at"] - t0
    return {
        "msgs_per_s": round(args.messages / seconds),
        "mb_per_s": round(args.messages * args.size / seconds / 1e6, 1),
        "summary": f"{seconds:.2f} s; CPU/msg producer {produced['cpu_us']} us, consumer {consumed['cpu_us']} us",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=600)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--linger-ms", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=512 * 1024)
    ap.add_argument("--client", choices=["kafka-python", "confluent", "all"], default="all")
    ap.add_argument("--no-java", action="store_true")
    ap.add_argument("--role", choices=["produce", "consume"], help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    ap.add_argument("--topic", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        return role(args)

    clients = ["kafka-python", "confluent"] if args.client == "all" else [args.client]
    if "confluent" in clients:
        try:
            import confluent_kafka  # noqa: F401
        except ImportError:
            if args.client == "confluent":
                raise SystemExit("confluent-kafka is not installed: pip install confluent-kafka") from None
            clients.remove("confluent")

    values = make_values(args.messages, args.size)
    if "kafka-python" in clients:
        import kafka.record.util

        # kafka-python checksums every record batch; in pure Python that is ~3x slower to produce
        native = getattr(kafka.record.util, "_crc32c", None).__module__ != "kafka.record._crc32c"
        print(f"kafka-python {__import__('kafka').__version__}, crc32c: {'C' if native else 'pure Python'}")
    print(
        f"{args.messages} messages, values {len(values[0][1])}-{max(len(v) for _, v in values)} bytes, "
        f"{args.partitions} partition(s), linger.ms={args.linger_ms}, batch.size={args.batch_size}"
    )
    with LocalKafka() as kafka:
        print(f"broker {kafka.bootstrap} started in {kafka.start_seconds:.1f} s")
        results = {}
        for client in clients:
            produce, consume = CLIENTS[client]
            topic = kafka.create_topic(f"bench-{client}-{uuid.uuid4().hex[:6]}", args.partitions)
            results[f"{client} produce"] = produce(
                kafka.bootstrap, topic, values, args.linger_ms, args.batch_size
            )
            results[f"{client} consume"] = consume(kafka.bootstrap, topic, args.messages)
            results[f"{client} end to end"] = end_to_end(kafka, client, args)
        if not args.no_java:
            topic = kafka.create_topic(f"bench-java-{uuid.uuid4().hex[:6]}", args.partitions)
            results["java ProducerPerformance"] = java_produce(
                kafka, topic, args.messages, len(values[0][1]), args.linger_ms, args.batch_size
            )
    for name, r in results.items():
        print(f"{name:28s} {r['msgs_per_s']:>9,} msgs/s {r['mb_per_s']:>7} MB/s  {r.get('summary', '')}")


if __name__ == "__main__":
    main()
