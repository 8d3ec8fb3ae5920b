"""Transform stages: rename, filter, money, drop, and build_stages / apply_stages."""

from __future__ import annotations

import decimal
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from cdc.errors import HoldError
from cdc.events import UNCHANGED_TOAST, ChangeEvent
from cdc.stages import (
    DropConfig,
    FilterConfig,
    MoneyConfig,
    RenameConfig,
    Stage,
    StageConfig,
    apply_stages,
    build_stages,
)


def event(op="u", before=None, after=None, key=("id",), **kw) -> ChangeEvent:
    return ChangeEvent(
        op=op,
        schema="public",
        table="items",
        before=before,
        after=after,
        lsn=100,
        commit_lsn=200,
        seq=1,
        ts_ms=1_700_000_000_000,
        key_columns=key,
        **kw,
    )


def one(config: dict) -> Stage:
    (stage,) = build_stages([config])
    return stage


def money(**kw) -> Stage:
    return one({"type": "money", "field": "price", **kw})


def convert(value, **kw):
    ev = money(**kw)(event("c", after={"id": 1, "price": value}))
    return ev.after["price"]


def same(a: Decimal, b: str | Decimal) -> bool:
    """Equal value AND equal representation (scale)."""
    return type(a) is Decimal and a.as_tuple() == Decimal(b).as_tuple()


# ------------------------------------------------------------------------------------ build / config


class TestBuild:
    def test_names_are_type_and_1_based_index(self):
        stages = build_stages(
            [
                {"type": "rename", "fields": {"a": "b"}},
                {"type": "filter", "where": "b > 0"},
                {"type": "money", "field": "b", "scale": 2},
                {"type": "drop", "fields": ["c"]},
                {"type": "rename", "fields": {"b": "a"}},
            ]
        )
        assert [s.name for s in stages] == ["rename#1", "filter#2", "money#3", "drop#4", "rename#5"]
        assert all(isinstance(s, Stage) for s in stages)

    def test_accepts_models(self):
        stages = build_stages(
            [RenameConfig(type="rename", fields={"a": "b"}), DropConfig(type="drop", fields=["x"])]
        )
        assert [s.name for s in stages] == ["rename#1", "drop#2"]

    def test_accepts_mixed_models_and_dicts(self):
        stages = build_stages(
            [MoneyConfig(type="money", field="p", divide_by=100, scale=2), {"type": "drop", "fields": ["x"]}]
        )
        assert [s.name for s in stages] == ["money#1", "drop#2"]
        assert stages[0].config.divide_by == 100

    def test_empty(self):
        assert build_stages([]) == []

    def test_discriminated_union(self):
        configs = TypeAdapter(list[StageConfig]).validate_python(
            [{"type": "filter", "where": "x > 1"}, {"type": "money", "field": "p", "scale": 0}]
        )
        assert isinstance(configs[0], FilterConfig)
        assert isinstance(configs[1], MoneyConfig)

    def test_unknown_type(self):
        with pytest.raises(ValidationError, match="'rename', 'filter', 'money', 'drop'"):
            build_stages([{"type": "explode"}])

    def test_missing_type(self):
        with pytest.raises(ValidationError, match="discriminator 'type'"):
            build_stages([{"fields": {"a": "b"}}])

    @pytest.mark.parametrize(
        "config",
        [
            {"type": "rename", "fields": {"a": "b"}, "extra": 1},
            {"type": "filter", "where": "a > 1", "when": "x"},
            {"type": "money", "field": "p", "scale": 2, "round": "up"},
            {"type": "drop", "fields": ["a"], "name": "x"},
        ],
    )
    def test_extra_keys_forbidden(self, config):
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            build_stages([config])


