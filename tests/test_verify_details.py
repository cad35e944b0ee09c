"""The verifier's refusals as a gateway sees them: the code and the exact detail of each, and
each time check exactly at its bound (the leeway, the certificate's validity), against a clock
far from the real one so that only the injected clock can decide."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.core.claims import ActionClaims, StatusRef
from broker.core.controlstate import ControlState
from broker.core.errors import VerificationError
from broker.verify import MAX_LIFETIME, ActionScope, Verifier, check_compact_form
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
    self_signed,
    x5c,
)

# Two days in the past: pyjwt's own time checks (against the real clock) would refuse every
# token here, so these tests fail if the verifier ever lets pyjwt judge time again.
NOW = int(time.time()) - 2 * 86400


@dataclass(frozen=True)
class World:
    ca: FakeCA
    agent: Identity

    def token(self, header: dict[str, Any] | None = None, **overrides: Any) -> str:
        return forge(header or self.agent.header(), claims(NOW, **overrides), self.agent.sign)


@pytest.fixture
def world() -> World:
    ca = FakeCA(clock=lambda: NOW)
    return World(ca, Identity.certified(ca, AGENT, NOW - 3600, NOW + 86400))


def verifier(world: World, **kwargs: Any) -> Verifier:
    kwargs.setdefault("clock", lambda: float(NOW))
    return Verifier([world.ca.pem], **kwargs)


def _other_cert(world: World, not_before: int, not_after: int, agent: str = AGENT) -> str:
    other = Identity.certified(world.ca, agent, not_before, not_after)
    return forge(other.header(), claims(NOW), other.sign)


def _self_signed(world: World) -> str:
    key = Ed25519PrivateKey.generate()
    rogue = Identity(key, self_signed(key, AGENT, NOW - 60, NOW + 600))
    return forge(rogue.header(), claims(NOW), rogue.sign)


def _p256(world: World) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    other = Identity.certified(world.ca, AGENT, NOW - 60, NOW + 600, key=key)
    return forge(other.header(), claims(NOW), other.sign)


def _header_of(world: World, raw: bytes) -> str:
    _head, body, sig = world.token().split(".")
    return f"{b64url(raw)}.{body}.{sig}"


def _tampered(world: World) -> str:
    head, _body, sig = world.token().split(".")
    other = world.token(action="orders.delete").split(".")[1]
    return f"{head}.{other}.{sig}"


Build = Callable[[World], str]
CASES: list[tuple[str, Build, str, str]] = [
    ("not a JWT", lambda w: "garbage", "token_malformed", "not a compact JWS of three segments"),
    ("header not JSON", lambda w: _header_of(w, b"not json"), "token_malformed", "not a JWT"),
    ("header a JSON list", lambda w: _header_of(w, b'["EdDSA"]'), "token_malformed",
     "not a JWT"),
    ("alg HS256", lambda w: w.token(w.agent.header(alg="HS256")), "algorithm_refused",
     "algorithm 'HS256' is not allowed"),
    ("typ JWT", lambda w: w.token(w.agent.header(typ="JWT")), "wrong_type",
     "token type 'JWT' is not at+jwt"),
    ("jku header", lambda w: w.token(w.agent.header(jku="https://x.example/k")), "untrusted_key",
     "header 'jku' is refused: keys come from Vault only"),
    ("two certificates", lambda w: w.token(w.agent.header(x5c=[x5c(w.agent.cert)] * 2)),
     "untrusted_key", "x5c must hold exactly one certificate"),
    ("not base64", lambda w: w.token(w.agent.header(x5c=["!!" + x5c(w.agent.cert)])),
     "untrusted_key", "x5c certificate does not parse"),
    ("P-256 certificate", _p256, "algorithm_refused",
     "the signing certificate's key is not for EdDSA"),
    ("self-signed", _self_signed, "untrusted_key", "certificate is not issued by the broker CA"),
    ("expired certificate", lambda w: _other_cert(w, NOW - 600, NOW - 6), "certificate_expired",
     "the signing certificate is not valid now"),
    ("another agent's certificate", lambda w: _other_cert(w, NOW - 60, NOW + 60, OTHER_AGENT),
     "untrusted_key", "certificate does not speak for the token's agent"),
    ("tampered payload", _tampered, "bad_signature", "signature does not verify"),
    ("wrong audience", lambda w: w.token(aud="other-api"), "wrong_audience",
     "token is not for audience 'orders-api'"),
    ("float expiry", lambda w: w.token(exp=NOW + 60.5), "token_invalid",
     "claim 'exp' must be an integer time"),
    ("string generation", lambda w: w.token(gen="3"), "token_invalid",
     "a claim has the wrong type"),
    ("status a string", lambda w: w.token(status="revoked"), "token_invalid",
     "a claim has the wrong type"),
    ("agent id in capitals", lambda w: w.token(sub="Agent-A", client_id="Agent-A"),
     "untrusted_key", "the token's agent is not a canonical agent id"),
    ("expired", lambda w: w.token(exp=NOW - 6), "token_expired", "token has expired"),
    ("not yet valid", lambda w: w.token(nbf=NOW + 6), "token_not_yet_valid",
     "token is not valid yet"),
    ("issued in the future", lambda w: w.token(iat=NOW + 6), "token_not_yet_valid",
     "token is not valid yet"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("build", "code", "detail"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_refusal_code_and_detail(world: World, build: Build, code: str, detail: str) -> None:
    """Each refusal names its check (code) and says what was wrong (detail), nothing else."""
    with pytest.raises(VerificationError) as refused:
        verifier(world).verify(build(world), audience=AUDIENCE)
    assert (refused.value.code, refused.value.detail) == (code, detail)
    assert str(refused.value) == detail


def test_other_pyjwt_refusals_keep_pyjwt_s_words(world: World) -> None:
    """A refusal pyjwt words itself (here a wrong issuer) is token_invalid with pyjwt's reason."""
    with pytest.raises(VerificationError) as refused:
        verifier(world).verify(world.token(iss="urn:other"), audience=AUDIENCE)
    assert refused.value.code == "token_invalid"
    assert refused.value.detail.startswith("token refused: ")
    assert "issuer" in refused.value.detail.lower()


