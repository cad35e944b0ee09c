"""Verify an action token, for tools and gateways.

Trust comes only from the broker CA that Vault publishes: the token's ``x5c`` certificate
must be issued directly by that CA, be valid now, and name the token's subject as its
common name; the token's signature is then checked with that certificate's key. A key
named in the token (``jwk``, ``jku``) is never used. EdDSA and ES256 are the only algorithms
accepted (the certificate's key must be of the kind the ``alg`` names), and ``typ``
(RFC 9068's ``at+jwt``), ``iss``, ``aud``, ``exp``/``nbf``/``iat`` (bounded leeway), the action, the
input binding and revocation are all checked. Every refusal is a ``VerificationError``
whose ``code`` says which check failed."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from broker.canonical import inputs_digest
from broker.claims import (
    ALGORITHMS,
    DEFAULT_ISSUER,
    REQUIRED_CLAIMS,
    TOKEN_TYPE,
    ActionClaims,
    StatusRef,
)
from broker.errors import VerificationError
from broker.jwk import key_matches

MAX_LEEWAY = 30


class RevocationView(Protocol):
    """What a verifier asks of the control state; returns why a token is revoked, or None."""

    def token_revoked(self, claims: ActionClaims) -> str | None: ...


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
        issuer: str = DEFAULT_ISSUER,
        status: StatusView | None = None,
    ) -> None:
        if not 0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY} seconds")
        self._cas = [x509.load_pem_x509_certificate(p.encode()) for p in ca_pems]
        self._leeway = leeway
        self._revocations = revocations
        self._clock = clock
        self._issuer = issuer
        self._status = status

    def verify(
        self,
        token: str,
        *,
        audience: str,
        action: str | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> ActionClaims:
        header = self._header(token)
        cert = self._certificate(header)
        payload = self._decode(token, cert, audience, header["alg"])
        self._check_times(payload)
        try:
            claims = ActionClaims.from_payload(payload)
        except (KeyError, TypeError, ValueError) as exc:
            raise _fail("token_invalid", "a claim has the wrong type") from exc
        self._check_subject(cert, claims)
        if action is not None and claims.action != action:
            raise _fail("wrong_action", f"token is for action {claims.action!r}, not {action!r}")
        if (
            inputs is not None
            and inputs_digest(claims.agent, claims.action, inputs) != claims.inputs_hash
        ):
            raise _fail(
                "inputs_mismatch", "the call's inputs are not the inputs the token was minted for"
            )
        reason = self._revocations.token_revoked(claims) if self._revocations else None
        if reason:
            raise _fail("token_revoked", reason)
        if self._status is not None:
            self._check_status(claims)
        return claims

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
                leeway=self._leeway,
                # Times are checked against the injected clock in _check_times, not pyjwt's.
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "strict_aud": True,
                },
            )
        except jwt.ExpiredSignatureError as exc:
            raise _fail("token_expired", "token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise _fail("wrong_audience", f"token is not for audience {audience!r}") from exc
        except jwt.ImmatureSignatureError as exc:
            raise _fail("token_not_yet_valid", "token is not valid yet") from exc
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
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names or names[0].value != claims.agent:
            raise _fail("untrusted_key", "certificate does not speak for the token's agent")
