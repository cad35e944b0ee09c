"""The action-token signer: a fresh in-memory key per rotation, certified through the
``issue_cert`` hook; tokens carry the certificate, never outlive it, and never show the
key or the token in a repr. Unit tests use the in-process CA; one integration test uses
the real OpenBao PKI."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import hvac
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from broker.core.claims import ALGORITHM, DEFAULT_ISSUER, ES256, TOKEN_TYPE
from broker.dev.devstack import DevServer
from broker.sidecar.signing import CERT_TTL, RENEW_WHEN_LEFT, ActionTokenSigner, MintedToken
from broker.vault.bootstrap import AgentGrant, bootstrap
from broker.vault.pki import sign_csr
from broker.vault.session import make_client
from tests.tokenfactory import AGENT, AUDIENCE, FakeCA, unb64url

CLAIMS: dict[str, Any] = {
    "audience": AUDIENCE,
    "action": "orders.refund",
    "accountable": "alice@example.com",
    "policy_version": "v7",
    "inputs_hash": "sha256:" + "1" * 64,
    "manifest_hash": "sha256:" + "0" * 64,
}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(1_900_000_000.0)


@pytest.fixture
def ca(clock: Clock) -> FakeCA:
    return FakeCA(clock=clock)


@pytest.fixture
def signer(ca: FakeCA) -> ActionTokenSigner:
    signer = ActionTokenSigner(AGENT, ca.issue)
    signer.rotate(generation=2)
    return signer


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, body, _ = token.split(".")
    return json.loads(unb64url(head)), json.loads(unb64url(body))


def _cert(header: dict[str, Any]) -> x509.Certificate:
    return x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0], validate=True))


def test_mint_before_rotate_is_refused(ca: FakeCA) -> None:
    """Without a certified key there is nothing to sign with."""
    signer = ActionTokenSigner(AGENT, ca.issue)
    assert signer.generation == -1
    with pytest.raises(RuntimeError, match="no certified EdDSA key"):
        signer.mint(0, 60, **CLAIMS)


def test_rotate_sends_a_csr_for_the_agent(ca: FakeCA) -> None:
    """rotate asks issue_cert for CERT_TTL with a CSR naming the agent, one per algorithm."""
    signer = ActionTokenSigner(AGENT, ca.issue)
    serial = signer.rotate(generation=5)
    assert ca.algs == ["EdDSA", "ES256"]
    for csr_pem, ttl in ca.issued:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        assert ttl == CERT_TTL
        assert csr.is_signature_valid
        assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == AGENT
    assert signer.generation == 5
    assert serial in repr(signer)


def test_each_rotation_uses_a_fresh_key(signer: ActionTokenSigner, clock: Clock) -> None:
    """A new rotation certifies a new key: the certificate's public key changes."""
    before = _cert(_parts(signer.mint(clock.now, 60, **CLAIMS).token)[0])
    signer.rotate(generation=3)
    after = _cert(_parts(signer.mint(clock.now, 60, **CLAIMS).token)[0])
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert before.public_key().public_bytes(*raw) != after.public_key().public_bytes(*raw)
    assert before.serial_number != after.serial_number


def test_token_header_and_claims(signer: ActionTokenSigner, clock: Clock) -> None:
    """The token is EdDSA, typed at+jwt (RFC 9068), carries its certificate and the claims."""
    minted = signer.mint(clock.now, 60, jti="jti-7", **CLAIMS)
    header, payload = _parts(minted.token)
    assert header["alg"] == ALGORITHM
    assert header["typ"] == TOKEN_TYPE
    assert header["kid"] == minted.serial
    assert f"{_cert(header).serial_number:x}" == minted.serial
    assert set(header) == {"alg", "typ", "x5c", "kid"}
    now = int(clock.now)
    assert payload == {
        "iss": DEFAULT_ISSUER,
        "sub": AGENT,
        "aud": AUDIENCE,
        "client_id": AGENT,
        "action": "orders.refund",
        "acc": "alice@example.com",
        "pv": "v7",
        "mh": CLAIMS["manifest_hash"],
        "ibh": CLAIMS["inputs_hash"],
        "iat": now,
        "nbf": now,
        "exp": now + 60,
        "jti": "jti-7",
        "gen": 2,
    }
    assert (minted.jti, minted.expires_at) == ("jti-7", now + 60)


