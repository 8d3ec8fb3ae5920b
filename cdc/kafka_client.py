"""pos-cdc's Kafka client: the few calls the Kafka sink, the Kafka source and the operator's tools make, behind
one small interface, with Kafka's errors turned into pos-cdc's: a broker that is away or busy is a
TransientError (the pipeline retries with backoff), anything else a TerminalError that says what Kafka said.

Two clients stand behind the producer and the consumer (`client:` in the connector's Kafka settings):
kafka-python (the default, pure Python) and confluent-kafka (librdkafka, C: ~5x less CPU per record; the
optional extra `pos-cdc[confluent]`, cdc/kafka_confluent.py). `open_producer` and `open_consumer` pick one.
The admin calls (topics, groups, offsets by time) are not on the hot path and always use kafka-python.

- `Producer`: idempotent, acks=all; `send` never blocks on the network; `flush` waits until every record sent
  so far is acknowledged by the broker (or raises, naming the first failure) — the sink confirms nothing to
  its source before that.
- `Consumer`: a member of a consumer group, manual offsets (no auto-commit): it reads, the caller stores the
  offsets in the sink database and then commits them to the group.
- `Admin`: topics, a group's state, members and committed offsets, partition end offsets and offsets by time
  (`cdc replay`, `cdc status`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cdc.errors import TerminalError, TransientError

log = logging.getLogger("cdc.kafka")

TP = tuple[str, int]  # (topic, partition)


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int  # ms since the epoch (the record's CreateTime)


_TRANSIENT = (
    "NoBrokersAvailable",
    "KafkaConnectionError",
    "KafkaTimeoutError",
    "RequestTimedOutError",
    "NodeNotReadyError",
    "NotLeaderForPartitionError",
    "LeaderNotAvailableError",
    "CoordinatorNotAvailableError",
    "NotCoordinatorError",
    "CoordinatorLoadInProgressError",
    "RebalanceInProgressError",
    "NotEnoughReplicasError",
    "NotEnoughReplicasAfterAppendError",
    "BrokerNotAvailableError",
    "UnknownTopicOrPartitionError",
)


def classify(err: BaseException, bootstrap: str, what: str) -> Exception:
    """A kafka-python error -> TransientError (retry) or TerminalError (stop and say what Kafka said)."""
    if isinstance(err, TerminalError | TransientError):
        return err
    name = type(err).__name__
    text = str(err).strip().splitlines()[0] if str(err).strip() else name
    if name in _TRANSIENT or getattr(err, "retriable", False):
        return TransientError(f"Kafka at {bootstrap} unavailable ({what}): {name}: {text}")
    if "Authorization" in name or "Authentication" in name or "Sasl" in name:
        return TerminalError(f"Kafka at {bootstrap} refused pos-cdc ({what}): {name}: {text}")
    return TerminalError(f"Kafka error ({what}): {name}: {text}")


@contextlib.contextmanager
def kafka_errors(bootstrap: str, what: str):
    try:
        yield
    except Exception as e:  # noqa: BLE001 - every kafka-python error is classified
        if isinstance(e, TerminalError | TransientError):
            raise
        raise classify(e, bootstrap, what) from e


def _servers(bootstrap: str) -> list[str]:
    return [s.strip() for s in bootstrap.split(",") if s.strip()]


class Producer:
    def __init__(self, bootstrap: str, options: dict[str, Any] | None = None, **tuning: Any):
        from kafka import KafkaProducer

        self.bootstrap = bootstrap
        self.failures: list[BaseException] = []  # sends that failed since the last flush
        self.sent = 0  # records sent since the last flush
        settings = {"linger_ms": 5, "batch_size": 256 * 1024, **tuning, **(options or {})}
        with kafka_errors(bootstrap, "connecting the producer"):
            # topics are created by pos-cdc with the configured partitions, never by a broker's default
            self._p = KafkaProducer(
                bootstrap_servers=_servers(bootstrap),
                acks="all",
                enable_idempotence=True,
                allow_auto_create_topics=False,
                **settings,
            )
        self._send = self._p.send

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        """Sends without waiting; `partition` None: the client's partitioner picks one (kafka-python's
        murmur2 runs in Python, ~75 µs for a 200-byte key: callers that know better pass one)."""
        try:
            future = self._send(topic, value=value, key=key, partition=partition)
        except Exception as e:  # noqa: BLE001 - a full buffer or a closed producer: the batch cannot be durable
            raise classify(e, self.bootstrap, f"sending to {topic}") from e
        future.add_errback(self.failures.append)
        self.sent += 1

    def flush(self, timeout_s: float = 60.0) -> int:
        """Waits until every record sent is acknowledged; returns how many. Raises TransientError (the
        broker did not acknowledge in time, or refused a record for a retriable reason) or TerminalError."""
        with kafka_errors(self.bootstrap, f"waiting for acknowledgements of {self.sent} records"):
            self._p.flush(timeout=timeout_s)
        if self.failures:
            first, n = self.failures[0], len(self.failures)
            self.failures, self.sent = [], 0
            err = classify(first, self.bootstrap, f"{n} records not acknowledged")
            raise err from first
        sent, self.sent = self.sent, 0
        return sent

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._p.close(timeout=5)


class Consumer:
    """A consumer-group member. `on_assigned(tps)` (returning the offset each partition starts at, where the
    caller knows one) and `on_revoked(tps)` run inside `poll` on the caller's thread, during a rebalance."""

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
        from kafka import ConsumerRebalanceListener, KafkaConsumer

        self.bootstrap = bootstrap
        self.group = group
        settings = {
            "auto_offset_reset": auto_offset_reset,
            "max_poll_records": max_poll_records,
            "fetch_max_bytes": 64 * 1024 * 1024,
            "max_partition_fetch_bytes": 8 * 1024 * 1024,
            **(options or {}),
        }
        with kafka_errors(bootstrap, f"joining consumer group {group}"):
            self._c = KafkaConsumer(
                bootstrap_servers=_servers(bootstrap),
                group_id=group,
                enable_auto_commit=False,
                allow_auto_create_topics=False,  # a reader must not create a topic with the broker's defaults
                **settings,
            )

        consumer = self._c

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                if on_revoked is not None:
                    on_revoked({(tp.topic, tp.partition) for tp in revoked})

            def on_partitions_assigned(self, assigned):
                if on_assigned is not None:
                    starts = on_assigned({(tp.topic, tp.partition) for tp in assigned})
                    for tp in assigned:
                        if (tp.topic, tp.partition) in starts:
                            consumer.seek(tp, starts[(tp.topic, tp.partition)])

        self._listener = _Listener()

    def subscribe(self, topics: list[str] | None = None, pattern: str | None = None) -> None:
        with kafka_errors(self.bootstrap, "subscribing"):
            if pattern:
                self._c.subscribe(pattern=pattern, listener=self._listener)
            else:
                self._c.subscribe(topics, listener=self._listener)

    def poll(self, timeout_ms: int, max_records: int | None = None) -> list[Record]:
        """The next records, each partition's in offset order."""
        with kafka_errors(self.bootstrap, "reading"):
            batches = self._c.poll(timeout_ms=timeout_ms, max_records=max_records)
        out: list[Record] = []
        for tp, records in batches.items():
            t, p = tp.topic, tp.partition
            out.extend(Record(t, p, r.offset, r.key, r.value, r.timestamp) for r in records)
        return out

    def assignment(self) -> set[TP]:
        return {(tp.topic, tp.partition) for tp in self._c.assignment()}

    def commit(self, offsets: dict[TP, int]) -> None:
        """Commits the next offsets to read to the group, without waiting (the sink database has them)."""
        from kafka import OffsetAndMetadata, TopicPartition

        mine = self.assignment()
        todo = {
            TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
            for (t, p), o in offsets.items()
            if (t, p) in mine
        }
        if todo:
            with kafka_errors(self.bootstrap, "committing group offsets"):
                self._c.commit_async(todo, callback=self._committed)

    def _committed(self, offsets, response) -> None:
        if isinstance(response, BaseException):
            log.debug(
                "group %s: offsets not committed (they are stored in the sink): %s", self.group, response
            )

    def lag(self) -> dict[TP, int]:
        """Records behind the end of each assigned partition, as of the last fetch."""
        out = {}
        for tp in self._c.assignment():
            high = self._c.highwater(tp)
            if high is not None:
                with contextlib.suppress(Exception):
                    out[(tp.topic, tp.partition)] = max(0, high - self._c.position(tp, timeout_ms=0))
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._c.close(autocommit=False)


