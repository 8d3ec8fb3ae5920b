"""What a first run made on the POS, removed when it fails before its first commit (cdc/pipeline.py): a slot
kept for a connector that cannot start would hold the POS's WAL back until someone noticed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from cdc.errors import CdcError

log = logging.getLogger("cdc.source.postgres")


def remove_made(connect: Callable[..., psycopg.Connection], cfg, made: list[str]) -> None:
    """Drops the slot and/or publication (`made`) of `cfg`; the stream must be closed already (its walsender
    may take a moment to go)."""
    try:
        with connect(autocommit=True) as conn:
            end = time.monotonic() + 10
            while "slot" in made and time.monotonic() < end:
                row = conn.execute(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (cfg.slot,)
                ).fetchone()
                if row is None or not row[0]:
                    conn.execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                        "WHERE slot_name = %s AND NOT active",
                        (cfg.slot,),
                    )
                    break
                time.sleep(0.1)
            if "publication" in made:
                conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(cfg.publication)))
    except (psycopg.Error, CdcError) as e:
        log.warning("%s: could not remove what the failed first run made: %s", cfg.name, e)
        return
    log.info("%s: the first run failed before any commit: removed its %s", cfg.name, " and ".join(made))