def test_wrong_action_inputs_and_revocation_details(world: World) -> None:
    """The call-binding refusals say which action, that the inputs differ, and why revoked."""
    token = world.token()
    with pytest.raises(VerificationError) as wrong_action:
        verifier(world).verify(token, audience=AUDIENCE, action="orders.read")
    assert wrong_action.value.detail == f"token is for action {ACTION!r}, not 'orders.read'"
    with pytest.raises(VerificationError) as wrong_inputs:
        verifier(world).verify(token, audience=AUDIENCE, inputs={**INPUTS, "amount_usd": 41})
    assert wrong_inputs.value.detail == (
        "the call's inputs are not the inputs the token was minted for"
    )
    killed = ControlState(AGENT, killed=True)
    with pytest.raises(VerificationError) as revoked:
        verifier(world, revocations=killed).verify(token, audience=AUDIENCE)
    assert (revoked.value.code, revoked.value.detail) == (
        "token_revoked",
        killed.token_revoked(ActionClaims.from_payload(claims(NOW))),
    )


# -- bounds, exactly ---------------------------------------------------------------------

BOUNDS = [
    pytest.param({"exp": NOW - 4}, True, id="expired less than the leeway ago"),
    pytest.param({"exp": NOW - 5}, False, id="expired exactly the default leeway ago"),
    pytest.param({"nbf": NOW + 5, "iat": NOW + 5}, True, id="valid from exactly the leeway on"),
    pytest.param({"nbf": NOW + 5, "iat": NOW + 6}, False, id="issued one second beyond"),
    pytest.param({"nbf": NOW + 6, "iat": NOW}, False, id="valid one second beyond"),
]


