"""Least privilege and clean set-up: the pipeline runs as the two roles `cdc setup-source` / `cdc setup-sink`
made (snapshot, streaming, a held change, status and explain), `cdc run` names each GRANT missing before it
makes anything, a first run that fails on the storefront leaves no slot behind, and `cdc drop` removes what
pos-cdc made (refused while the connector runs)."""

from __future__ import annotations

import functools
import json
from decimal import Decimal

import pytest

from tests.integration.helpers import Running, wait_until
from tests.integration.support import POS_TABLE, STORE_TABLE, run_cdc, slot_pids

CONFIG = """
name: @NAME@
source: {{type: postgres, dsn: "{dsn}", tables: [public.item_price]}}
transforms:
  - {{type: rename, fields: {{item_code: sku, price_fen: price}}}}
  - {{type: money, field: price, divide_by: 100, scale: 2}}
  - {{type: guard, field: price, min: 0.01}}
sink: {{type: sql, url: "{url}", table: {table}, key: [sku]{sink_extra}}}
"""


cdc = functools.partial(run_cdc, timeout=120)


def as_role(env, role_src: str | None = None, role_sink: str | None = None) -> tuple[str, str]:
    """(POS DSN, storefront URL) of env's databases, as the given roles (default: the superuser)."""
    dsn = env.pos_dsn if role_src is None else env.pos_dsn.replace("user=postgres", f"user={role_src}")
    url = env.store_url if role_sink is None else env.store_url.replace("//postgres@", f"//{role_sink}@")
    return dsn, url


def config(env, fname: str = "connector.yaml", table: str = "product_price", sink_extra: str = "", **roles):
    dsn, url = as_role(env, **roles)
    return env.write_config(CONFIG.format(dsn=dsn, url=url, table=table, sink_extra=sink_extra), fname)


def slots(env) -> list[tuple]:
    return env.pg.execute(
        f"SELECT slot_name, active FROM pg_replication_slots WHERE database = '{env.pos_db}' ORDER BY 1"
    )


def cdc_tables(env, schema: str | None = None) -> list[str]:
    where = f"table_schema = '{schema}'" if schema else "true"
    return [
        t
        for (t,) in env.store(
            f"SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'cdc%%' AND {where} ORDER BY 1"
        )
    ]


def prices(env) -> dict:
    return dict(env.store("SELECT sku, price FROM product_price"))


