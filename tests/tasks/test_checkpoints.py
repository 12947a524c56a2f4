"""tasks/checkpoints.py: a chunk's last key survives the trip through its checkpoint row exactly.

A resumed copy binds the decoded key in `WHERE key > %s`; a key that came back as another type or
value (an int as a float, a Decimal without its scale, a datetime without microseconds) would skip
or repeat rows. Pure functions, no database.
"""
from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from tasks.checkpoints import decode_key, encode_key

KEYS = [
    (1,),
    (2**63 - 1, -(2**63)),  # BIGINT bounds: beyond a float's exact range
    (Decimal("12.30"), Decimal("-0.000001")),
    (0.1, 1e300),
    (dt.datetime(2024, 3, 10, 2, 30, 0, 123456), dt.date(1, 1, 1)),
    (dt.timedelta(hours=-838, minutes=-59, seconds=-59),),
    (b"\x00\xff\x80 bytes", "text with ünïcödé, 'quotes', \\ and \t tab"),
    (True, None, "", 0),
]


@pytest.mark.parametrize("key", KEYS, ids=range(len(KEYS)))
def test_every_key_type_round_trips_with_its_type(key) -> None:  # noqa: ANN001
    back = decode_key(encode_key(key))
    assert back == key
    assert [type(v) for v in back] == [type(v) for v in key]


def test_decimal_keeps_its_scale() -> None:
    assert str(decode_key(encode_key((Decimal("12.30"),)))[0]) == "12.30"


def test_no_key_is_no_text() -> None:
    assert encode_key(None) is None and decode_key(None) is None


def test_text_is_json_with_the_type_of_each_value() -> None:
    assert json.loads(encode_key((7, "a"))) == [["i", "7"], ["s", "a"]]


def test_memoryview_and_bytearray_come_back_as_bytes() -> None:
    assert decode_key(encode_key((bytearray(b"ab"), memoryview(b"cd")))) == (b"ab", b"cd")
