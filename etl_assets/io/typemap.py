"""THE type mapping between data frames (pandas, polars, Arrow) and PostgreSQL, used by everyone.

Frames are normalised to polars first (pandas through :func:`to_polars`), so pandas and polars share
one mapping. Three directions live here:

* frame column -> PostgreSQL type (:func:`pg_type_for`), used to create and evolve tables;
* frame column -> the text PostgreSQL's CSV ``COPY`` reads (:func:`copy_expression`): vectorised
  polars expressions, no per-row Python on the bulk path;
* PostgreSQL type -> polars dtype (:func:`polars_dtype_for`), used when loading tables back.

Schema evolution rules (:func:`reconcile`) also live here, because "is this a safe widening" is a
property of the mapping: integer -> bigint, integer -> numeric, real -> double precision,
varchar(n) -> longer varchar/text and numeric(p,s) -> wider numeric are applied; anything else fails
with a message naming the column and both types.
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from etl_assets.errors import ConfigError, SchemaMismatch

if TYPE_CHECKING:  # polars loads when a frame is built, not when this module is imported
    import polars as pl

# Canonical base names (what format_type() prints, shortened where it is long).
#: ``pandas.DataFrame.attrs`` key: column -> the PostgreSQL type it was read from (set by the reader
#: for ``numeric(p,s)`` columns, whose Decimal objects do not carry it; read back by :func:`to_polars`).
PG_TYPES_ATTR = "etl_assets.pg_types"

_FORMAT_ALIASES = {
    "character varying": "varchar",
    "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz",
    "time without time zone": "time",
    "time with time zone": "timetz",
    "character": "char",
    "bit varying": "varbit",
}
_SQL_NAMES = {
    "varchar": "character varying",
    "timestamp": "timestamp without time zone",
    "timestamptz": "timestamp with time zone",
    "time": "time without time zone",
    "timetz": "time with time zone",
    "char": "character",
}
_INT_RANK = {"smallint": 1, "integer": 2, "bigint": 3}
_INT_DIGITS = {"smallint": 5, "integer": 10, "bigint": 19}


@dataclass(frozen=True)
class PgType:
    """A PostgreSQL column type: base name, optional modifiers, array dimensions."""

    base: str
    precision: int | None = None  # numeric precision, varchar length, timestamp precision
    scale: int | None = None
    dims: int = 0

    @classmethod
    def parse(cls, text: str) -> PgType:
        """Parse ``format_type()`` output such as ``numeric(12,2)[]`` or ``character varying(20)``."""
        t = text.strip()
        dims = 0
        while t.endswith("[]"):
            dims += 1
            t = t[:-2]
        precision = scale = None
        m = re.fullmatch(r"(.*?)\((\d+)(?:,(\d+))?\)(.*)", t)
        if m:
            t = (m.group(1) + m.group(4)).strip()
            precision = int(m.group(2))
            scale = int(m.group(3)) if m.group(3) is not None else None
            if t == "numeric" and scale is None:
                scale = 0
        base = _FORMAT_ALIASES.get(t, t)
        return cls(base, precision, scale, dims)

    @property
    def element(self) -> PgType:
        return replace(self, dims=0)

    def sql(self) -> str:
        """The type as DDL text (built only from catalog names and integers, never user input)."""
        name = _SQL_NAMES.get(self.base, self.base)
        if self.precision is not None:
            mods = f"({self.precision})" if self.scale is None else f"({self.precision},{self.scale})"
            if self.base in ("timestamp", "timestamptz", "time", "timetz"):
                head, _, tail = name.partition(" ")
                name = f"{head}{mods} {tail}".strip()
            else:
                name = f"{name}{mods}"
        return name + "[]" * self.dims

    def __str__(self) -> str:
        return self.sql()


def warehouse_type(type_sql: str, builtin: bool) -> PgType:
    """The warehouse column type for a source column of ``format_type()`` text ``type_sql``: the
    source's own for built-in types; text for user-defined ones (enums, domains, composite types),
    which do not exist in the warehouse."""
    return PgType.parse(type_sql if builtin else "text")


# --------------------------------------------------------------------------------------------------
# Frames -> polars (the one normalisation step), with hints for types polars has no dtype for.
# --------------------------------------------------------------------------------------------------


def is_pandas(frame: Any) -> bool:
    return type(frame).__module__.startswith("pandas") and type(frame).__name__ == "DataFrame"


def is_polars(frame: Any) -> bool:
    """Whether ``frame`` is a polars DataFrame, without importing polars: no polars frame exists
    before polars is loaded."""
    if "polars" not in sys.modules:
        return False
    import polars as pl

    return isinstance(frame, pl.DataFrame)


def _first_value(series: Any) -> Any:
    idx = series.first_valid_index()
    return None if idx is None else series.loc[idx]


def to_polars(
    frame: Any, numeric: Mapping[str, PgType] | None = None
) -> tuple[pl.DataFrame, dict[str, PgType]]:
    """Return ``frame`` as polars plus PostgreSQL type hints for columns polars cannot express.

    pandas ``object`` columns holding ``uuid.UUID`` become text hinted ``uuid``; columns holding
    dicts (or lists of dicts) become JSON text hinted ``jsonb``. Everything else goes through
    Arrow (``pl.from_pandas``), which is columnar and keeps NULL distinct from ''.
    ``numeric``: the ``numeric(p,s)`` types of the columns of the table the frame goes into, if it
    exists; a pandas ``Decimal`` column is converted straight to that type when its values fit
    (:func:`_decimal_column`).
    """
    import polars as pl

    hints: dict[str, PgType] = {}
    if isinstance(frame, pl.LazyFrame):
        frame = frame.collect()
    if is_polars(frame):
        for name, dtype in frame.schema.items():
            if isinstance(dtype, pl.Object):
                raise SchemaMismatch(
                    f"Column {name!r} has the polars Object dtype, which has no PostgreSQL type; "
                    "cast it to a concrete dtype first."
                )
        return frame, hints
    if not is_pandas(frame):
        raise ConfigError(
            f"Cannot store a {type(frame).__module__}.{type(frame).__name__}: return a pandas or polars "
            "DataFrame (or a LoadBatch wrapping one)."
        )
    import pandas as pd

    if not all(isinstance(c, str) for c in frame.columns):
        raise ConfigError("Every column name of a stored frame must be a string; rename the others.")
    if frame.columns.duplicated().any():
        dupes = sorted(set(frame.columns[frame.columns.duplicated()]))
        raise ConfigError(f"Duplicate column names {dupes} in the frame; rename them.")
    import pyarrow as pa

    converted: dict[str, Any] = {}
    decimals: dict[str, pl.Series] = {}
    declared = frame.attrs.get(PG_TYPES_ATTR) or {}
    for name in frame.columns:
        col = frame[name]
        if col.dtype != object:
            continue
        value = _first_value(col)
        if isinstance(value, uuid.UUID):
            converted[name] = col.map(
                lambda v: None if v is None or v is pd.NA else str(v), na_action="ignore"
            )
            hints[name] = PgType("uuid")
        elif isinstance(value, dict) or (isinstance(value, list | tuple) and _has_dict(value)):
            converted[name] = col.map(json.dumps, na_action="ignore")
            hints[name] = PgType("jsonb")
        elif isinstance(value, Decimal):
            decimals[name] = _decimal_column(name, col, declared.get(name), (numeric or {}).get(name))
            if decimals[name].dtype == pl.String:
                hints[name] = PgType("numeric")
    if converted:
        frame = frame.assign(**converted)
    try:
        # Through pyarrow directly (polars' from_pandas calls Python per Decimal value); Decimal
        # columns separately with a known type, which is ~10x faster than pyarrow inferring it.
        rest = frame.drop(columns=list(decimals)) if decimals else frame
        out = pl.from_arrow(pa.Table.from_pandas(rest, preserve_index=False)) if len(rest.columns) else None
    except Exception as exc:  # pyarrow conversion errors name the column in their text
        raise SchemaMismatch(f"Cannot convert the pandas frame for PostgreSQL: {exc}") from exc
    if decimals:
        extra = list(decimals.values())
        out = pl.DataFrame(extra) if out is None else out.with_columns(extra).select(list(frame.columns))
    for name in converted:
        out = out.with_columns(pl.col(name).cast(pl.String))
    return out, hints


MAX_DECIMAL128 = 38  # digits of Arrow's (and polars') 128-bit decimal


def _decimal_column(name: str, col: Any, declared: str | None, target: PgType | None) -> pl.Series:
    """A pandas object column of ``Decimal`` as polars, exactly.

    First choice, vectorised: the ``numeric(p,s)`` the column was read from (``declared``) or the
    one it goes into (``target``), when every value fits it (:func:`_decimal_as`): one typed Arrow
    conversion, no scale sampling, no precision scan, the table's own type (nothing to reconcile).
    Otherwise (values bigger or finer than that type, no such type) the smallest fitting precision
    (:func:`_decimal_series`); values with more than 38 digits go as exact text hinted ``numeric``.
    """
    tried: set[PgType] = set()
    for pg in (PgType.parse(declared) if declared else None, target):
        if pg is None or pg in tried:
            continue
        tried.add(pg)
        typed = _decimal_as(name, col, pg)
        if typed is not None:
            return typed
    return _declared_decimal(_decimal_series(name, col), declared)


def _decimal128(values: Any, precision: int, scale: int) -> Any:
    """``values`` (Decimal objects, None/NaN as NULL) as an Arrow ``decimal128(precision, scale)``
    array; raises if a value does not fit exactly.

    Parsed as ``decimal256(76, scale)`` and then cast with overflow checks: pyarrow's direct
    ``decimal128`` conversion turns a value with more than 38 digits below the target scale into
    0 without an error (``Decimal("1E-40")`` into scale 2); the 256-bit parse rejects it.
    """
    import pyarrow as pa

    wide = pa.array(values, type=pa.decimal256(2 * MAX_DECIMAL128, scale), from_pandas=True)
    return wide.cast(pa.decimal128(precision, scale))


def _decimal_as(name: str, col: Any, pg: PgType) -> pl.Series | None:
    """``col`` as polars ``Decimal(p, s)`` of the ``numeric(p,s)`` ``pg``, or None when a value does
    not fit it exactly (too many digits, a finer scale, not a Decimal or integer, infinity) or the
    type has no 128-bit decimal (precision above 38, a negative scale, scale above precision)."""
    import polars as pl
    import pyarrow as pa

    if pg.base != "numeric" or pg.dims or pg.precision is None:
        return None
    scale = pg.scale or 0
    if not 0 <= scale <= pg.precision <= MAX_DECIMAL128 or pg.precision < 1:
        return None
    try:
        arr = _decimal128(col.to_numpy(), pg.precision, scale)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError):
        return None
    return pl.Series(name, arr)


def _declared_decimal(series: pl.Series, declared: str | None) -> pl.Series:
    """``series`` as the ``numeric(p,s)`` its column was read from, when its values fit that type.

    Decimal objects carry no column precision, so a pandas frame would otherwise be stored with the
    smallest precision its values need (``numeric(5,2)`` for a ``numeric(12,2)`` source), unlike the
    same data through polars, whose Decimal dtype keeps it. Values that no longer fit (a transform
    made them bigger) keep the inferred type.
    """
    import polars as pl

    if declared is None or not isinstance(series.dtype, pl.Decimal):
        return series
    pg = PgType.parse(declared)
    if pg.base != "numeric" or pg.dims or pg.precision is None:
        return series
    want_scale = pg.scale or 0
    have_scale = series.dtype.scale or 0
    have_int_digits = (series.dtype.precision or 38) - have_scale
    if have_scale > want_scale or have_int_digits > pg.precision - want_scale:
        return series
    return series.cast(pl.Decimal(pg.precision, want_scale))


def _decimal_series(name: str, col: Any) -> pl.Series:
    """A pandas object column of ``Decimal`` as a polars Decimal of the smallest fitting precision.

    The scale comes from a sample (values with a larger scale make the typed conversion fail, and
    then pyarrow infers over every value); the precision from the largest magnitude, vectorised.
    """
    import polars as pl
    import pyarrow as pa

    values = col.to_numpy()
    sample = col.dropna().iloc[:1000]
    try:
        scale = pa.array(sample.to_numpy()).type.scale if len(sample) else 0
        arr = _decimal128(values, MAX_DECIMAL128, scale)
    except (pa.ArrowInvalid, pa.ArrowTypeError, AttributeError):
        try:
            arr = pa.array(values, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            text = _decimal_text(name, col)
            if text is None:
                raise SchemaMismatch(f"Column {name!r} holds decimals PostgreSQL cannot take: {exc}") from exc
            return text
        if pa.types.is_decimal(arr.type) and arr.type.precision > MAX_DECIMAL128:
            return pl.Series(name, arr.cast(pa.string()))
    series = pl.Series(name, arr)
    if not isinstance(series.dtype, pl.Decimal):
        return series
    scale = series.dtype.scale or 0
    biggest = series.abs().max()
    digits = len(str(int(biggest))) if biggest is not None and int(biggest) != 0 else 1
    return series.cast(pl.Decimal(min(38, max(digits + scale, 1)), scale))


def _decimal_text(name: str, col: Any) -> pl.Series | None:
    """Decimals with more digits than any Arrow decimal (76) as exact text, which the caller hints
    ``numeric`` and PostgreSQL parses (its numeric takes them); None if a value is not a Decimal.

    Python per value, but only for columns no decimal type can hold.
    """
    import pandas as pd
    import polars as pl

    values = col.to_numpy()
    missing = pd.isna(values)  # None, NaN and Decimal NaN, as Arrow's from_pandas sees them
    if not all(isinstance(v, Decimal) for v in values[~missing]):
        return None
    return pl.Series(name, [None if m else str(v) for v, m in zip(values, missing, strict=True)], pl.String)


def _has_dict(value: Any) -> bool:
    if isinstance(value, dict):
        return True
    if isinstance(value, list | tuple):
        return any(_has_dict(v) for v in value)
    return False


# --------------------------------------------------------------------------------------------------
# polars dtype -> PostgreSQL type
# --------------------------------------------------------------------------------------------------


def pg_type_for(name: str, dtype: pl.DataType, hint: PgType | None = None) -> PgType:
    """The PostgreSQL type a new column for ``dtype`` gets."""
    import polars as pl

    if hint is not None:
        return hint
    if isinstance(dtype, pl.Int8 | pl.Int16 | pl.UInt8):
        return PgType("smallint")
    if isinstance(dtype, pl.Int32 | pl.UInt16):
        return PgType("integer")
    if isinstance(dtype, pl.Int64 | pl.UInt32):
        return PgType("bigint")
    if isinstance(dtype, pl.UInt64):
        return PgType("numeric", 20, 0)
    if isinstance(dtype, pl.Int128):
        return PgType("numeric", 39, 0)
    if isinstance(dtype, pl.Float32):
        return PgType("real")
    if isinstance(dtype, pl.Float64):
        return PgType("double precision")
    if isinstance(dtype, pl.Decimal):
        return PgType("numeric", dtype.precision, dtype.scale or 0)
    if isinstance(dtype, pl.String | pl.Categorical | pl.Enum | pl.Null):
        return PgType("text")
    if isinstance(dtype, pl.Boolean):
        return PgType("boolean")
    if isinstance(dtype, pl.Date):
        return PgType("date")
    if isinstance(dtype, pl.Time):
        return PgType("time")
    if isinstance(dtype, pl.Datetime):
        return PgType("timestamptz" if dtype.time_zone else "timestamp")
    if isinstance(dtype, pl.Duration):
        return PgType("interval")
    if isinstance(dtype, pl.Binary):
        return PgType("bytea")
    if isinstance(dtype, pl.Struct):
        return PgType("jsonb")
    if isinstance(dtype, pl.List | pl.Array):
        inner = dtype.inner
        if isinstance(inner, pl.Struct) or _nested_struct(inner):
            return PgType("jsonb")
        element = pg_type_for(name, inner)
        return replace(element, dims=element.dims + 1)
    raise SchemaMismatch(
        f"Column {name!r} has dtype {dtype}, which has no PostgreSQL mapping; cast it first."
    )


def _nested_struct(dtype: pl.DataType) -> bool:
    import polars as pl

    while isinstance(dtype, pl.List | pl.Array):
        dtype = dtype.inner
    return isinstance(dtype, pl.Struct)


# --------------------------------------------------------------------------------------------------
# polars column -> CSV text PostgreSQL's COPY reads (vectorised expressions)
# --------------------------------------------------------------------------------------------------


def _array_element(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Render one array element for a PostgreSQL array literal (strings quoted and escaped)."""
    import polars as pl

    if isinstance(dtype, pl.List | pl.Array):
        return _array_literal(expr, dtype)
    if isinstance(dtype, pl.Binary):
        text = pl.concat_str([pl.lit("\\x"), expr.bin.encode("hex")])
    elif isinstance(dtype, pl.Duration):
        text = pl.concat_str([expr.dt.total_microseconds().cast(pl.String), pl.lit(" microseconds")])
    elif isinstance(dtype, pl.Datetime) and dtype.time_zone:
        text = expr.dt.convert_time_zone("UTC").dt.replace_time_zone(None).cast(pl.String) + pl.lit("+00")
    else:
        text = expr.cast(pl.String)
    quoted = pl.concat_str(
        [
            pl.lit('"'),
            text.str.replace_all("\\", "\\\\", literal=True).str.replace_all('"', '\\"', literal=True),
            pl.lit('"'),
        ]
    )
    return quoted.fill_null(pl.lit("NULL"))


