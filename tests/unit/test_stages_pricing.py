"""Price stages and guardrails: set, tax, pick, route, guard; concat(); the generated connector reference."""

from __future__ import annotations

import datetime as dt
import importlib.util
from decimal import ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cdc.errors import HoldError, TransientError
from cdc.events import UNCHANGED_TOAST, ChangeEvent
from cdc.stages import (
    GuardConfig,
    GuardStage,
    GuardViolation,
    PickConfig,
    PickStage,
    RouteConfig,
    SetConfig,
    Stage,
    StageConfigBase,
    TaxConfig,
    apply_stages,
    build_stages,
)
from cdc.stages.expr import EvalError, parse_expr

ROOT = Path(__file__).resolve().parents[2]


def event(op="u", before=None, after=None, key=("id",), **kw) -> ChangeEvent:
    return ChangeEvent(
        op=op,
        schema="public",
        table="item_price",
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


def same(a, b: str | Decimal) -> bool:
    """Equal value AND equal representation (scale), and a Decimal (never a float)."""
    return type(a) is Decimal and a.as_tuple() == Decimal(b).as_tuple()


# ------------------------------------------------------------------------------------- registration


class TestRegistration:
    def test_names(self):
        stages = build_stages(
            [
                {"type": "set", "fields": {"currency": "'CNY'"}},
                {"type": "tax", "field": "price", "direction": "add", "rate": "0.13", "scale": 2},
                {"type": "pick", "key": ["sku"], "where": "channel == 'ONLINE'"},
                {"type": "route", "rules": [{"when": "price < 1", "lane": "priority"}]},
                {"type": "guard", "field": "price", "min": 0},
            ]
        )
        assert [s.name for s in stages] == ["set#1", "tax#2", "pick#3", "route#4", "guard#5"]
        assert all(isinstance(s, Stage) for s in stages)

    def test_unknown_type_lists_new_types(self):
        with pytest.raises(ValidationError) as ei:
            build_stages([{"type": "explode"}])
        for t in ("set", "tax", "pick", "route", "guard"):
            assert f"'{t}'" in str(ei.value)

    @pytest.mark.parametrize(
        "config",
        [
            {"type": "set", "fields": {"a": "1"}, "when": "x"},
            {"type": "tax", "field": "p", "direction": "add", "rate": 0, "scale": 2, "round": "up"},
            {"type": "pick", "key": ["sku"], "where": "a == 1", "fallback": 1},
            {"type": "route", "rules": [{"when": "a == 1", "lane": "x"}], "lanes": []},
            {"type": "route", "rules": [{"when": "a == 1", "lane": "x", "stop": True}]},
            {"type": "guard", "field": "p", "min": 0, "minimum": 1},
        ],
    )
    def test_extra_keys_forbidden(self, config):
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            build_stages([config])

    def test_models_roundtrip_through_build(self):
        cfg = GuardConfig(type="guard", field="price", max=10)
        (stage,) = build_stages([cfg, {"type": "drop", "fields": ["x"]}])[:1]
        assert isinstance(stage, GuardStage)

    @pytest.mark.parametrize("model", [SetConfig, TaxConfig, PickConfig, RouteConfig, GuardConfig])
    def test_every_field_is_described(self, model):
        for name, f in model.model_fields.items():
            if name != "type":
                assert f.description, f"{model.__name__}.{name} has no description"


# ------------------------------------------------------------------------------------- expr: concat


class TestConcat:
    def test_joins_and_skips_nulls(self):
        e = parse_expr("concat('SKU-', a, null, b)")
        assert e({"a": "x", "b": None}) == "SKU-x"

    def test_numbers_in_plain_notation(self):
        e = parse_expr("concat(a, '/', b, '/', c, '/', d)")
        assert e({"a": Decimal("1E+2"), "b": 7, "c": Decimal("1.50"), "d": 0.1}) == "100/7/1.50/0.1"

    def test_times_iso(self):
        e = parse_expr("concat(d, ' ', t)")
        assert e({"d": dt.date(2024, 1, 2), "t": dt.datetime(2024, 1, 2, 3, 4, tzinfo=dt.UTC)}) == (
            "2024-01-02 2024-01-02T03:04:00+00:00"
        )

    def test_rejects_booleans_and_other_types(self):
        with pytest.raises(EvalError, match="concat\\(\\) needs strings"):
            parse_expr("concat('a', b)")({"b": True})
        with pytest.raises(EvalError, match="concat\\(\\) needs strings"):
            parse_expr("concat(b)")({"b": [1]})
        with pytest.raises(EvalError, match="cannot join"):
            parse_expr("concat(b)")({"b": Decimal("NaN")})

    def test_all_null_is_empty_string(self):
        assert parse_expr("concat(a)")({"a": None}) == ""

    def test_plus_still_concatenates_strings(self):
        assert parse_expr("'SKU-' + sku")({"sku": "A1"}) == "SKU-A1"


# ---------------------------------------------------------------------------------------------- set


class TestSet:
    def test_constants_and_computed(self):
        stage = one(
            {
                "type": "set",
                "fields": {
                    "currency": "'CNY'",
                    "gross": "price * 1.13",
                    "label": "'SKU-' + sku",
                    "shown": "coalesce(promo_price, price)",
                    "zero": "0",
                },
            }
        )
        out = stage(event("c", after={"sku": "A", "price": Decimal("10.00"), "promo_price": None}))
        assert out.after["currency"] == "CNY"
        assert same(out.after["gross"], "11.3000")
        assert out.after["label"] == "SKU-A"
        assert same(out.after["shown"], "10.00")
        assert same(out.after["zero"], "0")

    def test_now_is_aware_utc_and_same_in_both_images(self):
        stage = one({"type": "set", "fields": {"synced_at": "now()"}})
        t0 = dt.datetime.now(dt.UTC)
        out = stage(event("u", before={"id": 1, "price": 1}, after={"id": 1, "price": 2}))
        at = out.after["synced_at"]
        assert at.tzinfo is not None and at.utcoffset() == dt.timedelta(0)
        assert t0 <= at <= dt.datetime.now(dt.UTC)
        assert out.before["synced_at"] is at

    def test_evaluated_on_incoming_row_like_sql_update(self):
        out = one({"type": "set", "fields": {"a": "b", "b": "a"}})(event("c", after={"a": 1, "b": 2}))
        assert out.after == {"a": 2, "b": 1}

    def test_overwrite_existing_column(self):
        out = one({"type": "set", "fields": {"price": "round(price * 1.13, 2)"}})(
            event("c", after={"id": 1, "price": Decimal("9.99")})
        )
        assert same(out.after["price"], "11.29")

    def test_before_computed_when_complete(self):
        stage = one({"type": "set", "fields": {"gross": "price * 2"}})
        out = stage(event("u", before={"id": 1, "price": Decimal(1)}, after={"id": 1, "price": Decimal(3)}))
        assert out.before["gross"] == 2 and out.after["gross"] == 6

    def test_before_left_alone_when_it_lacks_a_field(self):
        stage = one({"type": "set", "fields": {"gross": "price * 2", "src": "'pos'"}})
        out = stage(event("u", before={"id": 1}, after={"id": 1, "price": Decimal(3)}))
        assert out.before == {"id": 1, "src": "pos"}  # the constant applies; the computed one cannot
        assert out.after["gross"] == 6

    def test_delete_computes_before(self):
        stage = one({"type": "set", "fields": {"sku": "'P-' + item_code"}})
        out = stage(event("d", before={"item_code": "A"}))
        assert out.before == {"item_code": "A", "sku": "P-A"}
        assert out.after is None
        out = stage(event("d", before={"id": 1}))  # key-only old row without the input
        assert out.before == {"id": 1}

    def test_truncate(self):
        ev = event("t")
        assert one({"type": "set", "fields": {"a": "1"}})(ev) is ev

    def test_shared_before_after(self):
        row = {"price": Decimal(2)}
        out = one({"type": "set", "fields": {"g": "price + 1"}})(event("u", before=row, after=row))
        assert out.after is out.before and out.after["g"] == 3

    def test_missing_field_is_held_naming_the_field(self):
        stage = one({"type": "set", "fields": {"gross": "price * 1.13"}})
        ev = event("c", after={"id": 1})
        with pytest.raises(
            HoldError, match="set gross = 'price \\* 1.13': the row has no field 'price'"
        ) as ei:
            stage(ev)
        assert ei.value.rule == "set#1"
        assert ei.value.details["field"] == "gross"
        assert ei.value.details["input"] == "price"
        assert ev.after == {"id": 1}

    @pytest.mark.parametrize(
        "expr,row,match",
        [
            ("price / qty", {"price": 1, "qty": 0}, "division by zero"),
            ("price + 1", {"price": "abc"}, "cannot add"),
            ("price * 2", {"price": "abc"}, "needs a number"),
            ("lower(price)", {"price": 1}, "lower\\(\\) needs a string"),
        ],
    )
    def test_eval_errors_are_held(self, expr, row, match):
        with pytest.raises(HoldError, match=match) as ei:
            one({"type": "set", "fields": {"out": expr}})(event("c", after=dict(row)))
        assert ei.value.details["field"] == "out"
        assert ei.value.details["image"] == "after"

    def test_error_in_before_is_held_and_event_untouched(self):
        stage = one({"type": "set", "fields": {"g": "price * 2", "c": "'x'"}})
        ev = event("u", before={"price": "abc"}, after={"price": Decimal(1)})
        with pytest.raises(HoldError) as ei:
            stage(ev)
        assert ei.value.details["image"] == "before"
        assert ev.after == {"price": Decimal(1)} and ev.before == {"price": "abc"}

    def test_unchanged_toast_input_taken_from_before(self):
        stage = one({"type": "set", "fields": {"title": "upper(descr)"}})
        out = stage(event("u", before={"descr": "abc"}, after={"descr": UNCHANGED_TOAST}))
        assert out.after["title"] == "ABC"
        assert out.after["descr"] is UNCHANGED_TOAST

    def test_unchanged_toast_input_without_old_value_is_held(self):
        stage = one({"type": "set", "fields": {"title": "upper(descr)"}})
        with pytest.raises(HoldError, match="unchanged TOASTed value"):
            stage(event("u", before=None, after={"descr": UNCHANGED_TOAST}))

    def test_reuse_only_for_equal_inputs(self):
        stage = one({"type": "set", "fields": {"k": "concat(sku, '-', n)"}})
        out = stage(event("u", before={"sku": "A", "n": 1}, after={"sku": "A", "n": 2}))
        assert out.before["k"] == "A-1" and out.after["k"] == "A-2"

    def test_config_errors(self):
        with pytest.raises(ValidationError, match="set needs at least one field"):
            SetConfig(type="set", fields={})
        with pytest.raises(ValidationError, match="gross: .*attribute access 'a.b'"):
            SetConfig(type="set", fields={"gross": "a.b"})
        with pytest.raises(ValidationError, match="gross: invalid expression"):
            SetConfig(type="set", fields={"gross": "price *"})
        with pytest.raises(ValidationError, match="field names must not be empty"):
            SetConfig(type="set", fields={" ": "1"})


# ---------------------------------------------------------------------------------------------- tax


def tax(value, **kw):
    cfg = {"type": "tax", "field": "price", "scale": 2, **kw}
    cfg.setdefault("direction", "add")
    if "rate_field" not in cfg:
        cfg.setdefault("rate", "0.13")
    return one(cfg)(event("c", after={"id": 1, "price": value})).after["price"]


class TestTax:
    def test_add_and_remove(self):
        assert same(tax(Decimal("9.99")), "11.29")  # 11.2887
        assert same(tax(Decimal("11.29"), direction="remove"), "9.99")  # 9.99115...
        assert same(tax(Decimal("100"), rate="0.2"), "120.00")
        assert same(tax(Decimal("120.00"), rate="0.2", direction="remove"), "100.00")
        assert same(tax(0, direction="remove"), "0.00")
        assert same(tax(1999), "2258.87")
        assert same(tax("12.50", rate=0), "12.50")

    def test_yaml_float_rate_is_exact(self):
        cfg = TaxConfig(type="tax", field="p", direction="add", rate=0.13, scale=2)
        assert same(cfg.rate, "0.13")
        assert same(TaxConfig(type="tax", field="p", direction="add", rate=0.0, scale=2).rate, "0")

    def test_into_keeps_the_input(self):
        stage = one(
            {
                "type": "tax",
                "field": "price",
                "direction": "remove",
                "rate": "0.13",
                "scale": 2,
                "into": "net",
            }
        )
        out = stage(event("u", before={"price": Decimal("1.13")}, after={"price": Decimal("2.26")}))
        assert out.after == {"price": Decimal("2.26"), "net": Decimal("2.00")}
        assert out.before == {"price": Decimal("1.13"), "net": Decimal("1.00")}

    def test_rate_field(self):
        stage = one({"type": "tax", "field": "price", "direction": "add", "rate_field": "vat", "scale": 2})
        out = stage(event("c", after={"price": Decimal("10.00"), "vat": Decimal("0.06")}))
        assert same(out.after["price"], "10.60")
        out = stage(event("c", after={"price": Decimal("10.00"), "vat": "0.09"}))
        assert same(out.after["price"], "10.90")
        out = stage(event("c", after={"price": Decimal("10.00"), "vat": 0}))
        assert same(out.after["price"], "10.00")

    @pytest.mark.parametrize(
        "vat,match",
        [
            (None, "tax rate vat is null"),
            (0.06, "tax rate vat is a float"),
            (Decimal("NaN"), "tax rate vat is NaN"),
            ("abc", "tax rate vat is not a number"),
            (Decimal("13"), "must be a fraction, 0 <= rate < 1 .*did you mean 0.13"),
            (Decimal("-0.1"), "must be a fraction"),
            (Decimal(1), "must be a fraction"),
            (UNCHANGED_TOAST, "unchanged TOASTed value"),
        ],
    )
    def test_bad_row_rate_is_held(self, vat, match):
        stage = one({"type": "tax", "field": "price", "direction": "add", "rate_field": "vat", "scale": 2})
        with pytest.raises(HoldError, match=match) as ei:
            stage(event("c", after={"price": Decimal("10.00"), "vat": vat}))
        assert ei.value.rule == "tax#1"
        assert ei.value.details["rate_field"] == "vat"

    def test_missing_rate_column_is_held(self):
        stage = one({"type": "tax", "field": "price", "direction": "add", "rate_field": "vat", "scale": 2})
        with pytest.raises(HoldError, match="tax rate column vat is missing"):
            stage(event("c", after={"price": Decimal("10.00")}))

    def test_null_price_needs_no_rate(self):
        stage = one({"type": "tax", "field": "price", "direction": "add", "rate_field": "vat", "scale": 2})
        assert stage(event("c", after={"price": None, "vat": None})).after["price"] is None

    def test_before_without_rate_left_alone(self):
        stage = one({"type": "tax", "field": "price", "direction": "add", "rate_field": "vat", "scale": 2})
        out = stage(
            event("u", before={"price": Decimal(1)}, after={"price": Decimal(1), "vat": Decimal("0.5")})
        )
        assert out.before == {"price": Decimal(1)}
        assert same(out.after["price"], "1.50")

    def test_before_and_delete(self):
        stage = one({"type": "tax", "field": "price", "direction": "add", "rate": "0.5", "scale": 2})
        out = stage(event("u", before={"id": 1, "price": Decimal(2)}, after={"id": 1, "price": Decimal(4)}))
        assert same(out.before["price"], "3.00") and same(out.after["price"], "6.00")
        out = stage(event("d", before={"id": 1, "price": Decimal(2)}))
        assert same(out.before["price"], "3.00")
        out = stage(event("d", before={"id": 1}))
        assert out.before == {"id": 1}
        out = stage(event("u", before={"id": 1}, after={"id": 1, "price": Decimal(4)}))
        assert out.before == {"id": 1}

    def test_shared_dict_converted_once(self):
        row = {"price": Decimal(2)}
        out = one({"type": "tax", "field": "price", "direction": "add", "rate": "0.5", "scale": 2})(
            event("u", before=row, after=row)
        )
        assert same(out.after["price"], "3.00") and out.before is out.after

    def test_null_toast_truncate(self):
        assert tax(None) is None
        assert tax(UNCHANGED_TOAST) is UNCHANGED_TOAST
        ev = event("t")
        assert one({"type": "tax", "field": "p", "direction": "add", "rate": 0, "scale": 2})(ev) is ev

    def test_negative_and_negative_zero(self):
        assert same(tax(Decimal("-10.00")), "-11.30")
        assert same(tax(Decimal("-0.001")), "0.00")
        assert same(tax(Decimal("-0.001"), direction="remove"), "0.00")

    @pytest.mark.parametrize(
        "direction,value,rate,half_up,half_even,down,up",
        [
            # 1.00 * 1.125 = 1.125 exactly: a tie at 2 places
            ("add", "1.00", "0.125", "1.13", "1.12", "1.12", "1.13"),
            ("add", "-1.00", "0.125", "-1.13", "-1.12", "-1.12", "-1.13"),
            ("add", "3.00", "0.125", "3.38", "3.38", "3.37", "3.38"),  # 3.375
            # 0.15625 / 1.25 = 0.125 exactly
            ("remove", "0.15625", "0.25", "0.13", "0.12", "0.12", "0.13"),
            ("remove", "-0.15625", "0.25", "-0.13", "-0.12", "-0.12", "-0.13"),
            ("remove", "0.46875", "0.25", "0.38", "0.38", "0.37", "0.38"),  # 0.375
            # not ties
            ("remove", "1.00", "0.13", "0.88", "0.88", "0.88", "0.89"),  # 0.884955...
            ("add", "0.01", "0.13", "0.01", "0.01", "0.01", "0.02"),  # 0.0113
        ],
    )
    def test_rounding_modes(self, direction, value, rate, half_up, half_even, down, up):
        for mode, expected in (("half_up", half_up), ("half_even", half_even), ("down", down), ("up", up)):
            got = tax(Decimal(value), direction=direction, rate=rate, rounding=mode)
            assert same(got, expected), (mode, got)

    def test_scale(self):
        assert same(tax(Decimal("9.99"), scale=4), "11.2887")
        assert same(tax(Decimal("9.99"), scale=0), "11")
        assert same(tax(Decimal("1"), direction="remove", scale=10), "0.8849557522")

    @pytest.mark.parametrize(
        "value,match",
        [
            (1.5, "price is a float"),
            (float("nan"), "price is a float"),
            (Decimal("NaN"), "price is NaN"),
            (Decimal("sNaN"), "price is NaN"),
            ("nan", "price is NaN"),
            (Decimal("Infinity"), "price is infinite"),
            ("-inf", "price is infinite"),
            (True, "price is a boolean"),
            ("12,50", "price is not a number"),
            (b"1", "price is a bytes"),
            ("1e5000", "out of range"),
        ],
    )
    def test_unusable_values_are_held(self, value, match):
        with pytest.raises(HoldError, match=match) as ei:
            tax(value)
        assert ei.value.rule == "tax#1"
        assert ei.value.details["field"] == "price"

    def test_missing_field_is_held(self):
        with pytest.raises(HoldError, match="price is missing from the row"):
            one({"type": "tax", "field": "price", "direction": "add", "rate": 0, "scale": 2})(
                event("c", after={"id": 1})
            )

    def test_held_change_is_untouched(self):
        ev = event("u", before={"price": 1.5}, after={"price": Decimal(2)})
        with pytest.raises(HoldError):
            one({"type": "tax", "field": "price", "direction": "add", "rate": 0, "scale": 2})(ev)
        assert ev.after == {"price": Decimal(2)} and ev.before == {"price": 1.5}

    # -- config

    def test_both_rate_and_rate_field(self):
        with pytest.raises(ValidationError, match="exactly one of rate .* and rate_field .*not both"):
            TaxConfig(type="tax", field="p", direction="add", rate="0.1", rate_field="vat", scale=2)

    def test_neither_rate_nor_rate_field(self):
        with pytest.raises(ValidationError, match="tax needs exactly one of rate"):
            TaxConfig(type="tax", field="p", direction="add", scale=2)

    @pytest.mark.parametrize(
        "rate,match",
        [
            (13, "0 <= rate < 1 .*did you mean 0.13"),
            (1, "must be a fraction"),
            (-0.1, "must be a fraction"),
            (True, "not a boolean"),
            ("abc", "must be a number"),
            (float("nan"), "finite"),
            ("NaN", "must be a number"),
            (0.1234567890123456, "too many digits .* quote it"),
            ("0E-300", "too many decimal places"),
        ],
    )
    def test_bad_rate(self, rate, match):
        with pytest.raises(ValidationError, match=match):
            TaxConfig(type="tax", field="p", direction="add", rate=rate, scale=2)

    def test_other_config_errors(self):
        with pytest.raises(ValidationError, match="'add' or 'remove'"):
            TaxConfig(type="tax", field="p", direction="plus", rate=0, scale=2)
        with pytest.raises(ValidationError, match="'half_up', 'half_even', 'down' or 'up'"):
            TaxConfig(type="tax", field="p", direction="add", rate=0, scale=2, rounding="bankers")
        with pytest.raises(ValidationError, match="scale"):
            TaxConfig(type="tax", field="p", direction="add", rate=0)
        with pytest.raises(ValidationError, match="greater than or equal to 0"):
            TaxConfig(type="tax", field="p", direction="add", rate=0, scale=-1)
        with pytest.raises(ValidationError, match="must name a column"):
            TaxConfig(type="tax", field="p", direction="add", rate=0, scale=2, into=" ")
        assert TaxConfig(type="tax", field="p", direction="add", rate=0, scale=2).rounding == "half_up"


_MODES = {"half_up": "ROUND_HALF_UP", "half_even": "ROUND_HALF_EVEN", "down": "ROUND_DOWN", "up": "ROUND_UP"}


def _reference(exact: Fraction, scale: int, mode: str) -> Fraction:
    """Round an exact fraction to `scale` places, independently of the stage (via Fraction arithmetic)."""
    q = exact * 10**scale
    lo = q.numerator // q.denominator  # floor
    if lo == q:
        return q / 10**scale
    hi = lo + 1
    toward_zero, away = (lo, hi) if q > 0 else (hi, lo)
    if mode == "down":
        r = toward_zero
    elif mode == "up":
        r = away
    else:
        diff = abs(q - toward_zero)
        if diff < Fraction(1, 2):
            r = toward_zero
        elif diff > Fraction(1, 2):
            r = away
        elif mode == "half_up":
            r = away
        else:
            r = lo if lo % 2 == 0 else hi
    return Fraction(r, 10**scale)


prices = st.integers(min_value=-(10**14), max_value=10**14).map(lambda n: Decimal(n).scaleb(-2))
rates = st.integers(min_value=0, max_value=9999).map(lambda n: Decimal(n).scaleb(-4))
modes = st.sampled_from(list(_MODES))


@given(prices, rates, modes, st.sampled_from(["add", "remove"]), st.integers(min_value=0, max_value=6))
def test_tax_rounds_once_exactly(price, rate, mode, direction, scale):
    out = tax(price, rate=rate, rounding=mode, direction=direction, scale=scale)
    assert type(out) is Decimal
    assert out.as_tuple().exponent == -scale
    factor = 1 + Fraction(rate)
    exact = Fraction(price) * factor if direction == "add" else Fraction(price) / factor
    assert Fraction(out) == _reference(exact, scale, mode)


@given(prices, rates, modes, st.integers(min_value=2, max_value=12))
def test_tax_add_then_remove_returns_the_original(price, rate, mode, scale):
    gross = tax(price, rate=rate, rounding=mode, scale=scale)
    net = tax(gross, rate=rate, rounding=mode, direction="remove", scale=scale)
    assert type(gross) is Decimal and type(net) is Decimal
    assert abs(net - price) <= Decimal(1).scaleb(-scale)  # within one unit of the last place
    if scale >= 2 + 4 + 1 and mode in ("half_up", "half_even"):
        # enough places: rounding the gross cannot move the net by half a unit at 2 places
        assert net.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP) == price