def open_producer(client: str, bootstrap: str, options: dict[str, Any] | None = None, **tuning: Any):
    """The producer of `client` ("kafka-python" or "confluent-kafka")."""
    if client == "confluent-kafka":
        from cdc.kafka_confluent import ConfluentProducer

        return ConfluentProducer(bootstrap, options, **tuning)
    return Producer(bootstrap, options, **tuning)


def open_consumer(client: str, bootstrap: str, group: str, options: dict[str, Any] | None = None, **kw: Any):
    """The consumer-group member of `client` (see Consumer for the arguments)."""
    if client == "confluent-kafka":
        from cdc.kafka_confluent import ConfluentConsumer

        return ConfluentConsumer(bootstrap, group, options, **kw)
    return Consumer(bootstrap, group, options, **kw)


# librdkafka's names of the connection settings -> kafka-python's, for the admin calls of a connector whose
# producer or consumer is confluent-kafka (its `options` are in librdkafka's names)
_LIBRDKAFKA_TO_KAFKA_PYTHON = {
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_plain_username",
    "sasl.password": "sasl_plain_password",
    "ssl.ca.location": "ssl_cafile",
    "ssl.certificate.location": "ssl_certfile",
    "ssl.key.location": "ssl_keyfile",
    "ssl.key.password": "ssl_password",
    "client.id": "client_id",
}