class TestConfigMessages:
    def test_filter_where_parse_error_carries_expr_error(self):
        with pytest.raises(ValidationError) as ei:
            FilterConfig(type="filter", where="price > 0 and a.b")
        (err,) = ei.value.errors()
        assert err["loc"] == ("where",)
        assert "attribute access 'a.b' is not allowed at column 15" in err["msg"]

    def test_filter_where_syntax_error(self):
        with pytest.raises(ValidationError, match="invalid expression 'price >'"):
            FilterConfig(type="filter", where="price >")

    @pytest.mark.parametrize("where", ["price * 2", "'yes'", "lower(name)", "null"])
    def test_filter_where_must_be_a_condition(self, where):
        with pytest.raises(ValidationError, match="where must be a condition"):
            FilterConfig(type="filter", where=where)

    def test_money_rounding_lists_allowed_values(self):
        with pytest.raises(ValidationError) as ei:
            MoneyConfig(type="money", field="p", scale=2, rounding="bankers")
        msg = str(ei.value)
        for mode in ("half_up", "half_even", "down", "up"):
            assert f"'{mode}'" in msg

    def test_money_rounding_default(self):
        assert MoneyConfig(type="money", field="p", scale=2).rounding == "half_up"

    @pytest.mark.parametrize(
        "divide_by", [0, -100, "0", Decimal("-0.01"), Decimal("NaN"), Decimal("Infinity")]
    )
    def test_money_divide_by_must_be_positive(self, divide_by):
        with pytest.raises(ValidationError, match="divide_by must be greater than 0"):
            MoneyConfig(type="money", field="p", scale=2, divide_by=divide_by)

    @pytest.mark.parametrize("divide_by", [0.01, True, "abc", [100], "NaN", "Infinity"])
    def test_money_divide_by_must_be_exact_number(self, divide_by):
        with pytest.raises(ValidationError, match="divide_by"):
            MoneyConfig(type="money", field="p", scale=2, divide_by=divide_by)

    @pytest.mark.parametrize(
        "divide_by,expected", [(100, 100), (100.0, 100), ("0.01", "0.01"), ("1e3", 1000)]
    )
    def test_money_divide_by_accepted(self, divide_by, expected):
        cfg = MoneyConfig(type="money", field="p", scale=2, divide_by=divide_by)
        assert cfg.divide_by == Decimal(expected)

    def test_money_scale(self):
        with pytest.raises(ValidationError, match="greater than or equal to 0"):
            MoneyConfig(type="money", field="p", scale=-1)
        with pytest.raises(ValidationError, match="scale"):
            MoneyConfig(type="money", field="p")  # required
        assert MoneyConfig(type="money", field="p", scale=0).scale == 0

    def test_money_field_required_and_non_empty(self):
        with pytest.raises(ValidationError, match="field must name a column"):
            MoneyConfig(type="money", field=" ", scale=2)

    def test_rename_empty_fields(self):
        with pytest.raises(ValidationError, match="rename needs at least one field"):
            RenameConfig(type="rename", fields={})

    def test_rename_duplicate_target(self):
        with pytest.raises(ValidationError, match="maps both 'a' and 'b' to 'c'"):
            RenameConfig(type="rename", fields={"a": "c", "b": "c"})

    def test_rename_empty_name(self):
        with pytest.raises(ValidationError, match="must not be empty"):
            RenameConfig(type="rename", fields={"a": ""})

    def test_drop_fields(self):
        with pytest.raises(ValidationError, match="drop needs at least one field"):
            DropConfig(type="drop", fields=[])
        with pytest.raises(ValidationError, match="listed twice"):
            DropConfig(type="drop", fields=["a", "a"])


# ---------------------------------------------------------------------------------------------- rename