@given(
    st.integers(min_value=-(10**12), max_value=10**12),
    st.sampled_from(["0", "0.25", "0.6", "0.024", "0.28"]),
)
def test_tax_half_up_on_exact_halves(m, rate):
    """Inputs whose exact result is a tie at 2 places (x.xx5) round away from zero with half_up."""
    tie = Decimal(2 * m + 1).scaleb(-3) * 5  # (2m+1) * 0.005
    with localcontext(prec=100):
        factor = 1 + Decimal(rate)
        gross = tie * factor  # exact
        net = tie / factor  # exact: 1 / factor is a finite decimal for these rates
    assert Fraction(net) * (1 + Fraction(Decimal(rate))) == Fraction(tie)
    away = tie.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    assert same(tax(gross, rate=rate, direction="remove"), away)
    assert same(tax(net, rate=rate, direction="add"), away)
    assert abs(away) > abs(tie)  # away from zero


# --------------------------------------------------------------------------------------------- pick


ONLINE = {"type": "pick", "key": ["sku"], "where": "channel == 'ONLINE'"}
SRC_KEY = ("sku", "channel")


def row(sku="A", channel="ONLINE", price=Decimal("9.99"), **kw):
    return {"sku": sku, "channel": channel, "price": price, **kw}


class TestPickWhere:
    @pytest.mark.parametrize("op", ["c", "r"])
    def test_insert_chosen_passes_rekeyed(self, op):
        ev = event(op, after=row(), key=SRC_KEY)
        out = one(ONLINE)(ev)
        assert out is ev and out.key_columns == ("sku",)
        assert out.after == row()

    @pytest.mark.parametrize("op", ["c", "r"])
    def test_insert_other_dropped(self, op):
        assert one(ONLINE)(event(op, after=row(channel="STORE"), key=SRC_KEY)) is None

    def test_update_chosen(self):
        out = one(ONLINE)(event("u", before=row(), after=row(price=Decimal(5)), key=SRC_KEY))
        assert out.op == "u" and out.key_columns == ("sku",)

    def test_update_without_old_image_judged_on_key_columns(self):
        stage = one(ONLINE)
        assert stage(event("u", before=None, after=row(channel="STORE"), key=SRC_KEY)) is None
        out = stage(event("u", before=None, after=row(), key=SRC_KEY))
        assert out.op == "u" and out.key_columns == ("sku",)

    def test_update_becomes_chosen_is_insert(self):
        out = one(ONLINE)(event("u", before=row(channel="STORE"), after=row(), key=SRC_KEY))
        assert out.op == "c" and out.before is None and out.key_columns == ("sku",)

    def test_update_stops_being_chosen_is_delete_by_key(self):
        out = one(ONLINE)(event("u", before=row(), after=row(channel="STORE"), key=SRC_KEY))
        assert out.op == "d" and out.after is None
        assert out.before["sku"] == "A" and out.before["channel"] == "ONLINE"
        assert out.key_columns == ("sku",)
        assert "pick_fallback_needed" not in out.headers

    def test_update_other_store_dropped(self):
        ev = event("u", before=row(channel="STORE"), after=row(channel="STORE", price=1), key=SRC_KEY)
        assert one(ONLINE)(ev) is None

    def test_unknown_old_row_never_becomes_a_delete(self):
        # where reads a non-key column and the old image is key-only: the sku's chosen row must survive
        stage = one({"type": "pick", "key": ["sku"], "where": "online_flag == true"})
        ev = event(
            "u", before=None, after={"sku": "A", "store": 7, "online_flag": False}, key=("sku", "store")
        )
        assert stage(ev) is None
        ev = event(
            "u", before=None, after={"sku": "A", "store": 9, "online_flag": True}, key=("sku", "store")
        )
        assert stage(ev).op == "u"

    def test_delete(self):
        stage = one(ONLINE)
        out = stage(event("d", before={"sku": "A", "channel": "ONLINE"}, key=SRC_KEY))
        assert out.op == "d" and out.key_columns == ("sku",)
        assert stage(event("d", before={"sku": "A", "channel": "STORE"}, key=SRC_KEY)) is None

    def test_delete_that_cannot_be_judged_is_held(self):
        stage = one({"type": "pick", "key": ["sku"], "where": "online_flag == true"})
        with pytest.raises(
            HoldError, match="cannot tell whether the row was the chosen one .*'online_flag'"
        ) as ei:
            stage(event("d", before={"sku": "A", "store": 1}, key=("sku", "store")))
        assert ei.value.rule == "pick#1"
        assert "REPLICA IDENTITY FULL" in ei.value.reason

    def test_truncate_rekeyed(self):
        out = one(ONLINE)(event("t", key=SRC_KEY))
        assert out.op == "t" and out.key_columns == ("sku",)

    def test_after_that_cannot_be_judged_is_held(self):
        with pytest.raises(HoldError, match="no field 'channel'"):
            one(ONLINE)(event("c", after={"sku": "A"}, key=SRC_KEY))
        with pytest.raises(HoldError, match="cannot compare"):
            one(ONLINE)(event("c", after=row(channel=1), key=SRC_KEY))
        with pytest.raises(HoldError, match="true or false"):
            one({"type": "pick", "key": ["sku"], "where": "flag"})(event("c", after={"sku": "A", "flag": 1}))

    def test_missing_key_column_is_held(self):
        with pytest.raises(HoldError, match="no key column 'sku'"):
            one(ONLINE)(event("c", after={"item": "A", "channel": "ONLINE"}, key=SRC_KEY))

    def test_toast_in_where_field(self):
        stage = one({"type": "pick", "key": ["sku"], "where": "note != 'hidden'"})
        out = stage(event("u", before={"sku": "A", "note": "x"}, after={"sku": "A", "note": UNCHANGED_TOAST}))
        assert out.op == "u"
        with pytest.raises(HoldError, match="unchanged TOASTed"):
            stage(event("u", before=None, after={"sku": "A", "note": UNCHANGED_TOAST}))

    def test_unknown_op_is_held(self):
        with pytest.raises(HoldError, match="unknown op 'x'"):
            one(ONLINE)(event("x", after=row()))


