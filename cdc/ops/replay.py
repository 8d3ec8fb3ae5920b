"""`cdc replay`: rewind (or skip ahead) a Kafka-sourced connector, with the semantics of
`kafka-consumer-groups --reset-offsets`.

A dry run prints the plan — per partition the current offset (the one stored in the sink database, which the
connector resumes from; the group's committed offset where the sink has none), the new one, and how many
records that replays (or skips). `--execute` applies it to both the stored positions and the group's
committed offsets, and is refused while the group has active members (the connector is running).

Replaying is safe for the storefront: the sink applies a change only when it is not older than the row's
recorded POS position, so a row never moves back, and the same change again puts back a row that was changed
by hand. A PostgreSQL source cannot be rewound (a replication slot only moves forward): see `--resnapshot`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from cdc.config import ConnectorConfig
from cdc.errors import CdcError, TerminalError
from cdc.kafka_admin import Admin, admin_options
from cdc.kafka_client import TP
from cdc.ops.kafka_status import topic_partitions

_DURATION = re.compile(
    r"^(?P<sign>-)?P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


@dataclass
class Move:
    topic: str
    partition: int
    current: int | None  # stored in the sink (or the group's), None: never read
    new: int
    beginning: int
    end: int

    @property
    def replays(self) -> int:
        """Records read again (positive) or skipped (negative) compared with the current offset."""
        start = self.current if self.current is not None else self.beginning
        return start - self.new

    def as_dict(self) -> dict:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "current": self.current,
            "new": self.new,
            "records_to_replay": max(0, self.replays),
            "records_skipped": max(0, -self.replays),
        }


def parse_duration(text: str) -> dt.timedelta:
    """An ISO 8601 duration as kafka-consumer-groups takes it: PnDTnHnMnS (and weeks); months and years
    are refused (they have no fixed length)."""
    m = _DURATION.match(text.strip().upper())
    if not m or text.strip().upper() in ("P", "PT", "-P", "-PT"):
        raise CdcError(f"--by-duration: {text!r} is not an ISO 8601 duration such as PT30M, PT2H or P1DT12H")
    d = dt.timedelta(
        weeks=int(m["w"] or 0),
        days=int(m["d"] or 0),
        hours=int(m["h"] or 0),
        minutes=int(m["m"] or 0),
        seconds=float(m["s"] or 0),
    )
    return -d if m["sign"] else d


def parse_datetime(text: str) -> dt.datetime:
    """ISO 8601; without an offset it is the local time, as kafka-consumer-groups reads it."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise CdcError(
            f"--to-datetime: {text!r} is not an ISO 8601 time such as 2026-12-03T10:00:00+08:00"
        ) from None
    return when if when.tzinfo else when.astimezone()


def parse_offsets(text: str) -> dict[TP, int]:
    """TOPIC:PARTITION:OFFSET,... (the topic may contain dots, not colons)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        topic, _, rest = part.rpartition(":")
        topic, _, partition = topic.rpartition(":")
        if not topic or not partition.isdigit() or not rest.lstrip("-").isdigit():
            raise CdcError(f"--to-offset: {part!r} is not TOPIC:PARTITION:OFFSET")
        out[(topic, int(partition))] = int(rest)
    return out


def plan(cfg: ConnectorConfig, admin: Admin, stored: dict[TP, int], how: str, arg) -> list[Move]:
    """The moves for `how` (earliest, latest, offset, datetime, duration, shift) over the connector's
    partitions; a partition not named by --to-offset keeps its offset."""
    s = cfg.source
    tps = topic_partitions(admin, cfg)
    if not tps:
        raise TerminalError(
            f"none of the topics {s.topic_pattern or ', '.join(s.topics)} exist: nothing to replay"
        )
    group = admin.group_offsets(s.group)
    first, end = admin.beginning_offsets(tps), admin.end_offsets(tps)
    current = {tp: stored.get(tp, group.get(tp)) for tp in tps}
    if how == "earliest":
        new = dict(first)
    elif how == "latest":
        new = dict(end)
    elif how == "offset":
        unknown = sorted(set(arg) - set(tps))
        if unknown:
            raise CdcError(
                "--to-offset: the connector does not read " + ", ".join(f"{t}:{p}" for t, p in unknown)
            )
        new = {tp: arg.get(tp, current[tp] if current[tp] is not None else first[tp]) for tp in tps}
    elif how in ("datetime", "duration"):
        when = arg if how == "datetime" else dt.datetime.now(dt.UTC) - arg
        found = admin.offsets_for_time(tps, int(when.timestamp() * 1000))
        new = {tp: end[tp] if found.get(tp) is None else found[tp] for tp in tps}
    elif how == "shift":
        new = {tp: (current[tp] if current[tp] is not None else first[tp]) + arg for tp in tps}
    else:  # pragma: no cover - the CLI offers only the above
        raise ValueError(how)
    return [
        Move(
            t,
            p,
            current[(t, p)],
            min(max(new[(t, p)], first[(t, p)]), end[(t, p)]),
            first[(t, p)],
            end[(t, p)],
        )
        for t, p in tps
    ]


def refuse_while_active(admin: Admin, group: str) -> None:
    state, members = admin.group(group)
    if members:
        raise TerminalError(
            f"consumer group {group} has {members} active member(s) ({state}): the connector is running; stop "
            "every process of it first (e.g. systemctl stop cdc@NAME), then run cdc replay again"
        )


def replay(cfg: ConnectorConfig, how: str, arg, execute: bool) -> tuple[list[Move], bool]:
    """The plan, and whether it was applied. Refuses (TerminalError) a PostgreSQL source, and --execute while
    the group is active."""
    if cfg.source.type != "kafka":
        raise TerminalError(
            f"{cfg.name} reads PostgreSQL: a replication slot cannot be rewound (the POS server has recycled the "
            f"WAL behind it). To copy the tables again, run `cdc run {cfg.path or 'CONFIG'} --resnapshot`; to "
            "replay from an offset, run pos-cdc over Kafka (README: Scale out with Kafka)"
        )
    from cdc.sinks.base import build_sink
    from cdc.sources.kafka import KafkaPosition, KafkaSource, stored_offsets

    s = cfg.source
    sink = build_sink(cfg)
    sink.open()
    admin = Admin(s.bootstrap_servers, admin_options(s.client, s.client_options()))
    try:
        moves = plan(cfg, admin, stored_offsets(sink.load_offsets()), how, arg)
        if not execute:
            return moves, False
        refuse_while_active(admin, s.group)
        new = {(m.topic, m.partition): m.new for m in moves}
        # the stored positions first (the authority, written under the connector's lock), then the group's
        # (refused by the broker if a member joined meanwhile); a member that joined during the replay may
        # have read the old positions: said, not left silent
        sink.commit(KafkaSource(cfg).dump_position(KafkaPosition.of(new)))
        try:
            admin.set_group_offsets(s.group, new)
        except TerminalError as e:
            raise TerminalError(
                f"the stored positions were rewound, but the group's offsets were not ({e}): a connector of "
                f"group {s.group} started during the replay; stop it and run the same cdc replay again"
            ) from e
        if admin.group(s.group)[1]:
            raise TerminalError(
                f"the replay was applied, but a connector of group {s.group} joined while it ran and may have "
                "read the positions from before it: stop it and run the same cdc replay again"
            )
        return moves, True
    finally:
        admin.close()
        sink.rollback()
        sink.close()