def test_the_pipeline_runs_as_the_two_roles_setup_made(env):
    src, snk = f"src_{env.name}", f"snk_{env.name}"
    env.pos(POS_TABLE)
    env.pos("INSERT INTO item_price VALUES ('A', 100), ('B', 200)")
    env.store(STORE_TABLE)
    env.pg.execute(f"CREATE ROLE {src} LOGIN; CREATE ROLE {snk} LOGIN")
    path = config(env, role_src=src, role_sink=snk, sink_extra=", bookkeeping_schema: cdc")

    # before the DBA's set-up: refused, each GRANT named, nothing made on either side
    out = cdc("run", path)
    assert out.returncode == 1, out.stderr
    assert f"the role {src} lacks the REPLICATION attribute: ALTER ROLE {src} REPLICATION" in out.stderr
    assert f"SELECT on public.item_price: GRANT SELECT ON public.item_price TO {src}" in out.stderr
    assert f"cdc setup-source {path} --role {src}" in out.stderr
    assert slots(env) == [] and env.pos("SELECT pubname FROM pg_publication") == []
    # validate --check-source says the same before anything runs: both roles' missing GRANTs
    out = cdc("validate", "--check-source", path)
    assert out.returncode == 2, out.stdout
    assert f"GRANT SELECT ON public.item_price TO {src}" in out.stderr, out.stderr
    assert f"the role {snk} lacks SELECT, INSERT, UPDATE, DELETE on public.product_price" in out.stderr

    # the POS set up (the printed SQL names the role and never a password); the storefront not yet
    printed = cdc("setup-source", path)
    assert printed.returncode == 0, printed.stderr
    assert f"CREATE ROLE {src} WITH LOGIN REPLICATION;" in printed.stdout
    assert f"GRANT SELECT ON public.item_price TO {src};" in printed.stdout
    secret = {"CDC_ROLE_PASSWORD": "s3cret-Pa55"}
    out = cdc("setup-source", path, "--apply", "--admin-dsn", env.pos_dsn, env=secret)
    assert out.returncode == 0, out.stderr
    assert "s3cret" not in out.stdout + out.stderr
    assert env.pg.execute(
        f"SELECT rolpassword LIKE 'SCRAM-SHA-256$%%' FROM pg_authid WHERE rolname = '{src}'"
    ) == [(True,)]
    assert env.pos("SELECT pubname, pg_get_userbyid(pubowner) FROM pg_publication") == [
        (f"cdc_{env.name}", "postgres")
    ]
    assert env.pos(f"SELECT has_database_privilege('{src}', current_database(), 'CREATE')") == [(False,)]
    out = cdc("run", path)
    assert out.returncode == 1
    assert f"the role {snk} lacks SELECT, INSERT, UPDATE, DELETE on public.product_price" in out.stderr
    assert f"GRANT SELECT, INSERT, UPDATE, DELETE ON public.product_price TO {snk}" in out.stderr
    assert "the bookkeeping schema cdc (sink.bookkeeping_schema), missing: CREATE SCHEMA cdc" in out.stderr
    assert slots(env) == [], "the slot was made before the storefront was checked"

    out = cdc("setup-sink", path, "--apply", "--admin-url", env.store_url, env=secret)
    assert out.returncode == 0, out.stderr
    assert cdc_tables(env, "cdc") == [
        "cdc_applied",
        "cdc_held",
        "cdc_offsets",
        "cdc_price_history",
        "cdc_row_state",
        "cdc_scheduled",
    ]
    # a cdc_held an older pos-cdc made: only its owner (the DBA) may add the column; setup-sink again does
    env.store("ALTER TABLE cdc.cdc_held DROP COLUMN typed_event")
    out = cdc("run", path)
    assert out.returncode == 1
    assert "the column typed_event of cdc.cdc_held (made by an older pos-cdc" in out.stderr, out.stderr
    assert "ALTER TABLE cdc.cdc_held ADD COLUMN typed_event TEXT" in out.stderr and slots(env) == []
    again = cdc("setup-sink", path, "--apply", "--admin-url", env.store_url)  # idempotent
    assert again.returncode == 0, again.stderr

    with Running(path) as r:
        wait_until(
            lambda: prices(env) == {"A": Decimal("1.00"), "B": Decimal("2.00")}, running=r, what="snapshot"
        )
        env.pos("UPDATE item_price SET price_fen = 150 WHERE item_code = 'A'")
        env.pos("UPDATE item_price SET price_fen = 0 WHERE item_code = 'B'")  # below the guard's min: held
        wait_until(lambda: prices(env)["A"] == Decimal("1.50"), running=r, what="streamed change")
        wait_until(
            lambda: (
                env.store("SELECT row_key, kind FROM cdc.cdc_held WHERE status = 'held'")
                == [("B", "quarantine")]
            ),
            running=r,
            what="held change",
        )
        status = cdc("status", path, "--json")
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert info["slot"] == f"cdc_{env.name}" and info["held"], info
        explain = cdc("explain", path, "A")
        assert explain.returncode == 0, explain.stdout + explain.stderr
        held = cdc("quarantine", path, "list")
        assert held.returncode == 0 and "B" in held.stdout, held.stdout + held.stderr
        compared = cdc("reconcile", path, "--json")  # both sides read as the roles; B's difference is held
        assert compared.returncode == 0, compared.stdout + compared.stderr
        report = json.loads(compared.stdout)
        assert report["compared"] == {"pos_rows": 2, "storefront_rows": 2}
        assert [h["key"] for h in report["held"]] == ["B"]
        refused = cdc("drop", path)
        assert refused.returncode == 1 and "is running" in refused.stderr, refused.stdout + refused.stderr
    assert prices(env)["B"] == Decimal("2.00")
    assert cdc_tables(env, "public") == [], "bookkeeping outside its schema"

    # drop, as the connector's roles: its slot and rows go; the DBA's publication and tables stay, named
    out = cdc("drop", path)
    assert out.returncode == 0, out.stderr
    assert f"would drop replication slot cdc_{env.name}" in out.stdout
    assert f"publication cdc_{env.name} is kept: role postgres made it" in out.stdout
    assert slots(env) != []
    out = cdc("drop", path, "--execute")
    assert out.returncode == 0, out.stderr
    assert slots(env) == []
    assert env.store(f"SELECT count(*) FROM cdc.cdc_offsets WHERE connector = '{env.name}'") == [(0,)]
    assert env.store("SELECT count(*) FROM cdc.cdc_held") == [(0,)]
    assert "cdc_offsets" in cdc_tables(env, "cdc")


def test_a_first_run_that_fails_on_the_storefront_leaves_no_slot(env):
    env.pos(POS_TABLE)
    env.store(STORE_TABLE)
    path = config(env, table="no_such_table")
    out = cdc("run", path)
    assert out.returncode == 1
    assert "sink.table: table no_such_table does not exist in the storefront database" in out.stderr
    assert slots(env) == []
    assert env.pos("SELECT pubname FROM pg_publication") == []