STORES = {"type": "pick", "key": ["sku"], "store_field": "store", "store": 900, "fallback_store": 1}
STORE_KEY = ("sku", "store")


def srow(store, sku="A", price=Decimal("9.99")):
    return {"sku": sku, "store": store, "price": price}


class Lookup:
    """A stub of the pipeline's exists(key_values, store, table) lookup."""

    def __init__(self, present: bool):
        self.present = present
        self.calls: list = []
        self.tables: list = []

    def __call__(self, key_values, store, table):
        self.calls.append((key_values, store))
        self.tables.append(table)
        return self.present


class TestPickStore:
    def test_designated_store_passes(self):
        out = one(STORES)(event("c", after=srow(900), key=STORE_KEY))
        assert out.key_columns == ("sku",)

    @pytest.mark.parametrize("value", [900, "900", Decimal(900)])
    def test_store_matches_as_value_or_text(self, value):
        assert one(STORES)(event("c", after=srow(value), key=STORE_KEY)) is not None
        cfg = {**STORES, "store": "900"}
        assert one(cfg)(event("c", after=srow(value), key=STORE_KEY)) is not None

    def test_other_stores_dropped(self):
        stage = one(STORES)
        stage.exists = Lookup(False)
        assert stage(event("c", after=srow(5), key=STORE_KEY)) is None
        assert stage(event("c", after=srow(None), key=STORE_KEY)) is None
        assert stage.exists.calls == []  # only fallback rows are looked up

    def test_without_fallback(self):
        stage = one({"type": "pick", "key": ["sku"], "store_field": "store", "store": 900})
        assert stage(event("c", after=srow(1), key=STORE_KEY)) is None
        out = stage(event("d", before=srow(900), key=STORE_KEY))
        assert out.op == "d" and out.headers == {}

    def test_fallback_dropped_when_exists_not_injected(self):
        stage = one(STORES)
        assert isinstance(stage, PickStage) and stage.exists is None
        assert stage(event("c", after=srow(1), key=STORE_KEY)) is None
        assert stage(event("d", before=srow(1), key=STORE_KEY)) is None

    def test_fallback_passes_when_designated_absent(self):
        stage = one(STORES)
        stage.exists = Lookup(False)
        out = stage(event("u", before=srow(1), after=srow(1, price=Decimal(5)), key=STORE_KEY))
        assert out.op == "u" and out.key_columns == ("sku",)
        assert stage.exists.calls == [({"sku": "A"}, 900)]  # once per change, with the key and the store
        assert stage.exists.tables == ["public.item_price"]  # and the change's source table

    def test_exists_is_asked_about_the_change_s_own_table(self):
        stage = one(STORES)
        stage.exists = Lookup(False)
        ev = event("c", after=srow(1), key=STORE_KEY)
        ev.schema, ev.table = "shop2", "item_price"
        assert stage(ev) is not None
        assert stage.exists.tables == ["shop2.item_price"]

    def test_fallback_dropped_when_designated_present(self):
        stage = one(STORES)
        stage.exists = Lookup(True)
        assert stage(event("c", after=srow(1), key=STORE_KEY)) is None
        assert stage(event("u", before=None, after=srow(1), key=STORE_KEY)) is None
        assert stage(event("d", before=srow(1), key=STORE_KEY)) is None

    def test_fallback_delete_passes_when_designated_absent(self):
        stage = one(STORES)
        stage.exists = Lookup(False)
        out = stage(event("d", before=srow(1), key=STORE_KEY))
        assert out.op == "d" and out.key_columns == ("sku",)
        assert "pick_fallback_needed" not in out.headers

    def test_designated_delete_asks_for_the_fallback_row(self):
        stage = one(STORES)
        out = stage(event("d", before={"sku": "A", "store": 900}, key=STORE_KEY))
        assert out.op == "d" and out.key_columns == ("sku",)
        assert out.headers == {
            "pick_fallback_needed": True,
            "pick_fallback_store": 1,
            "pick_fallback_key": {"sku": "A"},
        }

    def test_designated_row_moving_away_is_a_delete_asking_for_fallback(self):
        stage = one(STORES)
        out = stage(event("u", before=srow(900), after=srow(5), key=STORE_KEY))
        assert out.op == "d" and out.before["store"] == 900
        assert out.headers["pick_fallback_needed"] is True
        assert out.headers["pick_fallback_key"] == {"sku": "A"}

    def test_designated_insert_after_fallback(self):
        stage = one(STORES)
        stage.exists = Lookup(True)
        out = stage(event("u", before=srow(5), after=srow(900), key=STORE_KEY))
        assert out.op == "c"

    def test_missing_store_field_is_held(self):
        with pytest.raises(HoldError, match="no field 'store'"):
            one(STORES)(event("c", after={"sku": "A"}, key=("sku",)))

    def test_exists_errors_propagate(self):
        stage = one(STORES)

        def boom(kv, store, table):
            raise ConnectionError("down")

        stage.exists = boom
        with pytest.raises(HoldError, match="stage pick#1 failed: ConnectionError"):
            apply_stages([stage], event("c", after=srow(1), key=STORE_KEY))

    def test_a_source_that_is_away_is_retried_not_held(self):
        stage = one(STORES)

        def away(kv, store, table):
            raise TransientError("POS database unavailable")

        stage.exists = away
        with pytest.raises(TransientError):
            apply_stages([stage], event("c", after=srow(1), key=STORE_KEY))