def test_jti_is_unique_by_default(signer: ActionTokenSigner, clock: Clock) -> None:
    """Without an explicit jti every token gets its own."""
    jtis = {signer.mint(clock.now, 60, **CLAIMS).jti for _ in range(50)}
    assert len(jtis) == 50


@pytest.mark.parametrize(
    ("ttl", "left_on_cert"), [(60, 900), (900, 900), (10**6, 900), (600, 120), (10**6, 1)]
)
def test_exp_never_exceeds_certificate_not_after(
    signer: ActionTokenSigner, clock: Clock, ttl: int, left_on_cert: int
) -> None:
    """exp is capped at the certificate's not_after, however long the ttl asked for."""
    not_after = int(
        _cert(_parts(signer.mint(clock.now, 1, **CLAIMS).token)[0]).not_valid_after_utc.timestamp()
    )
    now = not_after - left_on_cert
    minted = signer.mint(now, ttl, **CLAIMS)
    assert minted.expires_at == _parts(minted.token)[1]["exp"] == min(now + ttl, not_after)


def test_mint_refuses_once_the_certificate_has_expired(
    signer: ActionTokenSigner, clock: Clock
) -> None:
    """Past the certificate's not_after the signer refuses rather than mint a token it outlives."""
    with pytest.raises(RuntimeError):
        signer.mint(clock.now + 3600, 60, **CLAIMS)


@pytest.mark.parametrize(
    ("case", "expected"),
    [("fresh", False), ("other generation", True), ("close to expiry", True), ("no key", True)],
)
def test_needs_rotation(ca: FakeCA, clock: Clock, case: str, expected: bool) -> None:
    """Rotate with no key, on a generation change, or with under RENEW_WHEN_LEFT left."""
    signer = ActionTokenSigner(AGENT, ca.issue)
    if case != "no key":
        signer.rotate(generation=1)
    generation = 2 if case == "other generation" else 1
    now = clock.now + (900 - RENEW_WHEN_LEFT + 1 if case == "close to expiry" else 0)
    assert signer.needs_rotation(now, generation) is expected


def _private_encodings(signer: ActionTokenSigner) -> list[str]:
    private = signer._keys["EdDSA"].private  # the test must know the secret it looks for
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return [
        raw.hex(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        pem,
        repr(raw),
    ]


def test_repr_of_signer_hides_the_private_key(signer: ActionTokenSigner) -> None:
    """Neither the signer's repr nor its key record's repr shows the private key."""
    shown = repr(signer) + repr(dict(signer._keys)) + str(signer)
    assert "Ed25519PrivateKey" not in shown
    assert "EllipticCurvePrivateKey" not in shown
    for encoding in _private_encodings(signer):
        assert encoding not in shown


def test_repr_of_minted_token_hides_the_token(signer: ActionTokenSigner, clock: Clock) -> None:
    """A MintedToken's repr shows the jti and expiry but no part of the token."""
    minted = signer.mint(clock.now, 60, **CLAIMS)
    shown = repr(minted) + str(minted)
    assert minted.jti in shown
    for part in minted.token.split("."):
        assert part not in shown
    assert "token=" not in shown
    assert isinstance(minted, MintedToken)


@pytest.fixture(scope="module")
def vault_client(openbao: DevServer) -> Iterator[hvac.Client]:
    client = make_client(openbao.addr, openbao.root_token)
    bootstrap(client, [AgentGrant("signing-agent")], addr=openbao.addr)
    yield client
    client.adapter.close()


@pytest.mark.integration
def test_vault_certificate_caps_token_expiry(vault_client: hvac.Client, openbao: DevServer) -> None:
    """With a real broker-pki certificate (15 min), a day-long ttl is capped at its not_after."""
    signer = ActionTokenSigner(
        "signing-agent",
        lambda csr, ttl, alg: sign_csr(
            vault_client, "signing-agent", csr, ttl, openbao.addr, alg=alg
        ),
    )
    signer.rotate(generation=1)
    now = time.time()
    es256 = signer.mint(now, 60, alg=ES256, **CLAIMS)
    es_header, _ = _parts(es256.token)
    assert es_header["alg"] == ES256
    jwt.decode(es256.token, _cert(es_header).public_key(), algorithms=[ES256], audience=AUDIENCE)  # type: ignore[arg-type]
    minted = signer.mint(now, 86400, **CLAIMS)
    header, payload = _parts(minted.token)
    cert = _cert(header)
    not_after = int(cert.not_valid_after_utc.timestamp())
    assert payload["exp"] == minted.expires_at == not_after <= now + 15 * 60 + 1
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "signing-agent"
    assert f"{cert.serial_number:x}" == minted.serial.replace(":", "").lstrip("0")


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_each_algorithm_signs_with_its_own_certified_key(
    signer: ActionTokenSigner, clock: Clock, alg: str
) -> None:
    """A token asks for EdDSA or ES256 and gets a signature pyjwt checks with the x5c key."""
    minted = signer.mint(clock.now, 60, alg=alg, **CLAIMS)
    header, _ = _parts(minted.token)
    assert (header["alg"], header["kid"]) == (alg, minted.serial)
    assert signer.serials[alg] == minted.serial
    key = _cert(header).public_key()
    payload = jwt.decode(
        minted.token,
        key,  # type: ignore[arg-type]
        algorithms=[alg],
        audience=AUDIENCE,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},  # fake clock
    )
    assert payload["action"] == "orders.refund"


