"""Config errors point at the line where the mistake is and say each problem once."""

from __future__ import annotations

import pytest

from cdc.config import load_config
from cdc.errors import ConfigError

GOOD = """\
name: x
source:
  type: postgres
  dsn: host=pos
  tables: [public.item_price]
transforms:
  - {type: rename, fields: {a: b}}
sink:
  type: sql
  url: sqlite:///x.db
  table: product_price
  key: [sku]
"""


def problems(tmp_path, body: str) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    return [p.split(":", 1)[1] for p in e.value.problems]


@pytest.mark.parametrize(
    "broken, line, words",
    [
        ("  type postgres\n", 3, "a key without its ':'"),
        ('  type: "postgres\n', 3, "quoted scalar that starts here"),
        ("  - {type: rename, fields: {a: b}\n", 7, "flow mapping that starts here"),
        ("  tables: [public.item_price\n", 5, "flow sequence that starts here"),
    ],
)
def test_a_yaml_mistake_is_reported_on_its_own_line(tmp_path, broken, line, words):
    lines = GOOD.splitlines(keepends=True)
    lines[line - 1] = broken
    (found,) = problems(tmp_path, "".join(lines))
    assert found.startswith(f"{line}: (yaml): "), found
    assert words in found, found


def test_an_unset_variable_is_one_problem(tmp_path, monkeypatch):
    monkeypatch.delenv("POS_DSN_UNSET_HERE", raising=False)
    found = problems(tmp_path, GOOD.replace("host=pos", "${POS_DSN_UNSET_HERE}"))
    assert found == [
        "4: source.dsn: environment variable POS_DSN_UNSET_HERE is not set "
        "(export it, or write the value in the file)"
    ]


def test_stages_are_named_as_at_runtime(tmp_path):
    (found,) = problems(tmp_path, GOOD.replace("fields: {a: b}", "fields: {a: b}, feilds: 1"))
    assert found.startswith("7: transforms[rename#1].feilds: unknown field"), found
