"""What ``broker issuer`` publishes, computed from what it read in Vault (pure, no I/O).

A sidecar publishes its own public keys, but the issuer serves a key only if it can vouch
for it as ``broker.verify`` would: the JWK's first ``x5c`` certificate is issued directly by
the broker CA, names the publishing agent as its common name, holds exactly the JWK's
public key of the kind its ``alg`` names, and the key's generation is not revoked. So a raw
``bao kv put`` of a key that Vault's PKI never certified, or one agent's login publishing a
key under another agent's name, publishes nothing."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from broker.core.claims import ALGORITHMS
from broker.core.dpop import PROOF_ALGORITHMS
from broker.core.jwk import key_matches, public_jwk, published_until

JWKS_MAX_AGE = 30  # seconds a gateway may cache the JWKS; below signing.PREPUBLISH


@dataclass(frozen=True)
class Skipped:
    agent: str
    kid: str
    why: str


def live_jwks(
    docs: Mapping[str, Mapping[str, Any]],
    ca: x509.Certificate,
    *,
    min_generation: int,
    now: float,
    skipped: list[Skipped] | None = None,
) -> list[dict[str, Any]]:
    """The JWKs to serve, sorted by ``kid``: every published key still needed and vouched for."""
    keys: dict[str, dict[str, Any]] = {}
    for agent, kid, entry in _entries(docs):
        why = _why_not(agent, kid, entry, ca, min_generation=min_generation, now=now)
        if why is None:
            keys[kid] = dict(entry["jwk"])
        elif skipped is not None:
            skipped.append(Skipped(agent, kid, why))
    return [keys[k] for k in sorted(keys)]


def _entries(docs: Mapping[str, Mapping[str, Any]]) -> Iterator[tuple[str, str, Any]]:
    for agent, doc in sorted(docs.items()):
        keys = doc.get("keys")
        if isinstance(keys, Mapping):
            for kid, entry in keys.items():
                yield agent, str(kid), entry


def _why_not(
    agent: str, kid: str, entry: Any, ca: x509.Certificate, *, min_generation: int, now: float
) -> str | None:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("jwk"), Mapping):
        return "not a published-key record"
    gen = entry.get("gen")
    if isinstance(gen, bool) or not isinstance(gen, int):
        return "no integer generation"
    if gen < min_generation:
        return f"generation {gen} was revoked"
    try:
        if published_until(dict(entry)) <= now:
            return "every token it signed has expired"
    except (TypeError, ValueError):
        return "bad not_after or retire_after"
    return _jwk_problem(kid, entry["jwk"]) or _certificate_problem(agent, kid, entry["jwk"], ca)


def _jwk_problem(kid: str, jwk: Mapping[str, Any]) -> str | None:
    chain = jwk.get("x5c")
    if jwk.get("alg") not in ALGORITHMS:
        return f"algorithm {jwk.get('alg')!r} is not allowed"
    if jwk.get("kid") != kid or jwk.get("use") != "sig":
        return "kid or use does not match the record"
    if not isinstance(chain, list) or not chain or not isinstance(chain[0], str):
        return "no x5c certificate"
    return None


def _certificate_problem(
    agent: str, kid: str, jwk: Mapping[str, Any], ca: x509.Certificate
) -> str | None:
    alg, chain = str(jwk["alg"]), jwk["x5c"]
    try:
        cert = x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True))
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, binascii.Error, InvalidSignature):
        return "x5c is not a certificate issued by the broker CA"
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or names[0].value != agent:
        return "certificate does not name the publishing agent"
    key = cert.public_key()
    if not key_matches(alg, key) or dict(jwk) != public_jwk(key, kid=kid, alg=alg, x5c=chain):  # type: ignore[arg-type]
        return f"the JWK is not the certificate's {alg} key"
    return None


def metadata(issuer: str) -> dict[str, Any]:
    """OpenID Provider / OAuth 2.0 Authorization Server metadata (RFC 8414) for an issuer
    that only signs access tokens: enough for discovery-driven verifiers, nothing more."""
    return {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(ALGORITHMS),
        "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "access_token_signing_alg_values_supported": list(ALGORITHMS),
        # RFC 9449 section 5.1: the proofs that bind tokens to their holders' keys.
        "dpop_signing_alg_values_supported": list(PROOF_ALGORITHMS),
        "grant_types_supported": [],
        "scopes_supported": [],
    }
