"""`cdc validate` and `cdc run` on bad configs: exit codes, and one `FILE:LINE: field.path: message` line per
problem, pointing at the right line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

from tests.integration.support import POS_TABLE, ROOT, STORE_TABLE, price_config

PROBLEM = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<field>\S+): (?P<msg>.+)$")
UNSET = "CDC_TEST_SURELY_UNSET_VAR"

GOOD = """\
name: pos-prices
source:
  type: postgres
  dsn: host=127.0.0.1 dbname=pos
  tables: [public.item_price]
transforms:
  - {type: rename, fields: {item_code: sku, price_fen: price}}
  - {type: filter, where: "channel == 'ONLINE' and price > 0"}
  - type: money
    field: price
    divide_by: 100
    scale: 2
    rounding: half_up
  - {type: drop, fields: [channel]}
sink:
  type: sql
  url: postgresql+psycopg://store@127.0.0.1/store
  table: product_price
  key: [sku]
  delete: soft
  batch_size: 500
"""


def cdc(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    run_env = {k: v for k, v in os.environ.items() if k != UNSET}
    run_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cdc.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=run_env,
        timeout=timeout,
    )


def write(tmp_path, body: str, name: str = "connector.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def problems(proc: subprocess.CompletedProcess, path: str) -> list[tuple[int, str, str]]:
    """stderr -> [(line, field, message)]; every stderr line must be a problem line about `path`."""
    out = []
    for text in proc.stderr.strip().splitlines():
        m = PROBLEM.match(text)
        assert m, f"not a `FILE:LINE: field.path: message` line: {text!r}\nstderr:\n{proc.stderr}"
        assert m["file"] == path, text
        out.append((int(m["line"]), m["field"], m["msg"]))
    return out


def validate_bad(tmp_path, body: str) -> tuple[str, list[tuple[int, str, str]]]:
    path = write(tmp_path, body)
    proc = cdc("validate", path)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return path, problems(proc, path)


def where(found: list[tuple[int, str, str]]) -> set[tuple[int, str]]:
    return {(line, field) for line, field, _ in found}


def test_good_config_is_valid(tmp_path):
    path = write(tmp_path, GOOD)
    proc = cdc("validate", path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines() == [
        f"{path}: ok (pos-prices: public.item_price -> product_price)"
    ]
    assert proc.stderr == ""


def test_good_config_with_env_var_is_valid(tmp_path):
    path = write(tmp_path, GOOD.replace("host=127.0.0.1 dbname=pos", "${CDC_TEST_POS_DSN}"))
    proc = cdc("validate", path, env={"CDC_TEST_POS_DSN": "host=127.0.0.1 dbname=pos"})
    assert proc.returncode == 0, proc.stderr


def test_missing_sink(tmp_path):
    body = GOOD.split("sink:")[0]
    path, found = validate_bad(tmp_path, body)
    assert where(found) == {(1, "sink")}, found
    assert re.search(r"required|missing", found[0][2], re.I), found


def test_wrong_type(tmp_path):
    body = GOOD.replace("  batch_size: 500", '  batch_size: "lots"')
    _, found = validate_bad(tmp_path, body)
    assert where(found) == {(21, "sink.batch_size")}, found
    assert "integer" in found[0][2], found


def test_unknown_stage_type(tmp_path):
    body = GOOD.replace("{type: drop, fields: [channel]}", "{type: cast, fields: [channel]}")
    _, found = validate_bad(tmp_path, body)
    assert where(found) == {(14, "transforms[cast#4]")}, found
    assert "'cast'" in found[0][2], found


def test_unknown_top_level_key(tmp_path):
    """`sorce:` is reported on its own line (2), not on the line where its block value starts (3)."""
    body = GOOD.replace("source:", "sorce:")
    _, found = validate_bad(tmp_path, body)
    assert (2, "sorce") in where(found), found
    # the consequence, a missing `source`, may be reported too, on the root mapping's line
    assert where(found) <= {(2, "sorce"), (1, "source")}, found
    assert "unknown field" in dict(((ln, f), m) for ln, f, m in found)[(2, "sorce")]


def test_unknown_key_inside_a_stage(tmp_path):
    body = GOOD.replace("    field: price", "    feild: price")
    _, found = validate_bad(tmp_path, body)
    assert (10, "transforms[money#3].feild") in where(found), found
    assert where(found) <= {(10, "transforms[money#3].feild"), (9, "transforms[money#3].field")}, found


def test_unset_environment_variable(tmp_path):
    body = GOOD.replace("host=127.0.0.1 dbname=pos", "${" + UNSET + "}")
    _, found = validate_bad(tmp_path, body)
    assert where(found) == {(4, "source.dsn")}, found
    assert UNSET in found[0][2]


def test_table_not_schema_qualified(tmp_path):
    body = GOOD.replace("tables: [public.item_price]", "tables: [public.item_price, item_price]")
    _, found = validate_bad(tmp_path, body)
    assert len(found) == 1 and found[0][0] == 5 and found[0][1] in ("source.tables", "source.tables.1"), found
    assert "'item_price'" in found[0][2] and "schema" in found[0][2], found


def test_table_not_schema_qualified_in_a_block_list(tmp_path):
    """The bad item is on line 7; the list starts on line 6 with a good one."""
    body = GOOD.replace(
        "  tables: [public.item_price]", "  tables:\n    - public.item_price\n    - item_price"
    )
    _, found = validate_bad(tmp_path, body)
    assert len(found) == 1 and found[0][1] in ("source.tables", "source.tables.1"), found
    assert found[0][0] == 7, found


def test_invalid_filter_expression(tmp_path):
    body = GOOD.replace("where: \"channel == 'ONLINE' and price > 0\"", 'where: "price >"')
    _, found = validate_bad(tmp_path, body)
    assert where(found) == {(8, "transforms[filter#2].where")}, found
    assert "price >" in found[0][2]


ALL_PROBLEMS = """\
name: pos-prices
source:
  type: postgres
  dsn: ${@UNSET@}
  tables: [item_price]