class TestRename:
    def test_renames_before_after_and_keys(self):
        stage = one({"type": "rename", "fields": {"item_id": "id", "cost": "price"}})
        ev = event(
            "u",
            before={"item_id": 1, "cost": 5},
            after={"item_id": 1, "cost": 6, "name": "x"},
            key=("item_id", "store"),
        )
        out = stage(ev)
        assert out.before == {"id": 1, "price": 5}
        assert out.after == {"id": 1, "price": 6, "name": "x"}
        assert out.key_columns == ("id", "store")

    def test_keeps_column_order(self):
        stage = one({"type": "rename", "fields": {"b": "B"}})
        out = stage(event("c", after={"a": 1, "b": 2, "c": 3}))
        assert list(out.after) == ["a", "B", "c"]

    def test_swap(self):
        stage = one({"type": "rename", "fields": {"a": "b", "b": "a"}})
        out = stage(event("c", after={"a": 1, "b": 2}, key=("a",)))
        assert out.after == {"b": 1, "a": 2}
        assert out.key_columns == ("b",)

    def test_collision_is_held(self):
        stage = one({"type": "rename", "fields": {"cost": "price"}})
        with pytest.raises(HoldError, match="overwrite column\\(s\\) 'price'") as ei:
            stage(event("c", after={"id": 1, "cost": 5, "price": 6}))
        assert ei.value.rule == "rename#1"

    def test_delete_and_key_only_before(self):
        stage = one({"type": "rename", "fields": {"item_id": "id"}})
        out = stage(event("d", before={"item_id": 7}, after=None, key=("item_id",)))
        assert out.before == {"id": 7}
        assert out.after is None
        assert out.key_columns == ("id",)

    def test_truncate(self):
        stage = one({"type": "rename", "fields": {"item_id": "id"}})
        out = stage(event("t", key=("item_id",)))
        assert out.op == "t" and out.before is None and out.after is None
        assert out.key_columns == ("id",)

    def test_fields_absent_from_row(self):
        stage = one({"type": "rename", "fields": {"zzz": "y"}})
        out = stage(event("c", after={"id": 1}))
        assert out.after == {"id": 1}
        assert out.key_columns == ("id",)

    def test_shared_before_after_dict(self):
        row = {"a": 1}
        out = one({"type": "rename", "fields": {"a": "b"}})(event("u", before=row, after=row))
        assert out.before == {"b": 1} and out.after == {"b": 1}

    def test_does_not_touch_values(self):
        v = Decimal("1.10")
        out = one({"type": "rename", "fields": {"a": "b"}})(event("c", after={"a": v}))
        assert out.after["b"] is v


# ------------------------------------------------------------------------------------------------ drop


class TestDrop:
    def test_drops_from_both_images(self):
        stage = one({"type": "drop", "fields": ["note", "secret"]})
        out = stage(
            event("u", before={"id": 1, "note": "a", "secret": 1}, after={"id": 1, "note": "b", "price": 2})
        )
        assert out.before == {"id": 1}
        assert out.after == {"id": 1, "price": 2}

    def test_key_columns_untouched(self):
        stage = one({"type": "drop", "fields": ["id"]})
        out = stage(event("c", after={"id": 1, "price": 2}, key=("id",)))
        assert out.after == {"price": 2}
        assert out.key_columns == ("id",)

    def test_none_images_and_truncate(self):
        stage = one({"type": "drop", "fields": ["note"]})
        assert stage(event("d", before={"id": 1}, after=None)).before == {"id": 1}
        assert stage(event("t")).op == "t"


# ---------------------------------------------------------------------------------------------- filter


ACTIVE = {"type": "filter", "where": "status == 'active' and price > 0"}
PASS = {"id": 1, "status": "active", "price": Decimal("5")}
FAIL = {"id": 1, "status": "hidden", "price": Decimal("5")}


class TestFilterInsertRead:
    @pytest.mark.parametrize("op", ["c", "r"])
    def test_keep_and_drop(self, op):
        stage = one(ACTIVE)
        ev = event(op, after=dict(PASS))
        assert stage(ev) is ev
        assert stage(event(op, after=dict(FAIL))) is None

    def test_missing_field_in_after_is_held(self):
        stage = one(ACTIVE)
        with pytest.raises(HoldError, match="no field 'price'") as ei:
            stage(event("c", after={"id": 1, "status": "active"}))
        assert ei.value.rule == "filter#1"
        assert ei.value.details["field"] == "price"
        assert ei.value.details["where"] == "status == 'active' and price > 0"

    def test_type_error_is_held(self):
        stage = one({"type": "filter", "where": "price > 0"})
        with pytest.raises(HoldError, match="cannot compare string 'abc' with number") as ei:
            stage(event("c", after={"id": 1, "price": "abc"}))
        assert ei.value.rule == "filter#1"

    def test_null_result_drops(self):
        stage = one({"type": "filter", "where": "flag"})
        assert stage(event("c", after={"flag": None})) is None
        assert stage(event("c", after={"flag": True})) is not None

    def test_non_boolean_result_is_held(self):
        stage = one({"type": "filter", "where": "flag"})
        with pytest.raises(HoldError, match="must give true or false"):
            stage(event("c", after={"flag": "yes"}))

    def test_null_comparison_drops(self):
        stage = one({"type": "filter", "where": "price > 0"})
        assert stage(event("c", after={"price": None})) is None

    def test_no_after_is_held(self):
        with pytest.raises(HoldError, match="no after image"):
            one(ACTIVE)(event("c", after=None))


