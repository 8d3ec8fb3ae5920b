"""`cdc setup-source` / `cdc setup-sink`: the SQL a DBA runs so that pos-cdc connects as roles that may do
what it needs and nothing more (docs/least-privilege.md), printed, or applied on a DBA's connection.

- POS: a role with LOGIN and REPLICATION, USAGE on the captured tables' schemas and SELECT on the tables, and
  the publication(s) — a lane's with its row filter, after REPLICA IDENTITY FULL (cdc/lanes.py) — made and
  owned by the DBA, so the connector's role needs no CREATE on the database and owns no POS table.
- Storefront, PostgreSQL: a role with LOGIN; SELECT, INSERT, UPDATE (DELETE unless deletes are soft and
  TRUNCATEs ignored) on the target table; CONNECT and TEMPORARY on the database (the merge's staging table);
  the bookkeeping tables made by the DBA in their schema (sink.bookkeeping_schema, made here when missing; else
  the target's) with SELECT, INSERT, UPDATE, DELETE on them and USAGE on their id sequences. MariaDB: a user
  with the same privileges on the database's tables. SQLite: a file; nothing to grant.

Identifiers are quoted with SQLAlchemy's quoting (cdc/privileges.py); the role's password is never printed:
applied, it comes from an environment variable (or a prompt) and is sent hashed (libpq's
PQencryptPasswordConn) for PostgreSQL. Applying is idempotent: an existing role is altered, an existing
publication set to the connector's tables, grants given again.
"""

from __future__ import annotations

import sqlalchemy as sa

from cdc.config import ConnectorConfig
from cdc.errors import TerminalError
from cdc.lanes import lane_connectors, publication_sql
from cdc.privileges import BOOKKEEPING_PRIVILEGES, my_name, pg_name, split_table, target_privileges
from cdc.sinks.sql.bookkeeping import ADDED_COLUMNS

PASSWORD_NOTE = "-- its password: psql's \\password {role} (or --apply with the password in ${env})"


def dsn_user(dsn: str) -> tuple[str | None, str | None]:
    """(user, database) a libpq DSN or postgresql:// URL names."""
    from psycopg.conninfo import conninfo_to_dict

    d = conninfo_to_dict(dsn)
    return d.get("user"), d.get("dbname")


# --- the POS --------------------------------------------------------------------------------------------


def source_statements(cfg: ConnectorConfig, role: str, db: str | None) -> list[str]:
    """What setup-source prints (the role statement and the password note first)."""
    r = pg_name(role)
    out = [f"CREATE ROLE {r} WITH LOGIN REPLICATION;"]
    if db:
        out.append(f"GRANT CONNECT ON DATABASE {pg_name(db)} TO {r};")
    return out + source_grants(cfg, r) + publication_sql(cfg)


def source_grants(cfg: ConnectorConfig, r: str) -> list[str]:
    tables = [t.split(".", 1) for t in cfg.source.tables]
    out = [f"GRANT USAGE ON SCHEMA {pg_name(s)} TO {r};" for s in dict.fromkeys(s for s, _ in tables)]
    return out + [f"GRANT SELECT ON {', '.join(pg_name(s, t) for s, t in tables)} TO {r};"]


def apply_source(cfg: ConnectorConfig, role: str, admin_dsn: str, password: str | None, say) -> None:
    """Runs the set-up on the POS as the DBA (`admin_dsn`), in one transaction; `say` gets each step."""
    import psycopg
    from psycopg import sql

    _, want_db = dsn_user(cfg.source.dsn)
    with psycopg.connect(admin_dsn, connect_timeout=10) as conn:
        db = conn.info.dbname
        if want_db and db != want_db:
            raise TerminalError(
                f"--admin-dsn connects to database {db}, but the connector reads {want_db}: give a DSN of {want_db}"
            )
        r = pg_name(role)
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        _role(conn, role, "LOGIN REPLICATION", exists, password, say)
        steps = [f"GRANT CONNECT ON DATABASE {pg_name(db)} TO {r};", *source_grants(cfg, r)]
        pubs = {c.publication for c in lane_connectors(cfg)}
        have = {
            p
            for (p,) in conn.execute(
                "SELECT pubname FROM pg_publication WHERE pubname = ANY(%s)", (list(pubs),)
            )
        }
        for s in publication_sql(cfg):
            for p in have:  # an existing publication is set to the connector's tables (and row filters)
                head = f"CREATE PUBLICATION {pg_name(p)} FOR TABLE "
                if s.startswith(head):
                    s = f"ALTER PUBLICATION {pg_name(p)} SET TABLE " + s[len(head) :]
            steps.append(s)
        for s in steps:
            say(s)
            conn.execute(sql.SQL(s))  # noqa: S608 - identifiers quoted (privileges.pg_name); the row filter is SQL


