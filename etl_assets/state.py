"""The stored state of each target (``etl.state``): cursors, checkpoints, snapshot markers.

Rows here are written by the extracts in the same transaction as the data they describe. This module
holds what the command line does with them: list them and forget them (``etl-assets reset``), so that
a target's next run starts from scratch, i.e. a full reload.
"""

from __future__ import annotations

from collections.abc import Sequence

from etl_assets.connections import connect
from etl_assets.migrations import ensure_migrated
from etl_assets.settings import WAREHOUSE_DSN_VAR


def targets(dsn: str) -> list[str]:
    """Every target that has stored state, sorted."""
    with connect(dsn, role="warehouse", env_var=WAREHOUSE_DSN_VAR) as conn:
        ensure_migrated(conn)
        return [r[0] for r in conn.execute("SELECT target FROM etl.state ORDER BY target")]


def reset(dsn: str, names: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """Delete the state of the named targets (all when none is named), in one transaction.

    Returns (targets whose state was deleted, named targets that had none).
    """
    with connect(dsn, role="warehouse", env_var=WAREHOUSE_DSN_VAR) as conn:
        ensure_migrated(conn)
        with conn.transaction():
            if names:
                rows = conn.execute(
                    "DELETE FROM etl.state WHERE target = ANY(%s) RETURNING target", (list(names),)
                ).fetchall()
            else:
                rows = conn.execute("DELETE FROM etl.state RETURNING target").fetchall()
    removed = sorted(r[0] for r in rows)
    unknown = sorted(set(names) - set(removed))
    return removed, unknown
