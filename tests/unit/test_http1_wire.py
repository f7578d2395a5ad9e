"""The per-header-name helpers: what they answer, and that their memory stays bounded
whatever names the network sends."""

from __future__ import annotations

from gateway.http1.wire import HeaderNames, Memo


def test_a_memo_answers_like_its_function_and_keeps_at_most_size_results() -> None:
    calls: list[bytes] = []

    def upper(value: bytes) -> bytes:
        calls.append(value)
        return value.upper()

    memo = Memo(upper, 2)
    assert [memo.get(b"a"), memo.get(b"a"), memo.get(b"b")] == [b"A", b"A", b"B"]
    assert calls == [b"a", b"b"]  # the second b"a" was remembered
    assert [memo.get(b"c"), memo.get(b"c")] == [b"C", b"C"]
    assert calls == [b"a", b"b", b"c", b"c"]  # full: computed each time, not kept
    assert memo.get(b"a") == b"A" and calls[-1] == b"c"


def test_a_false_result_is_remembered_too() -> None:
    calls: list[bytes] = []

    def empty(value: bytes) -> bool:
        calls.append(value)
        return not value

    memo = Memo(empty, 8)
    assert [memo.get(b"x"), memo.get(b"x")] == [False, False]
    assert calls == [b"x"]


def test_header_names_fold_as_backends_read_them() -> None:
    names = HeaderNames()
    assert names.folded(b"X_Gateway_User_Id") == "x-gateway-user-id"
    assert names.folded(b"Content-Length") == "content-length"
    # Hop-by-hop names go whatever a Connection header says: they are not listed.
    assert names.listed(b"Keep-Alive, X_Secret ,") == frozenset({"x-secret"})
    assert names.listed(b"keep-alive") == names.listed(b"TE, Upgrade") == frozenset()


def test_each_gateway_has_its_own_memos() -> None:
    """No module keeps state: two gateways in one process (tests, embedding) share none."""
    first, second = HeaderNames(), HeaderNames()
    first.folded(b"X-One")
    assert first._folded._known and not second._folded._known
