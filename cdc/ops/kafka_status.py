"""`cdc status` of a connector that reads Kafka: its consumer group (state, members) and, per partition, the
offset stored in the sink database (the authority), the group's committed offset (what lag tools show), the
partition's end, and the records still to read."""

from __future__ import annotations

import re

from cdc.config import ConnectorConfig
from cdc.errors import CdcError
from cdc.kafka_admin import Admin, admin_options
from cdc.kafka_client import TP


def topic_partitions(admin: Admin, cfg: ConnectorConfig) -> list[TP]:
    """The partitions of the topics the connector reads (those that exist)."""
    s = cfg.source
    existing = admin.topics()
    if s.topic_pattern:
        topics = sorted(t for t in existing if re.match(s.topic_pattern, t))  # as the clients match
    else:
        topics = [t for t in s.topics if t in existing]
    return [(t, p) for t in topics for p in admin.partitions(t)]


def kafka_source_side(cfg: ConnectorConfig, stored: dict[str, int] | None) -> dict:
    s = cfg.source
    stored = stored or {}
    try:
        admin = Admin(s.bootstrap_servers, admin_options(s.client, s.client_options()))
    except CdcError as e:
        return {"group": s.group, "source_error": str(e), "state": "unreachable"}
    try:
        group_state, members = admin.group(s.group)
        committed = admin.group_offsets(s.group)
        tps = topic_partitions(admin, cfg)
        end = admin.end_offsets(tps)
    except CdcError as e:
        return {"group": s.group, "source_error": str(e), "state": "unreachable"}
    finally:
        admin.close()
    partitions, total = [], 0
    for t, p in tps:
        at = stored.get(f"{t}:{p}", committed.get((t, p)))
        lag = max(0, end[(t, p)] - (at or 0))
        total += lag
        partitions.append(
            {
                "topic": t,
                "partition": p,
                "stored": stored.get(f"{t}:{p}"),
                "group": committed.get((t, p)),
                "end": end[(t, p)],
                "lag": lag,
            }
        )
    if members:
        state = "running"
    else:
        state = "stopped" if stored or committed else "not_started"
    return {
        "group": s.group,
        "group_state": group_state,
        "group_members": members,
        "partitions": partitions,
        "kafka_lag_records": total,
        "state": state,
        "source_error": None,
    }
