"""``broker issuer`` over HTTP: discovery, the JWKS with caching headers, and clear JSON
answers (never a 500) for unknown paths, wrong methods and an unreachable Vault."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization

from broker.errors import BackendUnavailable
from broker.issuer import IssuerState, build_app
from broker.issuer_keys import JWKS_MAX_AGE
from broker.jwk import merge_published
from broker.signing import ActionTokenSigner, PublishedKey
from tests.tokenfactory import AGENT, FakeCA

NOW = 1_900_000_000.0
ISSUER = "http://127.0.0.1:8400"


class Source:
    """Stands in for Vault: counts reads, can fail like an unreachable Vault."""

    def __init__(self, ca: FakeCA) -> None:
        out: list[PublishedKey] = []
        ActionTokenSigner(AGENT, ca.issue, publish=out.extend).rotate(1)
        self.docs = {AGENT: merge_published({}, [k.to_json() for k in out], NOW)}
        self.pem = ca.cert.public_bytes(serialization.Encoding.PEM).decode()
        self.reads = 0
        self.down = False

    async def __call__(self) -> tuple[dict[str, dict[str, Any]], int, str]:
        self.reads += 1
        if self.down:
            raise BackendUnavailable("Vault is unreachable at http://127.0.0.1:1 (test)")
        return self.docs, 0, self.pem


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def source() -> Source:
    return Source(FakeCA(clock=lambda: NOW))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def client(source: Source, clock: Clock) -> AsyncIterator[TestClient[Any, Any]]:
    state = IssuerState(ISSUER, source, refresh=1.0, clock=clock)
    async with TestClient(TestServer(build_app(state))) as c:
        yield c


@pytest.mark.parametrize(
    "path", ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"]
)
async def test_discovery_documents(client: TestClient[Any, Any], path: str) -> None:
    """Both metadata forms name the issuer and its jwks_uri, and may be cached."""
    resp = await client.get(path)
    assert resp.status == 200
    doc = await resp.json()
    assert (doc["issuer"], doc["jwks_uri"]) == (ISSUER, f"{ISSUER}/.well-known/jwks.json")
    assert "max-age=" in resp.headers["Cache-Control"]


async def test_jwks_has_the_keys_and_caching_headers(client: TestClient[Any, Any]) -> None:
    """The JWKS lists both keys with Cache-Control max-age and an ETag; a revalidation is 304."""
    resp = await client.get("/.well-known/jwks.json")
    assert resp.status == 200
    keys = (await resp.json())["keys"]
    assert sorted(k["alg"] for k in keys) == ["ES256", "EdDSA"]
    assert resp.headers["Cache-Control"] == f"public, max-age={JWKS_MAX_AGE}"
    again = await client.get(
        "/.well-known/jwks.json", headers={"If-None-Match": resp.headers["ETag"]}
    )
    assert again.status == 304


async def test_vault_is_read_at_most_once_per_refresh(
    client: TestClient[Any, Any], source: Source, clock: Clock
) -> None:
    """Many requests within the refresh interval cost one Vault read; after it, one more."""
    for _ in range(5):
        assert (await client.get("/.well-known/jwks.json")).status == 200
    assert source.reads == 1
    clock.now += 1.0
    await client.get("/.well-known/jwks.json")
    assert source.reads == 2


BAD = [
    ("GET", "/.well-known/jwks", 404, "not_found"),
    ("GET", "/.well-known/jwks.json/extra", 404, "not_found"),
    ("GET", "/", 404, "not_found"),
    ("GET", "/statuslists/../../etc/passwd", 404, "not_found"),
    ("POST", "/.well-known/jwks.json", 405, "method_not_allowed"),
    ("DELETE", "/.well-known/openid-configuration", 405, "method_not_allowed"),
]


@pytest.mark.parametrize(("method", "path", "status", "code"), BAD)
async def test_bad_requests_get_clear_json_answers(
    client: TestClient[Any, Any], method: str, path: str, status: int, code: str
) -> None:
    """Unknown paths and wrong methods: JSON with a stable code, never a 500."""
    resp = await client.request(method, path)
    assert resp.status == status
    body = await resp.json()
    assert body["error"] == code
    assert body["detail"]


async def test_vault_down_is_503_and_recovers(
    client: TestClient[Any, Any], source: Source, clock: Clock
) -> None:
    """With Vault unreachable the JWKS and /readyz answer 503 backend_unavailable; then recover."""
    source.down = True
    for path in ("/.well-known/jwks.json", "/readyz"):
        resp = await client.get(path)
        assert resp.status == 503
        assert (await resp.json())["error"] == "backend_unavailable"
    source.down = False
    clock.now += 1.0
    assert (await client.get("/.well-known/jwks.json")).status == 200
