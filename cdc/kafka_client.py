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
- `Admin` (cdc/kafka_admin.py): topics, a group's state, members and committed offsets, partition end offsets
  and offsets by time (`cdc replay`, `cdc status`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cdc.errors import TerminalError, TransientError

log = logging.getLogger("cdc.kafka")

TP = tuple[str, int]  # (topic, partition)
JOIN_STUCK_S = 20.0  # a consumer not in a stable group for this long is made anew (Consumer._check_joined)
TOPIC_CHECK_S = 1.0  # how often a consumer waiting for its topics to exist looks again


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


def reachable(bootstrap: str, timeout_s: float = 5.0) -> None:
    """Raises TransientError unless some broker of `bootstrap` accepts a connection. kafka-python's own
    metadata calls wait forever for a broker that is gone, and its poll() just returns nothing: without this
    a Kafka source would look idle and caught up while its brokers are down."""
    import socket

    for server in _servers(bootstrap):
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=timeout_s):
                return
        except (OSError, ValueError):
            continue
    raise TransientError(f"Kafka at {bootstrap} unavailable: no broker accepts a connection")


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


METADATA_REFRESH_MS = 10_000


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
        self._options = dict(options or {})
        settings = {
            "auto_offset_reset": auto_offset_reset,
            "max_poll_records": max_poll_records,
            "fetch_max_bytes": 64 * 1024 * 1024,
            "max_partition_fetch_bytes": 8 * 1024 * 1024,
            # a topic_pattern subscription finds a new topic (a table added to the publication) at the next
            # metadata refresh: every 10 s, not the client's 5 min
            "metadata_max_age_ms": METADATA_REFRESH_MS,
            **(options or {}),
        }

        def make() -> KafkaConsumer:
            with kafka_errors(bootstrap, f"joining consumer group {group}"):
                return KafkaConsumer(
                    bootstrap_servers=_servers(bootstrap),
                    group_id=group,
                    enable_auto_commit=False,
                    allow_auto_create_topics=False,  # a reader must not create a topic with the broker's defaults
                    **settings,
                )

        self._make = make
        self._c = make()
        self._subscription: tuple = ()
        self._missing: set[str] = set()  # subscribed topics that do not exist yet (Consumer.subscribe)
        self._missing_checked = 0.0
        self._unjoined_since: float | None = None
        self._listener_error: BaseException | None = None
        outer = self

        class _Listener(ConsumerRebalanceListener):
            # kafka-python runs these on its IO thread and turns what they raise into a KafkaError that hides
            # it (a storefront away during a rebalance would read as a terminal Kafka error): the error is
            # kept and raised by poll() as it is
            def on_partitions_revoked(self, revoked):
                try:
                    if on_revoked is not None:
                        on_revoked({(tp.topic, tp.partition) for tp in revoked})
                except BaseException as e:  # noqa: BLE001 - re-raised by poll()
                    outer._listener_error = e

            def on_partitions_assigned(self, assigned):
                try:
                    if on_assigned is not None:
                        starts = on_assigned({(tp.topic, tp.partition) for tp in assigned})
                        for tp in assigned:
                            if (tp.topic, tp.partition) in starts:
                                outer._c.seek(tp, starts[(tp.topic, tp.partition)])
                except BaseException as e:  # noqa: BLE001 - re-raised by poll()
                    outer._listener_error = e

        self._listener = _Listener()

    def subscribe(self, topics: list[str] | None = None, pattern: str | None = None) -> None:
        """Joins the group for `topics` (or a `pattern`). A named topic that does not exist yet is waited for
        (poll returns nothing meanwhile) and the group joined once all exist: kafka-python 3.0.12's
        subscription metadata creates a missing topic with the broker's defaults (one partition, when the
        broker allows auto-creation) whatever allow_auto_create_topics says, and the connector writing it
        would then find it made with the wrong partition count."""
        self._subscription = (topics, pattern)
        if not pattern:
            self._missing = set(topics or ()) - self._existing()
            self._missing_checked = time.monotonic()
            if self._missing:
                return
        self._join()

    def _existing(self) -> set[str]:
        """The topics the cluster has, asked by an admin client of its own: asking the group member itself
        (KafkaConsumer.topics) before it subscribes left kafka-python 3.0.12's later group join stuck."""
        from kafka import KafkaAdminClient

        security = {k: v for k, v in self._options.items() if k.startswith(("security_", "ssl_", "sasl_"))}
        with kafka_errors(self.bootstrap, "listing topics"):
            admin = KafkaAdminClient(bootstrap_servers=_servers(self.bootstrap), **security)
            try:
                return set(admin.list_topics())
            finally:
                admin.close()

    def _join(self) -> None:
        topics, pattern = self._subscription
        with kafka_errors(self.bootstrap, "subscribing"):
            if pattern:
                self._c.subscribe(pattern=pattern, listener=self._listener)
            else:
                self._c.subscribe(topics, listener=self._listener)

    def _topics_ready(self, timeout_ms: int) -> bool:
        """Whether the subscribed topics all exist (joining the group when the last one appears); waits up
        to `timeout_ms` otherwise."""
        if not self._missing:
            return True
        now = time.monotonic()
        if now - self._missing_checked >= TOPIC_CHECK_S:
            self._missing_checked = now
            self._missing -= self._existing()
            if not self._missing:
                self._join()
                return True
        time.sleep(min(timeout_ms / 1000, TOPIC_CHECK_S))
        return False

    def poll(self, timeout_ms: int, max_records: int | None = None) -> list[Record]:
        """The next records, each partition's in offset order."""
        if not self._topics_ready(timeout_ms):
            return []
        try:
            with kafka_errors(self.bootstrap, "reading"):
                batches = self._c.poll(timeout_ms=timeout_ms, max_records=max_records)
        finally:
            error, self._listener_error = self._listener_error, None
            if error is not None:
                raise error
        if not batches:
            self._check_joined()
        out: list[Record] = []
        for tp, records in batches.items():
            t, p = tp.topic, tp.partition
            out.extend(Record(t, p, r.offset, r.key, r.value, r.timestamp) for r in records)
        return out

    def assignment(self) -> set[TP]:
        return {(tp.topic, tp.partition) for tp in self._c.assignment()}

    def check_alive(self) -> None:
        reachable(self.bootstrap)

    def bounds(self, tps: set[TP]) -> dict[TP, tuple[int, int]]:
        """(first offset Kafka still has, end offset) of each partition."""
        from kafka import TopicPartition

        parts = [TopicPartition(t, p) for t, p in tps]
        with kafka_errors(self.bootstrap, "reading partition bounds"):
            low, high = self._c.beginning_offsets(parts), self._c.end_offsets(parts)
        return {(tp.topic, tp.partition): (low[tp], high[tp]) for tp in parts}

    def start_offset(self, tp: TP) -> int:
        """The offset the consumer reads `tp` from (the group's committed offset, or its reset policy)."""
        from kafka import TopicPartition

        with kafka_errors(self.bootstrap, f"resolving where {tp[0]}:{tp[1]} starts"):
            return self._c.position(TopicPartition(*tp))

    def _check_joined(self) -> None:
        """kafka-python 3.0.12 now and then loses a group join whose reply comes between two polls: the
        broker counts the member in, the client never gets its partitions nor heartbeats, and the broker
        drops it later, without a word (tests/integration/test_kafka_broker.py shows it). A member not in a
        stable group for JOIN_STUCK_S is closed (out of the group) and made anew (its partitions may still be
        listed then: eager revocation keeps them, unfetched, until the join completes); an idle member of a
        stable group (more members than partitions) is left alone."""
        coordinator = getattr(self._c, "_coordinator", None)
        stable = getattr(coordinator, "generation_if_stable", lambda: True)() is not None
        if stable or not self._subscription:
            self._unjoined_since = None
            return
        now = time.monotonic()
        self._unjoined_since = self._unjoined_since or now
        if now - self._unjoined_since < JOIN_STUCK_S:
            return
        log.warning(
            "consumer group %s: no partitions after %.0f s of joining (a join kafka-python lost); joining again",
            self.group,
            now - self._unjoined_since,
        )
        self._unjoined_since = None
        with contextlib.suppress(Exception):
            self._c.close(autocommit=False)
        self._c = self._make()
        self.subscribe(*self._subscription)

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
