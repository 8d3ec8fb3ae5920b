"""Who may change a price: the guard's who / exempt / allow / approvers, judged without a database (the roles
lookup is a plain function here; tests/integration/test_permissions.py reads the POS's user table)."""

from __future__ import annotations

from decimal import Decimal as P

import pytest
from pydantic import ValidationError

from cdc.errors import HoldError
from cdc.events import UNCHANGED_TOAST, ChangeEvent
from cdc.stages import GuardConfig, GuardViolation, build_stages

ROLES = {"u1": "cashier", "u2": "pricing", "u3": ["hq", "pricing"], "17": "cashier"}
PCT = {"field": "price", "max_change_pct": 20, "exempt": ["pricing"], "who": {"column": "by", "roles": ROLES}}
CAT = {"field": "category", "allow": ["hq"], "who": {"column": "by", "roles": ROLES}}


def event(op="u", before=None, after=None) -> ChangeEvent:
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
        key_columns=("sku",),
    )


def guard(cfg: dict, after: dict, op="u", before=None, current=None, roles_of=None):
    (stage,) = build_stages([{"type": "guard", **cfg}])
    if current is not None:
        stage.current = lambda row: current
    if roles_of is not None:
        stage.permissions.roles_of = roles_of
    return stage(event(op, before, after))


def held(cfg: dict, after: dict, **kw) -> HoldError:
    with pytest.raises(HoldError) as ei:
        guard(cfg, after, **kw)
    return ei.value


class TestExempt:
    def test_a_cashiers_30_pct_cut_is_held_with_who_rule_and_numbers(self):
        v = held(PCT, {"sku": "A", "price": P("6.99"), "by": "u1"}, current=P("9.99"))
        assert isinstance(v, GuardViolation) and v.kind == "quarantine"
        assert v.rule == "guard#1:max_change_pct"
        assert v.reason == (
            "price 6.99 is 30.0% below the storefront's 9.99 (max_change_pct 20); "
            "changed by u1 (role cashier): only role pricing may"
        )
        d = v.details
        assert (d["value"], d["current"], d["limit"], d["change_pct"]) == (P("6.99"), P("9.99"), 20, "30.0")
        assert (d["who"], d["roles"], d["exempt"]) == ("u1", ["cashier"], ["pricing"])

    def test_the_pricing_role_passes_and_so_does_a_small_change(self):
        assert guard(PCT, {"sku": "A", "price": P("6.99"), "by": "u2"}, current=P("9.99")) is not None
        assert guard(PCT, {"sku": "A", "price": P("6.99"), "by": "u3"}, current=P("9.99")) is not None
        # a cut within the limit never asks who: even an unknown user's
        assert guard(PCT, {"sku": "A", "price": P("9.00"), "by": "nobody"}, current=P("9.99")) is not None

    def test_an_unknown_or_missing_user_is_held_and_said_so(self):
        v = held(PCT, {"sku": "A", "price": P("1.00"), "by": "u9"}, current=P("9.99"))
        assert "changed by unknown user 'u9' (no role in who.roles): only role pricing may" in v.reason
        assert v.details["unknown_user"] is True and v.details["roles"] is None
        v = held(PCT, {"sku": "A", "price": P("1.00"), "by": None}, current=P("9.99"))
        assert "changed by an unknown user (by is null)" in v.reason
        v = held(PCT, {"sku": "A", "price": P("1.00"), "by": "  "}, current=P("9.99"))
        assert "(by is empty)" in v.reason

    def test_several_roles_are_named_as_roles(self):
        cfg = {
            **PCT,
            "exempt": ["pricing", "hq"],
            "who": {"column": "by", "roles": {"u1": ["cashier", "stock"]}},
        }
        v = held(cfg, {"sku": "A", "price": P("1.00"), "by": "u1"}, current=P("9.99"))
        assert v.reason.endswith("changed by u1 (roles cashier, stock): only roles pricing, hq may")

    def test_a_numeric_user_id_matches_the_configs_text(self):
        v = held(PCT, {"sku": "A", "price": P("1.00"), "by": 17}, current=P("9.99"))
        assert "changed by 17 (role cashier)" in v.reason

    def test_exempt_lifts_every_limit_of_the_guard_but_not_required(self):
        cfg = {**PCT, "min": "0.01", "required": ["price"]}
        assert guard(cfg, {"sku": "A", "price": P("0"), "by": "u2"}) is not None
        assert held(cfg, {"sku": "A", "price": P("0"), "by": "u1"}).rule == "guard#1:min"
        assert held(cfg, {"sku": "A", "price": None, "by": "u2"}).rule == "guard#1:required"

    def test_the_user_column_must_reach_the_guard(self):
        e = held(PCT, {"sku": "A", "price": P("1.00")}, current=P("9.99"))
        assert e.rule == "guard#1:who" and "put the guard before any stage that drops by" in e.reason

    def test_without_a_mapping_the_column_is_the_role(self):
        cfg = {**PCT, "who": {"column": "role"}}
        assert guard(cfg, {"sku": "A", "price": P("1"), "role": "pricing"}, current=P("9.99")) is not None
        assert (
            "by cashier (role cashier)"
            in held(cfg, {"price": P("1"), "role": "cashier"}, current=P(9)).reason
        )

    def test_the_lookup_gives_the_roles_and_an_empty_answer_is_unknown(self):
        cfg = {
            **PCT,
            "who": {"column": "by", "lookup": {"table": "public.pos_users", "key": "id", "value": "r"}},
        }
        asked = []

        def roles_of(user):
            asked.append(user)
            return {"7": ["pricing"], "8": ["cashier"]}.get(user, [])

        assert guard(cfg, {"price": P("1"), "by": 7}, current=P(9), roles_of=roles_of) is not None
        assert (
            "by 8 (role cashier)"
            in held(cfg, {"price": P(1), "by": 8}, current=P(9), roles_of=roles_of).reason
        )
        e = held(cfg, {"price": P(1), "by": 9}, current=P(9), roles_of=roles_of)
        assert "unknown user '9' (no role in public.pos_users)" in e.reason
        assert asked == ["7", "8", "9"]
        e = held(cfg, {"price": P(1), "by": 9}, current=P(9))  # not wired: held, never published
        assert e.rule == "guard#1:who" and "not reachable here" in e.reason


