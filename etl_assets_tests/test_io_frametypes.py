"""PolarsFrame/PandasFrame are what Dagster infers from the real annotations (the UI shows the same type),
check values like it, and make the IO manager load the frame kind they name."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import polars as pl
import pytest
from dagster._core.types.dagster_type import resolve_dagster_type

from etl_assets.io.frametypes import FrameType, PandasFrame, PolarsFrame, frame_kind_of


@pytest.mark.parametrize(
    "ours,cls,kind,value,other",
    [
        (PolarsFrame, pl.DataFrame, "polars", pl.DataFrame({"a": [1]}), pd.DataFrame({"a": [1]})),
        (PandasFrame, pd.DataFrame, "pandas", pd.DataFrame({"a": [1]}), pl.DataFrame({"a": [1]})),
    ],
    ids=["polars", "pandas"],
)
def test_frame_type_matches_the_inferred_one(ours, cls, kind, value, other) -> None:
    inferred = resolve_dagster_type(cls)
    assert isinstance(ours, FrameType)
    assert (ours.key, ours.display_name, ours.description, ours.kind, ours.has_unique_name) == (
        inferred.key, inferred.display_name, inferred.description, inferred.kind, inferred.has_unique_name
    )
    assert ours.frame_class() is cls
    assert frame_kind_of(ours) == kind and frame_kind_of(inferred) is None
    for candidate in (value, other, None, "text"):
        mine = ours.type_check(None, candidate)
        theirs = inferred.type_check(None, candidate)
        assert (mine.success, mine.description) == (theirs.success, theirs.description)


def test_assets_annotated_with_frame_types_get_them_as_input_types() -> None:
    @dg.asset
    def downstream(a: PolarsFrame, b: PandasFrame) -> None: ...

    types = {i.name: i.dagster_type for i in downstream.node_def.input_defs}
    assert types == {"a": PolarsFrame, "b": PandasFrame}
