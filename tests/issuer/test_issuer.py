"""``broker issuer`` over HTTP: discovery, the JWKS with caching headers, and clear JSON
answers (never a 500) for unknown paths, wrong methods and an unreachable Vault."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.core.errors import BackendUnavailable
from broker.core.jwk import merge_published, public_jwk, sign_raw
from broker.core.statuslist import bit_at, decode_bits, encode_bits
from broker.issuer.app import IssuerState, build_app
from broker.issuer.keys import JWKS_MAX_AGE
from broker.sidecar.signing import ActionTokenSigner, PublishedKey
from broker.vault.jwks import IssuerView
from tests.tokenfactory import AGENT, FakeCA

NOW = 1_900_000_000.0
ISSUER = "http://127.0.0.1:8400"
STATUS_KEY = ec.generate_private_key(ec.SECP256R1())
STATUS_PEM = (
    STATUS_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
LIST_URI = f"{ISSUER}/statuslists/{AGENT}/0a1b"
LIST = {
    "uri": LIST_URI,
    "size": 64,
    "gen": 1,
    "not_after": int(NOW) + 900,
    "lst": encode_bits([3], 64),
}


async def sign(data: bytes, version: str) -> bytes:
    assert version == "1"
    return sign_raw(STATUS_KEY, data)


class Source:
    """Stands in for Vault: counts reads, can fail like an unreachable Vault."""

    def __init__(self, ca: FakeCA) -> None:
        out: list[PublishedKey] = []
        ActionTokenSigner(AGENT, ca.issue, publish=out.extend).rotate(1)
        self.docs = {AGENT: merge_published({}, [k.to_json() for k in out], NOW)}
        self.pem = ca.cert.public_bytes(serialization.Encoding.PEM).decode()
        self.reads = 0
        self.down = False
        self.killed: set[str] = set()
        self.min_generation = 0
        self.status_keys = {"1": STATUS_PEM}

    async def __call__(self) -> IssuerView:
        self.reads += 1
        if self.down:
            raise BackendUnavailable("Vault is unreachable at http://127.0.0.1:1 (test)")
        return IssuerView(
            keys=self.docs,
            min_generation=self.min_generation,
            ca_pem=self.pem,
            status={AGENT: {"lists": {"0a1b": LIST}}},
            killed=frozenset(self.killed),
            status_keys=self.status_keys,
        )


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
    state = IssuerState(ISSUER, source, sign=sign, refresh=1.0, clock=clock)
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
    assert sorted(k["alg"] for k in keys) == ["ES256", "ES256", "EdDSA"]
    assert "status-list-1" in {k["kid"] for k in keys}
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
    ("GET", "/statuslists/agent-a/ffff", 404, "not_found"),
    ("GET", "/statuslists/agent-a/NOT-HEX", 404, "not_found"),
    ("GET", "/statuslists/no-such-agent/0a1b", 404, "not_found"),
    ("GET", "/statuslists/agent-a", 404, "not_found"),
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


async def _status(client: TestClient[Any, Any]) -> tuple[dict[str, Any], bytes]:
    resp = await client.get("/statuslists/agent-a/0a1b")
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/statuslist+jwt"
    assert resp.headers["Cache-Control"] == "public, max-age=1"
    token = await resp.text()
    jwk = public_jwk(STATUS_KEY.public_key(), kid="status-list-1", alg="ES256")
    claims = jwt.decode(
        token, jwt.PyJWK(jwk), algorithms=["ES256"], issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False},
    )  # fmt: skip
    assert jwt.get_unverified_header(token)["typ"] == "statuslist+jwt"
    return claims, decode_bits(claims["status_list"]["lst"])


async def test_status_list_is_a_signed_token_of_the_sidecars_bits(
    client: TestClient[Any, Any],
) -> None:
    """The list is a statuslist+jwt signed by the status key in the JWKS, sub = its URL,
    ttl 1 s, carrying the bits the sidecar published."""
    claims, bits = await _status(client)
    assert (claims["sub"], claims["ttl"]) == (LIST_URI, 1)
    assert [bit_at(bits, i) for i in range(5)] == [0, 0, 0, 1, 0]


@pytest.mark.parametrize("how", ["killed", "generation revoked"])
async def test_issuer_sets_every_bit_without_the_sidecar(
    client: TestClient[Any, Any], source: Source, clock: Clock, how: str
) -> None:
    """A killed agent, or a revoked key generation: every token of the list is invalid, even
    if the sidecar that minted them is gone."""
    if how == "killed":
        source.killed.add(AGENT)
    else:
        source.min_generation = 2
    _, bits = await _status(client)
    assert all(bit_at(bits, i) for i in range(64))


async def test_no_status_key_is_a_clear_503(client: TestClient[Any, Any], source: Source) -> None:
    """Without the transit key (bootstrap not run) the list is 503, saying what to do."""
    source.status_keys = {}
    resp = await client.get("/statuslists/agent-a/0a1b")
    assert resp.status == 503
    assert "broker bootstrap" in (await resp.json())["detail"]


@pytest.mark.parametrize("what", ["ca_pem", "status_key"])
async def test_garbage_from_vault_is_a_503_not_a_500(
    client: TestClient[Any, Any], source: Source, what: str
) -> None:
    """A CA or status key that does not parse (a raw write in Vault) is 503, never a 500."""
    if what == "ca_pem":
        source.pem = "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n"
    else:
        source.status_keys = {
            "1": "-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n"
        }
    resp = await client.get("/.well-known/jwks.json")
    assert resp.status == 503
    assert (await resp.json())["error"] == "backend_unavailable"
