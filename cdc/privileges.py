"""What the roles pos-cdc connects as must be allowed to do, checked at the start of `cdc run` before anything
is created (a publication, a slot, the bookkeeping tables): each privilege missing is named with the GRANT
that gives it, e.g. `the role pos_cdc lacks SELECT on public.item_price: GRANT SELECT ON public.item_price TO
pos_cdc`. `cdc setup-source` / `cdc setup-sink` (cdc/ops/setup.py) print all of them at once.

- POS (PostgreSQL source): the REPLICATION attribute (the slot and the stream), USAGE on the tables' schemas
  and SELECT on the tables (the snapshot), and the publication made beforehand unless the role may make it
  (CREATE on the database and owning the tables).
- Storefront, PostgreSQL: SELECT, INSERT, UPDATE (and DELETE, unless deletes are soft and TRUNCATEs ignored)
  on the target table; TEMPORARY on the database (the merge's staging table); on the bookkeeping tables
  SELECT, INSERT, UPDATE, DELETE and their id sequences' USAGE, or CREATE on their schema while they are
  missing. MariaDB: the same table privileges (from information_schema, the role's own grants: global,
  database, table). SQLite: a file, nothing to grant.

A superuser (PostgreSQL) is not checked. A role's privileges through a MariaDB role are not seen: grant them
to the user itself.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from cdc.errors import TerminalError

PG = postgresql.dialect().identifier_preparer
MY = mysql.dialect().identifier_preparer


def pg_name(*parts: str) -> str:
    """A PostgreSQL name for printed SQL: each part quoted only where it must be (SQLAlchemy's quoting)."""
    return ".".join(PG.quote(p) for p in parts)


def my_name(*parts: str) -> str:
    return ".".join(MY.quote(p) for p in parts)


def split_table(table: str, default_schema: str) -> tuple[str, str]:
    schema, _, name = table.rpartition(".")
    return schema or default_schema, name


class Missing:
    """The privileges a role lacks, each with the statement that grants it."""

    def __init__(self, role: str, where: str):
        self.role, self.where = role, where
        self.items: list[tuple[str, str]] = []  # (what, grant statement)

    def add(self, what: str, grant: str) -> None:
        if (what, grant) not in self.items:
            self.items.append((what, grant))

    def raise_if_any(self, hint: str) -> None:
        if not self.items:
            return
        lacks = "; ".join(f"{what}: {grant}" for what, grant in self.items)
        raise TerminalError(f"the role {self.role} lacks {lacks} (on the {self.where}; {hint})")


# --- the POS --------------------------------------------------------------------------------------------


def check_source(conn, cfg) -> None:
    """`conn`: a psycopg connection to the POS as the connector's role."""
    role, superuser, replication, db = conn.execute(
        "SELECT current_user, rolsuper, rolreplication, current_database() FROM pg_roles"
        " WHERE rolname = current_user"
    ).fetchone()
    if superuser:
        return
    missing = Missing(role, "POS")
    r = PG.quote(role)
    if not replication:
        missing.add("the REPLICATION attribute", f"ALTER ROLE {r} REPLICATION")
    owns_all = True
    for table in cfg.source.tables:
        schema, name = table.split(".", 1)
        row = conn.execute(
            "SELECT has_schema_privilege(n.oid, 'USAGE'), has_table_privilege(c.oid, 'SELECT'),"
            " pg_has_role(c.relowner, 'USAGE') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            (schema, name),
        ).fetchone()
        if row is None:
            continue  # the source says the table is missing (PostgresSource.prepare)
        usage, select, owner = row
        owns_all = owns_all and owner
        if not usage:
            missing.add(
                f"USAGE on schema {pg_name(schema)}", f"GRANT USAGE ON SCHEMA {pg_name(schema)} TO {r}"
            )
        if not select:
            t = pg_name(schema, name)
            missing.add(f"SELECT on {t}", f"GRANT SELECT ON {t} TO {r}")
    pub = cfg.publication
    exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (pub,)).fetchone()
    can_create = conn.execute("SELECT has_database_privilege(current_database(), 'CREATE')").fetchone()[0]
    if not exists and not (can_create and owns_all):
        from cdc.lanes import publication_sql

        missing.add(
            f"the publication {pg_name(pub)}, which it may not make (that takes CREATE on database "
            f"{pg_name(db)} and owning the tables), so the DBA makes it",
            " ".join(s for s in publication_sql(cfg) if pg_name(pub) in s),
        )
    missing.raise_if_any(f"all of it at once: cdc setup-source {cfg.path or 'CONFIG'} --role {role}")


# --- the storefront ---------------------------------------------------------------------------------------


def _deletes(scfg) -> bool:
    return scfg.delete == "hard" or scfg.truncate == "delete"