class TestAllow:
    def test_a_category_change_by_a_non_hq_user_is_held(self):
        v = held(CAT, {"sku": "A", "category": "SNACK", "by": "u2"}, before={"category": "DAIRY"})
        assert isinstance(v, GuardViolation) and v.rule == "guard#1:allow"
        assert (
            v.reason
            == "category changed from 'DAIRY' to 'SNACK' by u2 (role pricing): only role hq may change category"
        )
        assert (v.details["value"], v.details["current"], v.details["allow"]) == ("SNACK", "DAIRY", ["hq"])

    def test_hq_may_and_an_unchanged_category_passes_for_anyone(self):
        assert guard(CAT, {"category": "SNACK", "by": "u3"}, before={"category": "DAIRY"}) is not None
        assert guard(CAT, {"category": "DAIRY", "by": "u9"}, before={"category": "DAIRY"}) is not None
        assert guard(CAT, {"category": UNCHANGED_TOAST, "by": "u1"}) is not None
        assert guard(CAT, {"category": "X", "by": "u1"}, op="d") is not None

    def test_without_an_old_image_the_storefront_tells(self):
        assert guard(CAT, {"category": "DAIRY", "by": "u1"}, current="DAIRY") is not None
        money = {**CAT, "field": "price"}  # a number the storefront keeps as it likes (SQLite REAL: 9.9)
        assert guard(money, {"price": P("9.90"), "by": "u1"}, current=9.9) is not None
        assert "from 9.9 to 9.91 by u1" in held(money, {"price": P("9.91"), "by": "u1"}, current=9.9).reason
        v = held(CAT, {"category": "SNACK", "by": "u1"}, current="DAIRY")
        assert "from 'DAIRY' to 'SNACK' by u1 (role cashier)" in v.reason
        assert guard(CAT, {"category": "SNACK", "by": "u1"}, op="c") is not None  # a new row
        v = held(CAT, {"category": "SNACK", "by": "u1"})  # an update nothing can tell about
        assert "cannot tell whether category changed" in v.reason and "REPLICA IDENTITY FULL" in v.reason

    def test_a_field_dropped_before_the_guard_is_held_not_passed(self):
        v = held(CAT, {"sku": "A", "by": "u1"}, before={"category": "DAIRY"})
        assert v.rule == "guard#1:allow" and "category is missing from the row" in v.reason
        assert not isinstance(v, GuardViolation)  # a dead letter (a config mistake), not a quarantine

    def test_an_unknown_user_changing_it_is_held(self):
        v = held(CAT, {"category": "SNACK", "by": None}, before={"category": "DAIRY"})
        assert "by an unknown user (by is null): only role hq may change category" in v.reason


