"""Checking RFC 9449 DPoP proofs (pure: the time is passed in, nothing is read or sent).

A DPoP-bound token carries ``cnf.jkt``, the RFC 7638 thumbprint of a public key its holder
keeps. Each use of the token comes with a proof: a JWT of ``typ: dpop+jwt`` signed by that
key, whose header embeds the public key and whose claims name the request (``htm``,
``htu``), the time (``iat``), a unique id (``jti``) and the token's hash (``ath``).
``check_proof`` verifies all of it; a ``ReplayCache`` remembers each proof id for as long
as its ``iat`` would still be accepted, so a proof is good once.

Only ES256 and EdDSA sign proofs (never ``none``, never an HMAC: the key in the header is
public, so a MAC "keyed" by it proves nothing), and the embedded key must be of the curve
the ``alg`` names and carry no private part. Every refusal is a ``ProofError`` whose
``code`` says which check failed. Proof creation, for agents, is in ``broker.dpop``."""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
import re
import string
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.core.claims import EDDSA, ES256

PROOF_TYPE = "dpop+jwt"
PROOF_ALGORITHMS = (ES256, EDDSA)
# How old a proof's iat may be (RFC 9449 section 11.1 leaves the window to the server; a
# proof is made just before its request, so seconds are enough) and how far ahead of the
# verifier's clock it may be.
PROOF_MAX_AGE = 60
PROOF_LEEWAY = 5
# A genuine proof is about 500 bytes (header with a P-256 key, six claims, a signature).
MAX_PROOF_BYTES = 4096
MAX_JTI_LENGTH = 128
REPLAY_CACHE_SIZE = 100_000
# Members of a public JWK that enter its thumbprint (RFC 7638 section 3.2), by kty.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
_KEY_FOR_ALG = {ES256: ("EC", "P-256"), EDDSA: ("OKP", "Ed25519")}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "k"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


