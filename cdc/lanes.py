"""Priority lanes without Kafka: one replication slot delivers in commit order, so a bulk reprice of a million
rows would hold back a promotion's price behind it. A lane is therefore a connector of its own, with its own
slot and a publication whose row filter (PostgreSQL 15+) sends it only the rows of the lane:

    source:
      lanes:
        - {name: priority, where: "category IN ('PROMO', 'FRESH')"}   # first lane whose condition holds
        - {name: bulk}                                                # the last takes every other row

`lane_connectors(cfg)` turns such a config into one ConnectorConfig per lane (`<name>.<lane>`, slot and
publication `<slot>_<lane>` / `<publication>_<lane>`), which `cdc run` runs side by side. Each lane's filter
is made from the conditions in order — lane i: its condition IS TRUE and no earlier one IS TRUE; the last:
no condition IS TRUE — so every row is in exactly one lane whatever the conditions and NULLs. A row that moves
between lanes reaches the old lane as a DELETE and the new one as an INSERT at the same POS position; the lanes
share their key positions (sink.position_group, default the config's name), so the newest change of a key wins
whichever lane brings it, and at the same position the INSERT wins over the DELETE. With a Kafka sink, each
lane writes the topics of its lane (`<prefix>.<schema>.<table>.<lane>`, as a route stage's lane does), read by a
sink connector per lane — which a single POS connector with a route stage cannot give end to end: its one slot
delivers the promotion behind the bulk reprice's million changes.

A row filter on UPDATEs and DELETEs may only read columns of the table's replica identity, or PostgreSQL
refuses the POS's own UPDATEs; lanes therefore need REPLICA IDENTITY FULL, which the source checks before it
creates a publication, and `publication_sql` is what `cdc setup-source` prints for the DBA.
"""

from __future__ import annotations

from cdc.config import ConnectorConfig, Lane


def lane_filters(lanes: list[Lane]) -> list[tuple[str, str]]:
    """(lane name, its row filter): exactly one lane's filter holds for any row."""
    out, before = [], []
    for lane in lanes:
        taken = " OR ".join(f"({w}) IS TRUE" for w in before)
        if lane.where is None:
            out.append((lane.name, f"NOT ({taken})"))
        else:
            own = f"({lane.where}) IS TRUE"
            out.append((lane.name, f"{own} AND NOT ({taken})" if before else own))
            before.append(lane.where)
    return out


def lane_connectors(cfg: ConnectorConfig) -> list[ConnectorConfig]:
    """The connectors a config runs as: one per lane, or the config itself."""
    src = cfg.source
    if src.type != "postgres" or not src.lanes:
        return [cfg]
    out = []
    for name, where in lane_filters(src.lanes):
        sink = cfg.sink  # a storefront: the lanes share key positions; Kafka: each lane's topic of its own
        if sink.type == "sql":
            sink = sink.model_copy(update={"position_group": sink.position_group or cfg.name})
        else:
            sink = sink.model_copy(update={"lane": name})
        source = src.model_copy(
            update={
                "lanes": [],
                "row_filter": where,
                # a bulk transaction's commit must not hold back the fast lane's slot (pg_streamed.py)
                "stream_in_progress": True,
                "slot": f"{cfg.slot}_{name}",
                "publication": f"{cfg.publication}_{name}",
            }
        )
        out.append(cfg.model_copy(update={"name": f"{cfg.name}.{name}", "source": source, "sink": sink}))
    return out


def lane_of(cfg: ConnectorConfig, name: str) -> ConnectorConfig:
    """One lane's connector (`cdc run CONFIG --lane NAME`)."""
    lanes = {c.name.rsplit(".", 1)[-1]: c for c in lane_connectors(cfg) if c is not cfg}
    if name not in lanes:
        raise ValueError(
            f"{cfg.path or cfg.name} has no lane {name!r} (its lanes: {', '.join(lanes) or 'none'})"
        )
    return lanes[name]


def publication_sql(cfg: ConnectorConfig) -> list[str]:
    """The statements a DBA runs on the POS for the connector's publication(s): with a row filter, the tables'
    REPLICA IDENTITY FULL first."""
    from cdc.privileges import pg_name

    if cfg.source.type != "postgres":
        return []
    out: list[str] = []
    connectors = lane_connectors(cfg)
    names = [pg_name(*t.split(".", 1)) for t in cfg.source.tables]
    if any(c.source.row_filter for c in connectors):
        out += [f"ALTER TABLE {t} REPLICA IDENTITY FULL;" for t in names]
    for c in connectors:
        f = c.source.row_filter
        tables = ", ".join(f"{t} WHERE ({f})" if f else t for t in names)
        out.append(f"CREATE PUBLICATION {pg_name(c.publication)} FOR TABLE {tables};")
    return out
