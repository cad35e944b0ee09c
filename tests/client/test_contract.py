"""The client's contract without I/O: each reply as a value or its typed error, each target
parsed or refused, each id kept to one path segment."""

from __future__ import annotations

import json
from typing import Any

import pytest

from broker.client.contract import _interpret, _outcome_call, _redeem_call, _Target
from broker.client.errors import (
    BadRequest,
    BrokerClientError,
    BrokerUnavailable,
    Denied,
    PendingApproval,
    RateLimited,
)


def _body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


REFUSED = [
    pytest.param(503, None, _body({"detail": "vault sealed"}), BrokerUnavailable, id="503"),
    pytest.param(500, None, b"<html>", BrokerUnavailable, id="5xx, not JSON"),
    pytest.param(
        429, "3", _body({"outcome": "deny", "reason": "rate_limited"}), RateLimited, id="429"
    ),
    pytest.param(
        202,
        None,
        _body({"outcome": "pending_approval", "approval_id": "apr_1", "reason": "over_100"}),
        PendingApproval,
        id="202 pending",
    ),
    pytest.param(
        403, None, _body({"outcome": "deny", "reason": "unknown_action"}), Denied, id="403 deny"
    ),
    pytest.param(400, None, _body({"error": "invalid_request"}), BadRequest, id="400"),
    pytest.param(200, None, b"[1, 2]", BrokerClientError, id="2xx, not an object"),
    pytest.param(302, None, _body({}), BrokerClientError, id="unexpected 3xx"),
]


@pytest.mark.parametrize(("status", "retry_after", "body", "error"), REFUSED)
def test_each_refusal_is_its_typed_error(
    status: int, retry_after: str | None, body: bytes, error: type[Exception]
) -> None:
    """Every non-2xx reply (and a 2xx that is not an object) raises exactly its error class."""
    with pytest.raises(error) as raised:
        _interpret(status, retry_after, body)
    assert type(raised.value) is error


def test_retry_after_header_wins_over_the_body_and_is_never_negative() -> None:
    """Retry-After comes from the header when present, else the body; below zero is zero."""
    with pytest.raises(RateLimited) as header:
        _interpret(429, "2.5", _body({"outcome": "deny", "retry_after": 9}))
    with pytest.raises(BrokerUnavailable) as negative:
        _interpret(503, "-4", b"")
    assert (header.value.retry_after, negative.value.retry_after) == (2.5, 0.0)


def test_a_2xx_object_is_returned_as_it_came() -> None:
    """A 2xx JSON object is the value, unchanged."""
    assert _interpret(200, None, _body({"outcome": "allow", "x": 1})) == {
        "outcome": "allow",
        "x": 1,
    }


TARGETS = [
    pytest.param("/run/broker.sock", ("/run/broker.sock", "unix:/run/broker.sock"), id="path"),
    pytest.param("unix:///run/b.sock", ("/run/b.sock", "unix:/run/b.sock"), id="unix://"),
    pytest.param("http://127.0.0.1:8080", (None, "http://127.0.0.1:8080"), id="http"),
    pytest.param("http://[::1]:9", (None, "http://[::1]:9"), id="ipv6"),
]


@pytest.mark.parametrize(("target", "expected"), TARGETS)
def test_targets_parse_to_a_socket_or_a_loopback_url(
    target: str, expected: tuple[str | None, str]
) -> None:
    """A socket path, unix:// or http:// target: where the client connects."""
    parsed = _Target.parse(target)
    assert (parsed.socket_path, parsed.where) == expected


@pytest.mark.parametrize("target", ["", "unix://", "https://broker:443", "http://:80"])
def test_bad_targets_are_refused(target: str) -> None:
    """An empty target, another scheme or a URL without a host is an error, never a guess."""
    with pytest.raises(ValueError, match="broker"):
        _Target.parse(target)


@pytest.mark.parametrize("bad", ["", ".", ".."])
def test_ids_that_are_not_one_segment_are_refused(bad: str) -> None:
    """An empty id or a dot segment cannot name an approval route."""
    with pytest.raises(ValueError, match="not an id"):
        _redeem_call(bad, None)


def test_ids_are_quoted_into_one_segment_and_statuses_checked() -> None:
    """A slash in an id stays inside its segment; an unknown outcome status is refused."""
    assert _redeem_call("a/../b", None).path == "/v1/approvals/a%2F..%2Fb/redeem"
    with pytest.raises(ValueError, match="status must be one of"):
        _outcome_call("jti-1", "fine", None)
