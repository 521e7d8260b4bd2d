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
    import pyarrow as pa

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


def _wire(valid: np.ndarray, rows: np.ndarray) -> pa.Array:
    """Fixed-width fields as one Arrow binary array: per row its 4 length bytes and value, or only
    the length bytes (``-1``) for a NULL. ``rows`` is the ``n x (4 + width)`` matrix of both."""
    import numpy as np
    import pyarrow as pa

    n, full = rows.shape
    if valid.all():
        return pa.FixedSizeBinaryArray.from_buffers(pa.binary(full), n, [None, pa.py_buffer(rows)]).cast(
            pa.large_binary()
        )
    lengths = np.where(valid, full, 4)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = rows[np.arange(full) < lengths[:, None]]  # row-major: each row's first `length` bytes
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _field(series: pl.Series, base: str) -> list[pa.Array]:
    """One column's wire fields (length and value per row) as Arrow binary arrays without NULLs."""
    import numpy as np
    import polars as pl
    import pyarrow as pa
    import pyarrow.compute as pc

    n = series.len()
    valid = ~series.is_null().to_numpy()
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
    else:  # text: a length field, then the bytes straight from the Arrow buffers (NULL: none)
        arr = series.to_arrow()
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        arr = arr.cast(pa.large_string())
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
        heads = np.where(valid, np.diff(offsets), -1).astype(">i4")
        head = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4), n, [None, pa.py_buffer(heads)])
        body = pc.fill_null(arr.cast(pa.large_binary()), pa.scalar(b"", pa.large_binary()))
        return [head.cast(pa.large_binary()), body]
    rows = np.empty((n, 4 + width), dtype=np.uint8)
    rows[:, :4] = _bytes(np.where(valid, width, -1).astype(">i4"), 4)
    rows[:, 4:] = data
    return [_wire(valid, rows)]


def encode(piece: pl.DataFrame, targets: Mapping[str, PgType]) -> bytes:
    """The tuples of ``piece`` in binary COPY format (no header or trailer).

    Each column is encoded whole (numpy, vectorised) into an Arrow binary array of its wire fields;
    Arrow's element-wise binary join then lays the rows out in one native pass (measured ~3x
    faster than scattering each column into the output with numpy fancy indexing).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = piece.height
    if n == 0:
        return b""
    count = np.full(n, piece.width, dtype=">i2")
    parts = [pa.FixedSizeBinaryArray.from_buffers(pa.binary(2), n, [None, pa.py_buffer(count)])]
    parts[0] = parts[0].cast(pa.large_binary())
    for name in piece.columns:
        parts.extend(_field(piece.get_column(name), targets[name].base))
    rows = pc.binary_join_element_wise(*parts, pa.scalar(b"", pa.large_binary()))
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64)[rows.offset : rows.offset + n + 1]
    return rows.buffers()[2][int(offsets[0]) : int(offsets[-1])].to_pybytes()
