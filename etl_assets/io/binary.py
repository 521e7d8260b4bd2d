"""Binary COPY encoding of a polars frame, vectorised with numpy (no per-row Python).

Why: PostgreSQL parses binary COPY input much more cheaply than CSV (measured 1.26x faster
end-to-end for 1,000,000 rows of the benchmark shape, see README). Binary input must match each
column's type exactly (an 8-byte integer cannot go into an ``integer`` column), so
:func:`supports` accepts a frame only when every column's dtype is the natural encoding of its
target column's type; anything else (and every type not listed) takes the CSV route, which lets
PostgreSQL parse and cast text.

Encoded: smallint/integer/bigint, real/double precision (NaN and infinity included), boolean,
date, timestamp/timestamptz, numeric (from polars Decimal up to 18 significant digits) and text.
A tuple is ``int16 field count`` then per field ``int32 length`` (-1 for NULL) and the bytes; the
stream starts with the 19-byte header and ends with ``int16 -1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from etl_assets.io.typemap import PgType

if TYPE_CHECKING:  # loaded where a frame is built, not when this module is imported
    import numpy as np
    import polars as pl

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
_EPOCH_2000_US = 946_684_800_000_000
_EPOCH_2000_DAYS = 10_957
#: PostgreSQL type -> (the polars dtype, by name, that encodes it as is; its big-endian numpy code).
_FIXED = {
    "smallint": ("Int16", ">i2"),
    "integer": ("Int32", ">i4"),
    "bigint": ("Int64", ">i8"),
    "real": ("Float32", ">f4"),
    "double precision": ("Float64", ">f8"),
}


def _column_ok(dtype: pl.DataType, pg: PgType) -> bool:
    import polars as pl

    if pg.dims:
        return False
    base = pg.base
    if base in _FIXED:
        return dtype == getattr(pl, _FIXED[base][0])
    if base == "boolean":
        return dtype == pl.Boolean
    if base == "date":
        return dtype == pl.Date
    if base in ("timestamp", "timestamptz"):
        # nanoseconds go through CSV, where PostgreSQL rounds them to microseconds (binary would truncate)
        return (
            isinstance(dtype, pl.Datetime)
            and dtype.time_unit in ("us", "ms")
            and (dtype.time_zone is None) == (base == "timestamp")
        )
    if base == "numeric":
        if not isinstance(dtype, pl.Decimal):
            return False
        scale = dtype.scale or 0
        return dtype.precision + (-scale) % 4 <= 18  # the padded scaled value fits an int64
    if base == "text":
        return dtype == pl.String
    return False


def supports(frame: pl.DataFrame, targets: Mapping[str, PgType] | None) -> bool:
    """Whether every column of ``frame`` can be sent in binary to its target column type."""
    if not targets or frame.width == 0:
        return False
    return all(name in targets and _column_ok(dtype, targets[name]) for name, dtype in frame.schema.items())


def _bytes(values: np.ndarray, width: int) -> np.ndarray:
    import numpy as np

    return values.view(np.uint8).reshape(-1, width)


def _numeric(series: pl.Series) -> tuple[np.ndarray, int]:
    """PostgreSQL's numeric wire format (base-10000 digits), one fixed-width row per value."""
    import numpy as np
    import polars as pl

    dtype = series.dtype
    scale = dtype.scale or 0
    n = series.len()
    pad = (-scale) % 4
    scaled = series.to_physical().fill_null(0).cast(pl.Int64).to_numpy() * (10**pad)
    negative = scaled < 0
    rest = np.abs(scaled)
    frac_groups = (scale + pad) // 4
    int_groups = max(1, -(-(dtype.precision - scale) // 4))
    count = int_groups + frac_groups
    digits = np.empty((n, count), dtype=">i2")
    for g in range(count - 1, -1, -1):
        digits[:, g] = rest % 10000
        rest //= 10000
    head = np.empty((n, 4), dtype=">i2")
    head[:, 0] = count
    head[:, 1] = int_groups - 1  # weight of the first digit
    head[:, 2] = np.where(negative, 0x4000, 0)
    head[:, 3] = scale
    data = np.concatenate([_bytes(head, 8), _bytes(digits, 2 * count)], axis=1)
    return data, 8 + 2 * count


def encode(piece: pl.DataFrame, targets: Mapping[str, PgType]) -> bytes:
    """The tuples of ``piece`` in binary COPY format (no header or trailer)."""
    import numpy as np
    import polars as pl
    import pyarrow as pa

    n = piece.height
    fields: list[tuple] = []
    for name in piece.columns:
        series = piece.get_column(name)
        valid = ~series.is_null().to_numpy()
        base = targets[name].base
        if base in _FIXED:
            code = _FIXED[base][1]
            width = int(code[-1])
            data = _bytes(series.fill_null(0).to_numpy().astype(code), width)
        elif base == "boolean":
            width, data = 1, series.fill_null(False).to_numpy().astype(np.uint8).reshape(-1, 1)
        elif base == "date":
            days = series.cast(pl.Int32).fill_null(0).to_numpy().astype(np.int64) - _EPOCH_2000_DAYS
            width, data = 4, _bytes(days.astype(">i4"), 4)
        elif base in ("timestamp", "timestamptz"):
            micros = series.dt.epoch("us").fill_null(0).to_numpy() - _EPOCH_2000_US
            width, data = 8, _bytes(micros.astype(">i8"), 8)
        elif base == "numeric":
            data, width = _numeric(series)
        else:  # text: lengths and bytes straight from the Arrow buffers
            arr = series.to_arrow()
            if isinstance(arr, pa.ChunkedArray):
                arr = arr.combine_chunks()
            arr = arr.cast(pa.large_string())
            buffers = arr.buffers()
            offsets = np.frombuffer(buffers[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
            raw = (
                np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
            )
            fields.append(("var", valid, np.where(valid, np.diff(offsets), 0), offsets, raw))
            continue
        fields.append(("fixed", valid, np.where(valid, width, 0), width, data))
    sizes = np.full(n, 2, dtype=np.int64)
    for field in fields:
        sizes += 4 + field[2]
    starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    out = np.empty(int(starts[-1]), dtype=np.uint8)
    pos = starts[:-1].copy()
    out[pos[:, None] + np.arange(2)] = _bytes(np.full(n, len(fields), dtype=">i2"), 2)
    pos += 2
    for kind, valid, lengths, extra, data in fields:
        wire_len = np.where(valid, lengths, -1).astype(">i4")
        out[pos[:, None] + np.arange(4)] = _bytes(wire_len, 4)
        pos += 4
        if kind == "fixed":
            at = pos[valid]
            out[at[:, None] + np.arange(extra)] = data[valid]
        else:
            total = int(lengths.sum())
            if total:
                rows = np.repeat(np.arange(n), lengths)
                within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
                out[pos[rows] + within] = data[extra[:-1][rows] + within]
        pos += lengths
    return out.tobytes()