class ProofError(ValueError):
    """A proof refused; ``code`` is stable (``dpop_*``), ``detail`` says what was wrong."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638: SHA-256 over the required members, sorted, without whitespace."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None or not all(isinstance(jwk.get(m), str) for m in members):
        raise ProofError("dpop_bad_key", "the proof's jwk is not an EC or OKP public key")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def token_hash(token: str) -> str:
    """``ath``: base64url of SHA-256 over the access token's ASCII (RFC 9449 section 4.2)."""
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def normalize_htu(url: str) -> str:
    """The URL as ``htu`` is compared (RFC 9449 section 4.3, RFC 3986 section 6.2.2-6.2.3):
    lower-case scheme and host, no default port, ``/`` for an empty path, percent-encodings
    in upper case, and neither query nor fragment."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ProofError("dpop_wrong_url", f"{url!r} is not a URL") from exc
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        raise ProofError("dpop_wrong_url", f"{url!r} is not an absolute http(s) URL")
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = _PERCENT.sub(_percent_normal, parts.path or "/")
    return f"{scheme}://{netloc}{path}"


def _percent_normal(match: re.Match[str]) -> str:
    """An encoded unreserved character decoded, any other encoding in upper case."""
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else match.group(0).upper()


class ReplayCache:
    """Proof ids seen, each kept until its proof would be refused as stale anyway.

    Bounded: when ``capacity`` live ids are held, a new proof is refused
    (``dpop_replay_cache_full``) rather than an id forgotten early, which would reopen its
    replay. Keyed by the proof's key and jti, so one holder cannot use up another's ids.
    Safe to share between threads."""

    def __init__(self, capacity: int = REPLAY_CACHE_SIZE) -> None:
        if capacity < 1:
            raise ValueError("a replay cache needs room for at least one proof id")
        self.capacity = capacity
        self._until: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._until)

    def remember(self, key: str, until: float, now: float) -> None:
        """Record ``key`` until ``until``; ProofError if it is already held (a replay)."""
        with self._lock:
            self._forget_expired(now)
            if key in self._until:
                raise ProofError("dpop_replayed", "this proof (its jti) was already used")
            if len(self._until) >= self.capacity:
                raise ProofError(
                    "dpop_replay_cache_full",
                    f"{self.capacity} proofs are live; try again in a few seconds",
                )
            self._until[key] = until
            heapq.heappush(self._expiry, (until, key))

    def _forget_expired(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, key = heapq.heappop(self._expiry)
            self._until.pop(key, None)


@dataclass(frozen=True)
class ProofRequest:
    """What a proof must speak for: the request's method and URL, and (when the proof
    comes with an access token) the token and the key it is bound to."""

    method: str
    url: str
    access_token: str | None = None
    jkt: str | None = None


def check_proof(
    proof: str,
    request: ProofRequest,
    *,
    now: float,
    replay: ReplayCache,
    max_age: int = PROOF_MAX_AGE,
    leeway: int = PROOF_LEEWAY,
) -> str:
    """The thumbprint of the key that signed ``proof``, once every check passed; the proof's
    id is then spent in ``replay``. ProofError otherwise, changing nothing."""
    if len(proof) > MAX_PROOF_BYTES:
        raise ProofError("dpop_malformed", f"the proof is longer than {MAX_PROOF_BYTES} bytes")
    header = _header(proof)
    jwk = header["jwk"]
    claims = _signed_claims(proof, jwk, header["alg"])
    jkt = thumbprint(jwk)
    if request.jkt is not None and jkt != request.jkt:
        raise ProofError("dpop_key_mismatch", "the proof is not signed by the token's key")
    _check_request(claims, request)
    iat = _check_time(claims, now, max_age, leeway)
    replay.remember(f"{jkt}:{claims['jti']}", iat + max_age + leeway, now)
    return jkt


def _header(proof: str) -> dict[str, Any]:
    # pyjwt on first use: a sidecar whose agents send no proofs does not carry it (11 modules).
    import jwt

    try:
        header = jwt.get_unverified_header(proof)
    except jwt.PyJWTError as exc:
        raise ProofError("dpop_malformed", "the proof is not a JWT") from exc
    if header.get("typ") != PROOF_TYPE:
        raise ProofError("dpop_wrong_type", f"proof type {header.get('typ')!r} is not {PROOF_TYPE}")
    alg = header.get("alg")
    if alg not in PROOF_ALGORITHMS:
        raise ProofError("dpop_algorithm_refused", f"proof algorithm {alg!r} is not allowed")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict) or _PRIVATE_MEMBERS & jwk.keys():
        raise ProofError("dpop_bad_key", "the proof's header must hold a public jwk")
    if (jwk.get("kty"), jwk.get("crv")) != _KEY_FOR_ALG[alg]:
        raise ProofError("dpop_bad_key", f"the proof's jwk is not a key for {alg}")
    return header


def _signed_claims(proof: str, jwk: dict[str, Any], alg: str) -> dict[str, Any]:
    import jwt

    try:
        key = jwt.PyJWK(jwk, algorithm=alg).key
    except jwt.PyJWTError as exc:
        raise ProofError("dpop_bad_key", "the proof's jwk does not load") from exc
    try:
        claims: dict[str, Any] = jwt.decode(
            proof,
            key,
            algorithms=[alg],
            # Time is checked against the caller's clock in _check_time; a proof has no aud.
            options={
                "require": ["jti", "htm", "htu", "iat"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
            },
        )
    except jwt.InvalidSignatureError as exc:
        raise ProofError("dpop_bad_signature", "the proof's signature does not verify") from exc
    except jwt.PyJWTError as exc:
        raise ProofError("dpop_malformed", f"proof refused: {exc}") from exc
    jti = claims["jti"]
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH:
        raise ProofError("dpop_malformed", f"jti must be a string of 1 to {MAX_JTI_LENGTH} chars")
    return claims


def _check_request(claims: Mapping[str, Any], request: ProofRequest) -> None:
    if claims["htm"] != request.method:
        raise ProofError(
            "dpop_wrong_method", f"the proof is for {claims['htm']!r}, not {request.method!r}"
        )
    htu = claims["htu"]
    if not isinstance(htu, str) or normalize_htu(htu) != normalize_htu(request.url):
        raise ProofError("dpop_wrong_url", f"the proof is for {htu!r}, not this request's URL")
    if request.access_token is not None and claims.get("ath") != token_hash(request.access_token):
        raise ProofError("dpop_wrong_ath", "the proof's ath is not the hash of this token")


def _check_time(claims: Mapping[str, Any], now: float, max_age: int, leeway: int) -> int:
    iat = claims["iat"]
    if isinstance(iat, bool) or not isinstance(iat, int):
        raise ProofError("dpop_malformed", "iat must be an integer time")
    if iat < now - max_age - leeway:
        raise ProofError("dpop_stale", f"the proof was made more than {max_age} s ago")
    if iat > now + leeway:
        raise ProofError("dpop_stale", "the proof is dated in the future")
    return iat
