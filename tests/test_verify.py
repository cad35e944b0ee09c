"""The action-token verifier against every known way to forge, replay or misuse a token.

One test per attack, with the hostile token built explicitly from its header, payload and
signature (``tests.tokenfactory.forge``). Unit tests use an in-process CA standing in for
Vault's PKI; the integration tests at the end use the real OpenBao and show that a gateway
needs nothing of ours: pyjwt plus a chain check with cryptography.

Time: the verifier's clock is injected and governs ``exp``/``nbf``/``iat`` as well as the
certificate's validity (two tests below prove it)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import hvac
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from broker.core.claims import ALGORITHM, DEFAULT_ISSUER, REQUIRED_CLAIMS, TOKEN_TYPE, ActionClaims
from broker.core.controlstate import ControlState
from broker.core.errors import VerificationError
from broker.core.jwk import sign_raw
from broker.dev.devstack import DevServer
from broker.sidecar.signing import ActionTokenSigner
from broker.vault.bootstrap import AgentGrant, bootstrap
from broker.vault.layout import CA_COMMON_NAME
from broker.vault.pki import fetch_ca_pem, sign_csr
from broker.vault.session import make_client
from broker.verify import MAX_LEEWAY, Verifier
from tests.tokenfactory import (
    ACTION,
    AGENT,
    AUDIENCE,
    INPUTS,
    OTHER_AGENT,
    FakeCA,
    Identity,
    b64url,
    claims,
    forge,
    segment,
    self_signed,
    unb64url,
    x5c,
)


@dataclass(frozen=True)
class World:
    now: int
    ca: FakeCA
    agent: Identity  # agent-a's key, certified by the CA for a day around now

    def verifier(self, **kwargs: Any) -> Verifier:
        kwargs.setdefault("clock", lambda: float(self.now))
        return Verifier([self.ca.pem], **kwargs)

    def token(self, **overrides: Any) -> str:
        """A well-formed token of agent-a; overrides change or (``None``) remove claims."""
        return forge(self.agent.header(), claims(self.now, **overrides), self.agent.sign)


@pytest.fixture
def world() -> World:
    now = int(time.time())
    ca = FakeCA(clock=lambda: now)
    return World(now, ca, Identity.certified(ca, AGENT, now - 3600, now + 86400))


def refused(verifier: Verifier, token: str, code: str, **kwargs: Any) -> VerificationError:
    kwargs.setdefault("audience", AUDIENCE)
    with pytest.raises(VerificationError) as info:
        verifier.verify(token, **kwargs)
    assert info.value.code == code, info.value.detail
    return info.value


# --- the good path ---------------------------------------------------------------------


def test_valid_token_verifies_to_its_claims(world: World) -> None:
    """A token from the signer, certified by the CA, verifies and yields typed claims."""
    signer = ActionTokenSigner(AGENT, world.ca.issue)
    signer.rotate(generation=3)
    minted = signer.mint(
        world.now,
        60,
        jti="jti-42",
        audience=AUDIENCE,
        action=ACTION,
        accountable="alice@example.com",
        policy_version="v7",
        inputs_hash=claims(world.now)["ibh"],
        manifest_hash="sha256:" + "0" * 64,
    )
    got = world.verifier().verify(minted.token, audience=AUDIENCE, action=ACTION, inputs=INPUTS)
    assert got == ActionClaims(
        agent=AGENT,
        audience=AUDIENCE,
        action=ACTION,
        accountable="alice@example.com",
        policy_version="v7",
        inputs_hash=claims(world.now)["ibh"],
        issued_at=world.now,
        expires_at=world.now + 60,
        jti="jti-42",
        generation=3,
    )


def test_inputs_bind_by_value_not_by_key_order(world: World) -> None:
    """The same inputs in another key order are the same inputs."""
    reordered = dict(reversed(list(INPUTS.items())))
    world.verifier().verify(world.token(), audience=AUDIENCE, action=ACTION, inputs=reordered)


def test_any_trusted_ca_verifies(world: World) -> None:
    """During CA rotation a verifier trusts a list; a token from either CA verifies."""
    new_ca = FakeCA(clock=lambda: world.now)
    verifier = Verifier([world.ca.pem, new_ca.pem], clock=lambda: float(world.now))
    other = Identity.certified(new_ca, AGENT, world.now - 60, world.now + 600)
    verifier.verify(world.token(), audience=AUDIENCE)
    verifier.verify(forge(other.header(), claims(world.now), other.sign), audience=AUDIENCE)


# --- tampering -----------------------------------------------------------------------


def test_tampered_payload_is_refused(world: World) -> None:
    """A claim flipped after signing (the action), signature kept, fails the signature."""
    head, _, sig = world.token().split(".")
    hostile = f"{head}.{segment(claims(world.now, act='orders.delete_all'))}.{sig}"
    refused(world.verifier(), hostile, "bad_signature")


def test_tampered_signature_is_refused(world: World) -> None:
    """One bit flipped in the middle of the signature fails the signature."""
    head, body, sig = world.token().split(".")
    raw = bytearray(unb64url(sig))
    raw[20] ^= 0x01
    refused(world.verifier(), f"{head}.{body}.{b64url(bytes(raw))}", "bad_signature")


def test_tampered_header_is_refused(world: World) -> None:
    """A header rewritten after signing (the kid) fails the signature: it is signed too."""
    _, body, sig = world.token().split(".")
    hostile = f"{segment(world.agent.header(kid='forged'))}.{body}.{sig}"
    refused(world.verifier(), hostile, "bad_signature")


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c", "....", "eyJhbGciOiJFZERTQSJ9"])
def test_garbage_is_refused_as_malformed(world: World, token: str) -> None:
    """Strings that are not JWS compact serialisations are refused as malformed."""
    refused(world.verifier(), token, "token_malformed")


# --- time ---------------------------------------------------------------------------


def test_expired_token_is_refused(world: World) -> None:
    """A token whose exp passed beyond the leeway is refused."""
    refused(world.verifier(leeway=5), world.token(exp=world.now - 6), "token_expired")


def test_expiry_within_leeway_is_accepted(world: World) -> None:
    """Clock skew up to the leeway is tolerated, and no more (see the test above)."""
    world.verifier(leeway=5).verify(world.token(exp=world.now - 3), audience=AUDIENCE)


def test_not_yet_valid_token_is_refused(world: World) -> None:
    """A token whose nbf lies in the future is refused."""
    refused(world.verifier(), world.token(nbf=world.now + 600), "token_not_yet_valid")


def test_token_issued_in_the_future_is_refused(world: World) -> None:
    """An iat far in the future (which would dodge revoked_before) is refused."""
    hostile = world.token(iat=world.now + 86400, exp=world.now + 86460)
    refused(world.verifier(), hostile, "token_not_yet_valid")


def test_injected_clock_governs_token_expiry(world: World) -> None:
    """With the verifier's clock 2 minutes on, a 60 s token (cert still valid) is expired."""
    refused(world.verifier(clock=lambda: float(world.now + 120)), world.token(), "token_expired")