def target_privileges(scfg) -> list[str]:
    return ["SELECT", "INSERT", "UPDATE"] + (["DELETE"] if _deletes(scfg) else [])


BOOKKEEPING_PRIVILEGES = ["SELECT", "INSERT", "UPDATE", "DELETE"]


def check_storefront(engine: sa.Engine, cfg) -> None:
    """check_sink on a connection of `engine`; a role that may not even use the database is told so."""
    import re

    try:
        conn = engine.connect()
    except sa.exc.DBAPIError as e:
        orig, url = e.orig, engine.url
        code = orig.args[0] if getattr(orig, "args", None) and isinstance(orig.args[0], int) else None
        hint = f"cdc setup-sink {cfg.path or 'CONFIG'} gives all it needs"
        if code == 1044:  # MariaDB: access denied to the database
            m = re.search(r"user '([^']*)'@'([^']*)'", str(orig))
            who = f"'{m.group(1)}'@'{m.group(2)}'" if m else f"'{url.username}'"
            t = my_name(url.database, cfg.sink.table.rpartition(".")[2])
            raise TerminalError(
                f"the user {who} has no privilege on database {url.database}: GRANT "
                f"{', '.join(target_privileges(cfg.sink))} ON {t} TO {who} ({hint})"
            ) from e
        if getattr(orig, "sqlstate", None) == "42501":  # PostgreSQL: no CONNECT on the database
            r = PG.quote(url.username or "")
            raise TerminalError(
                f"the role {url.username} lacks CONNECT on database {url.database}: GRANT CONNECT ON DATABASE "
                f"{pg_name(url.database)} TO {r} ({hint})"
            ) from e
        raise
    with conn:
        check_sink(conn, cfg)


