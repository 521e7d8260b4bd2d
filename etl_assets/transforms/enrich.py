"""Lookup enrichment (the seed's pattern 3): orders joined with the categories dimension.

A left join that keeps every order: an order whose category id is unknown (or NULL) keeps NULL
category columns and ``category_matched = false``, and is counted and reported, never dropped. The
dimension is deduplicated by id first (first row wins, duplicates counted) so the join can never
multiply orders: rows out = rows in, always.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # loaded where a frame is built, not when this module is imported
    import polars as pl


@dataclass(frozen=True)
class EnrichStats:
    rows: int
    matched: int
    unmatched_rows: int
    unmatched_keys: list[int]  # distinct unknown category ids (NULL excluded)
    null_keys: int
    duplicate_dimension_keys: int

    def metadata(self) -> dict[str, object]:
        return {
            "rows_in": self.rows,
            "rows_out": self.rows,
            "matched_rows": self.matched,
            "unmatched_rows": self.unmatched_rows,
            "unmatched_keys": len(self.unmatched_keys),
            "unmatched_key_sample": ", ".join(map(str, self.unmatched_keys[:20])),
            "null_keys": self.null_keys,
            "duplicate_dimension_keys": self.duplicate_dimension_keys,
        }


def enrich_orders(orders: pl.DataFrame, categories: pl.DataFrame) -> tuple[pl.DataFrame, EnrichStats]:
    import polars as pl

    key_dtype = orders.schema["category_id"]
    dim = categories.select(
        pl.col("id").cast(key_dtype).alias("category_id"),
        pl.col("name").alias("category_name"),
        pl.col("type").alias("category_type"),
        pl.lit(True).alias("category_matched"),
    )
    unique = dim.unique(subset="category_id", keep="first", maintain_order=True)
    out = orders.join(unique, on="category_id", how="left", maintain_order="left").with_columns(
        pl.col("category_matched").fill_null(False)
    )
    if out.height != orders.height:  # cannot happen with a unique dimension; guard the invariant
        raise AssertionError(f"enrichment changed the row count: {orders.height} -> {out.height}")
    unmatched = out.filter(~pl.col("category_matched"))
    keys = sorted(unmatched.get_column("category_id").drop_nulls().unique().to_list())
    stats = EnrichStats(
        rows=out.height,
        matched=out.height - unmatched.height,
        unmatched_rows=unmatched.height,
        unmatched_keys=keys,
        null_keys=unmatched.get_column("category_id").null_count(),
        duplicate_dimension_keys=dim.height - unique.height,
    )
    return out, stats