def test_a_first_run_that_fails_on_a_column_the_storefront_refuses_leaves_no_slot(env):
    """The storefront requires a column the changes do not carry: found at the first write, after the slot was
    made; the run had committed nothing, so the slot (and the publication it made) go with it."""
    env.pos(POS_TABLE)
    env.pos("INSERT INTO item_price VALUES ('A', 100)")
    env.store(
        "CREATE TABLE product_price (sku text PRIMARY KEY, price numeric(12,2), category text NOT NULL)"
    )
    out = cdc("run", config(env))
    assert out.returncode == 1
    assert "requires category (NOT NULL without a default)" in out.stderr, out.stderr
    assert slots(env) == []
    assert env.pos("SELECT pubname FROM pg_publication") == []
    # once it has committed, a failure keeps the slot: the stored position needs it
    env.store("ALTER TABLE product_price ALTER COLUMN category SET DEFAULT 'x'")
    with Running(config(env)) as r:
        wait_until(lambda: prices(env) == {"A": Decimal("1.00")}, running=r)
    env.store("ALTER TABLE product_price ALTER COLUMN category DROP DEFAULT")
    env.pos("INSERT INTO item_price VALUES ('B', 200)")
    out = cdc("run", config(env))
    assert out.returncode == 1 and "requires category" in out.stderr
    assert slots(env) == [(f"cdc_{env.name}", False)]


def test_with_snapshot_never_a_failed_first_run_keeps_its_slot(env):
    """No snapshot to start again from: the slot marks where the stream starts; a new one would start later."""
    from tests.integration.support import CdcProcess

    env.pos(POS_TABLE)
    env.store(
        "CREATE TABLE product_price (sku text PRIMARY KEY, price numeric(12,2), category text NOT NULL)"
    )
    path = config(env)
    path.write_text(path.read_text().replace("[public.item_price]", "[public.item_price], snapshot: never"))
    run = CdcProcess(path, env.tmp / "run.log")
    try:
        wait_until(lambda: slot_pids(env), what="the stream")
        env.pos("INSERT INTO item_price VALUES ('A', 100)")
        wait_until(lambda: not run.alive, what="the connector to stop")
    finally:
        run.ensure_dead()
    assert run.proc.returncode == 1 and "requires category" in run.tail(), run.tail()
    assert slots(env) == [(f"cdc_{env.name}", False)]


def test_bookkeeping_an_older_pos_cdc_made_gets_the_new_columns_from_its_owner(env):
    env.pos(POS_TABLE)
    env.pos("INSERT INTO item_price VALUES ('A', 100)")
    env.store(STORE_TABLE)
    path = config(env)
    with Running(path) as r:
        wait_until(lambda: prices(env) == {"A": Decimal("1.00")}, running=r)
    env.store("ALTER TABLE cdc_held DROP COLUMN typed_event; ALTER TABLE cdc_row_state DROP COLUMN via")
    with Running(path) as r:
        env.pos("UPDATE item_price SET price_fen = 110")
        wait_until(lambda: prices(env) == {"A": Decimal("1.10")}, running=r)
    columns = env.store(
        "SELECT table_name || '.' || column_name FROM information_schema.columns"
        " WHERE column_name IN ('typed_event', 'via') AND table_name IN ('cdc_held', 'cdc_row_state') ORDER BY 1"
    )
    assert columns == [("cdc_held.typed_event",), ("cdc_row_state.via",)]


def test_drop_removes_one_connectors_rows_and_the_tables_with_the_last(env):
    env.pos(POS_TABLE)
    env.pos("INSERT INTO item_price VALUES ('A', 100)")
    env.store(STORE_TABLE)
    a = config(env, "a.yaml")
    b_text = a.read_text().replace(f"name: {env.name}", f"name: {env.name}_b")
    b = env.tmp / "b.yaml"
    b.write_text(b_text)
    with Running(a) as ra, Running(b) as rb:
        wait_until(lambda: prices(env) == {"A": Decimal("1.00")}, running=ra)
        wait_until(
            lambda: len(env.store("SELECT DISTINCT connector FROM cdc_offsets")) == 2, running=rb, what="both"
        )
        out = cdc("drop", a, "--execute")
        assert out.returncode == 1 and f"{env.name} is running" in out.stderr, out.stdout + out.stderr
    out = cdc("drop", a)
    assert out.returncode == 0, out.stderr
    assert f"the bookkeeping tables are kept: connectors {env.name}_b use them" in out.stdout
    assert "(a dry run:" in out.stdout
    assert len(slots(env)) == 2, "a dry run dropped something"
    out = cdc("drop", a, "--execute")
    assert out.returncode == 0, out.stderr
    assert slots(env) == [(f"cdc_{env.name}_b", False)]
    assert env.pos("SELECT pubname FROM pg_publication") == [(f"cdc_{env.name}_b",)]
    assert env.store("SELECT DISTINCT connector FROM cdc_offsets") == [(f"{env.name}_b",)]
    assert env.store(f"SELECT count(*) FROM cdc_row_state WHERE connector = '{env.name}'") == [(0,)]
    out = cdc("drop", b, "--execute")
    assert out.returncode == 0, out.stderr
    assert "drop the bookkeeping tables" in out.stdout
    assert slots(env) == [] and env.pos("SELECT pubname FROM pg_publication") == []
    assert cdc_tables(env) == []
    assert prices(env) == {"A": Decimal("1.00")}, "the storefront table is never touched"


