"""Who may change a price, end to end through real PostgreSQL (POS and storefront) and a running connector: the
POS's own user table gives each user's role; a cashier's 30 % cut is held with who, the rule and the numbers,
the pricing role's is published; a category change by anyone but hq is held; an unknown user is held; only a
configured approver may decide, and every decision is in cdc_price_history with the approver and the entry."""

from __future__ import annotations

import json
from decimal import Decimal as D

from tests.integration.helpers import Running, wait_until
from tests.integration.pricing import cdc, cdc_json

POS_DDL = """
CREATE TABLE item (
    sku        text   PRIMARY KEY,
    price_fen  bigint NOT NULL,
    category   text   NOT NULL,
    updated_by text
);
CREATE TABLE pos_users (user_id text PRIMARY KEY, role text NOT NULL);
INSERT INTO pos_users VALUES ('c1', 'cashier'), ('p1', 'pricing'), ('h1', 'hq');
"""

STORE_DDL = (
    "CREATE TABLE product (sku varchar(64) PRIMARY KEY, price numeric(12,2) NOT NULL, category varchar(32))"
)

CONFIG = """
name: @NAME@
source: {type: postgres, dsn: "@POS@", tables: [public.item], heartbeat_interval_s: 0}
transforms:
  - {type: rename, fields: {price_fen: price}}
  - {type: money, field: price, divide_by: 100, scale: 2}
  - type: guard
    field: price
    max_change_pct: 20
    exempt: [pricing]
    approvers: [dba-anna, dba-li]
    who: &who {column: updated_by, lookup: {table: @USERS@, key: user_id, value: role, cache_s: 0}}
  - {type: guard, field: category, allow: [hq], approvers: [dba-anna], who: *who}
  - {type: drop, fields: [updated_by]}
sink:
  type: sql
  url: "@STORE@"
  table: product
  key: [sku]
  history: {fields: [price, category], changed_by: updated_by}
"""


def setup(env, users: str = "public.pos_users"):
    env.pos(POS_DDL)
    env.store(STORE_DDL)
    return env.write_config(CONFIG.replace("@USERS@", users))


def put(env, sku: str, fen: int, category: str, by: str) -> None:
    env.pos(
        "INSERT INTO item VALUES (%s, %s, %s, %s) ON CONFLICT (sku) DO UPDATE SET price_fen = EXCLUDED.price_fen,"
        " category = EXCLUDED.category, updated_by = EXCLUDED.updated_by",
        sku,
        fen,
        category,
        by,
    )


def products(env) -> dict[str, tuple[D, str]]:
    return {sku: (price, cat) for sku, price, cat in env.store("SELECT sku, price, category FROM product")}


def entries(path) -> dict[str, dict]:
    return {e["row_key"]: e for e in cdc_json("quarantine", path, "list")}


def history(env, sku: str) -> list[tuple]:
    rows = env.store(
        "SELECT op, old_value, new_value, changed_by, via FROM cdc_price_history WHERE row_key = %s ORDER BY id",
        sku,
    )
    return [(op, json.loads(o) if o else None, json.loads(n), by, via) for op, o, n, by, via in rows]