def test_injected_clock_governs_not_before(world: World) -> None:
    """A token valid from now+600 verifies under a clock that reads now+600."""
    later = world.now + 600
    token = forge(world.agent.header(), claims(later), world.agent.sign)
    world.verifier(clock=lambda: float(later)).verify(token, audience=AUDIENCE)


@pytest.mark.parametrize(
    ("leeway", "ok"), [(-1, False), (0, True), (MAX_LEEWAY, True), (31, False), (3600, False)]
)
def test_leeway_is_bounded(world: World, leeway: int, ok: bool) -> None:
    """A verifier refuses to be built with a negative leeway or one above 30 seconds."""
    if ok:
        world.verifier(leeway=leeway)
    else:
        with pytest.raises(ValueError, match="leeway"):
            world.verifier(leeway=leeway)


# --- audience, issuer, claims -------------------------------------------------------


def test_wrong_audience_is_refused(world: World) -> None:
    """A token for one tool is refused by another."""
    refused(world.verifier(), world.token(), "wrong_audience", audience="payroll-api")


def test_multi_audience_token_is_refused(world: World) -> None:
    """The broker mints one audience per token; a token naming several is refused."""
    refused(world.verifier(), world.token(aud=[AUDIENCE, "payroll-api"]), "wrong_audience")


