"""The pick fallback's pure parts: tracing a column back to the source through the stages before the pick,
config errors that say what to change, and the wiring's refusals (no database is touched)."""

from __future__ import annotations

import pytest

from cdc.config import ConnectorConfig, load_config
from cdc.errors import ConfigError, HoldError, TerminalError
from cdc.events import ChangeEvent
from cdc.fallback import VIA, PickFallback, wire_fallback
from cdc.stages import PickStage, apply_stages, build_stages, stage_config_adapter
from cdc.stages.lineage import Untraceable, pick_fallback_problems, source_column


def configs(*stages: dict):
    return stage_config_adapter.validate_python(list(stages))


RENAME = {"type": "rename", "fields": {"item_code": "sku", "store_id": "store", "price_fen": "price"}}
PICK = {"type": "pick", "key": ["sku"], "store_field": "store", "store": 900, "fallback_store": 1}


class TestSourceColumn:
    def test_renames_are_undone_in_reverse_order(self):
        c = configs(
            {"type": "rename", "fields": {"item_code": "code"}},
            {"type": "filter", "where": "channel == 'ONLINE'"},
            {"type": "rename", "fields": {"code": "sku"}},
        )
        assert source_column(c, "sku") == "item_code"
        assert source_column(c, "channel") == "channel"  # untouched
        assert source_column([], "sku") == "sku"

    def test_swapped_names(self):
        c = configs({"type": "rename", "fields": {"a": "b", "b": "a"}})
        assert source_column(c, "a") == "b" and source_column(c, "b") == "a"

    def test_value_preserving_stages_pass(self):
        c = configs(
            {"type": "route", "rules": [{"when": "price > 1", "lane": "x"}]},
            {"type": "guard", "field": "price", "min": 1},
            {"type": "pick", "key": ["sku"], "where": "channel == 'ONLINE'"},
            {"type": "money", "field": "price", "scale": 2},
            {"type": "set", "fields": {"currency": "'CNY'"}},
            {"type": "drop", "fields": ["note"]},
        )
        assert source_column(c, "sku") == "sku"

    @pytest.mark.parametrize(
        "stage,past",
        [
            ({"type": "set", "fields": {"sku": "upper(sku)"}}, "computed by set#2"),
            ({"type": "money", "field": "sku", "scale": 0}, "changed by money#2"),
            (
                {"type": "tax", "field": "price", "direction": "add", "rate": 0.1, "scale": 2, "into": "sku"},
                "tax#2",
            ),
            (
                {"type": "schedule", "field": "sku", "value": "p", "valid_from": "f", "valid_to": "t"},
                "changed by schedule#2",
            ),
            ({"type": "drop", "fields": ["sku"]}, "dropped by drop#2"),
        ],
    )
    def test_a_column_changed_before_has_no_source_column(self, stage, past):
        c = configs({"type": "rename", "fields": {"item_code": "sku"}}, stage)
        with pytest.raises(Untraceable, match=past) as e:
            source_column(c, "sku", "key column", "the pick")
        assert "move the pick before" in str(e.value)
        assert "(named 'sku' there)" not in str(e.value)

    def test_message_names_the_column_as_the_stage_saw_it(self):
        c = configs({"type": "set", "fields": {"code": "'x'"}}, {"type": "rename", "fields": {"code": "sku"}})
        with pytest.raises(
            Untraceable, match="key column 'sku' \\(named 'code' there\\) is computed by set#1"
        ):
            source_column(c, "sku", "key column")

    def test_a_name_renamed_away(self):
        c = configs({"type": "rename", "fields": {"sku": "item"}})
        with pytest.raises(Untraceable, match="no column 'sku' after rename#1, which renames it to 'item'"):
            source_column(c, "sku")


class TestProblems:
    def test_the_example_shape_is_fine(self):
        assert (
            pick_fallback_problems(configs(RENAME, {"type": "filter", "where": "channel == 'ONLINE'"}, PICK))
            == []
        )
        assert pick_fallback_problems(configs({**PICK, "fallback_store": None})) == []

    def test_key_and_store_field_are_both_checked(self):
        c = configs(RENAME, {"type": "set", "fields": {"sku": "concat('S', sku)", "store": "900"}}, PICK)
        problems = pick_fallback_problems(c)
        assert [(i, f) for i, f, _ in problems] == [(2, "key"), (2, "store_field")]
        assert all(
            m.startswith("fallback_store looks rows up in the source by it, but ") for *_, m in problems
        )

    def test_one_fallback_pick_per_connector(self):
        problems = pick_fallback_problems(configs(RENAME, PICK, PICK))
        assert problems == [(2, "fallback_store", "only one pick per connector may have a fallback_store")]


