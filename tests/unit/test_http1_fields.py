from __future__ import annotations

from gateway.http1.fields import Fields


def test_fields_are_found_by_lower_case_name_whatever_their_spelling() -> None:
    fields = Fields([(b"Host", b"api.example"), (b"X-API-KEY", b"k"), (b"authorization", b"t")])
    assert fields.get(b"host") == "api.example"
    assert fields.get(b"x-api-key") == "k"
    assert fields.get(b"authorization") == "t"
    assert fields.has(b"x-api-key") and not fields.has(b"cookie")
    assert fields.get(b"cookie") is None and fields.getall(b"cookie") == []


def test_repeated_fields_keep_every_value_in_order() -> None:
    fields = Fields([(b"Connection", b"keep-alive"), (b"Accept", b"*/*"), (b"connection", b"x")])
    assert fields.getall(b"connection") == ["keep-alive", "x"]
    assert fields.get(b"connection") == "keep-alive"  # the first


def test_values_that_are_not_utf8_survive_as_surrogates() -> None:
    fields = Fields([(b"X-Request-Id", b"caf\xc3\xa9"), (b"X-Note", b"\xff")])
    assert fields.get(b"x-request-id") == "café"
    assert fields.get(b"x-note") == "\udcff"
    assert fields.get(b"x-note").encode("utf-8", "surrogateescape") == b"\xff"  # type: ignore[union-attr]