class TestFilterDelete:
    def test_before_passes(self):
        ev = event("d", before=dict(PASS))
        assert one(ACTIVE)(ev) is ev

    def test_before_fails_drops(self):
        assert one(ACTIVE)(event("d", before=dict(FAIL))) is None

    def test_key_only_before_keeps(self):
        ev = event("d", before={"id": 1})
        assert one(ACTIVE)(ev) is ev

    def test_no_before_keeps(self):
        ev = event("d", before=None)
        assert one(ACTIVE)(ev) is ev

    def test_unevaluable_before_keeps(self):
        ev = event("d", before={"id": 1, "status": "active", "price": "abc"})
        assert one(ACTIVE)(ev) is ev


class TestFilterUpdate:
    def test_passes_to_passes_stays_update(self):
        ev = event("u", before=dict(PASS), after={**PASS, "price": Decimal(6)})
        out = one(ACTIVE)(ev)
        assert out is ev and out.op == "u"
        assert out.before == PASS and out.after["price"] == 6

    def test_fails_to_passes_becomes_insert(self):
        out = one(ACTIVE)(event("u", before=dict(FAIL), after=dict(PASS)))
        assert out.op == "c"
        assert out.before is None
        assert out.after == PASS

    def test_passes_to_fails_becomes_delete(self):
        out = one(ACTIVE)(event("u", before=dict(PASS), after=dict(FAIL)))
        assert out.op == "d"
        assert out.after is None
        assert out.before["id"] == 1
        assert out.row == out.before

    def test_fails_to_fails_drops(self):
        assert one(ACTIVE)(event("u", before=dict(FAIL), after={**FAIL, "price": 7})) is None

    @pytest.mark.parametrize("before", [None, {"id": 1}, {"id": 1, "status": "active"}])
    def test_unknown_before_and_after_passes_stays_update(self, before):
        out = one(ACTIVE)(event("u", before=before, after=dict(PASS)))
        assert out.op == "u"
        assert out.after == PASS

    @pytest.mark.parametrize("before", [None, {"id": 1}])
    def test_unknown_before_and_after_fails_becomes_delete(self, before):
        out = one(ACTIVE)(event("u", before=before, after=dict(FAIL)))
        assert out.op == "d"
        assert out.after is None
        assert out.before == FAIL  # the after row's values, so the sink finds the key

    def test_delete_keeps_old_key_when_key_changed(self):
        # the key changed from 1 to 2 and the row stopped passing: the row downstream is under key 1
        out = one(ACTIVE)(event("u", before={"id": 1}, after={**FAIL, "id": 2}))
        assert out.op == "d"
        assert out.before["id"] == 1
        assert out.before["status"] == "hidden"

    def test_after_missing_field_is_held(self):
        with pytest.raises(HoldError, match="no field 'status'"):
            one(ACTIVE)(event("u", before=dict(PASS), after={"id": 1, "price": 5}))

    def test_unchanged_toast_taken_from_before(self):
        stage = one({"type": "filter", "where": "descr != 'hidden'"})
        out = stage(event("u", before={"id": 1, "descr": "ok"}, after={"id": 1, "descr": UNCHANGED_TOAST}))
        assert out.op == "u"
        assert out.after["descr"] is UNCHANGED_TOAST  # the event itself is not rewritten

    def test_unchanged_toast_without_old_value_is_held(self):
        stage = one({"type": "filter", "where": "descr != 'hidden'"})
        with pytest.raises(HoldError, match="unchanged TOASTed value"):
            stage(event("u", before=None, after={"id": 1, "descr": UNCHANGED_TOAST}))

    def test_unchanged_toast_in_unread_field_is_fine(self):
        stage = one(ACTIVE)
        out = stage(event("u", before=None, after={**PASS, "descr": UNCHANGED_TOAST}))
        assert out.op == "u"