def test_connectors_started_at_once_on_a_fresh_storefront_all_run(env):
    """`cdc run a.yaml b.yaml c.yaml` beside a unit of its own for d.yaml, on a storefront with no bookkeeping
    yet: every connector makes or finds the tables and runs (before, all but one died on `duplicate key value
    violates unique constraint "pg_type_typname_nsp_index"`)."""
    from tests.integration.support import CdcProcess

    env.pos(POS_TABLE)
    env.pos("INSERT INTO item_price VALUES ('A', 100)")
    names = ["a", "b", "c", "d"]
    for n in names:
        env.store(STORE_TABLE.replace("product_price", f"price_{n}"))
    paths = [config(env, f"{n}.yaml", table=f"price_{n}") for n in names]
    for p, n in zip(paths, names, strict=True):
        p.write_text(p.read_text().replace(f"name: {env.name}", f"name: {env.name}_{n}"))
    # one process running three, and a unit of its own for the fourth, all started together
    procs = [
        CdcProcess(paths[0], env.tmp / "abc.log", *map(str, paths[1:3])),
        CdcProcess(paths[3], env.tmp / "d.log"),
    ]
    try:

        def synced() -> bool:
            for p in procs:
                p.assert_alive("(starting beside the others)")
            return all(env.store(f"SELECT count(*) FROM price_{n}") == [(1,)] for n in names)

        wait_until(synced, timeout=60, what="all four connectors to copy the table")
        assert len(env.store("SELECT DISTINCT connector FROM cdc_offsets")) == 4
        for p in procs:
            assert p.terminate()[0] == 0, p.tail()
    finally:
        for p in procs:
            p.ensure_dead()


LANES_CONFIG = """
name: @NAME@
source:
  type: postgres
  dsn: "{dsn}"
  tables: [public.item_price]
  lanes:
    - {{name: fast, where: "category = 'promo'"}}
    - {{name: bulk}}
transforms:
  - {{type: rename, fields: {{item_code: sku, price_fen: price}}}}
  - {{type: money, field: price, divide_by: 100, scale: 2}}
  - {{type: drop, fields: [category]}}
sink: {{type: sql, url: "@STORE@", table: product_price, key: [sku]}}
"""


def test_lanes_run_as_a_role_on_the_dbas_filtered_publications_and_drop_takes_every_lanes_slot(env):
    from tests.integration.support import CdcProcess

    src = f"src_{env.name}"
    env.pos("CREATE TABLE item_price (item_code text PRIMARY KEY, category text NOT NULL, price_fen bigint)")
    env.pos("INSERT INTO item_price VALUES ('P', 'promo', 100), ('R', 'regular', 200)")
    env.store(STORE_TABLE)
    env.pg.execute(f"CREATE ROLE {src} LOGIN")
    dsn, _ = as_role(env, role_src=src)
    path = env.write_config(LANES_CONFIG.format(dsn=dsn))
    out = cdc("setup-source", path, "--apply", "--admin-dsn", env.pos_dsn)
    assert out.returncode == 0, out.stderr
    assert "ALTER TABLE public.item_price REPLICA IDENTITY FULL;" in out.stdout
    pubs = dict(env.pos("SELECT pubname, rowfilter FROM pg_publication_tables ORDER BY 1"))
    assert pubs == {f"cdc_{env.name}_bulk": "(NOT ((category = 'promo'::text) IS TRUE))",
                    f"cdc_{env.name}_fast": "((category = 'promo'::text) IS TRUE)"}  # fmt: skip
    again = cdc(
        "setup-source", path, "--apply", "--admin-dsn", env.pos_dsn
    )  # ALTER PUBLICATION ... SET TABLE
    assert again.returncode == 0 and f"ALTER PUBLICATION cdc_{env.name}_fast SET TABLE" in again.stdout
    run = CdcProcess(path, env.tmp / "run.log")
    try:
        wait_until(lambda: prices(env) == {"P": Decimal("1.00"), "R": Decimal("2.00")}, timeout=60)
        env.pos("UPDATE item_price SET price_fen = price_fen + 1")
        wait_until(lambda: prices(env) == {"P": Decimal("1.01"), "R": Decimal("2.01")}, timeout=60)
        run.assert_alive()
        assert [s for s, _ in slots(env)] == [f"cdc_{env.name}_bulk", f"cdc_{env.name}_fast"]
        refused = cdc("drop", path, "--execute")
        assert refused.returncode == 1 and "is running" in refused.stderr
        assert run.terminate()[0] == 0, run.tail()
    finally:
        run.ensure_dead()
    out = cdc("drop", path, "--execute")
    assert out.returncode == 0, out.stderr
    assert slots(env) == []
    assert len(env.pos("SELECT pubname FROM pg_publication")) == 2, "the DBA's publications are kept"
    assert cdc_tables(env) == [], "no other connector used the bookkeeping (the superuser made it)"