class TestPickConfig:
    @pytest.mark.parametrize(
        "cfg,match",
        [
            ({"where": "channel == 'ONLINE'", "store_field": "s", "store": 1}, "either where .* not both"),
            ({}, "pick needs where .* or store_field \\+ store"),
            ({"store_field": "s"}, "needs both store_field .* and store"),
            ({"store": 1}, "needs both store_field"),
            ({"where": "a == 1", "fallback_store": 1}, "not both"),
            (
                {"store_field": "s", "store": 1, "fallback_store": "1"},
                "fallback_store must differ from store",
            ),
            ({"where": "channel"}, None),
            ({"where": "price * 2"}, "where must be a condition"),
            ({"where": "a.b == 1"}, "attribute access"),
            ({"store_field": "s", "store": True}, "whole number or a string"),
            ({"store_field": "s", "store": 1.5}, "whole number or a string"),
            ({"store_field": " ", "store": 1}, "store_field must name a column"),
        ],
    )
    def test_errors(self, cfg, match):
        if match is None:
            PickConfig(type="pick", key=["sku"], **cfg)
            return
        with pytest.raises(ValidationError, match=match):
            PickConfig(type="pick", key=["sku"], **cfg)

    def test_key(self):
        with pytest.raises(ValidationError, match="at least one key column"):
            PickConfig(type="pick", key=[], where="a == 1")
        with pytest.raises(ValidationError, match="listed twice"):
            PickConfig(type="pick", key=["a", "a"], where="a == 1")
        with pytest.raises(ValidationError, match="key"):
            PickConfig(type="pick", where="a == 1")


