"""broker.verify's status-list reader: trusts only the issuer's lists, checks their signature,
subject and type, reuses them for their ttl, and fails closed with a clear code."""

from __future__ import annotations

import json
import urllib.error
from collections.abc import Callable
from email.message import Message
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from broker.core.claims import StatusRef
from broker.core.errors import VerificationError
from broker.core.jwk import public_jwk, sign_raw
from broker.core.statuslist import encode_bits
from broker.status_client import StatusListClient
from tests.tokenfactory import b64url, segment

ISSUER = "http://127.0.0.1:8400"
URI = f"{ISSUER}/statuslists/agent-a/0a1b"
KEY = ec.generate_private_key(ec.SECP256R1())
NOW = 1_900_000_000.0


def status_token(revoked: list[int], size: int = 64, key: Any = KEY, **changes: Any) -> str:
    header = {"alg": "ES256", "kid": "status-list-1", "typ": "statuslist+jwt"} | changes.pop(
        "header", {}
    )
    claims = {
        "iss": ISSUER, "sub": URI, "iat": int(NOW), "exp": int(NOW) + 300, "ttl": 1,
        "status_list": {"bits": 1, "lst": encode_bits(revoked, size)},
    } | changes  # fmt: skip
    signing_input = f"{segment(header)}.{segment(claims)}"
    return f"{signing_input}.{b64url(sign_raw(key, signing_input.encode()))}"


class Keys:
    """Stands in for PyJWKClient over the issuer's JWKS."""

    def get_signing_key_from_jwt(self, token: str) -> jwt.PyJWK:
        return jwt.PyJWK(public_jwk(KEY.public_key(), kid="status-list-1", alg="ES256"))


class Fetch:
    def __init__(self, body: str | Callable[[], str]) -> None:
        self.body = body
        self.calls = 0

    def __call__(self, url: str) -> str:
        self.calls += 1
        return self.body() if callable(self.body) else self.body


def client(fetch: Fetch, clock: Callable[[], float] = lambda: NOW) -> StatusListClient:
    return StatusListClient(ISSUER, fetch=fetch, jwks=Keys(), clock=clock)  # type: ignore[arg-type]


def test_bits_say_revoked_or_not() -> None:
    """Index 5 is set, index 4 is not."""
    c = client(Fetch(status_token([5])))
    assert c.revoked(StatusRef(URI, 5)) is True
    assert c.revoked(StatusRef(URI, 4)) is False


def test_list_is_reused_for_its_ttl_then_fetched_again() -> None:
    """Within ttl (1 s) one fetch serves every check; after it, the list is fetched again."""
    now = [NOW]
    fetch = Fetch(status_token([]))
    c = client(fetch, lambda: now[0])
    c.revoked(StatusRef(URI, 1))
    c.revoked(StatusRef(URI, 2))
    assert fetch.calls == 1
    now[0] += 1.0
    c.revoked(StatusRef(URI, 1))
    assert fetch.calls == 2


def _http_404() -> str:
    raise urllib.error.HTTPError(URI, 404, "Not Found", Message(), None)


def _refused() -> str:
    raise ConnectionRefusedError("issuer down")


REFUSALS: list[tuple[str, StatusRef, Any, str]] = [
    ("index out of range", StatusRef(URI, 64), status_token([]), "status_index_out_of_range"),
    ("negative index", StatusRef(URI, -1), status_token([]), "status_index_out_of_range"),
    ("list at another host", StatusRef("http://evil.example/statuslists/a/1", 0), status_token([]), "untrusted_status"),
    ("issuer path outside /statuslists/", StatusRef(f"{ISSUER}/other/a", 0), status_token([]), "untrusted_status"),
    ("unknown list (404)", StatusRef(URI, 0), _http_404, "status_unknown"),
    ("issuer unreachable", StatusRef(URI, 0), _refused, "status_unavailable"),
    ("list for another uri", StatusRef(URI, 0), status_token([], sub=f"{ISSUER}/statuslists/a/ff"), "status_invalid"),
    ("wrong typ", StatusRef(URI, 0), status_token([], header={"typ": "JWT"}), "status_invalid"),
    ("signed by another key", StatusRef(URI, 0), status_token([], key=ec.generate_private_key(ec.SECP256R1())), "status_invalid"),
    ("expired list", StatusRef(URI, 0), status_token([], exp=int(NOW) - 3600), "status_invalid"),
    ("lst not base64", StatusRef(URI, 0), status_token([], status_list={"bits": 1, "lst": "%%"}), "status_invalid"),
    ("not a JWT", StatusRef(URI, 0), json.dumps({"status_list": {}}), "status_invalid"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("ref", "body", "code"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_doubt_fails_closed_with_a_clear_code(ref: StatusRef, body: Any, code: str) -> None:
    """Every way the bit cannot be known is a VerificationError with its own code."""
    with pytest.raises(VerificationError) as info:
        client(Fetch(body)).revoked(ref)
    assert info.value.code == code, info.value.detail