class TestFilterOther:
    def test_truncate_passes(self):
        ev = event("t")
        assert one(ACTIVE)(ev) is ev

    def test_unknown_op_is_held(self):
        with pytest.raises(HoldError, match="unknown op 'x'"):
            one(ACTIVE)(event("x", after=dict(PASS)))

    def test_decimal_literal_exactness(self):
        stage = one({"type": "filter", "where": "price > 0.1"})
        assert stage(event("c", after={"price": Decimal("0.10")})) is None
        assert stage(event("c", after={"price": Decimal("0.11")})) is not None


# ----------------------------------------------------------------------------------------------- money


class TestMoneyBasics:
    def test_minor_units_to_major(self):
        assert same(convert(1999, divide_by=100, scale=2), "19.99")
        assert same(convert(5, divide_by=100, scale=2), "0.05")
        assert same(convert(-5, divide_by=100, scale=2), "-0.05")
        assert same(convert(0, divide_by=100, scale=2), "0.00")

    def test_no_divide_by_sets_scale(self):
        assert same(convert(12, scale=2), "12.00")
        assert same(convert(Decimal("12.5"), scale=2), "12.50")
        assert same(convert(Decimal("12.345"), scale=0), "12")

    @pytest.mark.parametrize(
        "value,expected",
        [
            ("12.50", "12.50"),
            (" 3 ", "3.00"),
            ("-0.5", "-0.50"),
            ("+7", "7.00"),
            ("1e2", "100.00"),
            (".5", "0.50"),
        ],
    )
    def test_numeric_strings(self, value, expected):
        assert same(convert(value, scale=2), expected)

    def test_divide_by_decimal_power_of_ten(self):
        assert same(convert(12, divide_by="0.01", scale=2), "1200.00")
        assert same(convert(12345, divide_by=1000, scale=2), "12.35")

    def test_none_and_toast_stay(self):
        assert convert(None, divide_by=100, scale=2) is None
        assert convert(UNCHANGED_TOAST, divide_by=100, scale=2) is UNCHANGED_TOAST

    def test_before_and_after(self):
        out = money(divide_by=100, scale=2)(
            event("u", before={"id": 1, "price": 100}, after={"id": 1, "price": 250})
        )
        assert same(out.before["price"], "1.00")
        assert same(out.after["price"], "2.50")

    def test_before_without_field(self):
        out = money(divide_by=100, scale=2)(event("u", before={"id": 1}, after={"id": 1, "price": 250}))
        assert out.before == {"id": 1}

    def test_delete(self):
        out = money(divide_by=100, scale=2)(event("d", before={"id": 1, "price": 250}))
        assert same(out.before["price"], "2.50")
        out = money(divide_by=100, scale=2)(event("d", before={"id": 1}))
        assert out.before == {"id": 1}

    def test_truncate(self):
        ev = event("t")
        assert money(divide_by=100, scale=2)(ev) is ev

    def test_shared_before_after_converted_once(self):
        row = {"id": 1, "price": 250}
        out = money(divide_by=100, scale=2)(event("u", before=row, after=row))
        assert same(out.after["price"], "2.50")
        assert same(out.before["price"], "2.50")

    def test_negative_zero_is_zero(self):
        assert same(convert(Decimal("-0.001"), scale=2), "0.00")
        assert same(convert(Decimal("-0"), scale=2), "0.00")
        assert same(convert(-1, divide_by=1000, scale=2), "0.00")

    def test_38_digit_values(self):
        big = 10**38 - 1  # numeric(38, 0) max
        assert same(convert(big, divide_by=100, scale=2), "999999999999999999999999999999999999.99")
        assert same(convert(-big, divide_by=100, scale=2), "-999999999999999999999999999999999999.99")
        assert same(convert(big, scale=2), "99999999999999999999999999999999999999.00")
        d = Decimal("12345678901234567890123456789012345.678")
        assert same(convert(d, scale=2), "12345678901234567890123456789012345.68")
        assert same(convert(d, scale=2, rounding="down"), "12345678901234567890123456789012345.67")

    def test_too_large_is_held(self):
        with pytest.raises(HoldError, match="too large"):
            convert("1e5000", scale=2)