# -------------------------------------------------------------------------------------------- route


ROUTE = {
    "type": "route",
    "rules": [
        {"when": "promo == true", "lane": "priority"},
        {"when": "price < 1", "lane": "check"},
        {"when": "promo == true or price > 100", "lane": "normal"},
    ],
}


class TestRoute:
    def test_first_match_wins(self):
        stage = one(ROUTE)
        assert stage(event("c", after={"promo": True, "price": Decimal("0.5")})).lane == "priority"
        assert stage(event("c", after={"promo": False, "price": Decimal("0.5")})).lane == "check"
        assert stage(event("c", after={"promo": False, "price": Decimal(500)})).lane == "normal"

    def test_default(self):
        stage = one(ROUTE)
        ev = event("c", after={"promo": False, "price": Decimal(5)})
        out = stage(ev)
        assert out is ev and out.lane == "bulk" and out.headers == {}
        assert (
            one({**ROUTE, "default": "slow"})(event("c", after={"promo": False, "price": 5})).lane == "slow"
        )

    def test_null_counts_as_false(self):
        out = one(ROUTE)(event("c", after={"promo": None, "price": None}))
        assert out.lane == "bulk" and "route_error" not in out.headers

    def test_delete_routes_on_before(self):
        assert one(ROUTE)(event("d", before={"promo": True, "price": 1})).lane == "priority"

    def test_truncate_gets_default(self):
        assert one(ROUTE)(event("t")).lane == "bulk"

    def test_error_gives_default_lane_and_header(self):
        stage = one(ROUTE)
        out = stage(event("c", after={"price": Decimal(1)}))  # no promo column
        assert out.lane == "bulk"
        assert out.headers["route_error"] == "route#1 rule 1 ('promo == true'): row has no field 'promo'"
        out = stage(event("c", after={"promo": False, "price": "abc"}))
        assert out.lane == "bulk"
        assert "rule 2 ('price < 1'): cannot compare string 'abc'" in out.headers["route_error"]

    def test_non_boolean_result_gives_default_lane_and_header(self):
        stage = one({"type": "route", "rules": [{"when": "flag", "lane": "x"}]})
        out = stage(event("c", after={"flag": "yes"}))
        assert out.lane == "bulk" and "true or false" in out.headers["route_error"]

    def test_never_holds_or_drops(self):
        stage = one(ROUTE)
        for after in ({}, {"promo": object()}, {"promo": UNCHANGED_TOAST}, {"promo": [1]}):
            out = stage(event("c", after=after))
            assert out is not None and out.lane == "bulk"

    def test_toast_taken_from_before(self):
        out = one(ROUTE)(event("u", before={"promo": True}, after={"promo": UNCHANGED_TOAST, "price": 1}))
        assert out.lane == "priority" and "route_error" not in out.headers

    def test_config_errors(self):
        with pytest.raises(ValidationError, match="route needs at least one rule"):
            RouteConfig(type="route", rules=[])
        with pytest.raises(ValidationError, match="rules"):
            RouteConfig(type="route")
        with pytest.raises(ValidationError, match="when must be a condition"):
            RouteConfig(type="route", rules=[{"when": "price * 2", "lane": "x"}])
        with pytest.raises(ValidationError, match="invalid expression"):
            RouteConfig(type="route", rules=[{"when": "price >", "lane": "x"}])
        with pytest.raises(ValidationError, match="should match pattern"):
            RouteConfig(type="route", rules=[{"when": "a == 1", "lane": "no spaces"}])
        with pytest.raises(ValidationError, match="should match pattern"):
            RouteConfig(type="route", rules=[{"when": "a == 1", "lane": "x"}], default="")
        assert RouteConfig(type="route", rules=[{"when": "a == 1", "lane": "x"}]).default == "bulk"