def test_unknown_algorithm_is_refused(signer: ActionTokenSigner, clock: Clock) -> None:
    """Only the algorithms the signer was given have keys; any other is an error."""
    with pytest.raises(RuntimeError, match="no certified RS256 key"):
        signer.mint(clock.now, 60, alg="RS256", **CLAIMS)


class Published:
    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []

    def __call__(self, keys: Any) -> None:
        self.calls.append([k.to_json() for k in keys])


def test_keys_are_published_before_they_sign(ca: FakeCA, clock: Clock) -> None:
    """rotate hands both public JWKs (kid, alg, use, x5c chain) to publish before any mint."""
    published = Published()
    signer = ActionTokenSigner(AGENT, ca.issue, publish=published)
    signer.rotate(generation=1)
    (entries,) = published.calls
    jwks = {e["jwk"]["alg"]: e["jwk"] for e in entries}
    assert set(jwks) == {"EdDSA", "ES256"}
    for alg, jwk in jwks.items():
        assert jwk["kid"] == signer.serials[alg]
        assert jwk["use"] == "sig"
        assert len(jwk["x5c"]) == 2  # the leaf, then the CA
        assert "d" not in jwk  # never the private part
    assert {e["gen"] for e in entries} == {1}


def test_routine_renewal_prepublishes_then_switches(ca: FakeCA, clock: Clock) -> None:
    """A renewal of the same generation signs with the old key until PREPUBLISH has passed;
    the next publication names the old key's last exp as its retire_after."""
    published = Published()
    signer = ActionTokenSigner(AGENT, ca.issue, publish=published, prepublish=60)
    signer.rotate(generation=1)
    old = signer.serials["EdDSA"]
    signer.mint(clock.now, 30, **CLAIMS)
    signer.rotate(generation=1, now=clock.now)
    new_kids = {e["jwk"]["kid"] for e in published.calls[1]} - {
        e["jwk"]["kid"] for e in published.calls[0]
    }
    assert len(new_kids) == 2
    assert signer.mint(clock.now + 59, 60, **CLAIMS).serial == old
    switched = signer.mint(clock.now + 60, 60, **CLAIMS)
    assert switched.serial != old
    assert switched.serial in new_kids
    signer.rotate(generation=1, now=clock.now + 61)
    retired = {e["jwk"]["kid"]: e for e in published.calls[2]}[old]
    assert retired["retire_after"] == int(clock.now) + 59 + 60


def test_generation_change_switches_at_once(ca: FakeCA, clock: Clock) -> None:
    """An operator's generation bump is not delayed by prepublication."""
    signer = ActionTokenSigner(AGENT, ca.issue, prepublish=60)
    signer.rotate(generation=1)
    signer.rotate(generation=2, now=clock.now)
    assert signer.mint(clock.now, 60, **CLAIMS).serial == signer.serials["EdDSA"]
    assert signer.generation == 2