class TestMoneyRounding:
    @pytest.mark.parametrize(
        "value,half_up,half_even,down,up",
        [
            ("2.345", "2.35", "2.34", "2.34", "2.35"),
            ("2.355", "2.36", "2.36", "2.35", "2.36"),
            ("-2.345", "-2.35", "-2.34", "-2.34", "-2.35"),
            ("-2.355", "-2.36", "-2.36", "-2.35", "-2.36"),
            ("0.005", "0.01", "0.00", "0.00", "0.01"),
            ("-0.005", "-0.01", "0.00", "0.00", "-0.01"),
            ("0.015", "0.02", "0.02", "0.01", "0.02"),
            ("2.3449", "2.34", "2.34", "2.34", "2.35"),
            ("2.3451", "2.35", "2.35", "2.34", "2.35"),
            ("2.34", "2.34", "2.34", "2.34", "2.34"),
            ("0", "0.00", "0.00", "0.00", "0.00"),
            ("0.001", "0.00", "0.00", "0.00", "0.01"),
            ("99999999999999999999999999999999999.995", "100000000000000000000000000000000000.00",
             "100000000000000000000000000000000000.00", "99999999999999999999999999999999999.99",
             "100000000000000000000000000000000000.00"),
        ],
    )  # fmt: skip
    def test_modes(self, value, half_up, half_even, down, up):
        for mode, expected in (("half_up", half_up), ("half_even", half_even), ("down", down), ("up", up)):
            assert same(convert(Decimal(value), scale=2, rounding=mode), expected), mode
            assert same(convert(value, scale=2, rounding=mode), expected), mode

    @pytest.mark.parametrize(
        "minor,half_up,half_even,down,up",
        [
            (12345, "123.5", "123.4", "123.4", "123.5"),
            (12355, "123.6", "123.6", "123.5", "123.6"),
            (-12345, "-123.5", "-123.4", "-123.4", "-123.5"),
            (12341, "123.4", "123.4", "123.4", "123.5"),
        ],
    )
    def test_modes_after_divide(self, minor, half_up, half_even, down, up):
        for mode, expected in (("half_up", half_up), ("half_even", half_even), ("down", down), ("up", up)):
            assert same(convert(minor, divide_by=100, scale=1, rounding=mode), expected), mode

    @pytest.mark.parametrize(
        "value,divide_by,mode,expected",
        [
            (1, 3, "half_up", "0.33"),
            (2, 3, "half_up", "0.67"),
            (2, 3, "down", "0.66"),
            (1, 3, "up", "0.34"),
            (-2, 3, "half_up", "-0.67"),
            (-1, 3, "up", "-0.34"),
            (5, 8, "half_up", "0.63"),  # 0.625 exactly: a tie
            (5, 8, "half_even", "0.62"),
            (7, 8, "half_even", "0.88"),  # 0.875
            (-5, 8, "half_even", "-0.62"),
            (1, Decimal("2.5"), "half_up", "0.40"),
            (1, 7, "half_even", "0.14"),
            (-1, 1000, "half_up", "0.00"),
        ],
    )
    def test_non_power_of_ten_divisor(self, value, divide_by, mode, expected):
        assert same(convert(value, divide_by=divide_by, scale=2, rounding=mode), expected)


class TestMoneyHolds:
    @pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("sNaN"), "NaN", "nan", "-NaN"])
    def test_nan(self, value):
        with pytest.raises(HoldError) as ei:
            convert(value, divide_by=100, scale=2)
        assert ei.value.reason == "price is NaN: a price must be a finite number"
        assert ei.value.rule == "money#1"
        assert ei.value.details["field"] == "price"

    @pytest.mark.parametrize("value", [Decimal("Infinity"), Decimal("-Infinity"), "Infinity", "-inf"])
    def test_infinite(self, value):
        with pytest.raises(HoldError, match="price is infinite: a price must be a finite number"):
            convert(value, scale=2)

    @pytest.mark.parametrize("value", [1.5, 0.1, 100.0, float("nan"), float("inf"), -0.0])
    def test_float_rejected(self, value):
        with pytest.raises(HoldError, match="money must never come from a float") as ei:
            convert(value, divide_by=100, scale=2)
        assert ei.value.rule == "money#1"

    def test_float_in_before_rejected(self):
        with pytest.raises(HoldError, match="float") as ei:
            money(scale=2)(event("u", before={"id": 1, "price": 1.5}, after={"id": 1, "price": 2}))
        assert ei.value.details["image"] == "before"

    @pytest.mark.parametrize("value", ["abc", "", "1,5", "12.5.1", "1_000", "0x10", "١٢", "$5"])
    def test_non_numeric_string(self, value):
        with pytest.raises(HoldError, match="is not a number"):
            convert(value, scale=2)

    @pytest.mark.parametrize("value", [True, False])
    def test_bool(self, value):
        with pytest.raises(HoldError, match="boolean"):
            convert(value, scale=2)

    @pytest.mark.parametrize("value", [b"12", [1], {"a": 1}, object()])
    def test_other_types(self, value):
        with pytest.raises(HoldError, match="not an amount"):
            convert(value, scale=2)

    def test_missing_in_after(self):
        with pytest.raises(HoldError, match="price is missing from the row") as ei:
            money(scale=2)(event("c", after={"id": 1}))
        assert ei.value.rule == "money#1"


