"""What the guard's permission rules (who / exempt / allow, cdc/stages/permissions.py) cost per change, timed in
isolation, and what a POS user-table lookup costs (cdc/roles.py, against a throwaway cluster).

    python bench/permissions_micro.py [N]

Per change (a price update by a cashier, storefront value injected as a constant): the plain max_change_pct
guard; the same with `exempt` (no limit broken: the role is never asked); with `exempt` and every change
breaking the limit by a user the config's `roles` map exempts; an `allow` guard on category with an old image
(REPLICA IDENTITY FULL: no lookup). Then the roles lookup of the POS user table, uncached and cached.
"""

from __future__ import annotations

import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cdc.config import ConnectorConfig  # noqa: E402
from cdc.events import ChangeEvent  # noqa: E402
from cdc.roles import PosRoles  # noqa: E402
from cdc.stages import build_stages  # noqa: E402
from cdc.stages.permissions import RoleLookupConfig  # noqa: E402

WHO = {"column": "by", "roles": {"c1": "cashier", "p1": "pricing"}}


def per_change(cfg: dict, after: dict, before: dict | None, current: Decimal | str, n: int) -> float:
    (stage,) = build_stages([{"type": "guard", **cfg}])
    stage.current = lambda row: current
    events = [
        ChangeEvent("u", "public", "item", dict(before) if before else None, dict(after), 1, 1, i, 0)
        for i in range(n)
    ]
    t = time.perf_counter()
    for ev in events:
        stage(ev)
    return (time.perf_counter() - t) / n * 1e6


def main(n: int) -> None:
    row = {"sku": "A", "price": Decimal("9.50"), "category": "DAIRY", "by": "c1"}
    pct = {"field": "price", "max_change_pct": 20}
    cases = [
        ("max_change_pct guard", pct, row, None, Decimal("9.99")),
        (
            "+ exempt, within the limit",
            {**pct, "exempt": ["pricing"], "who": WHO},
            row,
            None,
            Decimal("9.99"),
        ),
        (
            "+ exempt, limit broken by an exempt role",
            {**pct, "exempt": ["pricing"], "who": WHO},
            {**row, "price": Decimal("6.99"), "by": "p1"},
            None,
            Decimal("9.99"),
        ),
        (
            "allow on category, old image, unchanged",
            {"field": "category", "allow": ["hq"], "who": WHO},
            row,
            {"category": "DAIRY"},
            "DAIRY",
        ),
    ]
    for name, cfg, after, before, current in cases:
        best = min(per_change(cfg, after, before, current, n) for _ in range(3))
        print(f"{name:45s} {best:6.2f} µs/change")

    from cdc.localpg import LocalPostgres

    with LocalPostgres() as pg:
        dsn = pg.create_database("pos")
        pg.execute(
            "CREATE TABLE pos_users (user_id text PRIMARY KEY, role text NOT NULL);"
            " INSERT INTO pos_users SELECT 'u' || i, 'cashier' FROM generate_series(1, 1000) i",
            "pos",
        )
        cfg = ConnectorConfig.model_validate(
            {
                "name": "bench",
                "source": {"type": "postgres", "dsn": dsn, "tables": ["public.item"]},
                "sink": {"type": "sql", "url": "sqlite://", "table": "t", "key": ["sku"]},
            }
        )
        for cache_s, label in ((0, "uncached (a POS round trip)"), (60, "cached")):
            reader = PosRoles(cfg)
            roles_of = reader.for_lookup(
                RoleLookupConfig(table="public.pos_users", key="user_id", value="role", cache_s=cache_s)
            )
            roles_of("u1")  # connect
            m = 2000
            t = time.perf_counter()
            for i in range(m):
                roles_of(f"u{i % 1000 + 1}" if cache_s == 0 else "u1")
            print(f"roles lookup, {label:34s} {(time.perf_counter() - t) / m * 1e6:6.2f} µs/lookup")
            reader.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
