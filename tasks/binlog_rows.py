"""Key columns out of a row event's images, without decoding the other columns.

Binlog mode takes only the key values from the log (tasks/binlog_reader.py); every other value is
re-read by key from the source. mysql-replication's `event.rows` decodes every column of every row
image in Python (dates into datetime objects, strings through their charset, JSON, decimals), which
was most of the capture's time on a wide table. `event_keys` reads the event's remaining body once
and walks each image by byte size, decoding only the key columns, the same way the library decodes
them (so the keys it returns are the values `event.rows` gave for those columns).

A layout that holds a column type it does not know the size of (or a MySQL partial JSON update)
returns None before anything is read, and the caller falls back to `event.rows`.
"""
from __future__ import annotations

import datetime as dt
import decimal
import struct
from typing import Any, Callable

from pymysqlreplication.constants import BINLOG, FIELD_TYPE
from pymysqlreplication.row_event import RowsEvent

_FIXED = {FIELD_TYPE.TINY: 1, FIELD_TYPE.SHORT: 2, FIELD_TYPE.INT24: 3, FIELD_TYPE.LONG: 4, FIELD_TYPE.LONGLONG: 8,
          FIELD_TYPE.FLOAT: 4, FIELD_TYPE.DOUBLE: 8, FIELD_TYPE.YEAR: 1, FIELD_TYPE.DATE: 3, FIELD_TYPE.TIME: 3,
          FIELD_TYPE.DATETIME: 8, FIELD_TYPE.TIMESTAMP: 4}
_FSP_BASE = {FIELD_TYPE.DATETIME2: 5, FIELD_TYPE.TIME2: 3, FIELD_TYPE.TIMESTAMP2: 4}
_LENGTH_PREFIXED = (FIELD_TYPE.BLOB, FIELD_TYPE.GEOMETRY, FIELD_TYPE.JSON)
_COMPRESSED = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4]  # DECIMAL: bytes for 0..8 leftover digits
_INT_FORMATS = {(FIELD_TYPE.TINY, False): "<b", (FIELD_TYPE.TINY, True): "<B", (FIELD_TYPE.SHORT, False): "<h",
                (FIELD_TYPE.SHORT, True): "<H", (FIELD_TYPE.LONG, False): "<i", (FIELD_TYPE.LONG, True): "<I",
                (FIELD_TYPE.LONGLONG, False): "<q", (FIELD_TYPE.LONGLONG, True): "<Q"}
_ROW_EVENTS = (BINLOG.WRITE_ROWS_EVENT_V1, BINLOG.WRITE_ROWS_EVENT_V2, BINLOG.UPDATE_ROWS_EVENT_V1,
               BINLOG.UPDATE_ROWS_EVENT_V2, BINLOG.DELETE_ROWS_EVENT_V1, BINLOG.DELETE_ROWS_EVENT_V2)

# A column's layout: ("f", size) fixed, ("v", prefix bytes) length-prefixed; a key column also
# carries its decoder: (bytes, offset, length) -> value.
Decoder = Callable[[bytes, int, int], Any]


