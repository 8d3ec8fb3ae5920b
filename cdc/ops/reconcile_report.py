"""What `cdc reconcile` (cdc/ops/reconcile.py) found: the keys by kind, what was repaired, how the comparison
ran; as readable lines (`summary`) and as one JSON document (`as_dict`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cdc.events import jsonable

if TYPE_CHECKING:
    from cdc.ops.reconcile_repair import Candidate

EXIT_IN_SYNC, EXIT_DRIFT, EXIT_CANNOT = 0, 1, 2
KINDS = ("missing", "extra", "different")


@dataclass
class ReconcileReport:
    """What a reconcile found (and repaired). Keys are storefront keys as the bookkeeping spells them
    (key columns' text joined by \\x1f)."""

    connector: str
    repair: bool = False
    exit_code: int = EXIT_IN_SYNC
    reason: str | None = None  # why it could not compare (exit 2)
    missing: list[str] = field(default_factory=list)  # in the POS (after the stages), not in the storefront
    extra: list[str] = field(default_factory=list)  # in the storefront, not in the POS
    different: list[str] = field(default_factory=list)  # in both, with other values
    held: list[dict] = field(default_factory=list)  # {key, why}: a stage holds the POS row, or a held change
    filtered: int = 0  # POS rows the stages filter out
    filtered_examples: list[str] = field(default_factory=list)
    scheduled: list[str] = field(default_factory=list)  # out of step while a promotion boundary is pending
    moved: list[str] = field(default_factory=list)  # changed by the stream after the snapshot: not judged
    ambiguous: list[str] = field(
        default_factory=list
    )  # several POS rows for the key, none like the storefront
    refused: list[str] = field(default_factory=list)  # repairs the storefront refused (dead-lettered)
    repaired: dict[str, int] = field(default_factory=lambda: {"upserted": 0, "deleted": 0, "refused": 0})
    source_rows: int = 0  # POS rows compared
    storefront_rows: int = 0  # storefront rows compared
    duration_s: float = 0.0
    snapshot_position: str | None = None  # X, as PostgreSQL spells an LSN
    settled: str | None = None  # how the storefront was known to hold everything before X
    method: str | None = None  # checksum | rows
    buckets: int = 0  # checksum buckets (method checksum)
    buckets_differing: int = 0
    examples: int = 10
    details: list[dict] = field(default_factory=list)  # the first `examples` of each kind, with values
    # seconds: waiting for the connector to pass the snapshot point; the comparison (with what follows);
    # of it, sorting out (and repairing) the keys found
    phases: dict[str, float] = field(
        default_factory=lambda: {"settle_s": 0.0, "compare_s": 0.0, "resolve_s": 0.0}
    )

    @property
    def drift(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.different)

    @property
    def left(self) -> int:
        """Drift not repaired."""
        return self.drift - self.repaired["upserted"] - self.repaired["deleted"]

    def left_by_kind(self) -> dict[str, int]:
        """Per kind, the drift found and not repaired (with repair: the keys the storefront refused)."""
        if not self.repair:
            return {k: len(getattr(self, k)) for k in KINDS}
        refused = set(self.refused)
        return {k: sum(1 for key in getattr(self, k) if key in refused) for k in KINDS}

    def found(self, c: Candidate) -> None:
        keys = getattr(self, c.kind)
        keys.append(c.key)
        if sum(1 for d in self.details if d["kind"] == c.kind) < self.examples:
            out = c.out.after if c.out is not None else None
            cols = c.columns or sorted(set(out or {}) | set(c.stored or {}))
            self.details.append(
                {
                    "kind": c.kind,
                    "key": c.key,
                    "columns": c.columns,
                    "pos": None if out is None else jsonable({k: out.get(k) for k in cols if k in out}),
                    "storefront": None
                    if c.stored is None
                    else jsonable({k: c.stored.get(k) for k in cols if k in c.stored}),
                }
            )

    def cannot(self, reason: str) -> ReconcileReport:
        self.exit_code, self.reason = EXIT_CANNOT, reason
        return self

    def finish(self) -> None:
        if self.exit_code != EXIT_CANNOT:
            self.exit_code = EXIT_DRIFT if self.left else EXIT_IN_SYNC

    def as_dict(self) -> dict:
        return {
            "connector": self.connector,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "in_sync": self.exit_code == EXIT_IN_SYNC and not self.drift,
            "repair": self.repair,
            "counts": {
                "missing": len(self.missing),
                "extra": len(self.extra),
                "different": len(self.different),
                "held": len(self.held),
                "filtered": self.filtered,
                "scheduled": len(self.scheduled),
                "moved": len(self.moved),
                "ambiguous": len(self.ambiguous),
            },
            "missing": self.missing,
            "extra": self.extra,
            "different": self.different,
            "held": self.held,
            "filtered": {"count": self.filtered, "examples": self.filtered_examples},
            "scheduled": self.scheduled,
            "moved": self.moved,
            "ambiguous": self.ambiguous,
            "repaired": dict(self.repaired),
            "left": self.left_by_kind(),
            "refused": self.refused,
            "compared": {"pos_rows": self.source_rows, "storefront_rows": self.storefront_rows},
            "duration_s": round(self.duration_s, 3),
            "snapshot_position": self.snapshot_position,
            "settled": self.settled,
            "method": self.method,
            "buckets": {"total": self.buckets, "differing": self.buckets_differing},
            "examples": self.details,
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
        }

    def summary(self) -> str:
        """Readable lines: counts, then up to `examples` keys of each kind."""
        if self.exit_code == EXIT_CANNOT:
            return f"{self.connector}: cannot compare: {self.reason}"
        n = self.examples
        lines = [
            f"{self.connector}: {self.source_rows} POS rows and {self.storefront_rows} storefront rows compared "
            f"at {self.snapshot_position} in {self.duration_s:.1f}s ({self.method})",
        ]
        for kind in KINDS:
            keys = getattr(self, kind)
            if keys:
                lines.append(f"  {kind}: {len(keys)}  {_some(keys, n)}")
        if self.repair:
            r = self.repaired
            lines.append(
                f"  repaired: {r['upserted']} upserted, {r['deleted']} deleted, {r['refused']} refused"
            )
        for what, keys in (
            ("scheduled", self.scheduled),
            ("ambiguous", self.ambiguous),
            ("moved", self.moved),
        ):
            if keys:
                lines.append(f"  {what} (not drift): {len(keys)}  {_some(keys, n)}")
        if self.held:
            lines.append(f"  held (not drift): {len(self.held)}  {_some([h['key'] for h in self.held], n)}")
        if self.filtered:
            lines.append(f"  filtered (not drift): {self.filtered}  {_some(self.filtered_examples, n)}")
        verdict = {EXIT_IN_SYNC: "in sync" if not self.drift else "repaired", EXIT_DRIFT: "drift left"}
        lines.append(f"  verdict: {verdict[self.exit_code]}")
        return "\n".join(lines)


def _some(keys: list[str], n: int) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")