def _role(conn, role: str, attributes: str, exists, password: str | None, say) -> None:
    """CREATE or ALTER the PostgreSQL role; the password hashed by libpq, never shown."""
    from psycopg import sql

    verb = "ALTER" if exists else "CREATE"
    stmt = f"{verb} ROLE {pg_name(role)} WITH {attributes}"
    say(stmt + (" PASSWORD '…' (from the environment, sent hashed)" if password else "") + ";")
    if password:
        hashed = conn.pgconn.encrypt_password(password.encode(), role.encode()).decode()
        conn.execute(sql.SQL(stmt + " PASSWORD {}").format(sql.Literal(hashed)))
    else:
        conn.execute(sql.SQL(stmt))


# --- the storefront ---------------------------------------------------------------------------------------


def _ddl(element, dialect: sa.Dialect) -> str:
    text = str(element.compile(dialect=dialect)).strip()
    return "\n".join(line.rstrip() for line in text.splitlines()) + ";"


def bookkeeping_ddl(dialect: sa.Dialect, schema: str | None) -> list[str]:
    """CREATE TABLE / INDEX IF NOT EXISTS of the bookkeeping tables, in `schema`."""
    from cdc.sinks.sql.bookkeeping import meta

    out, m = [], sa.MetaData()
    for t in meta.sorted_tables:
        copy = t.to_metadata(m, schema=schema)
        out.append(_ddl(sa.schema.CreateTable(copy, if_not_exists=True), dialect))
        names = {tuple(i.columns.keys()): i.name for i in t.indexes}  # the names create_all gives them
        for i in copy.indexes:
            i.name = names[tuple(i.columns.keys())]
            out.append(_ddl(sa.schema.CreateIndex(i, if_not_exists=True), dialect))
    return out