class TestConfig:
    @pytest.mark.parametrize(
        "cfg, message",
        [
            ({"field": "price", "max_change_pct": 20, "exempt": ["pricing"]}, "exempt needs who"),
            ({"field": "category", "allow": ["hq"]}, "allow needs who"),
            ({"field": "price", "max": 9, "who": {"column": "by"}}, "who is used by exempt or allow"),
            (
                {"field": "price", "exempt": ["p"], "who": {"column": "by"}},
                "exempt lifts this guard's limits",
            ),
            ({"allow": ["hq"], "who": {"column": "by"}}, "allow .*need.* field"),
            ({**CAT, "allow": ["hq", "hq"]}, "allow: a name is listed twice"),
            ({**CAT, "approvers": [""]}, "approvers: names must not be empty"),
            (
                {
                    **CAT,
                    "who": {
                        "column": "by",
                        "roles": {"u1": "a"},
                        "lookup": {"table": "a.b", "key": "k", "value": "v"},
                    },
                },
                "not both",
            ),
            (
                {**CAT, "who": {"column": "by", "lookup": {"table": "users", "key": "k", "value": "v"}}},
                "schema.table",
            ),
            ({**CAT, "who": {"column": "by", "roles": {"u1": []}}}, "give a role or a list of roles"),
            ({**CAT, "who": {"column": " "}}, "must name a column"),
        ],
    )
    def test_mistakes_say_what_to_fix(self, cfg, message):
        with pytest.raises(ValidationError, match=message):
            GuardConfig(type="guard", **cfg)

    def test_roles_accept_a_role_or_a_list_and_number_ids(self):
        cfg = GuardConfig(
            type="guard", **{**CAT, "who": {"column": "by", "roles": {17: "hq", "a": ["x", "y"]}}}
        )
        assert cfg.who.roles == {"17": ["hq"], "a": ["x", "y"]}


class TestApprovers:
    CFG = {
        "name": "shop",
        "source": {"type": "postgres", "dsn": "host=pos", "tables": ["public.item"]},
        "transforms": [
            {"type": "rename", "fields": {"price_fen": "price"}},
            {**PCT, "type": "guard", "approvers": ["anna", "li"]},
            {"type": "guard", "field": "price", "min": 1},
        ],
        "sink": {"type": "sql", "url": "sqlite://", "table": "product", "key": ["sku"]},
    }

    def entry(self, rule):
        from types import SimpleNamespace

        return SimpleNamespace(id=17, rule=rule)

    def test_only_the_holding_guards_approvers_decide(self):
        from cdc.config import ConnectorConfig
        from cdc.errors import CdcError
        from cdc.ops.held import check_approver

        cfg = ConnectorConfig.model_validate({**self.CFG, "path": ""})
        cfg.path = "shop.yaml"
        check_approver(cfg, self.entry("guard#2:max_change_pct"), "li", "approve")
        with pytest.raises(CdcError) as ei:
            check_approver(cfg, self.entry("guard#2:max_change_pct"), "bob", "reject")
        assert str(ei.value) == (
            "bob may not reject entry 17: it was held by guard#2:max_change_pct, whose approvers are anna, li "
            "(give --by one of them; transforms[1].approvers in shop.yaml lists them)"
        )
        check_approver(cfg, self.entry("guard#3:min"), "bob", "approve")  # a guard without approvers: anyone
        check_approver(cfg, self.entry(None), "bob", "approve")