# -------------------------------------------------------------------------------------------- guard


def guard(cfg: dict, after: dict | None, op: str = "u", current=None, before=None):
    stage = one({"type": "guard", **cfg})
    if current is not None:
        stage.current = current
    return stage(event(op, before=before, after=after))


def violation(cfg: dict, after: dict, **kw) -> GuardViolation:
    with pytest.raises(GuardViolation) as ei:
        guard(cfg, after, **kw)
    return ei.value


P = Decimal


class TestGuardRules:
    def test_min(self):
        v = violation({"field": "price", "min": "0.01"}, {"price": P("0.00")})
        assert v.reason == "price 0.00 is below the minimum 0.01"
        assert v.rule == "guard#1:min"
        assert v.details == {
            "field": "price",
            "value": P("0.00"),
            "limit": P("0.01"),
            "op": "u",
            "action": "quarantine",
        }
        assert guard({"field": "price", "min": "0.01"}, {"price": P("0.01")}) is not None  # inclusive

    def test_max(self):
        v = violation({"field": "price", "max": 9999}, {"price": P("10000.00")})
        assert v.reason == "price 10000.00 is above the maximum 9999"
        assert v.rule == "guard#1:max"
        assert guard({"field": "price", "max": 9999}, {"price": P("9999.00")}) is not None

    def test_not_below(self):
        cfg = {"field": "price", "not_below": "cost"}
        v = violation(cfg, {"price": P("4.00"), "cost": P("5.00")})
        assert v.reason == "price 4.00 is below cost 5.00"
        assert v.rule == "guard#1:not_below"
        assert v.details["other_field"] == "cost" and v.details["other"] == P("5.00")
        assert guard(cfg, {"price": P("5.00"), "cost": P("5")}) is not None
        assert guard(cfg, {"price": P("4.00"), "cost": None}) is not None  # no cost known: skipped

    def test_not_below_takes_toast_from_before(self):
        cfg = {"field": "price", "not_below": "cost"}
        with pytest.raises(GuardViolation):
            guard(cfg, {"price": P(4), "cost": UNCHANGED_TOAST}, before={"price": P(6), "cost": P(5)})
        assert guard(cfg, {"price": P(4), "cost": UNCHANGED_TOAST}) is not None

    def test_not_below_column_missing_is_a_plain_hold(self):
        with pytest.raises(HoldError) as ei:
            guard({"field": "price", "not_below": "cost"}, {"price": P(4)})
        assert not isinstance(ei.value, GuardViolation)
        assert "cost is missing from the row" in ei.value.reason

    def test_required(self):
        cfg = {"required": ["sku", "price"]}
        v = violation(cfg, {"sku": "A", "price": None})
        assert v.reason == "price is null (required)"
        assert v.rule == "guard#1:required"
        v = violation(cfg, {"price": 1})
        assert v.reason == "sku is missing from the row (required)"
        assert guard(cfg, {"sku": "A", "price": P(1)}) is not None
        assert guard(cfg, {"sku": "A", "price": UNCHANGED_TOAST}) is not None

    def test_null_value_passes_unless_required(self):
        assert guard({"field": "price", "min": 1}, {"price": None}) is not None
        v = violation({"field": "price", "min": 1, "required": ["price"]}, {"price": None})
        assert v.rule == "guard#1:required"

    def test_unchanged_toast_value_passes(self):
        assert guard({"field": "price", "min": 1}, {"price": UNCHANGED_TOAST}) is not None

    def test_field_absent_from_row_passes_unless_required(self):
        assert guard({"field": "price", "min": 1}, {"id": 1}) is not None

    @pytest.mark.parametrize("op", ["d", "t"])
    def test_deletes_and_truncates_pass_unguarded(self, op):
        cfg = {"field": "price", "min": 1, "required": ["price"]}
        assert guard(cfg, None, op=op, before={"price": P(0)}) is not None

    @pytest.mark.parametrize("op", ["c", "r", "u"])
    def test_inserts_reads_updates_are_guarded(self, op):
        with pytest.raises(GuardViolation):
            guard({"field": "price", "min": 1}, {"price": P(0)}, op=op)

    @pytest.mark.parametrize("value", [1.5, Decimal("NaN"), "abc", True])
    def test_non_number_is_a_plain_hold(self, value):
        with pytest.raises(HoldError) as ei:
            guard({"field": "price", "min": 1}, {"price": value})
        assert not isinstance(ei.value, GuardViolation)
        assert ei.value.rule == "guard#1:number"

    def test_numeric_strings_and_ints(self):
        with pytest.raises(GuardViolation, match="price 0 is below"):
            guard({"field": "price", "min": 1}, {"price": 0})
        assert guard({"field": "price", "min": 1}, {"price": "1.50"}) is not None

    def test_first_violation_wins_in_documented_order(self):
        cfg = {"field": "price", "min": 1, "max": 2, "not_below": "cost", "required": ["sku"]}
        assert violation(cfg, {"price": P(0), "cost": P(5)}).rule == "guard#1:required"
        assert violation(cfg, {"sku": "A", "price": P(0), "cost": P(5)}).rule == "guard#1:min"
        assert violation(cfg, {"sku": "A", "price": P(3), "cost": P(5)}).rule == "guard#1:max"
        assert violation(cfg, {"sku": "A", "price": P(2), "cost": P(5)}).rule == "guard#1:not_below"

    def test_action(self):
        v = violation({"field": "price", "min": 1}, {"price": P(0)})
        assert isinstance(v, HoldError)
        assert v.action == "quarantine" and v.kind == "quarantine" and v.details["action"] == "quarantine"
        v = violation({"field": "price", "min": 1, "action": "dead_letter"}, {"price": P(0)})
        assert v.action == "dead_letter" and v.kind == "dead_letter" and v.details["action"] == "dead_letter"

    def test_violation_passes_through_apply_stages(self):
        stages = build_stages(
            [{"type": "rename", "fields": {"p": "price"}}, {"type": "guard", "field": "price", "min": 1}]
        )
        with pytest.raises(GuardViolation) as ei:
            apply_stages(stages, event("c", after={"p": P(0)}))
        assert ei.value.rule == "guard#2:min"


