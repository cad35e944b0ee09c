"""Verify an action token, for tools and gateways.

Trust comes only from the broker CA that Vault publishes: the token's ``x5c`` certificate
must be issued directly by that CA, be valid now, and name the token's subject as its
common name; the token's signature is then checked with that certificate's key. A key
named in the token (``jwk``, ``jku``) is never used. EdDSA and ES256 are the only algorithms
accepted (the certificate's key must be of the kind the ``alg`` names), and ``typ``
(RFC 9068's ``at+jwt``), ``iss``, ``aud``, ``exp``/``nbf``/``iat`` (bounded leeway), the action, the
input binding and revocation are all checked. Every refusal is a ``VerificationError``
whose ``code`` says which check failed.

Hygiene before any parsing: a token longer than ``max_token_bytes`` is refused unread, and
only canonical base64url is accepted (three unpadded segments that re-encode to themselves),
so one token has one spelling and a replay cache keyed on it cannot be dodged.

An agent's certificate proves who signed, not what it may sign for. With ``manifests``, the
token's action must be in its agent's manifest with a jwt credential for this very audience,
and ``exp - iat`` at most that action's TTL; without, ``exp - iat`` is at most the broker-wide
``MAX_LIFETIME``. ``accept_agents`` lets a gateway name the only agents it takes tokens from.

A token bound to its holder's key (``cnf.jkt``, RFC 9449) is accepted only with a DPoP
proof for this very request (``dpop=DPoPProof(header, method, url)``), checked by
``broker.core.dpop`` against this verifier's replay cache; a proof with an unbound token is
refused, and so is an unbound token for an action whose manifest requires DPoP."""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from broker.core.canonical import inputs_digest
from broker.core.claims import (
    ALGORITHMS,
    DEFAULT_ISSUER,
    REQUIRED_CLAIMS,
    TOKEN_TYPE,
    ActionClaims,
    StatusRef,
)
from broker.core.dpop import PROOF_MAX_AGE, ProofError, ProofRequest, ReplayCache, check_proof
from broker.core.errors import VerificationError
from broker.core.jwk import key_matches
from broker.core.manifest import MAX_CREDENTIAL_TTL_SECONDS
from broker.core.manifesttypes import AGENT_ID_PATTERN

MAX_LEEWAY = 30
# A genuine token (a header with one certificate, the claims) is about 1.5 KB: 16 KiB leaves
# room for growth and refuses a 10 MB token in microseconds instead of seconds.
MAX_TOKEN_BYTES = 16 * 1024
# Without manifests, no token may live longer than the longest TTL a manifest can grant.
MAX_LIFETIME = MAX_CREDENTIAL_TTL_SECONDS
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_AGENT_ID = re.compile(AGENT_ID_PATTERN)


class RevocationView(Protocol):
    """What a verifier asks of the control state; returns why a token is revoked, or None."""

    def token_revoked(self, claims: ActionClaims) -> str | None: ...


@dataclass(frozen=True)
class ActionScope:
    """What an agent's manifest lets its tokens say for one action."""

    audience: str
    ttl: int
    dpop: bool = False  # tokens must be bound to a key (cnf.jkt) and come with a proof


@dataclass(frozen=True)
class DPoPProof:
    """How a bound token was presented: the request's ``DPoP`` header, method and full URL."""

    proof: str
    method: str
    url: str


class ManifestView(Protocol):
    """The published manifests: the scope of ``agent``'s jwt ``action``, or None when its
    manifest has no such action (or no manifest is published for it)."""

    def scope_of(self, agent: str, action: str) -> ActionScope | None: ...


class StatusView(Protocol):
    """A token status list reader (``broker.status_client.StatusListClient``): whether the
    token's bit is set; raises ``VerificationError`` when that cannot be known."""

    def revoked(self, ref: StatusRef) -> bool: ...


def _fail(code: str, detail: str) -> VerificationError:
    return VerificationError(detail, code=code)