transforms:
  - {type: cast, field: price}
  - {type: filter, where: "price >"}
sink:
  type: sql
  url: postgresql+psycopg://store@127.0.0.1/store
  table: product_price
  key: [sku]
  batch_size: "lots"
  dleete: soft
""".replace("@UNSET@", UNSET)
OTHER_PROBLEMS = {
    (5, "source.tables.0"),
    (7, "transforms[cast#1]"),
    (8, "transforms[filter#2].where"),
    (14, "sink.batch_size"),
    (15, "sink.dleete"),
}


def test_every_problem_of_a_file_is_reported_at_once(tmp_path):
    _, found = validate_bad(tmp_path, ALL_PROBLEMS)
    assert where(found) == {(4, "source.dsn")} | OTHER_PROBLEMS, found


def test_every_problem_of_a_file_is_reported_at_once_when_the_variables_are_set(tmp_path):
    path = write(tmp_path, ALL_PROBLEMS)
    proc = cdc("validate", path, env={UNSET: "host=127.0.0.1"})
    assert proc.returncode == 2
    assert where(problems(proc, path)) == OTHER_PROBLEMS


def test_problems_of_several_files(tmp_path):
    good = write(tmp_path, GOOD, "good.yaml")
    bad = write(tmp_path, GOOD.replace("  batch_size: 500", "  batch_size: -1"), "bad.yaml")
    proc = cdc("validate", good, bad)
    assert proc.returncode == 2
    assert [(ln, f) for ln, f, _ in problems(proc, bad)] == [(21, "sink.batch_size")]


def test_run_with_missing_pos_table_exits_1_with_one_clear_line(env):
    env.store(STORE_TABLE)  # the storefront is fine; the POS lacks the table
    path = env.write_config(price_config())
    proc = cdc("run", str(path), timeout=120)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "public.item_price" in errors[0] and "does not exist" in errors[0], errors
    # nothing else on stderr but log lines
    others = [ln for ln in proc.stderr.splitlines() if not ln.startswith("error:")]
    assert all(re.match(r"^\d{4}-\d\d-\d\d [\d:,]+ level=(INFO|WARNING) ", ln) for ln in others), others


def test_run_with_missing_storefront_table_exits_1_with_one_clear_line(env):
    env.pos(POS_TABLE)
    path = env.write_config(price_config())
    proc = cdc("run", str(path), timeout=120)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "product_price" in errors[0] and "does not exist" in errors[0], proc.stderr


KAFKA_HOP = """\
name: pos-to-kafka
source:
  type: postgres
  dsn: host=127.0.0.1 dbname=pos
  tables: [public.item_price]
transforms:
  - {type: guard, field: price_fen, min: 1, max_change_pct: 50}
  - {type: schedule, field: price_fen, value: promo_price_fen, valid_from: promo_from, valid_to: promo_to}
sink:
  type: kafka
  bootstrap_servers: [kafka-1:9092, kafka-2:9092]
  topic_prefix: pos
  schemas: false
  options: {acks: 1, security_protocol: SSL}
"""


def test_kafka_configs_say_what_belongs_on_which_side(tmp_path):
    """Stages that need the storefront refused before Kafka, a pick's fallback (the POS) refused after it,
    pos-cdc's own delivery settings protected, precise decimals without a schema refused, topics xor pattern."""
    _, found = validate_bad(tmp_path, KAFKA_HOP)
    assert where(found) == {(14, "sink.options")}, found  # a field's own problems first
    assert "acks cannot be set" in found[0][2]
    _, found = validate_bad(tmp_path, KAFKA_HOP.replace("acks: 1, ", ""))
    assert where(found) == {(9, "sink")}, found
    assert "decimal_handling: string" in found[0][2]
    _, found = validate_bad(
        tmp_path, KAFKA_HOP.replace("acks: 1, ", "").replace("schemas: false", "schemas: true")
    )
    assert where(found) == {(7, "transforms[guard#1].max_change_pct"), (8, "transforms[schedule#2].type")}, (
        found
    )
    assert all("connector that reads the topics and writes the storefront" in m for _, _, m in found)
    reader = KAFKA_HOP.replace(
        """source:
  type: postgres
  dsn: host=127.0.0.1 dbname=pos
  tables: [public.item_price]""",
        """source:
  type: kafka
  bootstrap_servers: kafka-1:9092
  topics: [pos.public.item_price]
  topic_pattern: "pos[.].*"
  group: shop""",
    ).split("sink:")[0]
    reader = reader.replace(
        """  - {type: guard, field: price_fen, min: 1, max_change_pct: 50}
  - {type: schedule, field: price_fen, value: promo_price_fen, valid_from: promo_from, valid_to: promo_to}""",
        """  - {type: pick, key: [item_code], store_field: store_id, store: 900, fallback_store: 1}""",
    )
    reader += "sink: {type: sql, url: 'sqlite:///shop.db', table: product_price, key: [item_code]}\n"
    _, found = validate_bad(tmp_path, reader)
    assert where(found) == {(2, "source")} and "either topics" in found[0][2], found
    _, found = validate_bad(tmp_path, reader.replace('  topic_pattern: "pos[.].*"\n', ""))
    assert where(found) == {(8, "transforms[pick#1].fallback_store")}, found
    assert "reads the POS" in found[0][2]