def test_wrong_issuer_is_refused(world: World) -> None:
    """A token from some other issuer, even under our CA, is refused."""
    refused(world.verifier(), world.token(iss="urn:someone-else"), "token_invalid")


@pytest.mark.parametrize("claim", REQUIRED_CLAIMS)
def test_missing_required_claim_is_refused(world: World, claim: str) -> None:
    """Every required claim must be present; a validly signed token without one is refused."""
    refused(world.verifier(), world.token(**{claim: None}), "token_invalid")


def test_malformed_claim_type_is_a_verification_error(world: World) -> None:
    """A validly signed token with a non-integer gen is refused, not crashed on."""
    refused(world.verifier(), world.token(gen="three"), "token_invalid")


def test_wrong_action_is_refused(world: World) -> None:
    """A token minted for one action does not authorise another."""
    refused(world.verifier(), world.token(), "wrong_action", action="orders.delete_all")


@pytest.mark.parametrize(
    "inputs",
    [
        {"order_id": "o-123", "amount_usd": 4000},
        {"order_id": "o-999", "amount_usd": 40},
        {"order_id": "o-123"},
        {**INPUTS, "note": "extra"},
        {},
    ],
)
def test_inputs_mismatch_is_refused(world: World, inputs: dict[str, Any]) -> None:
    """A token bound to one set of inputs does not authorise a call with others."""
    refused(world.verifier(), world.token(), "inputs_mismatch", inputs=inputs)


# --- algorithms and keys ------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused(world: World, alg: str) -> None:
    """An unsigned token (alg none, empty signature) is refused whatever the spelling."""
    hostile = forge(world.agent.header(alg=alg), claims(world.now), None)
    assert hostile.endswith(".")
    refused(world.verifier(), hostile, "algorithm_refused")


@pytest.mark.parametrize("secret", ["raw", "pem", "cert-der", "cert-pem"])
def test_hs256_with_public_key_as_secret_is_refused(world: World, secret: str) -> None:
    """Key confusion: HMAC over the token keyed with our certificate's public bytes is refused."""
    public = world.agent.cert.public_key()
    key = {
        "raw": public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        "pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "cert-der": world.agent.cert.public_bytes(serialization.Encoding.DER),
        "cert-pem": world.agent.cert.public_bytes(serialization.Encoding.PEM),
    }[secret]
    hostile = forge(
        world.agent.header(alg="HS256"),
        claims(world.now),
        lambda data: hmac.new(key, data, hashlib.sha256).digest(),
    )
    refused(world.verifier(), hostile, "algorithm_refused")


def test_hmac_signature_under_eddsa_header_is_refused(world: World) -> None:
    """Key confusion with the header left honest (alg EdDSA) fails the signature check."""
    key = world.agent.cert.public_bytes(serialization.Encoding.DER)
    hostile = forge(
        world.agent.header(), claims(world.now), lambda d: hmac.new(key, d, hashlib.sha256).digest()
    )
    refused(world.verifier(), hostile, "bad_signature")


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize(
    ("alg", "make_key"),
    [
        ("RS256", _rsa),
        ("ES384", lambda: ec.generate_private_key(ec.SECP384R1())),
        ("ES256", lambda: ec.generate_private_key(ec.SECP384R1())),  # P-384 behind ES256
        ("ES256", Ed25519PrivateKey.generate),  # an Ed25519 key behind ES256
    ],
)
def test_other_asymmetric_algorithms_are_refused(world: World, alg: str, make_key: Any) -> None:
    """Outside the EdDSA/ES256 allowlist, or with a key of another kind than the alg names,
    a token is refused, even with a key the CA itself certified for the agent."""
    other = Identity.certified(world.ca, AGENT, world.now - 60, world.now + 600, key=make_key())
    refused(
        world.verifier(),
        forge(other.header(alg=alg), claims(world.now), other.sign),
        "algorithm_refused",
    )


