"""`cdc drop CONFIG [--execute]`: removes what pos-cdc made for a connector (every lane's), after saying what.

- the storefront's bookkeeping rows of the connector (its name, its lanes' names, and the lanes' shared key
  positions, sink.position_group, when that is the config's name): the bookkeeping tables are shared by every
  connector writing the storefront, so they are dropped only when no other connector has a row in them, and
  only by a role that owns them (else the DBA is told the statement);
- the replication slot(s) on the POS, after the bookkeeping (a slot dropped first and positions left behind
  would let a restart resume past changes no slot kept);
- the publication(s) the connector's own role made; one owned by another role (the DBA's, `cdc setup-source`)
  is kept and named.

Nothing is done while the connector runs (a slot of it is active). The storefront table and Kafka topics are
never touched. A dry run (the default) only prints the plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from cdc.config import ConnectorConfig
from cdc.errors import TerminalError
from cdc.lanes import lane_connectors
from cdc.privileges import pg_name


@dataclass
class Step:
    what: str
    run: Callable[[], None] | None = None  # None: a note (something kept, and why)


def plan(cfg: ConnectorConfig) -> list[Step]:
    connectors = lane_connectors(cfg)
    steps: list[Step] = []
    if cfg.source.type == "postgres":
        refuse_if_running(cfg, connectors)
    if cfg.sink.type == "sql":
        steps += _sink_steps(cfg, connectors)
    else:
        steps.append(Step(f"Kafka topics {cfg.sink.topic_prefix}.* are kept (the broker's to delete)"))
    if cfg.source.type == "postgres":
        steps += _source_steps(cfg, connectors)
    else:
        steps.append(Step(f"Kafka consumer group {cfg.source.group} is kept (the broker's to delete)"))
    return steps


def execute(cfg: ConnectorConfig, steps: list[Step], say) -> None:
    if cfg.source.type == "postgres":
        refuse_if_running(cfg, lane_connectors(cfg))  # again: it may have started since the plan
    for s in steps:
        if s.run is not None:
            s.run()
            say(f"done: {s.what}")


# --- the POS --------------------------------------------------------------------------------------------


def _pos(cfg: ConnectorConfig):
    import psycopg

    try:
        return psycopg.connect(cfg.source.dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as e:
        raise TerminalError(f"cannot reach the POS database: {e}") from e


def refuse_if_running(cfg: ConnectorConfig, connectors: list[ConnectorConfig]) -> None:
    with _pos(cfg) as conn:
        for c in connectors:
            row = conn.execute(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s AND active", (c.slot,)
            ).fetchone()
            if row is not None:
                raise TerminalError(
                    f"{c.name} is running: its replication slot {c.slot} is active (walsender pid {row[0]}); "
                    "stop the connector, then run cdc drop again"
                )


def _source_steps(cfg: ConnectorConfig, connectors: list[ConnectorConfig]) -> list[Step]:
    steps = []
    with _pos(cfg) as conn:
        for c in connectors:
            if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (c.slot,)).fetchone():
                steps.append(Step(f"drop replication slot {c.slot} on the POS", _drop_slot(cfg, c.slot)))
            else:
                steps.append(Step(f"no replication slot {c.slot} on the POS"))
            row = conn.execute(
                "SELECT pubowner::regrole::text, pg_has_role(pubowner, 'USAGE') FROM pg_publication"
                " WHERE pubname = %s",
                (c.publication,),
            ).fetchone()
            if row is None:
                steps.append(Step(f"no publication {c.publication} on the POS"))
            elif row[1]:
                stmt = f"DROP PUBLICATION {pg_name(c.publication)}"
                steps.append(Step(f"drop publication {c.publication} on the POS", _on_pos(cfg, stmt)))
            else:
                steps.append(
                    Step(
                        f"publication {c.publication} is kept: role {row[0]} made it (the DBA's; it drops it with "
                        f"DROP PUBLICATION {pg_name(c.publication)})"
                    )
                )
    return steps


def _drop_slot(cfg: ConnectorConfig, slot: str) -> Callable[[], None]:
    def run() -> None:
        import psycopg

        with _pos(cfg) as conn:
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            except psycopg.errors.ObjectInUse as e:
                raise TerminalError(
                    f"replication slot {slot} became active (the connector started): {e}"
                ) from e

    return run


def _on_pos(cfg: ConnectorConfig, stmt: str) -> Callable[[], None]:
    def run() -> None:
        from psycopg import sql

        with _pos(cfg) as conn:
            conn.execute(sql.SQL(stmt))  # noqa: S608 - the name is quoted (pg_name)

    return run


# --- the storefront ---------------------------------------------------------------------------------------


def connector_rows(cfg: ConnectorConfig, connectors: list[ConnectorConfig]) -> tuple[set[str], list[str]]:
    """(the `connector` values of cdc's tables that are this config's, shared key positions kept and why)."""
    from cdc.sinks.sql.bookkeeping import positions_of

    ours, kept = {c.name for c in connectors}, []
    for group in {positions_of(c) for c in connectors} - ours:
        if group == cfg.name:  # the lanes' default group: the config's own
            ours.add(group)
        else:
            kept.append(
                f"key positions of position group {group} are kept: other connectors may share them "
                "(sink.position_group)"
            )
    return ours, kept


def _sink_steps(cfg: ConnectorConfig, connectors: list[ConnectorConfig]) -> list[Step]:
    from cdc.sinks.sql.bookkeeping import meta
    from cdc.sinks.sql.storefront import engine as store_engine

    ours, kept = connector_rows(cfg, connectors)
    eng = store_engine(cfg.sink.url, cfg.sink.bookkeeping_schema)
    steps = [Step(k) for k in kept]
    try:
        with eng.connect() as c:
            present = [t for t in meta.sorted_tables if sa.inspect(c).has_table(t.name)]
            counts = {
                t.name: c.scalar(sa.select(sa.func.count()).where(t.c.connector.in_(ours))) for t in present
            }
            others = set()
            for t in present:
                others |= set(
                    c.scalars(sa.select(t.c.connector).distinct().where(t.c.connector.not_in(ours)))
                )
            owned = _owned(c, [t.name for t in present])
    finally:
        eng.dispose()
    if not present:
        return steps + [Step("no bookkeeping tables in the storefront database")]
    names = ", ".join(t.name for t in present)
    if not others and owned:
        steps.append(
            Step(
                f"drop the bookkeeping tables ({names}): no other connector uses them",
                _drop_tables(cfg, present),
            )
        )
        return steps
    rows = [f"{n} {t}" for t, n in counts.items() if n]
    steps.append(
        Step(
            f"delete this connector's bookkeeping rows ({', '.join(rows) or 'none'})",
            _delete_rows(cfg, present, ours),
        )
        if rows
        else Step("no bookkeeping rows of this connector")
    )
    if others:
        steps.append(
            Step(f"the bookkeeping tables are kept: connectors {', '.join(sorted(others))} use them")
        )
    else:
        steps.append(
            Step(
                f"the bookkeeping tables ({names}) are kept: another role owns them (the DBA's, who drops them "
                "when no connector is left)"
            )
        )
    return steps


def _owned(c: sa.Connection, tables: list[str]) -> bool:
    """Whether the connection's role may drop the tables (PostgreSQL: owns them; MariaDB: DROP; SQLite: yes)."""
    if c.dialect.name == "postgresql":
        return all(
            c.exec_driver_sql(
                "SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = to_regclass(%s)", (t,)
            ).scalar()
            for t in tables
        )
    if c.dialect.name == "mysql":
        grants = " ".join(r[0] for r in c.exec_driver_sql("SHOW GRANTS"))
        return "ALL PRIVILEGES" in grants or "DROP" in grants
    return True


def _drop_tables(cfg: ConnectorConfig, tables: list[sa.Table]) -> Callable[[], None]:
    def run() -> None:
        from cdc.sinks.sql.storefront import engine as store_engine

        eng = store_engine(cfg.sink.url, cfg.sink.bookkeeping_schema)
        try:
            with eng.begin() as c:
                for t in reversed(tables):
                    t.drop(c)
        finally:
            eng.dispose()

    return run


def _delete_rows(cfg: ConnectorConfig, tables: list[sa.Table], ours: set[str]) -> Callable[[], None]:
    def run() -> None:
        from cdc.sinks.sql.storefront import engine as store_engine

        eng = store_engine(cfg.sink.url, cfg.sink.bookkeeping_schema)
        try:
            with eng.begin() as c:
                for t in tables:
                    c.execute(t.delete().where(t.c.connector.in_(ours)))
        finally:
            eng.dispose()

    return run