CONFIG = """\
name: shop
source: {type: postgres, dsn: "host=pos", tables: [public.item_price]}
transforms:
  - {type: rename, fields: {item_code: sku, store_id: store}}
  - {type: set, fields: {sku: "upper(sku)"}}
  - type: pick
    key: [sku]
    store_field: store
    store: 900
    fallback_store: 1
sink: {type: sql, url: "sqlite:///x.db", table: product_price, key: [sku]}
"""


def test_validate_reports_an_untraceable_key_with_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    (problem,) = e.value.problems
    assert problem.startswith(
        f"{path}:7: transforms[pick#3].key: fallback_store looks rows up in the source by it"
    )
    assert "is computed by set#2" in problem and "move the pick before set#2" in problem
    path.write_text(CONFIG.replace('  - {type: set, fields: {sku: "upper(sku)"}}\n', ""))
    assert load_config(path).transforms[1].fallback_store == 1


def _cfg(*transforms: dict) -> ConnectorConfig:
    return ConnectorConfig.model_validate(
        {
            "name": "shop",
            "source": {"type": "postgres", "dsn": "host=pos.invalid", "tables": ["public.item_price"]},
            "transforms": list(transforms),
            "sink": {"type": "sql", "url": "sqlite:///x.db", "table": "product_price", "key": ["sku"]},
        }
    )


class TestWiring:
    def test_no_fallback_no_wiring(self):
        cfg = _cfg(RENAME, {**PICK, "fallback_store": None})
        stages = build_stages(cfg.transforms)
        assert wire_fallback(stages, cfg) is None
        assert stages[1].exists is None

    def test_wires_the_pick_without_connecting(self):
        cfg = _cfg(
            RENAME,
            PICK,
            {"type": "rename", "fields": {"price": "amount"}},
            {"type": "money", "field": "amount", "scale": 2},
        )
        stages = build_stages(cfg.transforms)
        fb = wire_fallback(stages, cfg)
        assert isinstance(fb, PickFallback)
        pick = stages[1]
        assert isinstance(pick, PickStage) and pick.exists == fb.exists
        assert fb.key_src == {"sku": "item_code"} and fb.store_src == "store_id"
        # the fallback rows go through the stages before the pick, a re-keying in its place, those after it
        assert [s.name for s in fb.stages] == ["rename#1", "pick#2", "rename#3", "money#4"]
        assert fb.stages[1] is not pick
        row = ChangeEvent(
            "c",
            "public",
            "item_price",
            None,
            {"item_code": "A", "store_id": 1, "price_fen": 990},
            5,
            7,
            3,
            0,
            key_columns=("item_code", "store_id"),
            headers={"via": VIA},
        )
        out = apply_stages(fb.stages, row)
        assert out.key_columns == ("sku",) and out.after == {
            "sku": "A",
            "store": 1,
            "amount": out.after["amount"],
        }
        assert str(out.after["amount"]) == "990.00" and (out.commit_lsn, out.seq) == (7, 3)

    def test_rekey_holds_a_row_without_the_key(self):
        cfg = _cfg(PICK)
        stages = build_stages(cfg.transforms)
        fb = wire_fallback(stages, cfg)
        ev = ChangeEvent("c", "public", "item_price", None, {"store": 1}, 1, 1, 1, 0)
        with pytest.raises(HoldError, match="no key column 'sku'"):
            apply_stages(fb.stages, ev)

    def test_untraceable_config_is_refused_at_start(self):
        cfg = _cfg(RENAME, {"type": "money", "field": "store", "scale": 0}, PICK)
        with pytest.raises(
            TerminalError, match=r"transforms\[pick#3\].store_field: .* is changed by money#2"
        ):
            wire_fallback(build_stages(cfg.transforms), cfg)