def test_genuine_es256_token_verifies(world: World) -> None:
    """A CA-certified P-256 key signing under ES256 is accepted, like EdDSA."""
    other = Identity.certified(
        world.ca,
        AGENT,
        world.now - 60,
        world.now + 600,
        key=ec.generate_private_key(ec.SECP256R1()),
    )
    token = forge(other.header(alg="ES256"), claims(world.now), other.sign)
    assert world.verifier().verify(token, audience=AUDIENCE).action == ACTION


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt"])
def test_both_rfc9068_typ_spellings_verify(world: World, typ: str) -> None:
    """RFC 9068 lets the typ be at+jwt or application/at+jwt."""
    token = forge(world.agent.header(typ=typ), claims(world.now), world.agent.sign)
    assert world.verifier().verify(token, audience=AUDIENCE).agent == AGENT


def test_non_ed25519_certificate_is_refused_under_eddsa_header(world: World) -> None:
    """A CA-certified P-256 key behind an honest-looking EdDSA header is refused."""
    other = Identity.certified(
        world.ca,
        AGENT,
        world.now - 60,
        world.now + 600,
        key=ec.generate_private_key(ec.SECP256R1()),
    )
    refused(
        world.verifier(), forge(other.header(), claims(world.now), other.sign), "algorithm_refused"
    )


def test_self_signed_certificate_is_refused(world: World) -> None:
    """An attacker's self-signed cert, named like our CA and the agent, is refused."""
    key = Ed25519PrivateKey.generate()
    cert = self_signed(key, CA_COMMON_NAME, world.now - 60, world.now + 600)
    hostile = forge(
        {"alg": ALGORITHM, "typ": TOKEN_TYPE, "x5c": [x5c(cert)]}, claims(world.now), key.sign
    )
    refused(world.verifier(), hostile, "untrusted_key")


def test_certificate_from_a_lookalike_ca_is_refused(world: World) -> None:
    """A cert for the agent from another CA with our CA's exact name is refused."""
    impostor = FakeCA(clock=lambda: world.now)
    other = Identity.certified(impostor, AGENT, world.now - 60, world.now + 600)
    refused(world.verifier(), forge(other.header(), claims(world.now), other.sign), "untrusted_key")


def test_ca_certificate_itself_cannot_sign_for_an_agent(world: World) -> None:
    """The CA cert in x5c (issued by itself) does not speak for agent-a."""
    hostile = forge(
        {"alg": ALGORITHM, "typ": TOKEN_TYPE, "x5c": [x5c(world.ca.cert)]},
        claims(world.now),
        world.ca.key.sign,
    )
    refused(world.verifier(), hostile, "untrusted_key")


X5C_CASES: dict[str, Callable[[str, str], Any]] = {
    "two certificates": lambda good, ca: [good, ca],
    "empty list": lambda good, ca: [],
    "garbage base64": lambda good, ca: ["!!not*base64??"],
    "base64url alphabet": lambda good, ca: [good.replace("+", "-").replace("/", "_") + "-_"],
    "base64 of junk": lambda good, ca: [base64.b64encode(b"certainly not DER").decode()],
    "a string, not a list": lambda good, ca: good,
    "a number in the list": lambda good, ca: [42],
    "absent": lambda good, ca: None,
}


@pytest.mark.parametrize("case", list(X5C_CASES))
def test_malformed_x5c_is_refused(world: World, case: str) -> None:
    """x5c must be a list of exactly one standard-base64 DER certificate."""
    chain = X5C_CASES[case](x5c(world.agent.cert), x5c(world.ca.cert))
    hostile = forge(world.agent.header(x5c=chain), claims(world.now), world.agent.sign)
    refused(world.verifier(), hostile, "untrusted_key")


@pytest.mark.parametrize("name", ["jwk", "jku", "x5u"])
def test_key_bearing_headers_are_refused(world: World, name: str) -> None:
    """A header naming a key (jwk, jku, x5u) is refused even with a valid x5c beside it."""
    attacker = Ed25519PrivateKey.generate()
    raw = attacker.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    value = {
        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)},
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
    }[name]
    hostile = forge(world.agent.header(**{name: value}), claims(world.now), attacker.sign)
    refused(world.verifier(), hostile, "untrusted_key")