def sink_statements(
    cfg: ConnectorConfig, role: str, host: str, target_schema: str | None = None
) -> list[str]:
    """What setup-sink prints (SQLite: a comment saying there is nothing to grant)."""
    from cdc.sinks.sql.bookkeeping import meta

    url = sa.engine.make_url(cfg.sink.url)
    dialect, scfg = url.get_backend_name(), cfg.sink
    if dialect == "sqlite":
        return [
            "-- SQLite: nothing to grant. The storefront is a file: the user that runs `cdc run` needs to read "
            "and write it and its directory (its -wal and -shm files)."
        ]
    if dialect == "mysql":
        user, db = f"{account_part(role)}@{account_part(host)}", url.database
        out = [f"CREATE USER IF NOT EXISTS {user};"]
        table = my_name(db, scfg.table.rpartition(".")[2])
        out.append(f"GRANT {', '.join(target_privileges(scfg))} ON {table} TO {user};")
        out += bookkeeping_ddl(_dialect("mysql"), db)
        out += [
            f"ALTER TABLE {my_name(db, t)} ADD COLUMN IF NOT EXISTS {c} {type_};"
            for t, c, type_ in ADDED_COLUMNS
        ]
        out += [
            f"GRANT {', '.join(BOOKKEEPING_PRIVILEGES)} ON {my_name(db, t)} TO {user};" for t in meta.tables
        ]
        return out
    r, db = pg_name(role), url.database
    tschema, tname = split_table(scfg.table, target_schema or "public")
    schema = scfg.bookkeeping_schema or tschema
    out = [f"CREATE ROLE {r} WITH LOGIN;", f"GRANT CONNECT, TEMPORARY ON DATABASE {pg_name(db)} TO {r};"]
    out.append(f"GRANT USAGE ON SCHEMA {pg_name(tschema)} TO {r};")
    out.append(f"GRANT {', '.join(target_privileges(scfg))} ON {pg_name(tschema, tname)} TO {r};")
    if schema != tschema:
        out += [
            f"CREATE SCHEMA IF NOT EXISTS {pg_name(schema)};",
            f"GRANT USAGE ON SCHEMA {pg_name(schema)} TO {r};",
        ]
    out += bookkeeping_ddl(_dialect("postgresql"), schema)
    out += [  # tables an older pos-cdc made
        f"ALTER TABLE {pg_name(schema, t)} ADD COLUMN IF NOT EXISTS {c} {type_};"
        for t, c, type_ in ADDED_COLUMNS
    ]
    tables = ", ".join(pg_name(schema, t) for t in meta.tables)
    out.append(f"GRANT {', '.join(BOOKKEEPING_PRIVILEGES)} ON {tables} TO {r};")
    seqs = [pg_name(schema, f"{t.name}_id_seq") for t in meta.sorted_tables if "id" in t.c]
    out.append(f"GRANT USAGE ON SEQUENCE {', '.join(seqs)} TO {r};")
    return out


def account_part(text: str) -> str:
    """A MariaDB account's user or host part as the string literal GRANT and CREATE USER take."""
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _dialect(name: str) -> sa.Dialect:
    from sqlalchemy.dialects import mysql, postgresql

    return (postgresql if name == "postgresql" else mysql).dialect()


def apply_sink(cfg: ConnectorConfig, role: str, host: str, admin_url: str, password: str | None, say) -> None:
    """Runs the set-up on the storefront as the DBA (`admin_url`, a SQLAlchemy URL), in one transaction."""
    from cdc.sinks.sql.storefront import engine as store_engine

    url = sa.engine.make_url(cfg.sink.url)
    admin = sa.engine.make_url(admin_url)
    if admin.get_backend_name() != url.get_backend_name() or admin.database != url.database:
        raise TerminalError(
            f"--admin-url reaches {admin.get_backend_name()} database {admin.database}, but the connector writes "
            f"{url.get_backend_name()} database {url.database}: give a URL of that database"
        )
    eng = store_engine(admin_url)
    try:
        with eng.begin() as c:
            if url.get_backend_name() == "postgresql":
                schema = c.exec_driver_sql("SELECT current_schema()").scalar()
                found = c.exec_driver_sql(
                    "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE c.oid = to_regclass(%s)",
                    (cfg.sink.table,),
                ).scalar()
                exists = c.exec_driver_sql("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).first()
                _role(c.connection.driver_connection, role, "LOGIN", exists, password, say)
                steps = sink_statements(cfg, role, host, found or schema)[1:]
            else:
                user = f"{account_part(role)}@{account_part(host)}"
                steps = sink_statements(cfg, role, host)[1:]
                exists = c.exec_driver_sql(
                    "SELECT 1 FROM mysql.user WHERE User = %s AND Host = %s", (role, host)
                ).first()
                verb = "ALTER USER" if exists else "CREATE USER"
                say(
                    f"{verb} {user}" + (" IDENTIFIED BY '…' (from the environment)" if password else "") + ";"
                )
                if password:
                    # (the password a parameter: the host part's % doubled for the driver's interpolation)
                    c.exec_driver_sql(f"{verb} {user.replace('%', '%%')} IDENTIFIED BY %s", (password,))
                elif not exists:
                    c.exec_driver_sql(f"CREATE USER {user}")
            cur = c.connection.driver_connection.cursor()  # no parameters: each statement sent as it is
            for s in steps:
                say(s)
                cur.execute(s.rstrip(";"))
    finally:
        eng.dispose()
