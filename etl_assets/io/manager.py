"""The Dagster IO manager that stores pandas and polars frames in warehouse tables.

One IO manager with one handler per frame type (the shared mapping in
:mod:`etl_assets.io.typemap` makes the handlers thin). Each asset chooses how it is written through
its definition metadata:

* ``write_mode``: ``insert`` | ``upsert`` | ``truncate_insert`` (default) | ``swap``
* ``primary_key``: list of columns (created as the primary key; required for ``upsert``)
* ``order_by``: the column that decides which duplicate-key row wins in an upsert
* ``partition_expr``: the column holding a partitioned asset's partition (time window or key);
  for multi-dimensional partitions a mapping ``{dimension: column}``
* ``target``: ``"schema.table"`` (default: from the asset key, see ``TableRef.for_asset_key``)

An asset may return a :class:`~etl_assets.io.batch.LoadBatch` to run hooks (cursor, dead letters) in
the write's transaction and add metadata. Returning ``None`` stores nothing. Loading returns pandas
or polars according to the input parameter's annotation (``pl.DataFrame``/``pl.LazyFrame``,
``pd.DataFrame``, or :data:`~etl_assets.io.frametypes.PolarsFrame`/``PandasFrame``, which do not load
the library when the Definitions load; pandas when unannotated); input metadata ``columns`` selects
columns; a partitioned input loads only its partitions' rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import dagster as dg
from pydantic import Field

from etl_assets.db import PostgresResource
from etl_assets.errors import ConfigError
from etl_assets.io.batch import LoadBatch
from etl_assets.io.frametypes import frame_kind_of
from etl_assets.io.reader import FrameKind, read_table
from etl_assets.io.tables import TableRef
from etl_assets.io.writer import WRITE_MODES, PartitionWindow, write_frame


class _FrameHandler(ABC):
    """How one frame type is recognised and loaded (the write path is shared)."""

    kind: FrameKind

    @abstractmethod
    def handles(self, typ: Any) -> bool:
        """Whether an annotation (or a value's type) is this handler's frame type."""


class _PolarsHandler(_FrameHandler):
    kind: FrameKind = "polars"

    def handles(self, typ: Any) -> bool:
        # by module name: comparing with pl.DataFrame would load polars for a pandas input
        return getattr(typ, "__module__", "").startswith("polars")


class _PandasHandler(_FrameHandler):
    kind: FrameKind = "pandas"

    def handles(self, typ: Any) -> bool:
        return getattr(typ, "__module__", "").startswith("pandas")


HANDLERS: tuple[_FrameHandler, ...] = (_PolarsHandler(), _PandasHandler())


def _metadata_value(value: Any) -> Any:
    return getattr(value, "value", value)  # dagster wraps some definition metadata values


def partition_for(context: Any, column: Any) -> PartitionWindow | tuple[PartitionWindow, ...]:
    """The rows of the context's partition(s): a time window, static keys, or one window per
    dimension of a multi-partitioned asset (``partition_expr`` then maps dimension -> column)."""
    definition = context.asset_partitions_def
    keys = list(context.asset_partition_keys)
    if isinstance(definition, dg.MultiPartitionsDefinition):
        if not isinstance(column, Mapping):
            raise ConfigError(
                f"Asset {context.asset_key.to_user_string()} has multi-dimensional partitions: its "
                "'partition_expr' must map each dimension to its column, "
                "e.g. {'date': 'day', 'region': 'region'}."
            )
        windows = []
        for dim in definition.partitions_defs:
            if dim.name not in column:
                raise ConfigError(
                    f"'partition_expr' of {context.asset_key.to_user_string()} has no column for "
                    f"partition dimension {dim.name!r}."
                )
            dim_keys = sorted({_by_dimension(definition, k)[dim.name] for k in keys})
            windows.append(_window(dim.partitions_def, str(column[dim.name]), dim_keys))
        return tuple(windows)
    if isinstance(column, Mapping):
        raise ConfigError(
            f"'partition_expr' of {context.asset_key.to_user_string()} must be one column name."
        )
    return _window(definition, str(column), keys)


def _by_dimension(definition: Any, key: str) -> Mapping[str, str]:
    if isinstance(key, dg.MultiPartitionKey):
        return key.keys_by_dimension
    return definition.get_partition_key_from_str(key).keys_by_dimension


def _window(definition: Any, column: str, keys: list[str]) -> PartitionWindow:
    if isinstance(definition, dg.TimeWindowPartitionsDefinition):
        windows = [definition.time_window_for_partition_key(k) for k in keys]
        return PartitionWindow(column, start=min(w.start for w in windows), end=max(w.end for w in windows))
    return PartitionWindow(column, values=tuple(keys))


class PostgresIOManager(dg.ConfigurableIOManager):
    """Stores asset outputs (pandas/polars frames) in warehouse tables and loads them back."""

    warehouse: PostgresResource
    default_write_mode: str = Field(
        default="truncate_insert", description="Write mode for assets without write_mode metadata."
    )
    default_schema: str = Field(default="public", description="Schema for one-part asset keys.")

    # -- configuration per asset -------------------------------------------------------------------

    @staticmethod
    def _definition_metadata(context: Any) -> Mapping[str, Any]:
        meta = getattr(context, "definition_metadata", None) or {}
        return {k: _metadata_value(v) for k, v in meta.items()}

    def _target(self, asset_key: dg.AssetKey | None, meta: Mapping[str, Any]) -> TableRef:
        if meta.get("target"):
            return TableRef.parse(str(meta["target"]), default_schema=self.default_schema)
        if asset_key is None:
            raise ConfigError(
                "The PostgreSQL IO manager stores assets only; give the output a 'target' metadata."
            )
        ref = TableRef.for_asset_key(asset_key)
        if len(asset_key.path) == 1:
            ref = TableRef(self.default_schema, ref.name)
        return ref

    @staticmethod
    def _partition(context: Any, meta: Mapping[str, Any]) -> Any:
        if not context.has_asset_partitions:
            return None
        column = meta.get("partition_expr")
        if not column:
            raise ConfigError(
                f"Asset {context.asset_key.to_user_string()} is partitioned but has no 'partition_expr' "
                "metadata naming the column that holds its partition."
            )
        return partition_for(context, column)

    # -- storing -----------------------------------------------------------------------------------

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        batch = obj if isinstance(obj, LoadBatch) else LoadBatch(obj)
        meta = self._definition_metadata(context)
        mode = str(meta.get("write_mode") or self.default_write_mode)
        if mode not in WRITE_MODES:
            raise ConfigError(
                f"Asset {context.asset_key.to_user_string()} has write_mode {mode!r}; "
                f"use one of {', '.join(WRITE_MODES)}."
            )
        primary_key = meta.get("primary_key") or ()
        if isinstance(primary_key, str):
            primary_key = (primary_key,)
        target = self._target(context.asset_key if context.has_asset_key else None, meta)
        partition = self._partition(context, meta)
        with self.warehouse.connect() as conn:
            result = write_frame(
                conn,
                batch.frame,
                target,
                mode,
                primary_key=tuple(primary_key),
                order_by=meta.get("order_by"),
                partition=partition,
                on_commit=batch.on_commit,
                run_id=context.run_id,
            )
            # Data quality (etl_assets.quality.profile, issue 7): profile the table just committed, on
            # the same connection, so the UI plots its numbers; the write's own metadata wins on clashes.
            from etl_assets.quality.profile import profile_after_write

            profile = profile_after_write(conn, target, meta, context.log)
        context.add_output_metadata({**profile, **result.metadata(), **dict(batch.metadata)})

    # -- loading -----------------------------------------------------------------------------------

    def load_input(self, context: dg.InputContext) -> Any:
        upstream = context.upstream_output
        upstream_meta = self._definition_metadata(upstream) if upstream is not None else {}
        input_meta = self._definition_metadata(context)
        asset_key = context.asset_key if context.has_asset_key else None
        target = self._target(asset_key, upstream_meta)
        typ = getattr(context.dagster_type, "typing_type", None)
        kind: FrameKind = frame_kind_of(context.dagster_type) or next(
            (handler.kind for handler in HANDLERS if handler.handles(typ)), "pandas"
        )
        partition = None
        if context.has_asset_partitions and upstream_meta.get("partition_expr"):
            partition = partition_for(context, upstream_meta["partition_expr"])
        columns = input_meta.get("columns")
        with self.warehouse.connect() as conn:
            frame = read_table(conn, target, columns=columns, partition=partition, kind=kind)
        if getattr(typ, "__name__", None) == "LazyFrame" and _PolarsHandler().handles(typ):
            return frame.lazy()
        return frame