class TestGuardMaxChange:
    CFG = {"field": "price", "max_change_pct": 50}

    def test_reason_reads_well(self):
        v = violation(self.CFG, {"sku": "A", "price": P("0.99")}, current=lambda row: P("99.00"))
        assert v.reason == "price 0.99 is 99.0% below the storefront's 99.00 (max_change_pct 50)"
        assert v.rule == "guard#1:max_change_pct"
        assert v.details == {
            "field": "price",
            "value": P("0.99"),
            "current": P("99.00"),
            "limit": P(50),
            "change_pct": "99.0",
            "op": "u",
            "action": "quarantine",
        }

    def test_above(self):
        v = violation(self.CFG, {"price": P("20.00")}, current=lambda row: P("10.00"))
        assert v.reason == "price 20.00 is 100.0% above the storefront's 10.00 (max_change_pct 50)"

    @pytest.mark.parametrize("new", ["5.00", "15.00", "10.00", "12.34"])
    def test_within_limit_passes_inclusive(self, new):
        assert guard(self.CFG, {"price": P(new)}, current=lambda row: P("10.00")) is not None

    def test_just_over_shows_enough_places(self):
        v = violation(self.CFG, {"price": P("15.0001")}, current=lambda row: P("10.00"))
        assert "50.001% above" in v.reason

    def test_current_gets_the_row(self):
        seen = []

        def current(r):
            seen.append(dict(r))
            return P("10.00")

        guard(self.CFG, {"sku": "A", "price": P("11.00")}, current=current)
        assert seen == [{"sku": "A", "price": P("11.00")}]

    def test_no_storefront_row_skips(self):
        assert guard(self.CFG, {"price": P("1000")}, current=lambda row: None) is not None

    def test_not_injected_skips(self):
        stage = one({"type": "guard", **self.CFG})
        assert isinstance(stage, GuardStage) and stage.current is None
        assert stage(event("u", after={"price": P("1000")})) is not None

    def test_from_zero_any_change_violates(self):
        v = violation(self.CFG, {"price": P("5.00")}, current=lambda row: P("0.00"))
        assert v.reason == (
            "price 5.00 is above the storefront's 0.00: any change from zero exceeds max_change_pct 50"
        )
        assert guard(self.CFG, {"price": P("0")}, current=lambda row: P("0.00")) is not None

    def test_current_as_int_float_or_string(self):
        for cur in (10, 10.0, "10.00"):
            with pytest.raises(GuardViolation):
                guard(self.CFG, {"price": P("16")}, current=lambda row, c=cur: c)
            assert guard(self.CFG, {"price": P("14")}, current=lambda row, c=cur: c) is not None

    def test_negative_current(self):
        with pytest.raises(GuardViolation, match="100.0% above"):
            guard(self.CFG, {"price": P(0)}, current=lambda row: P(-10))

    def test_not_called_when_an_earlier_rule_fails_or_value_null(self):
        calls = []

        def current(row):
            calls.append(row)
            return P(1)

        with pytest.raises(GuardViolation, match="minimum"):
            guard({**self.CFG, "min": 1}, {"price": P(0)}, current=current)
        guard(self.CFG, {"price": None}, current=current)
        guard(self.CFG, {"price": P(1)}, op="d", before={"price": P(1)}, current=current)
        assert calls == []

    def test_zero_pct_allows_no_change(self):
        cfg = {"field": "price", "max_change_pct": 0}
        assert guard(cfg, {"price": P("10.0")}, current=lambda row: P("10.00")) is not None
        with pytest.raises(GuardViolation, match="0.1% above"):
            guard(cfg, {"price": P("10.01")}, current=lambda row: P("10.00"))

    @given(
        st.integers(min_value=0, max_value=10**8).map(lambda n: Decimal(n).scaleb(-2)),
        st.integers(min_value=1, max_value=10**8).map(lambda n: Decimal(n).scaleb(-2)),
        st.integers(min_value=0, max_value=500),
    )
    def test_matches_exact_percentage(self, new, cur, pct):
        exact = abs(Fraction(new) - Fraction(cur)) * 100 / Fraction(cur)
        try:
            guard({"field": "price", "max_change_pct": pct}, {"price": new}, current=lambda row: cur)
            assert exact <= pct
        except GuardViolation as v:
            assert exact > pct
            assert Decimal(v.details["change_pct"]) > pct