@given(st.integers())
def test_money_divide_by_100_is_exact(n):
    out = convert(n, divide_by=100, scale=2)
    assert type(out) is Decimal and not isinstance(out, float)
    assert Fraction(out) == Fraction(n, 100)
    assert out.as_tuple().exponent == -2
    with decimal.localcontext(prec=max(28, len(str(n)) + 2)):
        assert out == Decimal(n) / 100


@given(
    st.integers(min_value=-(10**40), max_value=10**40),
    st.sampled_from(["half_up", "half_even", "down", "up"]),
)
def test_money_scale_only_matches_quantize(n, mode):
    value = Decimal(n).scaleb(-4)
    out = convert(value, scale=2, rounding=mode)
    rounding = {
        "half_up": "ROUND_HALF_UP",
        "half_even": "ROUND_HALF_EVEN",
        "down": "ROUND_DOWN",
        "up": "ROUND_UP",
    }
    with decimal.localcontext(prec=100):
        ref = value.quantize(Decimal("0.01"), rounding=rounding[mode])
    assert out == ref
    assert type(out) is Decimal


@given(
    st.integers(min_value=-(10**12), max_value=10**12),
    st.integers(min_value=1, max_value=10**4),
    st.sampled_from(["half_up", "half_even", "down", "up"]),
)
def test_money_any_divisor_rounds_once_exactly(n, d, mode):
    out = convert(n, divide_by=d, scale=2, rounding=mode)
    exact = Fraction(n, d) * 100
    lo = exact.numerator // exact.denominator  # floor
    assert Fraction(out) * 100 in (lo, lo + 1)  # one of the two neighbours
    if exact.denominator == 1:
        assert Fraction(out) * 100 == exact
    elif mode in ("down", "up"):
        toward_zero = lo if exact > 0 else lo + 1
        away = lo + 1 if exact > 0 else lo
        assert Fraction(out) * 100 == (toward_zero if mode == "down" else away)
    else:
        dist = abs(Fraction(out) * 100 - exact)
        assert dist <= Fraction(1, 2)


# ------------------------------------------------------------------------------------- apply_stages


