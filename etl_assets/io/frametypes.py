"""Dagster types for asset inputs loaded as pandas or polars frames, defined without importing either.

Dagster resolves an asset function's annotations when the Definitions load, so an input annotated
``pl.DataFrame`` or ``pd.DataFrame`` loads polars, pandas and pyarrow (about 130 MB and several hundred
milliseconds) into every process that loads the code location, including runs that never build a frame.
Annotating the input with :data:`PolarsFrame` or :data:`PandasFrame` instead gives Dagster the type it
would have inferred from the real class (same key, name and description, so the UI shows the same) whose
check compares the value's class only once that library is loaded; the IO manager reads
:attr:`FrameType.frame_kind` to load the frame kind the input asks for. For type checkers the two names
are the real ``DataFrame`` classes.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

import dagster as dg

from etl_assets.io.reader import FrameKind


class FrameType(dg.DagsterType):
    """The Dagster type Dagster infers from a frame class annotation, naming the class by its path."""

    def __init__(self, frame_kind: FrameKind, module: str, class_name: str) -> None:
        self.frame_kind: FrameKind = frame_kind
        self._module, self._class_name = module, class_name
        qualified = f"{module}.{class_name}"
        # Key and description as dagster's TypeHintInferredDagsterType builds them from the class.
        super().__init__(
            key=f"_TypeHintInferred[{qualified}]",
            description=f"DagsterType created from a type hint for the Python type {qualified}",
            type_check_fn=self._check,
        )

    @property
    def display_name(self) -> str:
        return self._class_name

    def frame_class(self) -> type | None:
        """The frame class, or None while its library is not loaded (then no value can be one)."""
        if self._module.split(".")[0] not in sys.modules:
            return None
        return getattr(importlib.import_module(self._module), self._class_name)

    def _check(self, _context: Any, value: object) -> dg.TypeCheck:
        cls = self.frame_class()
        if cls is not None and isinstance(value, cls):
            return dg.TypeCheck(success=True)
        return dg.TypeCheck(
            success=False,
            description=(
                f"Value of type {type(value)} failed type check for Dagster type {self._class_name}, "
                f"expected value to be of Python type {self._module}.{self._class_name}."
            ),
        )


if TYPE_CHECKING:
    from pandas import DataFrame as PandasFrame
    from polars import DataFrame as PolarsFrame
else:
    #: An asset input loaded as a polars DataFrame.
    PolarsFrame = FrameType("polars", "polars.dataframe.frame", "DataFrame")
    #: An asset input loaded as a pandas DataFrame.
    PandasFrame = FrameType("pandas", "pandas", "DataFrame")


def frame_kind_of(dagster_type: Any) -> FrameKind | None:
    """The frame kind a :class:`FrameType` input loads as; None for any other Dagster type."""
    kind = getattr(dagster_type, "frame_kind", None)
    return kind if kind in ("pandas", "polars") else None
