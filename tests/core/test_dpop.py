"""RFC 9449 DPoP proofs: each way to forge, replay or misdirect a proof, refused by its code.

Hostile proofs are written out from their header and claims (``tests.tokenfactory.forge``)
and signed by hand, so each test shows exactly what an attacker sends. Time is injected."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.core.dpop import (
    PROOF_LEEWAY,
    PROOF_MAX_AGE,
    ProofError,
    ProofRequest,
    ReplayCache,
    check_proof,
    normalize_htu,
    thumbprint,
    token_hash,
)
from broker.dpop import DPoPKey
from tests.tokenfactory import Identity, b64url, forge

NOW = 1_800_000_000
URL = "https://orders.example/v1/refunds"
TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhZ2VudC1hIn0.c2lnbmF0dXJl"  # any token text


def _key(alg: str = "ES256") -> tuple[DPoPKey, Identity]:
    """An agent's DPoP key, and the same private key as a raw signer for hand-made proofs."""
    private: Any = ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" else None
    private = private or Ed25519PrivateKey.generate()
    return DPoPKey(private, clock=lambda: NOW), Identity(private, None)  # type: ignore[arg-type]


KEY, SIGNER = _key()
OTHER_KEY, OTHER_SIGNER = _key()


def _header(**overrides: Any) -> dict[str, Any]:
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": KEY.public_jwk}
    return {k: v for k, v in {**header, **overrides}.items() if v is not None}


def _claims(**overrides: Any) -> dict[str, Any]:
    claims = {"jti": "p-1", "htm": "POST", "htu": URL, "iat": NOW, "ath": token_hash(TOKEN)}
    return {k: v for k, v in {**claims, **overrides}.items() if v is not None}


def _proof(header: dict[str, Any] | None = None, claims: dict[str, Any] | None = None) -> str:
    return forge(header or _header(), claims or _claims(), SIGNER.sign)


def _check(proof: str, replay: ReplayCache | None = None, now: float = NOW, **req: Any) -> str:
    request = ProofRequest(**{"method": "POST", "url": URL, "access_token": TOKEN, **req})
    return check_proof(proof, request, now=now, replay=ReplayCache() if replay is None else replay)