def test_who_may_change_a_price_and_who_may_approve(env):
    path = setup(env)
    for sku in "ABCD":
        put(env, sku, 1000, "DAIRY", "h1")
    with Running(path) as r:
        wait_until(lambda: len(products(env)) == 4, running=r, what="snapshot")
        put(env, "A", 700, "DAIRY", "c1")  # a cashier's 30 % cut: held
        put(env, "B", 700, "DAIRY", "p1")  # the pricing role's 30 % cut: published
        put(env, "C", 1000, "SNACK", "p1")  # a category change by pricing: held (only hq)
        put(env, "D", 1050, "FROZEN", "h1")  # hq may change the category (and 5 % anyone may)
        put(env, "E", 990, "DAIRY", "c1")  # a new SKU: nothing to compare with
        put(env, "A2", 1000, "DAIRY", "x9")  # not in pos_users
        put(env, "A2", 500, "DAIRY", "x9")  # ... and cuts it by half: held, as an unknown user
        wait_until(
            lambda: products(env).get("D") == (D("10.50"), "FROZEN") and "E" in products(env),
            running=r,
            what="the allowed changes",
        )
        wait_until(lambda: len(entries(path)) == 3, running=r, what="three held")
        assert products(env)["A"] == (D("10.00"), "DAIRY") and products(env)["B"] == (D("7.00"), "DAIRY")
        assert products(env)["C"] == (D("10.00"), "DAIRY") and products(env)["A2"] == (D("10.00"), "DAIRY")

        held = entries(path)
        a, c, a2 = held["A"], held["C"], held["A2"]
        assert a["rule"] == "guard#3:max_change_pct"
        assert a["reason"] == (
            "price 7.00 is 30.0% below the storefront's 10.00 (max_change_pct 20); "
            "changed by c1 (role cashier): only role pricing may"
        )
        d = a["details"]
        assert (d["who"], d["roles"], d["value"], d["current"], d["limit"]) == (
            "c1",
            ["cashier"],
            "7.00",
            "10.00",
            "20",
        )
        assert c["rule"] == "guard#4:allow"
        assert c["reason"] == (
            "category changed from 'DAIRY' to 'SNACK' by p1 (role pricing): only role hq may change category"
        )
        assert (c["details"]["current"], c["details"]["value"]) == ("DAIRY", "SNACK")
        assert a2["rule"] == "guard#3:max_change_pct"
        assert "changed by unknown user 'x9' (no role in public.pos_users)" in a2["reason"]
        assert a2["details"]["unknown_user"] is True

        # cdc explain tells who and which rule
        out = cdc("explain", path, "A")
        assert out.returncode == 1, out.stderr
        text = " ".join(out.stdout.split())  # as wide as the terminal: unwrapped
        assert "guard#3:max_change_pct" in text and "changed by c1 (role cashier)" in text, text
        info = json.loads(cdc("explain", path, "A", "--json").stdout)
        assert info["verdict"].startswith("held: price 7.00 is 30.0% below") and "by c1" in info["verdict"]

        # only an approver decides, and a refusal says who may
        out = cdc("quarantine", path, "approve", a["id"], "--by", "bob")
        assert out.returncode == 1
        assert (
            f"bob may not approve entry {a['id']}: it was held by guard#3:max_change_pct, whose approvers are "
            "dba-anna, dba-li"
        ) in out.stderr
        out = cdc("quarantine", path, "reject", c["id"], "--by", "dba-li")  # an approver of guard#3, not #4
        assert out.returncode == 1 and "whose approvers are dba-anna " in out.stderr, out.stderr
        assert len(entries(path)) == 3 and products(env)["A"] == (D("10.00"), "DAIRY")

        out = cdc("quarantine", path, "approve", a["id"], "--by", "dba-li")
        assert out.returncode == 0, out.stderr
        assert f"entry {a['id']}: applied" in out.stdout
        assert products(env)["A"] == (D("7.00"), "DAIRY")
        out = cdc("quarantine", path, "reject", c["id"], "--by", "dba-anna")
        assert out.returncode == 0 and "rejected" in out.stdout, out.stderr
        assert products(env)["C"] == (D("10.00"), "DAIRY")

        # the POS's user table is read as it is now (cache_s: 0): c1 promoted to pricing may cut by 40 %
        env.pos("UPDATE pos_users SET role = 'pricing' WHERE user_id = 'c1'")
        put(env, "A", 420, "DAIRY", "c1")
        wait_until(lambda: products(env)["A"] == (D("4.20"), "DAIRY"), running=r, what="c1's cut as pricing")
        assert len(entries(path)) == 1  # A2's

    assert history(env, "A") == [
        ("c", None, {"price": "10.00", "category": "DAIRY"}, "h1", "snapshot"),
        ("u", {"price": "10.00", "category": "DAIRY"}, {"price": "7.00", "category": "DAIRY"}, "c1",
         f"approve:dba-li#{a['id']}"),
        ("u", {"price": "7.00", "category": "DAIRY"}, {"price": "4.20", "category": "DAIRY"}, "c1", "stream"),
    ]  # fmt: skip
    assert history(env, "B")[-1] == (
        "u",
        {"price": "10.00", "category": "DAIRY"},
        {"price": "7.00", "category": "DAIRY"},
        "p1",
        "stream",
    )
    assert history(env, "C")[-1] == (
        "x",  # not applied: the storefront keeps old_value, new_value is what was refused
        {"price": "10.00", "category": "DAIRY"},
        {"price": "10.00", "category": "SNACK"},
        "p1",
        f"reject:dba-anna#{c['id']}",
    )
    decided = env.store("SELECT id, status, resolved_by FROM cdc_held WHERE status <> 'held' ORDER BY id")
    assert decided == [(a["id"], "applied", "dba-li"), (c["id"], "rejected", "dba-anna")]