def _decimal_size(precision: int, decimals: int) -> int:
    intg = precision - decimals
    return (intg // 9) * 4 + _COMPRESSED[intg % 9] + (decimals // 9) * 4 + _COMPRESSED[decimals % 9]


def _size(col: Any) -> tuple[str, int] | None:
    t = col.type
    if t in _FIXED:
        return "f", _FIXED[t]
    if t in _FSP_BASE:
        return "f", _FSP_BASE[t] + (col.fsp + 1) // 2
    if t in (FIELD_TYPE.VARCHAR, FIELD_TYPE.STRING):
        return "v", 2 if col.max_length > 255 else 1
    if t in _LENGTH_PREFIXED:
        return "v", col.length_size
    if t == FIELD_TYPE.NEWDECIMAL:
        return "f", _decimal_size(col.precision, col.decimals)
    if t in (FIELD_TYPE.ENUM, FIELD_TYPE.SET):
        return "f", col.size
    if t == FIELD_TYPE.BIT:
        return "f", col.bytes
    return None


def _decode_decimal(col: Any) -> Decoder:
    """The library's DECIMAL reading (row_event.__read_new_decimal), on a byte slice (its big-endian
    parts read signed, as the library's read_int_be_by_size)."""
    intg = col.precision - col.decimals
    ui, uf = intg // 9, col.decimals // 9
    ci, cf = intg - ui * 9, col.decimals - uf * 9

    def dec(b: bytes, o: int, n: int) -> decimal.Decimal:
        raw = bytearray(b[o:o + n])
        negative = not raw[0] & 0x80
        raw[0] ^= 0x80
        mask = -1 if negative else 0
        res, p = "-" if negative else "", 0
        size = _COMPRESSED[ci]
        if size:
            res += str(int.from_bytes(raw[p:p + size], "big", signed=True) ^ mask)
            p += size
        for _ in range(ui):
            res += f"{struct.unpack_from('>i', raw, p)[0] ^ mask:09d}"
            p += 4
        res += "."
        for _ in range(uf):
            res += f"{struct.unpack_from('>i', raw, p)[0] ^ mask:09d}"
            p += 4
        size = _COMPRESSED[cf]
        if size:
            res += f"{int.from_bytes(raw[p:p + size], 'big', signed=True) ^ mask:0{cf}d}"
        return decimal.Decimal(res)
    return dec


def _decode_string(col: Any, errors: str) -> Decoder:
    """The library's string reading (row_event.__read_string): the column's charset, else the bytes."""
    encoding = RowsEvent.charset_to_encoding(col.character_set_name) if col.character_set_name is not None else None

    def text(b: bytes, o: int, n: int) -> Any:
        raw = b[o:o + n]
        if encoding is None:
            return raw.decode(errors=errors)
        try:
            return raw.decode(encoding, errors)
        except LookupError:  # 'binary' and charsets Python does not know: the bytes, as the library
            return raw
    return text


def _decode_date(b: bytes, o: int, n: int) -> dt.date | None:
    v = int.from_bytes(b[o:o + 3], "little")
    year, month, day = (v >> 9) & 0x7FFF, (v >> 5) & 0xF, v & 0x1F
    return None if not (v and year and month and day) else dt.date(year, month, day)


def _decode_datetime(b: bytes, o: int, n: int) -> dt.datetime | None:
    v = struct.unpack_from("<Q", b, o)[0]
    if v == 0:
        return None
    d, t = v // 1000000, v % 1000000
    year, month, day = d // 10000, (d % 10000) // 100, d % 100
    if not (year and month and day):
        return None
    return dt.datetime(year, month, day, t // 10000, (t % 10000) // 100, t % 100)


def _decode_datetime2(col: Any) -> Decoder:
    fsp = col.fsp

    def dtm(b: bytes, o: int, n: int) -> dt.datetime | None:
        v = int.from_bytes(b[o:o + 5], "big")
        ym = (v >> 22) & 0x1FFFF
        try:
            t = dt.datetime(ym // 13, ym % 13, (v >> 17) & 0x1F, (v >> 12) & 0x1F, (v >> 6) & 0x3F, v & 0x3F)
        except ValueError:
            return None
        if n > 5:
            us = int.from_bytes(b[o + 5:o + n], "big")
            if fsp % 2:
                us //= 10
            us *= 10 ** (6 - fsp)
            if us > 0:
                t = t.replace(microsecond=us)
        return t
    return dtm


def _decoder(col: Any, errors: str) -> Decoder | None:
    """How a key column is read; None for a type binlog mode does not take keys of
    (tasks/binlog_source.key_blocker keeps those tables off binlog mode)."""
    t = col.type
    fmt = _INT_FORMATS.get((t, bool(col.unsigned)))
    if fmt:
        return lambda b, o, n, fmt=fmt: struct.unpack_from(fmt, b, o)[0]
    if t == FIELD_TYPE.INT24:
        return lambda b, o, n, s=not col.unsigned: int.from_bytes(b[o:o + 3], "little", signed=s)
    if t == FIELD_TYPE.NEWDECIMAL:
        return _decode_decimal(col)
    if t in (FIELD_TYPE.VARCHAR, FIELD_TYPE.STRING):
        return _decode_string(col, errors)
    if t == FIELD_TYPE.DATE:
        return _decode_date
    if t == FIELD_TYPE.DATETIME:
        return _decode_datetime
    if t == FIELD_TYPE.DATETIME2:
        return _decode_datetime2(col)
    return None


def _layout(columns: list[Any], key: tuple[str, ...], errors: str) -> list[tuple[str, int, Decoder | None]] | None:
    names = [c.name for c in columns]
    if any(k not in names for k in key):
        return None
    out = []
    for c in columns:
        size = _size(c)
        if size is None:
            return None
        dec = None
        if c.name in key:
            dec = _decoder(c, errors)
            if dec is None:
                return None
        out.append((size[0], size[1], dec))
    return out


def _bitmap_bits(bitmap: bytes, n: int) -> list[bool]:
    return [bool(bitmap[i >> 3] & (1 << (i & 7))) for i in range(n)]


def _image(body: bytes, p: int, layout: list, present: list[bool], n_present: int,
           out: dict[int, Any]) -> int:
    """Walk one row image from `p`; key values into `out` by column index; the offset after it."""
    nulls = body[p:p + (n_present + 7) // 8]
    p += (n_present + 7) // 8
    j = 0  # index among the present columns (the null bitmap's)
    for i, (kind, size, dec) in enumerate(layout):
        if not present[i]:
            if dec is not None:
                out[i] = None
            continue
        if nulls[j >> 3] & (1 << (j & 7)):
            j += 1
            if dec is not None:
                out[i] = None
            continue
        j += 1
        if kind == "f":
            n = size
        else:
            n = int.from_bytes(body[p:p + size], "little")
            p += size
        if dec is not None:
            out[i] = dec(body, p, n)
        p += n
    return p


def event_keys(ev: Any, key: tuple[str, ...], *, errors: str = "ignore") -> list[tuple] | None:
    """Every row image's key values of a rows event (an UPDATE gives the before and the after image),
    in log order; None, with nothing read, when the layout is one this reader does not walk."""
    if ev.event_type not in _ROW_EVENTS or not getattr(ev, "complete", True):
        return None
    columns = ev.columns
    layout = _layout(columns, key, errors)
    if layout is None:
        return None
    index = {c.name: i for i, c in enumerate(columns)}
    order = [index[k] for k in key]
    n = len(columns)
    bitmaps = [ev.columns_present_bitmap]
    if ev.event_type in (BINLOG.UPDATE_ROWS_EVENT_V1, BINLOG.UPDATE_ROWS_EVENT_V2):
        bitmaps.append(ev.columns_present_bitmap2)
    images = [(_bitmap_bits(b, n), sum(_bitmap_bits(b, n))) for b in bitmaps]
    body = ev.packet.read(ev.event_size - ev.packet.read_bytes)
    keys: list[tuple] = []
    p, end = 0, len(body)
    found: dict[int, Any] = {}
    while p < end:
        for present, n_present in images:
            p = _image(body, p, layout, present, n_present, found)
            keys.append(tuple(found[i] for i in order))
    return keys