def admin_options(client: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """A connector's client options as the admin calls (always kafka-python) take them."""
    options = options or {}
    if client != "confluent-kafka":
        return options
    return {_LIBRDKAFKA_TO_KAFKA_PYTHON[k]: v for k, v in options.items() if k in _LIBRDKAFKA_TO_KAFKA_PYTHON}


class Admin:
    def __init__(self, bootstrap: str, options: dict[str, Any] | None = None):
        from kafka import KafkaAdminClient

        self.bootstrap = bootstrap
        self.options = options or {}
        with kafka_errors(bootstrap, "connecting"):
            self._a = KafkaAdminClient(bootstrap_servers=_servers(bootstrap), **self.options)
        self._offsets_reader = None

    def topics(self) -> set[str]:
        with kafka_errors(self.bootstrap, "listing topics"):
            return set(self._a.list_topics())

    def ensure_topics(
        self, names: Iterable[str], partitions: int = 1, compact: bool = False, rf: int = -1
    ) -> None:
        """Creates the topics that do not exist yet (another process creating one meanwhile is fine)."""
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        want = sorted(set(names) - self.topics())
        if not want:
            return
        configs = {"cleanup.policy": "compact"} if compact else {}
        for name in want:
            try:
                with kafka_errors(self.bootstrap, f"creating topic {name}"):
                    self._a.create_topics([NewTopic(name, partitions, rf, topic_configs=configs)])
                log.info(
                    "created Kafka topic %s (%d partitions%s)",
                    name,
                    partitions,
                    ", compacted" if compact else "",
                )
            except TerminalError as e:
                if not isinstance(e.__cause__, TopicAlreadyExistsError):
                    raise
        with kafka_errors(self.bootstrap, f"waiting for the leaders of {', '.join(want)}"):
            self._a.wait_for_topics(want, timeout_ms=30_000)  # a new topic takes writes once it has leaders

    def partition_count(self, topic: str) -> int:
        return len(self.partitions(topic))

    def partitions(self, topic: str) -> list[int]:
        with kafka_errors(self.bootstrap, f"describing topic {topic}"):
            (desc,) = self._a.describe_topics([topic])
        if desc.get("error_code"):
            raise TerminalError(f"Kafka topic {topic} does not exist (or cannot be described)")
        return sorted(p["partition_index"] for p in desc["partitions"])

    def group(self, group: str) -> tuple[str, int]:
        """(state, number of members) of a consumer group: 'Dead' or 'Empty' with 0 members when idle."""
        with kafka_errors(self.bootstrap, f"describing group {group}"):
            info = self._a.describe_groups([group])[group]
        return info["group_state"], len(info["members"])

    def group_offsets(self, group: str) -> dict[TP, int]:
        with kafka_errors(self.bootstrap, f"reading group {group}'s offsets"):
            got = self._a.list_group_offsets(group).get(group, {})
        return {(tp.topic, tp.partition): om.offset for tp, om in got.items() if om.offset >= 0}

    def set_group_offsets(self, group: str, offsets: dict[TP, int]) -> None:
        """Sets the group's committed offsets; refused by the broker while the group has members."""
        from kafka import OffsetAndMetadata, TopicPartition

        todo = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        with kafka_errors(self.bootstrap, f"setting group {group}'s offsets"):
            result = self._a.alter_group_offsets(group, todo)
        bad = {
            f"{tp.topic}:{tp.partition}": err.__name__
            for tp, err in result.items()
            if err.__name__ != "NoError"
        }
        if bad:
            raise TerminalError(f"Kafka refused the new offsets of group {group}: {bad}")

    def _reader(self):
        if self._offsets_reader is None:
            from kafka import KafkaConsumer

            with kafka_errors(self.bootstrap, "connecting"):
                self._offsets_reader = KafkaConsumer(
                    bootstrap_servers=_servers(self.bootstrap),
                    enable_auto_commit=False,
                    allow_auto_create_topics=False,
                    **self.options,
                )
        return self._offsets_reader

    def end_offsets(self, tps: Iterable[TP]) -> dict[TP, int]:
        from kafka import TopicPartition

        with kafka_errors(self.bootstrap, "reading end offsets"):
            got = self._reader().end_offsets([TopicPartition(t, p) for t, p in tps])
        return {(tp.topic, tp.partition): o for tp, o in got.items()}

    def beginning_offsets(self, tps: Iterable[TP]) -> dict[TP, int]:
        from kafka import TopicPartition

        with kafka_errors(self.bootstrap, "reading beginning offsets"):
            got = self._reader().beginning_offsets([TopicPartition(t, p) for t, p in tps])
        return {(tp.topic, tp.partition): o for tp, o in got.items()}

    def offsets_for_time(self, tps: Iterable[TP], ts_ms: int) -> dict[TP, int | None]:
        """The first offset at or after `ts_ms` per partition (None: no record that late)."""
        from kafka import TopicPartition

        with kafka_errors(self.bootstrap, "looking up offsets by time"):
            got = self._reader().offsets_for_times({TopicPartition(t, p): ts_ms for t, p in tps})
        return {(tp.topic, tp.partition): (None if v is None else v.offset) for tp, v in got.items()}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._a.close()
        if self._offsets_reader is not None:
            with contextlib.suppress(Exception):
                self._offsets_reader.close()