@pytest.mark.parametrize("typ", ["JWT", "agent-action+jwt", "AT+JWT", "", None])
def test_wrong_typ_is_refused(world: World, typ: str | None) -> None:
    """Only typ at+jwt (RFC 9068) is accepted: another JWT cannot pose as an action token."""
    hostile = forge(world.agent.header(typ=typ), claims(world.now), world.agent.sign)
    refused(world.verifier(), hostile, "wrong_type")


def test_certificate_for_agent_b_cannot_sign_for_agent_a(world: World) -> None:
    """Agent B's CA-issued cert and key sign a token with sub agent-a: refused."""
    b = Identity.certified(world.ca, OTHER_AGENT, world.now - 60, world.now + 600)
    refused(
        world.verifier(), forge(b.header(), claims(world.now, agent=AGENT), b.sign), "untrusted_key"
    )


def test_expired_certificate_is_refused(world: World) -> None:
    """A token (itself in date) signed under a certificate expired beyond the leeway is refused."""
    old = Identity.certified(world.ca, AGENT, world.now - 1000, world.now - 6)
    refused(
        world.verifier(leeway=5),
        forge(old.header(), claims(world.now), old.sign),
        "certificate_expired",
    )


def test_certificate_expiry_within_leeway_is_accepted(world: World) -> None:
    """A certificate that expired less than the leeway ago still verifies."""
    old = Identity.certified(world.ca, AGENT, world.now - 1000, world.now - 3)
    world.verifier(leeway=5).verify(
        forge(old.header(), claims(world.now), old.sign), audience=AUDIENCE
    )


def test_certificate_not_yet_valid_is_refused(world: World) -> None:
    """A certificate whose validity starts beyond the leeway is refused."""
    early = Identity.certified(world.ca, AGENT, world.now + 60, world.now + 600)
    refused(
        world.verifier(),
        forge(early.header(), claims(world.now), early.sign),
        "certificate_expired",
    )


# --- revocation ---------------------------------------------------------------------


class _Revocations:
    """Adapts ControlState to the verifier's RevocationView under either method name, so
    these tests hold for any object with ``token_revoked``."""

    def __init__(self, state: ControlState) -> None:
        self.state = state

    def token_revoked(self, claims: ActionClaims) -> str | None:
        return self.state.token_revoked(claims)

    revoked = token_revoked


REVOKED_STATES = [
    pytest.param(ControlState(AGENT, revoked_jtis=frozenset({"jti-0001"})), id="jti revoked"),
    pytest.param(ControlState(AGENT, killed=True, kill_reason="incident 7"), id="agent killed"),
    pytest.param("REVOKED_AFTER_IAT", id="revoked_before after iat"),
    pytest.param("REVOKED_AT_IAT", id="revoked_before at iat"),
    pytest.param(ControlState(AGENT, min_generation=4), id="min_generation above gen"),
]


def _state(world: World, state: ControlState | str) -> ControlState:
    if state == "REVOKED_AFTER_IAT":
        return ControlState(AGENT, revoked_before=world.now + 1)
    if state == "REVOKED_AT_IAT":
        return ControlState(AGENT, revoked_before=world.now)
    assert isinstance(state, ControlState)
    return state


@pytest.mark.parametrize("state", REVOKED_STATES)
def test_revoked_token_is_refused(world: World, state: ControlState | str) -> None:
    """A token revoked by jti, by kill switch, by revoked_before or by key generation is refused."""
    verifier = world.verifier(revocations=_Revocations(_state(world, state)))
    refused(verifier, world.token(), "token_revoked")


def test_unrevoked_token_passes_revocation(world: World) -> None:
    """Another jti revoked, revoked_before before iat and min_generation == gen: accepted."""
    state = ControlState(
        AGENT, revoked_jtis=frozenset({"other"}), revoked_before=world.now - 1, min_generation=3
    )
    world.verifier(revocations=_Revocations(state)).verify(world.token(), audience=AUDIENCE)


@pytest.mark.parametrize("state", REVOKED_STATES)
def test_control_state_is_a_revocation_view(world: World, state: ControlState | str) -> None:
    """A ControlState passed straight to the verifier revokes tokens."""
    verifier = world.verifier(revocations=_state(world, state))
    refused(verifier, world.token(), "token_revoked")


# --- against the real OpenBao -------------------------------------------------------

VAULT_A = "verify-agent-a"
VAULT_B = "verify-agent-b"