def _array_literal(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    import polars as pl

    if isinstance(dtype, pl.Array):
        expr = expr.arr.to_list()
    inner = dtype.inner
    body = expr.list.eval(_array_element(pl.element(), inner)).list.join(",")
    return pl.concat_str([pl.lit("{"), body, pl.lit("}")])


def _json_of_list(col: pl.Expr) -> pl.Expr:
    """JSON text of a list column: encode ``{"v": list}`` and cut the wrapper off (vectorised)."""
    import polars as pl

    encoded = pl.struct(col.alias("v")).struct.json_encode().str.slice(5).str.head(-1)
    return pl.when(col.is_null()).then(None).otherwise(encoded)


def copy_expression(name: str, dtype: pl.DataType, target: PgType | None = None) -> pl.Expr:
    """An expression turning column ``name`` into what CSV COPY parses for its PostgreSQL type.

    Types CSV writes natively (numbers, text, booleans, dates, times, timestamps) pass through;
    bytes become ``\\x`` hex, durations microsecond intervals, structs JSON, lists array literals.
    NaN and infinity are written as ``NaN``/``inf``, which PostgreSQL reads for real and double.
    """
    import polars as pl

    col = pl.col(name)
    if isinstance(dtype, pl.List | pl.Array) and (
        _nested_struct(dtype) or (target is not None and target.base in ("json", "jsonb"))
    ):
        return _json_of_list(col).alias(name)
    if isinstance(dtype, pl.Binary):
        return pl.concat_str([pl.lit("\\x"), col.bin.encode("hex")]).alias(name)
    if isinstance(dtype, pl.Duration):
        return pl.concat_str([col.dt.total_microseconds().cast(pl.String), pl.lit(" microseconds")]).alias(
            name
        )
    if isinstance(dtype, pl.Struct):
        return col.struct.json_encode().alias(name)
    if isinstance(dtype, pl.List | pl.Array):
        return _array_literal(col, dtype).alias(name)
    if isinstance(dtype, pl.Categorical | pl.Enum):
        return col.cast(pl.String).alias(name)
    return col


def copy_ready(frame: pl.DataFrame, targets: dict[str, PgType] | None = None) -> pl.DataFrame:
    """``frame`` with every column rendered by :func:`copy_expression` (only columns that need it)."""
    targets = targets or {}
    exprs = []
    for name, dtype in frame.schema.items():
        exprs.append(copy_expression(name, dtype, targets.get(name)))
    return frame.select(exprs)


# --------------------------------------------------------------------------------------------------
# PostgreSQL type -> polars dtype (loading)
# --------------------------------------------------------------------------------------------------


def polars_dtype_for(pg: PgType) -> pl.DataType:
    """The polars dtype a PostgreSQL column loads as (uuid and json come back as text)."""
    import polars as pl

    if pg.dims:
        inner = polars_dtype_for(pg.element)
        for _ in range(pg.dims):
            inner = pl.List(inner)
        return inner
    base = pg.base
    if base == "smallint":
        return pl.Int16()
    if base == "integer":
        return pl.Int32()
    if base == "bigint":
        return pl.Int64()
    if base == "real":
        return pl.Float32()
    if base == "double precision":
        return pl.Float64()
    if base == "numeric":
        if pg.precision is None:
            return pl.Decimal(38, 9)
        return pl.Decimal(pg.precision, pg.scale or 0)
    if base == "boolean":
        return pl.Boolean()
    if base == "date":
        return pl.Date()
    if base in ("time", "timetz"):
        return pl.Time()
    if base == "timestamp":
        return pl.Datetime("us")
    if base == "timestamptz":
        return pl.Datetime("us", "UTC")
    if base == "interval":
        return pl.Duration("us")
    if base == "bytea":
        return pl.Binary()
    return pl.String()


# --------------------------------------------------------------------------------------------------
# Schema evolution
# --------------------------------------------------------------------------------------------------


def _numeric_of(pg: PgType) -> tuple[int, int] | None:
    """(integer digits, scale) a type needs as numeric, None when unconstrained."""
    if pg.base in _INT_DIGITS:
        return _INT_DIGITS[pg.base], 0
    if pg.base == "numeric":
        if pg.precision is None:
            return None
        return pg.precision - (pg.scale or 0), pg.scale or 0
    raise ValueError(pg)


def values_fit(existing: PgType, series: pl.Series) -> bool:
    """Whether every value of ``series`` fits ``existing`` unchanged (vectorised min/max/length checks).

    Used before widening by type alone: a polars Int64 column of small numbers goes into an
    ``integer`` column as it is, instead of rewriting the table (and failing on dependent views).
    """
    import polars as pl

    if existing.dims or series.null_count() == series.len():
        return existing.dims == 0 or series.null_count() == series.len()
    if existing.base in _INT_DIGITS and series.dtype.is_integer():
        bits = {"smallint": 15, "integer": 31, "bigint": 63}[existing.base]
        lo, hi = series.min(), series.max()
        return -(2**bits) <= lo and hi < 2**bits
    if existing.base == "varchar" and existing.precision is not None and series.dtype == pl.String:
        return (series.str.len_chars().max() or 0) <= existing.precision
    if existing.base == "numeric" and existing.precision is not None and isinstance(series.dtype, pl.Decimal):
        scale = existing.scale or 0
        try:
            same_scale = series.cast(pl.Decimal(38, scale)).cast(series.dtype)
        except Exception:
            return False
        if not (same_scale == series).all():
            return False
        limit = 10 ** (existing.precision - scale)
        biggest = series.abs().max()
        return biggest is None or biggest < limit
    return False


def reconcile(
    column: str, table: str, existing: PgType, incoming: PgType, series: pl.Series | None = None
) -> PgType | None:
    """Decide how an existing column takes incoming data: None (fits), a wider type, or an error.

    Text goes into any column (PostgreSQL parses it: uuid, json and dates read back as text) except
    a too-short varchar, which widens to text. Otherwise a safe widening by type is applied only if
    the values do not already fit the column.
    """
    null = text = False
    if series is not None:  # a frame's column; the COPY fast path passes none and needs no polars
        import polars as pl

        null, text = isinstance(series.dtype, pl.Null), isinstance(series.dtype, pl.String)
    if null:
        return None
    if text or (series is None and incoming.base == "text"):
        if existing.base == "varchar" and existing.precision is not None and existing.dims == 0:
            if series is not None and values_fit(existing, series):
                return None
            return PgType("text")
        return None
    if existing.dims and incoming.dims > 1:
        # PostgreSQL does not keep an array column's number of dimensions: format_type() prints
        # integer[][] as integer[], and any array value of the element type fits.
        existing = replace(existing, dims=incoming.dims)
    if existing == incoming:
        return None
    if existing.dims != incoming.dims:
        raise _mismatch(column, table, existing, incoming)
    wider = _reconcile_scalar(existing.element, incoming.element)
    if wider is _FITS:
        return None
    if wider is None:
        raise _mismatch(column, table, existing, incoming)
    if series is not None and values_fit(existing, series):
        return None
    return replace(wider, dims=existing.dims)


_FITS = PgType("__fits__")


def _reconcile_scalar(e: PgType, i: PgType) -> PgType | None:
    if e == i:
        return _FITS
    if e.base in _INT_RANK and i.base in _INT_RANK:
        return _FITS if _INT_RANK[i.base] <= _INT_RANK[e.base] else PgType(i.base)
    if e.base == "numeric" and (i.base in _INT_RANK or i.base == "numeric"):
        en, inc = _numeric_of(e), _numeric_of(i)
        if en is None:
            return _FITS
        if inc is None:
            return PgType("numeric")
        digits, scale = max(en[0], inc[0]), max(en[1], inc[1])
        if (digits, scale) == en:
            return _FITS
        return PgType("numeric", min(digits + scale, 1000), scale)
    if e.base in _INT_RANK and i.base == "numeric":
        inc = _numeric_of(i)
        if inc is None:
            return PgType("numeric")
        digits, scale = max(_INT_DIGITS[e.base], inc[0]), inc[1]
        return PgType("numeric", digits + scale, scale)
    if e.base == "double precision" and (i.base in ("real", "smallint", "integer", "bigint")):
        return _FITS  # whole numbers computed as integers go into a float column as they are
    if e.base == "numeric" and i.base in ("real", "double precision"):
        return _FITS  # PostgreSQL parses the float's shortest exact text into the numeric
    if e.base == "real" and i.base == "double precision":
        return PgType("double precision")
    if e.base == "real" and i.base == "smallint":
        return _FITS
    if e.base in ("varchar", "char") and i.base in ("text", "varchar"):
        return PgType("text")
    if e.base == "text" and i.base in ("varchar", "char"):
        return _FITS
    if e.base in ("timestamp", "timestamptz", "time", "timetz") and e.base == i.base:
        return _FITS  # precision differences: PostgreSQL rounds
    if e.base == "jsonb" and i.base in ("json",):
        return _FITS
    return None


def _mismatch(column: str, table: str, existing: PgType, incoming: PgType) -> SchemaMismatch:
    return SchemaMismatch(
        f"Column {column!r} of {table} is {existing.sql()} but the frame has {incoming.sql()}, which is not "
        "a safe widening (safe: integer->bigint/numeric, real->double precision, varchar->text, "
        "numeric->wider numeric). Cast the column in the asset, or migrate the table yourself."
    )