class TestGuardConfig:
    def test_no_rule(self):
        with pytest.raises(ValidationError, match="guard needs at least one rule"):
            GuardConfig(type="guard", field="price")
        with pytest.raises(ValidationError, match="guard needs at least one rule"):
            GuardConfig(type="guard", field="price", required=[])

    def test_rule_without_field(self):
        with pytest.raises(ValidationError, match="min, max_change_pct need\\(s\\) field"):
            GuardConfig(type="guard", min=1, max_change_pct=5)
        GuardConfig(type="guard", required=["sku"])  # required alone needs no field

    def test_min_above_max(self):
        with pytest.raises(ValidationError, match="min 5 is greater than max 1"):
            GuardConfig(type="guard", field="p", min=5, max=1)

    def test_numbers(self):
        cfg = GuardConfig(type="guard", field="p", min=0.01, max="9999.99", max_change_pct=50.0)
        assert same(cfg.min, "0.01") and same(cfg.max, "9999.99") and same(cfg.max_change_pct, "50")
        with pytest.raises(ValidationError, match="max_change_pct must be 0 or more"):
            GuardConfig(type="guard", field="p", max_change_pct=-1)
        with pytest.raises(ValidationError, match="min must be a number"):
            GuardConfig(type="guard", field="p", min="cheap")
        with pytest.raises(ValidationError, match="max must be a finite number"):
            GuardConfig(type="guard", field="p", max=float("inf"))
        with pytest.raises(ValidationError, match="not a boolean"):
            GuardConfig(type="guard", field="p", min=True)

    def test_other_errors(self):
        with pytest.raises(ValidationError, match="not_below must name another column"):
            GuardConfig(type="guard", field="p", not_below="p")
        with pytest.raises(ValidationError, match="listed twice"):
            GuardConfig(type="guard", required=["a", "a"])
        with pytest.raises(ValidationError, match="'quarantine' or 'dead_letter'"):
            GuardConfig(type="guard", field="p", min=0, action="drop")
        assert GuardConfig(type="guard", field="p", min=0).action == "quarantine"


# ------------------------------------------------------------------------------------ the pipeline


def test_price_pipeline_end_to_end():
    stages = build_stages(
        [
            {"type": "rename", "fields": {"item_code": "sku", "price_fen": "price"}},
            {"type": "pick", "key": ["sku"], "where": "channel == 'ONLINE'"},
            {"type": "money", "field": "price", "divide_by": 100, "scale": 2},
            {"type": "tax", "field": "price", "direction": "add", "rate": 0.13, "scale": 2, "into": "gross"},
            {"type": "guard", "field": "gross", "min": "0.01", "max_change_pct": 50},
            {"type": "route", "rules": [{"when": "gross < 1", "lane": "priority"}]},
            {"type": "set", "fields": {"currency": "'CNY'"}},
            {"type": "drop", "fields": ["channel"]},
        ]
    )
    ev = event(
        "c", after={"item_code": "A", "channel": "ONLINE", "price_fen": 999}, key=("item_code", "channel")
    )
    out = apply_stages(stages, ev)
    assert out.after == {"sku": "A", "price": Decimal("9.99"), "gross": Decimal("11.29"), "currency": "CNY"}
    assert out.key_columns == ("sku",) and out.lane == "bulk"
    stages[4].current = lambda row: Decimal("100.00")
    ev = event(
        "c", after={"item_code": "A", "channel": "ONLINE", "price_fen": 999}, key=("item_code", "channel")
    )
    with pytest.raises(GuardViolation, match="gross 11.29 is 88.7% below the storefront's 100.00"):
        apply_stages(stages, ev)


# -------------------------------------------------------------------------------- the reference doc


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "scripts" / "gen_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_connector_reference_is_up_to_date():
    committed = (ROOT / "docs" / "connector-reference.md").read_text()
    assert committed == _generator().render(), (
        "docs/connector-reference.md is out of date: run python scripts/gen_reference.py"
    )


def test_connector_reference_lists_every_stage_and_field():
    text = _generator().render()
    import typing

    from cdc.stages import StageConfig

    for cfg in typing.get_args(typing.get_args(StageConfig)[0]):
        assert issubclass(cfg, StageConfigBase)
        tag = typing.get_args(cfg.model_fields["type"].annotation)[0]
        assert f"### `{tag}` ({cfg.__name__})" in text
        for name in cfg.model_fields:
            assert f"| `{name}` |" in text
    assert "| `rules` | list of `RouteRule` |" in text
    assert "#### `rules[]` (RouteRule)" in text
    assert "| `max_change_pct` | decimal or null | `null` |" in text
    assert "| `scale` | integer | **required** | decimal places of the result; >= 0; <= 100 |" in text
    assert "## Expressions" in text and "concat(a, b, ...)" in text