def test_a_wrong_user_table_stops_the_connector_saying_what_to_fix(env):
    path = setup(env, users="public.pos_user")
    put(env, "A", 1000, "DAIRY", "h1")
    r = Running(path)
    r.thread.start()
    wait_until(lambda: not r.thread.is_alive(), timeout=60, what="the connector stops")
    assert r.error is not None
    assert 'relation "public.pos_user" does not exist' in str(r.error)  # what is wrong, and the query it ran
    assert "SELECT role FROM public.pos_user WHERE user_id = <user>" in str(r.error)


def test_mistakes_in_the_rules_are_reported_as_file_line_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        CONFIG.replace("@NAME@", "perms")
        .replace("@POS@", "host=pos.internal dbname=pos")
        .replace("@STORE@", "sqlite:///shop.db")
        .replace("@USERS@", "pos_users")  # not schema.table
        .replace("exempt: [pricing]", "exempt: [pricing, pricing]")
    )
    out = cdc("validate", path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert f"{path}:10: transforms[guard#3].exempt: Value error, exempt: a name is listed twice" in lines, (
        lines
    )
    for i in (2, 3):  # both guards share the anchored `who` of line 12
        assert any(
            line.startswith(f"{path}:12: transforms[guard#{i + 1}].who.lookup.table: ")
            and "must be schema.table" in line
            for line in lines
        ), lines
    # a connector that reads Kafka cannot ask the POS for roles
    path.write_text(
        CONFIG.replace("@USERS@", "public.pos_users")
        .replace("@NAME@", "perms")
        .replace('{type: postgres, dsn: "@POS@", tables: [public.item], heartbeat_interval_s: 0}',
                 "{type: kafka, bootstrap_servers: 'k:9092', topics: [pos.public.item], group: shop}")
        .replace("@STORE@", "sqlite:///shop.db")
    )  # fmt: skip
    out = cdc("validate", path)
    assert out.returncode == 2, out.stderr
    assert (
        f"{path}:12: transforms[guard#3].who.lookup: reads the roles from the POS database" in out.stderr
    ), out.stderr


def test_reconcile_asks_the_pos_for_roles_as_the_connector_does(env):
    path = setup(env)
    text = path.read_text().replace(
        "  - {type: drop, fields: [updated_by]}",
        "  - {type: guard, field: price, min: 1.00, exempt: [pricing], who: *who}\n"
        "  - {type: drop, fields: [updated_by]}",
    )
    path.write_text(text)
    put(env, "A", 50, "DAIRY", "p1")  # below the minimum, by pricing: published
    put(env, "B", 50, "DAIRY", "c1")  # by a cashier: held
    with Running(path) as r:
        wait_until(lambda: "A" in products(env) and len(entries(path)) == 1, running=r, what="A in, B held")
    assert products(env) == {"A": (D("0.50"), "DAIRY")}
    out = cdc("reconcile", path, "--json")
    report = json.loads(out.stdout)
    # A is in sync: reconcile judged it with p1's role; B is the held one
    # A is in sync (judged with p1's role, as the connector did), B is the held one, with who and the rule
    assert (out.returncode, report["in_sync"], report["counts"]["held"]) == (0, True, 1), report
    ((held,),) = [report["held"]]
    assert held["key"] == "B" and held["why"].startswith("guard#5:min: price 0.50 is below the minimum 1")
    assert held["why"].endswith("changed by c1 (role cashier): only role pricing may")