def _hs256(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """An HMAC 'keyed' by the public key's x: anyone who sees the header can compute it."""
    secret = KEY.public_jwk["x"].encode()
    return forge(header, claims, lambda data: hmac.new(secret, data, hashlib.sha256).digest())


REFUSALS: list[tuple[str, str, Any]] = [
    ("typ is at+jwt", "dpop_wrong_type", lambda: _proof(_header(typ="at+jwt"))),
    ("typ missing", "dpop_wrong_type", lambda: _proof(_header(typ=None))),
    ("alg none", "dpop_algorithm_refused",
     lambda: forge(_header(alg="none"), _claims(), None)),
    ("alg HS256 keyed by the public x", "dpop_algorithm_refused",
     lambda: _hs256(_header(alg="HS256"), _claims())),
    ("alg RS256", "dpop_algorithm_refused", lambda: _proof(_header(alg="RS256"))),
    ("no jwk", "dpop_bad_key", lambda: _proof(_header(jwk=None))),
    ("jwk with its private part", "dpop_bad_key",
     lambda: _proof(_header(jwk={**KEY.public_jwk, "d": b64url(b"\x01" * 32)}))),
    ("ES256 with an Ed25519 jwk", "dpop_bad_key",
     lambda: _proof(_header(jwk={"kty": "OKP", "crv": "Ed25519", "x": b64url(b"\x02" * 32)}))),
    ("wrong key: signed by another key than the jwk", "dpop_bad_signature",
     lambda: forge(_header(), _claims(), OTHER_SIGNER.sign)),
    ("signature over other bytes", "dpop_bad_signature",
     lambda: forge(_header(), _claims(), lambda data: SIGNER.sign(data + b"."))),
    ("claims edited after signing", "dpop_bad_signature",
     lambda: _proof().split(".")[0] + "." + forge(_header(), _claims(htm="GET"), None).split(".")[1]
     + "." + _proof().split(".")[2]),
    ("another method", "dpop_wrong_method", lambda: _proof(claims=_claims(htm="GET"))),
    ("method in lower case", "dpop_wrong_method", lambda: _proof(claims=_claims(htm="post"))),
    ("another URL", "dpop_wrong_url",
     lambda: _proof(claims=_claims(htu="https://orders.example/v1/payouts"))),
    ("another host", "dpop_wrong_url",
     lambda: _proof(claims=_claims(htu="https://evil.example/v1/refunds"))),
    ("http instead of https", "dpop_wrong_url",
     lambda: _proof(claims=_claims(htu="http://orders.example/v1/refunds"))),
    ("wrong ath: another token's hash", "dpop_wrong_ath",
     lambda: _proof(claims=_claims(ath=token_hash(TOKEN + "x")))),
    ("no ath with a token", "dpop_wrong_ath", lambda: _proof(claims=_claims(ath=None))),
    ("stale iat", "dpop_stale",
     lambda: _proof(claims=_claims(iat=NOW - PROOF_MAX_AGE - PROOF_LEEWAY - 1))),
    ("iat in the future", "dpop_stale",
     lambda: _proof(claims=_claims(iat=NOW + PROOF_LEEWAY + 1))),
    ("iat a string", "dpop_malformed", lambda: _proof(claims=_claims(iat=str(NOW)))),
    ("no jti", "dpop_malformed", lambda: _proof(claims=_claims(jti=None))),
    ("jti too long", "dpop_malformed", lambda: _proof(claims=_claims(jti="j" * 129))),
    ("no htu", "dpop_malformed", lambda: _proof(claims=_claims(htu=None))),
    ("not a JWT", "dpop_malformed", lambda: "not.a.jwt"),
    ("too long", "dpop_malformed", lambda: _proof(claims=_claims(pad="x" * 5000))),
]  # fmt: skip


@pytest.mark.parametrize(("name", "code", "make"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_hostile_proof_is_refused(name: str, code: str, make: Any) -> None:
    """Each hostile proof is refused with the code of the check it fails."""
    with pytest.raises(ProofError) as info:
        _check(make())
    assert info.value.code == code, info.value.detail


def test_genuine_proof_yields_its_key_thumbprint() -> None:
    """A proof made by DPoPKey for this request is accepted and names the key (RFC 7638)."""
    assert _check(KEY.proof("POST", URL, TOKEN)) == KEY.thumbprint == thumbprint(KEY.public_jwk)


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_both_algorithms_sign_proofs(alg: str) -> None:
    """ES256 and EdDSA keys make proofs that verify, bound to their own thumbprint."""
    key, _ = _key(alg)
    assert _check(key.proof("POST", URL, TOKEN), jkt=key.thumbprint) == key.thumbprint


def test_proof_by_another_key_than_the_tokens_is_refused() -> None:
    """A valid proof by the thief's own key does not unlock a token bound to the agent's key."""
    with pytest.raises(ProofError) as info:
        _check(OTHER_KEY.proof("POST", URL, TOKEN), jkt=KEY.thumbprint)
    assert info.value.code == "dpop_key_mismatch"


def test_replayed_proof_is_refused_once_used() -> None:
    """The same proof twice: the second is a replay, even within its time window."""
    replay, proof = ReplayCache(), KEY.proof("POST", URL, TOKEN)
    _check(proof, replay)
    with pytest.raises(ProofError) as info:
        _check(proof, replay, now=NOW + 30)
    assert info.value.code == "dpop_replayed"


def test_refused_proof_spends_no_id() -> None:
    """A proof refused for its URL leaves its jti unspent: only good proofs enter the cache."""
    replay, proof = ReplayCache(), KEY.proof("POST", URL, TOKEN)
    with pytest.raises(ProofError):
        _check(proof, replay, url="https://orders.example/other")
    assert len(replay) == 0
    assert _check(proof, replay) == KEY.thumbprint


def test_replay_cache_forgets_ids_once_their_proofs_are_stale() -> None:
    """An id is held until its proof would be stale anyway, then dropped; the bound holds."""
    cache = ReplayCache(capacity=2)
    cache.remember("a", until=NOW + 10, now=NOW)
    cache.remember("b", until=NOW + 20, now=NOW)
    with pytest.raises(ProofError) as full:
        cache.remember("c", until=NOW + 20, now=NOW + 5)
    assert full.value.code == "dpop_replay_cache_full"
    cache.remember("c", until=NOW + 30, now=NOW + 10)  # "a" expired at NOW + 10
    assert len(cache) == 2
    with pytest.raises(ProofError) as again:
        cache.remember("b", until=NOW + 40, now=NOW + 19)
    assert again.value.code == "dpop_replayed"


def test_replay_cache_needs_room() -> None:
    """A cache of no size would refuse every proof: it is a configuration error."""
    with pytest.raises(ValueError, match="at least one"):
        ReplayCache(capacity=0)


@pytest.mark.parametrize(
    ("written", "normal"),
    [
        ("HTTPS://Orders.Example:443/v1/refunds", URL),
        ("https://orders.example/v1/refunds?x=1#frag", URL),
        ("http://localhost:80/v1/credentials", "http://localhost/v1/credentials"),
        ("http://127.0.0.1:8080/a%2fb", "http://127.0.0.1:8080/a%2Fb"),
        ("http://h/%7Euser", "http://h/~user"),
        ("http://h", "http://h/"),
        ("http://[::1]:9/x", "http://[::1]:9/x"),
    ],
)
def test_htu_is_compared_after_normalisation(written: str, normal: str) -> None:
    """RFC 9449 section 4.3: case, default port, percent-encoding, query and fragment."""
    assert normalize_htu(written) == normal


@pytest.mark.parametrize("url", ["ftp://h/x", "/v1/credentials", "http://h:99999/"])
def test_htu_that_is_no_http_url_is_refused(url: str) -> None:
    """A relative or non-HTTP URL, or a bad port, is never equal to a request's URL."""
    with pytest.raises(ProofError) as info:
        normalize_htu(url)
    assert info.value.code == "dpop_wrong_url"


def test_thumbprint_matches_rfc_8037_example() -> None:
    """The Ed25519 thumbprint of RFC 8037 appendix A.3."""
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