@dataclass(frozen=True)
class Vault:
    addr: str
    client: hvac.Client
    ca_pem: str

    def signer(self, agent: str) -> ActionTokenSigner:
        signer = ActionTokenSigner(
            agent, lambda csr, ttl, alg: sign_csr(self.client, agent, csr, ttl, self.addr, alg=alg)
        )
        signer.rotate(generation=1)
        return signer


@pytest.fixture(scope="module")
def vault(openbao: DevServer) -> Iterator[Vault]:
    client = make_client(openbao.addr, openbao.root_token)
    bootstrap(client, [AgentGrant(VAULT_A), AgentGrant(VAULT_B)], addr=openbao.addr)
    yield Vault(openbao.addr, client, fetch_ca_pem(openbao.addr))
    client.adapter.close()


def _mint(signer: ActionTokenSigner, now: int) -> str:
    return signer.mint(
        now,
        120,
        audience=AUDIENCE,
        action=ACTION,
        accountable="alice@example.com",
        policy_version="v7",
        inputs_hash=claims(now, agent=signer.agent)["ibh"],
        manifest_hash="sha256:" + "0" * 64,
    ).token


@pytest.mark.integration
def test_vault_certified_token_verifies(vault: Vault) -> None:
    """A token signed under a certificate from the real broker-pki verifies against its CA."""
    now = int(time.time())
    token = _mint(vault.signer(VAULT_A), now)
    got = Verifier([vault.ca_pem]).verify(token, audience=AUDIENCE, action=ACTION, inputs=INPUTS)
    assert (got.agent, got.generation, got.expires_at) == (VAULT_A, 1, now + 120)


@pytest.mark.integration
def test_gateway_verifies_with_plain_pyjwt(vault: Vault) -> None:
    """A gateway needs only the CA PEM, cryptography for the chain, and pyjwt for the token."""
    token = _mint(vault.signer(VAULT_A), int(time.time()))
    ca = x509.load_pem_x509_certificate(vault.ca_pem.encode())
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    (der,) = header["x5c"]
    cert = x509.load_der_x509_certificate(base64.b64decode(der, validate=True))
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == VAULT_A
    public_key = cert.public_key()
    assert isinstance(public_key, Ed25519PublicKey)
    payload = jwt.decode(
        token, public_key, algorithms=["EdDSA"], audience=AUDIENCE, issuer=DEFAULT_ISSUER
    )
    assert (payload["sub"], payload["action"]) == (VAULT_A, ACTION)


@pytest.mark.integration
def test_vault_refuses_to_certify_another_agents_name(vault: Vault) -> None:
    """broker-pki's role for agent B ignores a CSR naming agent A and refuses to name A."""
    key = Ed25519PrivateKey.generate()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, VAULT_A)]))
        .sign(key, None)
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    signed = sign_csr(vault.client, VAULT_B, csr, "5m", vault.addr)
    cert = x509.load_pem_x509_certificate(signed.certificate_pem.encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == VAULT_B
    with pytest.raises(hvac.exceptions.InvalidRequest):
        vault.client.write_data(
            f"broker-pki/sign/agent-{VAULT_B}", data={"csr": csr, "common_name": VAULT_A}
        )


@pytest.mark.integration
def test_vault_cert_for_agent_b_cannot_sign_for_agent_a(vault: Vault) -> None:
    """Agent B's real certificate and key, signing a token with sub agent A: refused."""
    b = vault.signer(VAULT_B)
    token = _mint(b, int(time.time()))
    head, body, _ = token.split(".")
    payload = json.loads(unb64url(body))
    payload["sub"] = payload["client_id"] = VAULT_A
    key = b._keys["EdDSA"].private  # the hostile sidecar B holds its own key
    hostile = forge(json.loads(unb64url(head)), payload, lambda d: sign_raw(key, d))
    refused(Verifier([vault.ca_pem]), hostile, "untrusted_key")


@pytest.mark.integration
def test_fake_ca_token_is_refused_by_the_real_ca(vault: Vault, world: World) -> None:
    """A token certified by any CA other than Vault's broker-pki is refused."""
    refused(Verifier([vault.ca_pem]), world.token(), "untrusted_key")