class TestApply:
    def pipeline(self):
        return build_stages(
            [
                {"type": "rename", "fields": {"item_id": "id", "price_fen": "price"}},
                {"type": "money", "field": "price", "divide_by": 100, "scale": 2},
                {"type": "filter", "where": "price > 0"},
                {"type": "drop", "fields": ["internal"]},
            ]
        )

    def test_runs_in_order(self):
        ev = event("c", after={"item_id": 1, "price_fen": 1999, "internal": "x"}, key=("item_id",))
        out = apply_stages(self.pipeline(), ev)
        assert out.after == {"id": 1, "price": Decimal("19.99")}
        assert out.key_columns == ("id",)

    def test_filtered_returns_none(self):
        ev = event("c", after={"item_id": 1, "price_fen": 0, "internal": "x"})
        assert apply_stages(self.pipeline(), ev) is None

    def test_no_stages(self):
        ev = event("c", after={"a": 1})
        assert apply_stages([], ev) is ev

    def test_trace(self):
        trace: list = []
        ev = event("u", before={"item_id": 1}, after={"item_id": 1, "price_fen": 250, "internal": "x"})
        apply_stages(self.pipeline(), ev, trace)
        assert [name for name, _ in trace] == ["rename#1", "money#2", "filter#3", "drop#4"]
        assert trace[0][1]["after"] == {"id": 1, "price": 250, "internal": "x"}
        assert trace[1][1]["after"] == {"id": 1, "price": "2.50", "internal": "x"}  # JSON-ready
        assert trace[1][1]["op"] == "u"
        assert trace[1][1]["before"] == {"id": 1}
        assert trace[3][1]["after"] == {"id": 1, "price": "2.50"}  # earlier snapshots are copies
        assert trace[1][1]["key_columns"] == ["id"]

    def test_trace_when_dropped(self):
        trace: list = []
        ev = event("c", after={"item_id": 1, "price_fen": 0, "internal": "x"})
        assert apply_stages(self.pipeline(), ev, trace) is None
        assert [name for name, _ in trace] == ["rename#1", "money#2", "filter#3"]
        assert trace[-1] == ("filter#3", None)

    def test_trace_of_transition(self):
        trace: list = []
        stages = build_stages([ACTIVE])
        apply_stages(stages, event("u", before=dict(PASS), after=dict(FAIL)), trace)
        assert trace[0][1]["op"] == "d" and trace[0][1]["after"] is None

    def test_hold_carries_stage_name(self):
        ev = event("c", after={"item_id": 1, "price_fen": 1.5})
        with pytest.raises(HoldError) as ei:
            apply_stages(self.pipeline(), ev)
        assert ei.value.rule == "money#2"

    def test_unexpected_error_becomes_hold(self):
        class Boom:
            name = "boom#1"

            def __call__(self, ev):
                raise KeyError("x")

        with pytest.raises(HoldError, match="stage boom#1 failed: KeyError") as ei:
            apply_stages([Boom()], event("c", after={}))
        assert ei.value.rule == "boom#1"
        assert isinstance(ei.value.__cause__, KeyError)

    def test_hold_without_rule_gets_stage_name(self):
        class Holder:
            name = "custom#1"

            def __call__(self, ev):
                raise HoldError("nope")

        with pytest.raises(HoldError) as ei:
            apply_stages([Holder()], event("c", after={}))
        assert ei.value.rule == "custom#1"


class TestHeldChangesAreUntouched:
    """A stage that holds a change leaves that change as it came in (so a replay is not applied twice)."""

    def test_money_after_ok_before_float(self):
        ev = event("u", before={"id": 1, "price": 1.5}, after={"id": 1, "price": 250})
        with pytest.raises(HoldError):
            money(divide_by=100, scale=2)(ev)
        assert ev.after == {"id": 1, "price": 250}
        assert ev.before == {"id": 1, "price": 1.5}

    def test_rename_collision_in_before(self):
        ev = event("u", before={"cost": 1, "price": 2}, after={"cost": 3})
        with pytest.raises(HoldError):
            one({"type": "rename", "fields": {"cost": "price"}})(ev)
        assert ev.after == {"cost": 3}
        assert ev.before == {"cost": 1, "price": 2}

    def test_filter_hold(self):
        ev = event("u", before=dict(PASS), after={"id": 1, "price": 5})
        with pytest.raises(HoldError):
            one(ACTIVE)(ev)
        assert ev.op == "u" and ev.before == PASS and ev.after == {"id": 1, "price": 5}


def test_filter_update_without_old_image_judges_key_columns_from_after():
    """POS rows per (item, store, channel): an update of a STORE row must not delete the ONLINE price."""
    from cdc.events import ChangeEvent
    from cdc.stages import build_stages

    (stage,) = build_stages([{"type": "filter", "where": "channel == 'ONLINE'"}])
    ev = ChangeEvent(
        "u",
        "public",
        "item_price",
        None,
        {"item_code": "A", "channel": "STORE", "price_fen": 5},
        1,
        1,
        1,
        0,
        key_columns=("item_code", "channel"),
    )
    assert stage(ev) is None
    ev = ChangeEvent(
        "u",
        "public",
        "item_price",
        None,
        {"item_code": "A", "channel": "ONLINE", "price_fen": 5},
        1,
        1,
        1,
        0,
        key_columns=("item_code", "channel"),
    )
    assert stage(ev).op == "u"