@pytest.mark.parametrize(("overrides", "ok"), BOUNDS)
def test_token_times_at_the_default_leeway(
    world: World, overrides: dict[str, int], ok: bool
) -> None:
    """The default leeway is 5 s: exp must lie beyond now - 5, nbf and iat at most now + 5."""
    token = world.token(**overrides)
    if ok:
        assert verifier(world).verify(token, audience=AUDIENCE).agent == AGENT
    else:
        with pytest.raises(VerificationError):
            verifier(world).verify(token, audience=AUDIENCE)


WIDE = [
    pytest.param(NOW - 29, True, id="expired 29 s ago"),
    pytest.param(NOW - 30, False, id="expired 30 s ago"),
]


@pytest.mark.parametrize(("exp", "ok"), WIDE)
def test_a_wider_leeway_is_the_verifier_s_own(world: World, exp: int, ok: bool) -> None:
    """With leeway 30 the bound moves to now - 30, judged on the injected clock alone: an
    expired token is token_expired with our detail, whatever pyjwt would say."""
    token = world.token(iat=exp - 60, nbf=exp - 60, exp=exp)
    wide = verifier(world, leeway=30)
    if ok:
        assert wide.verify(token, audience=AUDIENCE).expires_at == exp
    else:
        with pytest.raises(VerificationError) as refused:
            wide.verify(token, audience=AUDIENCE)
        assert (refused.value.code, refused.value.detail) == ("token_expired", "token has expired")


CERT_BOUNDS = [
    pytest.param(NOW + 5, NOW + 600, True, id="certificate valid from exactly now + leeway"),
    pytest.param(NOW + 6, NOW + 600, False, id="certificate valid from beyond the leeway"),
    pytest.param(NOW - 600, NOW - 5, True, id="certificate expired exactly the leeway ago"),
    pytest.param(NOW - 600, NOW - 6, False, id="certificate expired beyond the leeway"),
]


@pytest.mark.parametrize(("not_before", "not_after", "ok"), CERT_BOUNDS)
def test_certificate_validity_at_the_leeway(
    world: World, not_before: int, not_after: int, ok: bool
) -> None:
    """The certificate's validity is stretched by exactly the leeway at both ends."""
    token = _other_cert(world, not_before, not_after)
    if ok:
        assert verifier(world).verify(token, audience=AUDIENCE).agent == AGENT
    else:
        with pytest.raises(VerificationError) as refused:
            verifier(world).verify(token, audience=AUDIENCE)
        assert refused.value.code == "certificate_expired"


# -- the other refusals' details -----------------------------------------------------------


def test_an_empty_gateway_allowlist_is_refused_with_its_reason() -> None:
    """``accept_agents=[]`` would accept nobody: the error says so and what to pass instead."""
    ca = FakeCA(clock=lambda: NOW)
    with pytest.raises(ValueError, match=r"^accept_agents is empty") as refused:
        Verifier([ca.pem], accept_agents=[])
    assert str(refused.value) == (
        "accept_agents is empty: it would accept no agent (pass None for any)"
    )


def test_agent_not_accepted_names_the_agent(world: World) -> None:
    """A gateway's allowlist refusal names the agent it does not accept."""
    with pytest.raises(VerificationError) as refused:
        verifier(world, accept_agents=[OTHER_AGENT]).verify(world.token(), audience=AUDIENCE)
    assert (refused.value.code, refused.value.detail) == (
        "agent_not_accepted",
        f"this gateway does not accept {AGENT!r}",
    )


@dataclass(frozen=True)
class Scopes:
    """A ManifestView over a fixed table of (agent, action) to scope."""

    table: dict[tuple[str, str], ActionScope]

    def scope_of(self, agent: str, action: str) -> ActionScope | None:
        return self.table.get((agent, action))


SCOPE_CASES = [
    pytest.param({}, {}, "outside_manifest",
                 f"{ACTION!r} is not a token action in {AGENT!r}'s manifest", id="no such action"),
    pytest.param({(AGENT, ACTION): ActionScope("other-api", 60)}, {}, "outside_manifest",
                 f"{AGENT!r}'s manifest gives {ACTION!r} audience 'other-api', not {AUDIENCE!r}",
                 id="another audience"),
    pytest.param({(AGENT, ACTION): ActionScope(AUDIENCE, 60)}, {"ttl": 61}, "lifetime_too_long",
                 "exp - iat is 61 s, more than 60 s", id="beyond the action's ttl"),
    pytest.param(None, {"ttl": MAX_LIFETIME + 1}, "lifetime_too_long",
                 f"exp - iat is {MAX_LIFETIME + 1} s, more than {MAX_LIFETIME} s",
                 id="beyond the broker maximum"),
]  # fmt: skip


