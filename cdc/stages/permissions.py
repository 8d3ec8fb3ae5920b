"""Who may change a price: the `who`, `exempt`, `allow` and `approvers` settings of the `guard` stage.

    {type: guard, field: price, max_change_pct: 20, exempt: [pricing], approvers: [anna],
     who: {column: updated_by, lookup: {table: public.pos_users, key: user_id, value: role}}}
    {type: guard, field: category, allow: [hq], who: {column: updated_by, roles: {u1: hq, u7: cashier}}}

`who` says who made a change and what role(s) they have:

* `column`: the row's column naming the POS user (as named at this stage: put the guard before a stage that
  drops it);
* `roles`: user -> role or [roles], from the config; or `lookup`: the POS's own user table, read on a
  connection of its own (cdc/roles.py: `SELECT value FROM table WHERE key = user`, one row per role, kept
  `cache_s` seconds); with neither, the column holds the role itself.

A user with no role (not in `roles`, no row in the lookup table, a null or empty column) is an *unknown
user*: a rule that needs the role holds the change, and the reason says "unknown user".

* `exempt: [roles]`: changes by these roles pass this guard's limits (min, max, not_below, max_change_pct);
  anyone else's change that breaks one is held with the limit's reason plus who and their role. The role is
  looked up only when a limit is broken.
* `allow: [roles]`: only these roles may change `field`. A change of `field` by anyone else is held (rule
  `<stage>:allow`). "Changed" compares with the old image when the POS sends one (REPLICA IDENTITY FULL),
  else with the storefront's value for the key (when the storefront table has the column); a new key passes;
  when neither can tell, the change is held and the reason says how to make it tellable.
* a row without the `who` column or the `allow` field cannot be judged: a plain HoldError (a dead letter)
  saying to move the guard before the stage that drops it.
* `approvers: [users]`: only these may approve or reject what this guard held (`cdc quarantine approve ID
  --by NAME`); empty: anyone.

`Permissions` below is pure: the guard injects `roles_of(user) -> [roles] | None` for a lookup (cdc/roles.py).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cdc.errors import HoldError
from cdc.events import CREATE, READ, UNCHANGED_TOAST, UPDATE, ChangeEvent

UNKNOWN = None


def _name(v: str) -> str:
    if not v.strip():
        raise ValueError("must name a column")
    return v


class RoleLookupConfig(BaseModel):
    """The POS's user table that gives a user's role(s): one row per user and role, read as `SELECT value FROM
    table WHERE key = <user>` (the connector's POS role needs SELECT on it)."""

    model_config = ConfigDict(extra="forbid")

    table: str = Field(description="POS table, schema.table, e.g. public.pos_users")
    key: str = Field(description="its column holding the user, as in the changed row, e.g. user_id")
    value: str = Field(description="its column holding the role, e.g. role")
    cache_s: float = Field(60, ge=0, description="seconds a user's roles are kept before they are read again")

    @field_validator("table")
    @classmethod
    def _check_table(cls, v: str) -> str:
        parts = v.split(".")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise ValueError(f"table must be schema.table, e.g. public.pos_users, got {v!r}")
        return v

    @field_validator("key", "value")
    @classmethod
    def _check_name(cls, v: str) -> str:
        return _name(v)


class WhoConfig(BaseModel):
    """Who made a change and their role(s): the row's `column`, mapped to roles by `roles` or `lookup`
    (neither: the column holds the role). A user with no role is an unknown user: held whenever the role
    decides."""

    model_config = ConfigDict(extra="forbid")

    column: str = Field(description="the row's column naming who changed it, e.g. updated_by")
    roles: dict[str, list[str]] | None = Field(
        None, description="user -> role or [roles], e.g. {u17: cashier, anna: [pricing, hq]}"
    )
    lookup: RoleLookupConfig | None = Field(
        None, description="read the roles from the POS's user table (see RoleLookupConfig)"
    )

    @field_validator("column")
    @classmethod
    def _check_column(cls, v: str) -> str:
        return _name(v)

    @field_validator("roles", mode="before")
    @classmethod
    def _check_roles(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out: dict[str, list[str]] = {}
        for user, roles in v.items():
            if isinstance(user, bool) or not isinstance(user, int | str) or not str(user).strip():
                raise ValueError(f"a user is a name or a number, got {user!r}")
            roles = [roles] if isinstance(roles, str) else roles
            if not isinstance(roles, list) or not roles or not all(isinstance(r, str) and r for r in roles):
                raise ValueError(f"user {user}: give a role or a list of roles, got {roles!r}")
            out[str(user)] = roles
        return out

    @model_validator(mode="after")
    def _one_source(self) -> WhoConfig:
        if self.roles is not None and self.lookup is not None:
            raise ValueError("give roles (from the config) or lookup (from the POS), not both")
        return self


def check_roles(v: list[str], what: str) -> list[str]:
    if any(not r.strip() for r in v):
        raise ValueError(f"{what}: names must not be empty")
    if len(set(v)) != len(v):
        raise ValueError(f"{what}: a name is listed twice")
    return v


def _roles(v: Any) -> str:
    """'role pricing' / 'roles pricing, hq'."""
    return ("role " if len(v) == 1 else "roles ") + ", ".join(map(str, v))


def _show(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def _same(a: Any, b: Any) -> bool:
    """Equal as values, as text, or as numbers (the storefront may give 9.9 for the row's 9.90)."""
    if a == b or str(a) == str(b):
        return True
    try:
        return Decimal(str(a)) == Decimal(str(b))
    except (InvalidOperation, ValueError):
        return False


class Permissions:
    """Judges who made a change for one guard stage (see the module doc)."""

    def __init__(self, who: WhoConfig, exempt: list[str], allow: list[str], field: str | None, name: str):
        self.who = who
        self.column = who.column
        self.exempt = frozenset(exempt)
        self.allow = frozenset(allow)
        self._exempt_text = _roles(exempt)
        self._allow_text = _roles(allow)
        self.field = field
        self.name = name
        self.roles_of: Callable[[str], list[str] | None] | None = None  # injected for who.lookup

    # -- who

    def user(self, ev: ChangeEvent, row: dict) -> Any:
        col = self.column
        if col not in row:
            raise HoldError(
                f"{col} is missing from the row, so who changed it cannot be told (put the guard before any "
                f"stage that drops {col})",
                rule=f"{self.name}:who",
                details={"who_column": col, "op": ev.op},
            )
        v = row[col]
        if v is UNCHANGED_TOAST:
            before = ev.before
            v = before.get(col) if before else None
            v = None if v is UNCHANGED_TOAST else v
        return v

    def roles(self, user: Any) -> list[str] | None:
        """The user's roles, or None for an unknown user."""
        if user is None or not str(user).strip():
            return UNKNOWN
        text = str(user)
        if self.who.roles is not None:
            return self.who.roles.get(text)
        if self.who.lookup is not None:
            if self.roles_of is None:
                raise HoldError(
                    f"the roles of {text!r} are read from {self.who.lookup.table}, which is not reachable here",
                    rule=f"{self.name}:who",
                )
            return self.roles_of(text) or UNKNOWN
        return [text]

    def _whom(self, user: Any, roles: list[str] | None) -> tuple[str, dict]:
        """'by u7 (role cashier)' / 'by unknown user u9 (...)', and the details naming them."""
        details = {"who": None if user is None else str(user), "roles": roles}
        if roles is None:
            details["unknown_user"] = True
            if user is None or not str(user).strip():
                return f"by an unknown user ({self.column} is {'null' if user is None else 'empty'})", details
            where = self.who.lookup.table if self.who.lookup else "who.roles" if self.who.roles else ""
            return f"by unknown user {str(user)!r} (no role in {where})", details
        return f"by {user} ({_roles(roles)})", details

    # -- exempt: a broken limit, unless the role may break it

    def judge_exempt(self, ev: ChangeEvent, row: dict, exc: HoldError) -> None:
        """`exc` broke a limit of this guard: return when the change's author is exempt from it, else raise
        it with who and their role added."""
        user = self.user(ev, row)
        roles = self.roles(user)
        if roles is not None and not self.exempt.isdisjoint(roles):
            return
        whom, details = self._whom(user, roles)
        exc.reason = f"{exc.reason}; changed {whom}: only {self._exempt_text} may"
        exc.args = (exc.reason,)
        exc.details.update(details, exempt=sorted(self.exempt))
        raise exc

    # -- allow: only these roles may change the field

    def judge_allow(
        self, ev: ChangeEvent, row: dict, current: Callable[[dict], Any] | None
    ) -> HoldError | None:
        """None when the change may be made; else the violation (rule `allow`) to raise."""
        if ev.op not in (UPDATE, CREATE, READ):
            return None
        field = self.field
        if field not in row:  # a config mistake, not a decision to take: a dead letter, as for `who`
            raise HoldError(
                f"{field} is missing from the row, so whether it changed cannot be told (put the guard before any "
                f"stage that drops {field})",
                rule=f"{self.name}:allow",
                details={"field": field, "op": ev.op},
            )
        new = row[field]
        if new is UNCHANGED_TOAST:
            return None  # an unchanged TOASTed value did not change
        before = ev.before
        old: Any = UNCHANGED_TOAST
        if before is not None and field in before and before[field] is not UNCHANGED_TOAST:
            old = before[field]
            if _same(old, new):
                return None
        user = self.user(ev, row)
        roles = self.roles(user)
        if roles is not None and not self.allow.isdisjoint(roles):
            return None
        if old is UNCHANGED_TOAST:  # no old image: ask the storefront
            if current is None:
                if ev.op != UPDATE:
                    return None  # a new row, and no storefront to say otherwise
                whom, details = self._whom(user, roles)
                return HoldError(
                    f"cannot tell whether {field} changed ({whom}; only {self._allow_text} may change it): "
                    f"the POS sent no old image (ALTER TABLE ... REPLICA IDENTITY FULL) and the storefront "
                    f"table has no column {field}",
                    details={"field": field, **details, "allow": sorted(self.allow)},
                )
            old = current(row)
            if old is None or _same(old, new):
                return None  # a new key, or no change
        whom, details = self._whom(user, roles)
        return HoldError(
            f"{field} changed from {_show(old)} to {_show(new)} {whom}: only {self._allow_text} may change {field}",
            details={"field": field, "value": new, "current": old, **details, "allow": sorted(self.allow)},
        )