@pytest.fixture(scope="module")
def mariadb_grants():
    """A MariaDB server of its own that keeps its grant tables (the session's skips them: every user may do
    everything there)."""
    from cdc.localmariadb import LocalMariaDB

    with LocalMariaDB(grants=True) as server:
        yield server


def test_a_mariadb_user_that_setup_sink_made_runs_the_sink(env, mariadb_grants):
    user, db = f"snk_{env.name}", f"store_{env.name}"
    admin_url = mariadb_grants.create_database(db)
    url = admin_url.replace("//root@", f"//{user}:pw-{env.name}@")
    mariadb_grants.execute(
        "CREATE TABLE product_price (sku varchar(50) PRIMARY KEY, price decimal(12,2))", db
    )
    mariadb_grants.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw-{env.name}'")
    env.pos(POS_TABLE)
    env.pos("INSERT INTO item_price VALUES ('A', 100), ('B', 200)")
    path = env.write_config(CONFIG.format(dsn=env.pos_dsn, url=url, table="product_price", sink_extra=""))

    out = cdc("run", path)
    assert out.returncode == 1
    grant = f"GRANT SELECT, INSERT, UPDATE, DELETE ON {db}.product_price TO '{user}'@'%'"
    assert f"the user '{user}'@'%' has no privilege on database {db}: {grant}" in out.stderr, out.stderr
    mariadb_grants.execute(f"{grant}")  # the storefront table only: the bookkeeping is still missing
    out = cdc("run", path)
    assert out.returncode == 1
    assert f"GRANT CREATE ON {db}.* TO '{user}'@'%'" in out.stderr
    assert slots(env) == []

    out = cdc(
        "setup-sink", path, "--apply", "--admin-url", admin_url, env={"CDC_ROLE_PASSWORD": f"pw-{env.name}"}
    )
    assert out.returncode == 0, out.stderr
    assert f"pw-{env.name}" not in out.stdout + out.stderr
    assert f"{grant};" in out.stdout
    grants = " ".join(r[0] for r in mariadb_grants.execute(f"SHOW GRANTS FOR '{user}'@'%'"))
    assert "CREATE" not in grants.replace("CREATE USER", "") and "DROP" not in grants, grants

    def rows(sql: str) -> list[tuple]:
        return mariadb_grants.execute(sql, db)

    with Running(path) as r:
        wait_until(lambda: dict(rows("SELECT sku, price FROM product_price")) == {"A": Decimal("1.00"),
                   "B": Decimal("2.00")}, running=r, what="snapshot")  # fmt: skip
        env.pos("UPDATE item_price SET price_fen = 0 WHERE item_code = 'B'")  # held by the guard
        env.pos("UPDATE item_price SET price_fen = 150 WHERE item_code = 'A'")
        wait_until(
            lambda: rows("SELECT price FROM product_price WHERE sku = 'A'") == [(Decimal("1.50"),)], running=r
        )
        assert rows("SELECT row_key, kind, status FROM cdc_held") == [("B", "quarantine", "held")]
    out = cdc("drop", path, "--execute")
    assert out.returncode == 0, out.stderr
    assert "the bookkeeping tables (" in out.stdout and "are kept: another role owns them" in out.stdout
    assert rows("SELECT count(*) FROM cdc_offsets") == [(0,)] and rows("SELECT count(*) FROM cdc_held") == [
        (0,)
    ]
    assert slots(env) == []