@pytest.mark.parametrize(("table", "overrides", "code", "detail"), SCOPE_CASES)
def test_scope_refusal_details(
    world: World,
    table: dict[tuple[str, str], ActionScope] | None,
    overrides: dict[str, Any],
    code: str,
    detail: str,
) -> None:
    """A token saying more than its agent's manifest allows is refused naming the action,
    the audiences or the lifetimes that disagree."""
    manifests = None if table is None else Scopes(table)
    token = forge(world.agent.header(), claims(NOW, **overrides), world.agent.sign)
    with pytest.raises(VerificationError) as refused:
        verifier(world, manifests=manifests).verify(token, audience=AUDIENCE)
    assert (refused.value.code, refused.value.detail) == (code, detail)


class Status:
    """A StatusView whose set bits are the given indices."""

    def __init__(self, revoked: set[int]) -> None:
        self.revoked_indices = revoked

    def revoked(self, ref: StatusRef) -> bool:
        return ref.index in self.revoked_indices


def test_status_refusal_details(world: World) -> None:
    """With a status list to check: a token naming none, and a token whose bit is set, are
    refused saying which; a token whose bit is clear verifies."""
    ref = StatusRef("https://issuer.example/statuslists/agent-a/1", 4)
    checking = verifier(world, status=Status({4}))
    with pytest.raises(VerificationError) as missing:
        checking.verify(world.token(), audience=AUDIENCE)
    assert (missing.value.code, missing.value.detail) == (
        "status_missing",
        "the token names no status list to check",
    )
    with pytest.raises(VerificationError) as revoked:
        checking.verify(world.token(status=ref.to_claim()), audience=AUDIENCE)
    assert (revoked.value.code, revoked.value.detail) == (
        "token_revoked",
        "token jti-0001 is revoked in its status list",
    )
    clear = verifier(world, status=Status({5})).verify(
        world.token(status=ref.to_claim()), audience=AUDIENCE
    )
    assert clear.status == ref


# -- the compact form, before any parsing --------------------------------------------------


def test_size_bound_is_the_verifier_s_own_and_inclusive(world: World) -> None:
    """``max_token_bytes`` is the bound used: a token of exactly that length verifies, one
    byte less of allowance refuses it unread, saying the bound."""
    token = world.token()
    assert (
        verifier(world, max_token_bytes=len(token)).verify(token, audience=AUDIENCE).agent == AGENT
    )
    with pytest.raises(VerificationError) as refused:
        verifier(world, max_token_bytes=len(token) - 1).verify(token, audience=AUDIENCE)
    assert (refused.value.code, refused.value.detail) == (
        "token_too_large",
        f"token is longer than {len(token) - 1} bytes",
    )


@pytest.mark.parametrize(("index", "name"), [(0, "header"), (1, "payload"), (2, "signature")])
def test_a_non_canonical_segment_is_named(world: World, index: int, name: str) -> None:
    """A padded segment is refused before parsing, naming which of the three it is."""
    parts = world.token().split(".")
    parts[index] += "="
    with pytest.raises(VerificationError) as refused:
        verifier(world).verify(".".join(parts), audience=AUDIENCE)
    assert (refused.value.code, refused.value.detail) == (
        "token_malformed",
        f"the {name} is not canonical unpadded base64url",
    )


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def test_canonical_segments_pass_whatever_their_last_character() -> None:
    """Four characters hold three whole bytes, so any last character is canonical: the
    re-encoding comparison strips padding only, never a letter."""
    for last in ALPHABET:
        segment = "AAA" + last
        check_compact_form(f"{segment}.{segment}.{segment}")
