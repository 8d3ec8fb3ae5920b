"""The producer and consumer of cdc/kafka_client.py on confluent-kafka (librdkafka), for `client:
confluent-kafka`: the same methods, the same guarantees (idempotent acks=all producer whose `flush` raises
unless every record was acknowledged; a group member with manual offsets), ~5x less CPU per record than
kafka-python, which matters when a connector moves tens of thousands of changes a second.

Installed with the extra `pos-cdc[confluent]`; without it, choosing the client is a TerminalError saying so.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from cdc.errors import TerminalError, TransientError
from cdc.kafka_client import TP, Record

log = logging.getLogger("cdc.kafka")
LIBRDKAFKA_LOG = logging.getLogger("kafka.librdkafka")  # its own log lines (else printed to stderr)


def _module():
    try:
        import confluent_kafka
    except ImportError:
        raise TerminalError(
            "client: confluent-kafka is not installed: pip install 'pos-cdc[confluent]' (or choose kafka-python)"
        ) from None
    return confluent_kafka


def classify(err: Any, bootstrap: str, what: str) -> Exception:
    """A librdkafka error (KafkaError, or a KafkaException carrying one) -> TransientError or TerminalError."""
    if isinstance(err, TerminalError | TransientError):
        return err
    kerr = err.args[0] if err.__class__.__name__ == "KafkaException" and err.args else err
    text = kerr.str() if hasattr(kerr, "str") else str(kerr)
    name = kerr.name() if hasattr(kerr, "name") else type(kerr).__name__
    if hasattr(kerr, "fatal") and kerr.fatal():
        return TerminalError(f"Kafka error ({what}): {name}: {text}")
    if "AUTHORIZATION" in name or "AUTHENTICATION" in name or "SASL" in name:
        return TerminalError(f"Kafka at {bootstrap} refused pos-cdc ({what}): {name}: {text}")
    if name in ("MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE"):
        return TerminalError(
            f"Kafka refused a record as too large ({what}): raise the topic's max.message.bytes (and the "
            "producer's message.max.bytes in options), or leave the large column out with a drop stage"
        )
    if name in _TRANSIENT_LOCAL or (hasattr(kerr, "retriable") and kerr.retriable()):
        return TransientError(f"Kafka at {bootstrap} unavailable ({what}): {name}: {text}")
    return TerminalError(f"Kafka error ({what}): {name}: {text}")


# librdkafka's local errors that mean the brokers are away or slow (the others: a setting to fix)
_TRANSIENT_LOCAL = frozenset(
    (
        "_TRANSPORT",
        "_ALL_BROKERS_DOWN",
        "_MSG_TIMED_OUT",
        "_TIMED_OUT",
        "_TIMED_OUT_QUEUE",
        "_RESOLVE",
        "_WAIT_COORD",
        "_DESTROY",
        "_IN_PROGRESS",
        "_PREV_IN_PROGRESS",
        "_UNKNOWN_PARTITION",
        "_UNKNOWN_TOPIC",
        "_NOENT",
    )
)


class ConfluentProducer:
    def __init__(self, bootstrap: str, options: dict[str, Any] | None = None, **tuning: Any):
        ck = _module()
        self.bootstrap = bootstrap
        self.failures: list[Any] = []
        self.sent = 0
        conf = {
            "bootstrap.servers": bootstrap,
            "linger.ms": tuning.get("linger_ms", 5),
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            **(options or {}),
            "acks": "all",
            "enable.idempotence": True,
            "on_delivery": self._delivered,
            "delivery.report.only.error": True,  # the callback runs for failures only
            "error_cb": self._error,
            "logger": LIBRDKAFKA_LOG,
        }
        try:
            self._p = ck.Producer(conf)
        except ck.KafkaException as e:
            raise classify(e, bootstrap, "configuring the producer") from e

    def _delivered(self, err, _msg) -> None:
        if err is not None:
            self.failures.append(err)

    def _error(self, err) -> None:
        log.debug("Kafka client error (librdkafka retries): %s", err)

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        produce = self._p.produce
        for _ in range(600):
            try:
                if partition is None:
                    produce(topic, value, key)
                else:
                    produce(topic, value, key, partition)
                break
            except BufferError:  # the local queue is full: let librdkafka send some, then try again
                self._p.poll(0.1)
            except _module().KafkaException as e:  # e.g. larger than message.max.bytes
                raise classify(e, self.bootstrap, f"sending to {topic}") from e
        else:
            raise TransientError(
                f"Kafka at {self.bootstrap} takes no records: the producer's queue stayed full"
            )
        self.sent += 1
        if not self.sent & 0x3FFF:
            self._p.poll(0)  # serve delivery reports now and then, not only at flush

    def flush(self, timeout_s: float = 60.0) -> int:
        left = self._p.flush(timeout_s)
        sent, self.sent = self.sent, 0
        if left:
            raise TransientError(
                f"Kafka at {self.bootstrap} acknowledged {sent - left} of {sent} records within {timeout_s:.0f}s"
            )
        if self.failures:
            first, n = self.failures[0], len(self.failures)
            self.failures.clear()
            raise classify(first, self.bootstrap, f"{n} records not acknowledged")
        return sent

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._p.flush(5)


class ConfluentConsumer:
    """See cdc.kafka_client.Consumer: the same calls and callbacks."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        options: dict[str, Any] | None = None,
        on_assigned: Callable[[set[TP]], dict[TP, int]] | None = None,
        on_revoked: Callable[[set[TP]], None] | None = None,
        max_poll_records: int = 5000,
        auto_offset_reset: str = "earliest",
    ):
        ck = self._ck = _module()
        self.bootstrap, self.group = bootstrap, group
        self.max_records = max_poll_records
        self.auto_offset_reset = auto_offset_reset
        self._on_assigned, self._on_revoked = on_assigned, on_revoked
        conf = {
            "bootstrap.servers": bootstrap,
            "auto.offset.reset": auto_offset_reset,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 8 * 1024 * 1024,
            "topic.metadata.refresh.interval.ms": 10_000,  # a new topic of a pattern found within 10 s
            **(options or {}),
            "group.id": group,
            "partition.assignment.strategy": "range",  # eager: a rebalance revokes everything (Abandon)
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "allow.auto.create.topics": False,
            "error_cb": lambda err: log.debug("Kafka client error (librdkafka retries): %s", err),
            "logger": LIBRDKAFKA_LOG,
        }
        try:
            self._c = ck.Consumer(conf)
        except ck.KafkaException as e:
            raise classify(e, bootstrap, f"joining consumer group {group}") from e

    def _assign(self, consumer, partitions) -> None:
        starts = {}
        if self._on_assigned is not None:
            starts = self._on_assigned({(p.topic, p.partition) for p in partitions})
        for p in partitions:
            if (p.topic, p.partition) in starts:
                p.offset = starts[(p.topic, p.partition)]
        consumer.assign(partitions)

    def _revoke(self, consumer, partitions) -> None:
        if self._on_revoked is not None:
            self._on_revoked({(p.topic, p.partition) for p in partitions})
        consumer.unassign()

    def subscribe(self, topics: list[str] | None = None, pattern: str | None = None) -> None:
        names = [f"^{pattern}"] if pattern else list(topics or ())
        try:
            self._c.subscribe(names, on_assign=self._assign, on_revoke=self._revoke)
        except self._ck.KafkaException as e:
            raise classify(e, self.bootstrap, "subscribing") from e

    def poll(self, timeout_ms: int, max_records: int | None = None) -> list[Record]:
        try:
            messages = self._c.consume(max_records or self.max_records, timeout_ms / 1000)
        except self._ck.KafkaException as e:
            raise classify(e, self.bootstrap, "reading") from e
        out = []
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() in (
                    self._ck.KafkaError._PARTITION_EOF,
                    self._ck.KafkaError.UNKNOWN_TOPIC_OR_PART,
                ):
                    continue  # the end of a partition; a topic not created yet (waited for, as kafka-python)
                raise classify(err, self.bootstrap, "reading")
            out.append(Record(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1]))
        return out

    def assignment(self) -> set[TP]:
        return {(p.topic, p.partition) for p in self._c.assignment()}

    def bounds(self, tps: set[TP]) -> dict[TP, tuple[int, int]]:
        out = {}
        for t, p in tps:
            try:
                out[(t, p)] = self._c.get_watermark_offsets(self._ck.TopicPartition(t, p), timeout=10)
            except self._ck.KafkaException as e:
                raise classify(e, self.bootstrap, "reading partition bounds") from e
        return out

    def start_offset(self, tp: TP) -> int:
        """The group's committed offset, else the end `auto.offset.reset` picks."""
        ck = self._ck
        try:
            (now,) = self._c.position([ck.TopicPartition(*tp)])
            if now.offset >= 0:  # where it is already reading
                return now.offset
            (got,) = self._c.committed([ck.TopicPartition(*tp)], timeout=10)
            if got.offset >= 0:
                return got.offset
            low, high = self._c.get_watermark_offsets(ck.TopicPartition(*tp), timeout=10)
        except ck.KafkaException as e:
            raise classify(e, self.bootstrap, f"resolving where {tp[0]}:{tp[1]} starts") from e
        return low if self.auto_offset_reset == "earliest" else high

    def check_alive(self) -> None:
        """Raises TransientError unless the cluster answers a metadata request (librdkafka retries quietly
        while brokers are down: consume() just returns nothing)."""
        try:
            self._c.list_topics(timeout=10)
        except self._ck.KafkaException as e:
            raise classify(e, self.bootstrap, "checking the brokers") from e

    def commit(self, offsets: dict[TP, int]) -> None:
        mine = self.assignment()
        todo = [self._ck.TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in mine]
        if todo:
            try:
                self._c.commit(offsets=todo, asynchronous=True)
            except self._ck.KafkaException as e:  # the sink database has them; the group catches up next time
                log.debug("group %s: offsets not committed: %s", self.group, e)

    def lag(self) -> dict[TP, int]:
        out = {}
        for p in self._c.position(self._c.assignment()):
            with contextlib.suppress(Exception):
                _, high = self._c.get_watermark_offsets(p, cached=True)
                if high >= 0 and p.offset >= 0:
                    out[(p.topic, p.partition)] = max(0, high - p.offset)
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._c.close()
