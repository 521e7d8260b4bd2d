"""What an asset may return instead of a bare frame, so other work commits with the data.

An extract that advances a cursor, or a transform that records dead letters, must commit those in
the same transaction as the rows they describe; otherwise a crash between the two either loses rows
(cursor saved, data not) or loads them twice. Returning ``LoadBatch(frame, on_commit=[...])`` makes
the IO manager call each hook with the write's connection, inside the write's transaction, after the
data and before the commit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

CommitHook = Callable[[psycopg.Connection], Any]


@dataclass
class LoadBatch:
    """A frame to store, hooks to run in its transaction, and metadata for its materialization."""

    frame: Any
    on_commit: Sequence[CommitHook] = field(default_factory=list)
    metadata: Mapping[str, Any] = field(default_factory=dict)