class Verifier:
    def __init__(
        self,
        ca_pems: Sequence[str],
        *,
        leeway: int = 5,
        revocations: RevocationView | None = None,
        clock: Callable[[], float] = time.time,
        manifests: ManifestView | None = None,
        accept_agents: Collection[str] | None = None,
        max_token_bytes: int = MAX_TOKEN_BYTES,
        issuer: str = DEFAULT_ISSUER,
        status: StatusView | None = None,
        replay: ReplayCache | None = None,
        dpop_max_age: int = PROOF_MAX_AGE,
    ) -> None:
        if not 0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY} seconds")
        if accept_agents is not None and not accept_agents:
            raise ValueError("accept_agents is empty: it would accept no agent (pass None for any)")
        self._manifests = manifests
        self._accept = None if accept_agents is None else frozenset(accept_agents)
        self._max_bytes = max_token_bytes
        self._cas = [x509.load_pem_x509_certificate(p.encode()) for p in ca_pems]
        self._leeway = leeway
        self._revocations = revocations
        self._clock = clock
        self._issuer = issuer
        self._status = status
        # Every verifier remembers proof ids: without a cache a captured proof would replay.
        self._replay = replay if replay is not None else ReplayCache()
        self._dpop_max_age = dpop_max_age

    def verify(
        self,
        token: str,
        *,
        audience: str,
        action: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        dpop: DPoPProof | None = None,
    ) -> ActionClaims:
        check_compact_form(token, self._max_bytes)
        header = self._header(token)
        cert = self._certificate(header)
        payload = self._decode(token, cert, audience, header["alg"])
        self._check_times(payload)
        try:
            claims = ActionClaims.from_payload(payload)
        except (KeyError, TypeError, ValueError) as exc:
            raise _fail("token_invalid", "a claim has the wrong type") from exc
        self._check_subject(cert, claims)
        self._check_accepted(claims)
        self._check_scope(claims, payload)
        if action is not None and claims.action != action:
            raise _fail("wrong_action", f"token is for action {claims.action!r}, not {action!r}")
        if (
            inputs is not None
            and inputs_digest(claims.agent, claims.action, inputs) != claims.inputs_hash
        ):
            raise _fail(
                "inputs_mismatch", "the call's inputs are not the inputs the token was minted for"
            )
        self._check_binding(token, claims, dpop)
        reason = self._revocations.token_revoked(claims) if self._revocations else None
        if reason:
            raise _fail("token_revoked", reason)
        if self._status is not None:
            self._check_status(claims)
        return claims

    def _check_binding(self, token: str, claims: ActionClaims, dpop: DPoPProof | None) -> None:
        check_binding(
            token, claims.key_thumbprint, dpop, now=self._clock(), replay=self._replay,
            max_age=self._dpop_max_age, leeway=self._leeway,
        )  # fmt: skip

    def _check_status(self, claims: ActionClaims) -> None:
        """The token status list, for verifiers that have no Vault token (fails closed)."""
        assert self._status is not None
        if claims.status is None:
            raise _fail("status_missing", "the token names no status list to check")
        if self._status.revoked(claims.status):
            raise _fail("token_revoked", f"token {claims.jti} is revoked in its status list")

    def _header(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _fail("token_malformed", "not a JWT") from exc
        if header.get("alg") not in ALGORITHMS:
            raise _fail("algorithm_refused", f"algorithm {header.get('alg')!r} is not allowed")
        # RFC 9068 section 4: "at+jwt", or its media-type spelling.
        if header.get("typ") not in (TOKEN_TYPE, f"application/{TOKEN_TYPE}"):
            raise _fail("wrong_type", f"token type {header.get('typ')!r} is not {TOKEN_TYPE}")
        for name in ("jwk", "jku", "x5u"):
            if name in header:
                raise _fail(
                    "untrusted_key", f"header {name!r} is refused: keys come from Vault only"
                )
        return header

    def _certificate(self, header: Mapping[str, Any]) -> x509.Certificate:
        chain = header.get("x5c")
        if not isinstance(chain, list) or len(chain) != 1 or not isinstance(chain[0], str):
            raise _fail("untrusted_key", "x5c must hold exactly one certificate")
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True))
        except (ValueError, binascii.Error) as exc:
            raise _fail("untrusted_key", "x5c certificate does not parse") from exc
        if not any(self._issued_by(cert, ca) for ca in self._cas):
            raise _fail("untrusted_key", "certificate is not issued by the broker CA")
        now = self._clock()
        if not (
            cert.not_valid_before_utc.timestamp() - self._leeway
            <= now
            <= cert.not_valid_after_utc.timestamp() + self._leeway
        ):
            raise _fail("certificate_expired", "the signing certificate is not valid now")
        return cert

    @staticmethod
    def _check_key_kind(cert: x509.Certificate, alg: str) -> None:
        if not key_matches(alg, cert.public_key()):
            raise _fail("algorithm_refused", f"the signing certificate's key is not for {alg}")

    @staticmethod
    def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def _decode(
        self, token: str, cert: x509.Certificate, audience: str, alg: str
    ) -> dict[str, Any]:
        self._check_key_kind(cert, alg)
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                cert.public_key(),  # type: ignore[arg-type]
                algorithms=[alg],  # one of ALGORITHMS, checked in _header
                audience=audience,
                issuer=self._issuer,
                # Times (and the leeway) are checked against the injected clock in
                # _check_times, never by pyjwt, which would read the real clock; so pyjwt
                # never raises ExpiredSignatureError or ImmatureSignatureError here.
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "strict_aud": True,
                },
            )
        except jwt.InvalidAudienceError as exc:
            raise _fail("wrong_audience", f"token is not for audience {audience!r}") from exc
        except jwt.InvalidSignatureError as exc:
            raise _fail("bad_signature", "signature does not verify") from exc
        except jwt.PyJWTError as exc:
            raise _fail("token_invalid", f"token refused: {exc}") from exc
        return payload

    def _check_times(self, payload: dict[str, Any]) -> None:
        now, leeway = self._clock(), self._leeway
        for name in ("exp", "nbf", "iat"):
            value = payload[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise _fail("token_invalid", f"claim {name!r} must be an integer time")
        if payload["exp"] <= now - leeway:
            raise _fail("token_expired", "token has expired")
        if payload["nbf"] > now + leeway or payload["iat"] > now + leeway:
            raise _fail("token_not_yet_valid", "token is not valid yet")

    @staticmethod
    def _check_subject(cert: x509.Certificate, claims: ActionClaims) -> None:
        if not _AGENT_ID.fullmatch(claims.agent):
            # Vault's PKI role compares names without regard to case: only the canonical
            # spelling is an agent (kill flags and revocations are filed under it).
            raise _fail("untrusted_key", "the token's agent is not a canonical agent id")
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names or names[0].value != claims.agent:
            raise _fail("untrusted_key", "certificate does not speak for the token's agent")

    def _check_accepted(self, claims: ActionClaims) -> None:
        if self._accept is not None and claims.agent not in self._accept:
            raise _fail("agent_not_accepted", f"this gateway does not accept {claims.agent!r}")

    def _check_scope(self, claims: ActionClaims, payload: Mapping[str, Any]) -> None:
        """The token says no more than its agent's manifest: action, audience, lifetime."""
        lifetime = payload["exp"] - payload["iat"]
        bound = MAX_LIFETIME
        if self._manifests is not None:
            scope = self._manifests.scope_of(claims.agent, claims.action)
            if scope is None:
                raise _fail(
                    "outside_manifest",
                    f"{claims.action!r} is not a token action in {claims.agent!r}'s manifest",
                )
            if scope.audience != claims.audience:
                raise _fail(
                    "outside_manifest",
                    f"{claims.agent!r}'s manifest gives {claims.action!r} audience "
                    f"{scope.audience!r}, not {claims.audience!r}",
                )
            bound = scope.ttl
            if scope.dpop and "cnf" not in payload:
                raise _fail(
                    "token_not_bound",
                    f"{claims.agent!r}'s manifest requires DPoP for {claims.action!r}",
                )
        if lifetime > bound:
            raise _fail("lifetime_too_long", f"exp - iat is {lifetime} s, more than {bound} s")


def check_binding(
    token: str,
    jkt: str | None,
    dpop: DPoPProof | None,
    *,
    now: float,
    replay: ReplayCache,
    max_age: int = PROOF_MAX_AGE,
    leeway: int = 5,
) -> None:
    """A token bound to key ``jkt`` (its ``cnf.jkt``) needs a proof by that key for this
    request; an unbound one (``jkt`` None) needs none and takes none. For gateways that
    verified the token by the issuer's JWKS (pyjwt's PyJWKClient, say) and check DPoP here."""
    if jkt is None:
        if dpop is not None:
            raise _fail("token_not_bound", "a DPoP proof came with a token bound to no key")
        return
    if dpop is None:
        raise _fail("dpop_required", "the token is bound to a key (cnf.jkt): send a DPoP proof")
    request = ProofRequest(dpop.method, dpop.url, token, jkt)
    try:
        check_proof(dpop.proof, request, now=now, replay=replay, max_age=max_age, leeway=leeway)
    except ProofError as exc:
        raise _fail(exc.code, exc.detail) from exc


def check_compact_form(token: str, max_bytes: int = MAX_TOKEN_BYTES) -> None:
    """Refuse before parsing: too long, or not three canonical unpadded base64url segments."""
    if len(token) > max_bytes:
        raise _fail("token_too_large", f"token is longer than {max_bytes} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise _fail("token_malformed", "not a compact JWS of three segments")
    for name, part in zip(("header", "payload", "signature"), parts, strict=True):
        if not _canonical_base64url(part):
            raise _fail("token_malformed", f"the {name} is not canonical unpadded base64url")


def _canonical_base64url(part: str) -> bool:
    """Only the alphabet, no padding, and no stray bits in the last character."""
    if not _BASE64URL.fullmatch(part) or len(part) % 4 == 1:
        return False
    raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") == part