def check_sink(conn: sa.Connection, cfg) -> None:
    """`conn`: a connection to the storefront as the connector's role (its engine sets the search path)."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        _check_pg_sink(conn, cfg)
    elif dialect == "mysql":
        _check_my_sink(conn, cfg)


def _check_pg_sink(conn: sa.Connection, cfg) -> None:
    from cdc.sinks.sql.bookkeeping import meta

    q = conn.exec_driver_sql
    role, superuser, db = q(
        "SELECT current_user, rolsuper, current_database() FROM pg_roles WHERE rolname = current_user"
    ).one()
    if superuser:
        return
    missing, r, scfg = Missing(role, "storefront"), PG.quote(role), cfg.sink
    if not q("SELECT has_database_privilege(current_database(), 'TEMPORARY')").scalar():
        missing.add(
            f"TEMPORARY on database {pg_name(db)}", f"GRANT TEMPORARY ON DATABASE {pg_name(db)} TO {r}"
        )
    found = q(
        "SELECT n.nspname, c.relname, has_schema_privilege(n.oid, 'USAGE') FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
        (scfg.table,),
    ).first()
    if found is not None:  # (a missing target table: Target.reflect says so)
        _table_grants(conn, missing, r, found[0], found[1], found[2], target_privileges(scfg))
    schema = scfg.bookkeeping_schema or q("SELECT current_schema()").scalar()
    if schema is None:
        raise TerminalError(
            "the storefront's search path names no schema that exists: set sink.bookkeeping_schema, or "
            "`cdc setup-sink` makes one for the bookkeeping tables"
        )
    usage, create = q(
        "SELECT has_schema_privilege(oid, 'USAGE'), has_schema_privilege(oid, 'CREATE') FROM pg_namespace"
        " WHERE nspname = %s",
        (schema,),
    ).first() or (None, None)
    if usage is None:
        missing.add(
            f"the bookkeeping schema {pg_name(schema)} (sink.bookkeeping_schema), missing",
            f"CREATE SCHEMA {pg_name(schema)}; GRANT USAGE ON SCHEMA {pg_name(schema)} TO {r} (and the tables)",
        )
        missing.raise_if_any(f"all of it at once: cdc setup-sink {cfg.path or 'CONFIG'} --role {role}")
    if not usage:
        missing.add(f"USAGE on schema {pg_name(schema)}", f"GRANT USAGE ON SCHEMA {pg_name(schema)} TO {r}")
    absent = []
    for t in meta.sorted_tables:
        row = q(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            (schema, t.name),
        ).first()
        if row is None:
            absent.append(t.name)
            continue
        _table_grants(conn, missing, r, schema, t.name, True, BOOKKEEPING_PRIVILEGES)
        _older(conn, missing, schema, t.name)
        seq = (
            q("SELECT pg_get_serial_sequence(%s, 'id')", (pg_name(schema, t.name),)).scalar()
            if "id" in t.c
            else None
        )
        if seq and not q("SELECT has_sequence_privilege(%s, 'USAGE')", (seq,)).scalar():
            missing.add(f"USAGE on sequence {seq}", f"GRANT USAGE ON SEQUENCE {seq} TO {r}")
    if absent and not create:
        missing.add(
            f"CREATE on schema {pg_name(schema)}, to make the missing bookkeeping tables "
            f"({', '.join(absent)}); or the DBA makes them",
            f"GRANT CREATE ON SCHEMA {pg_name(schema)} TO {r}",
        )
    missing.raise_if_any(f"all of it at once: cdc setup-sink {cfg.path or 'CONFIG'} --role {role}")


def _older(conn: sa.Connection, missing: Missing, schema: str, table: str) -> None:
    """A bookkeeping table older than this pos-cdc lacks a column the connector adds at start, which only its
    owner may do."""
    from cdc.sinks.sql.bookkeeping import ADDED_COLUMNS

    for name, column, type_ in ADDED_COLUMNS:
        if name != table:
            continue
        lacks, owner = conn.exec_driver_sql(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = c.oid AND attname = %s"
            " AND NOT attisdropped), pg_has_role(c.relowner, 'USAGE') FROM pg_class c WHERE c.oid = %s::regclass",
            (column, pg_name(schema, table)),
        ).one()
        if lacks and not owner:
            t = pg_name(schema, table)
            missing.add(
                f"the column {column} of {t} (made by an older pos-cdc; only its owner may add it)",
                f"ALTER TABLE {t} ADD COLUMN {column} {type_}",
            )


def _table_grants(conn, missing: Missing, r: str, schema: str, name: str, usage: bool, privileges) -> None:
    t = pg_name(schema, name)
    if not usage:
        missing.add(f"USAGE on schema {pg_name(schema)}", f"GRANT USAGE ON SCHEMA {pg_name(schema)} TO {r}")
    lacking = [
        p
        for p in privileges
        if not conn.exec_driver_sql("SELECT has_table_privilege(%s, %s)", (t, p)).scalar()
    ]
    if lacking:
        missing.add(f"{', '.join(lacking)} on {t}", f"GRANT {', '.join(lacking)} ON {t} TO {r}")


def _check_my_sink(conn: sa.Connection, cfg) -> None:
    """MariaDB/MySQL: the user's own grants, global, on the database and on each table."""
    from cdc.sinks.sql.bookkeeping import meta

    user, db = conn.exec_driver_sql("SELECT CURRENT_USER(), DATABASE()").one()
    name, _, host = user.rpartition("@")
    if not name and not host:  # no account: a server run with --skip-grant-tables allows everything
        return
    grantee = f"'{name}'@'{host}'"
    have: set[tuple[str, str]] = set()  # (object: '*', the database's '', or a table name, privilege)
    for obj, priv in conn.exec_driver_sql(
        "SELECT '*', PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = %s"
        " UNION ALL SELECT '', PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES"
        " WHERE GRANTEE = %s AND TABLE_SCHEMA = %s"
        " UNION ALL SELECT TABLE_NAME, PRIVILEGE_TYPE FROM information_schema.TABLE_PRIVILEGES"
        " WHERE GRANTEE = %s AND TABLE_SCHEMA = %s",
        (grantee, grantee, db, grantee, db),
    ):
        have.add((obj, priv))

    def has(table: str, priv: str) -> bool:
        return bool({("*", priv), ("", priv), (table, priv)} & have)

    missing, scfg = Missing(grantee, "storefront"), cfg.sink
    tables = conn.exec_driver_sql(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (db,)
    ).scalars()
    existing = set(tables)
    wanted = [(scfg.table.rpartition(".")[2], target_privileges(scfg))]
    wanted += [(t.name, BOOKKEEPING_PRIVILEGES) for t in meta.sorted_tables]
    absent = []
    for table, privileges in wanted:
        if table not in existing and table not in meta.tables:  # the target: missing, or hidden from the user
            t = my_name(db, table)
            missing.add(
                f"{', '.join(privileges)} on {t} (the user cannot see it: no privilege on it, or it does not exist)",
                f"GRANT {', '.join(privileges)} ON {t} TO {grantee}",
            )
            continue
        if table not in existing:
            absent.append(table)
            continue
        lacking = [p for p in privileges if not has(table, p)]
        if lacking:
            t = my_name(db, table)
            missing.add(f"{', '.join(lacking)} on {t}", f"GRANT {', '.join(lacking)} ON {t} TO {grantee}")
    if absent and not any(has(t, "CREATE") for t in absent):
        missing.add(
            f"CREATE on database {my_name(db)}, to make the missing bookkeeping tables ({', '.join(absent)});"
            " or the DBA makes them",
            f"GRANT CREATE ON {my_name(db)}.* TO {grantee}",
        )
    missing.raise_if_any(f"all of it at once: cdc setup-sink {cfg.path or 'CONFIG'} --role {name}")
