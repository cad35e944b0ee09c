"""Keys for the two action-token algorithms, as JOSE sees them (pure, no I/O).

EdDSA is Ed25519 (RFC 8037); ES256 is ECDSA on P-256 with SHA-256, whose JWS signature
is the raw ``r || s`` (RFC 7518 section 3.4), not the DER that ``cryptography`` returns."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from broker.core.claims import EDDSA, ES256

PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey
_ECDSA = ec.ECDSA(hashes.SHA256())


def new_private_key(alg: str) -> PrivateKey:
    if alg == EDDSA:
        return Ed25519PrivateKey.generate()
    if alg == ES256:
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"algorithm {alg!r} is not one of {EDDSA}, {ES256}")


def key_matches(alg: str, key: object) -> bool:
    """Whether a certificate's public key is the kind ``alg`` needs (no RSA, no other curve)."""
    if alg == EDDSA:
        return isinstance(key, Ed25519PublicKey)
    return (
        alg == ES256
        and isinstance(key, ec.EllipticCurvePublicKey)
        and (isinstance(key.curve, ec.SECP256R1))
    )


def sign_raw(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, Ed25519PrivateKey):
        return key.sign(data)
    r, s = decode_dss_signature(key.sign(data, _ECDSA))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_jwk(key: PublicKey, *, kid: str, alg: str, x5c: Sequence[str] = ()) -> dict[str, Any]:
    """The public JWK with ``kid``, ``alg``, ``use: sig`` and the certificate chain, if any."""
    base: dict[str, Any]
    if isinstance(key, Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        base = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}
    else:
        numbers = key.public_numbers()
        base = {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64url(numbers.x.to_bytes(32, "big")),
            "y": _b64url(numbers.y.to_bytes(32, "big")),
        }
    jwk = {**base, "kid": kid, "alg": alg, "use": "sig"}
    if x5c:
        jwk["x5c"] = list(x5c)
    return jwk


# A retired key stays published this long after the last token it signed expired: more
# than any verifier's clock leeway (``broker.verify`` allows at most 30 s).
KEY_LEEWAY = 60


def published_until(entry: dict[str, Any]) -> int:
    """When a published key may go: its last token's expiry (or its certificate's, while it
    may still sign) plus ``KEY_LEEWAY``."""
    not_after = int(entry.get("not_after", 0))
    retire = entry.get("retire_after")
    last = min(not_after, int(retire)) if isinstance(retire, int) else not_after
    return last + KEY_LEEWAY


def merge_published(
    old: dict[str, Any], new: Sequence[dict[str, Any]], now: float
) -> dict[str, Any]:
    """The agent's published-keys document after adding ``new`` (by ``kid``) and dropping
    keys whose tokens have all expired."""
    keys = dict(old.get("keys") or {})
    for entry in new:
        keys[str(entry["jwk"]["kid"])] = entry
    return {"keys": {kid: e for kid, e in keys.items() if published_until(e) > now}}


def merge_status(
    old: dict[str, Any], new: Mapping[str, dict[str, Any]], now: float
) -> dict[str, Any]:
    """The agent's status-list document after replacing ``new`` lists (by id) and dropping
    lists whose tokens have all expired (no token outlives its key's certificate)."""
    lists = dict(old.get("lists") or {})
    lists.update(new)
    return {
        "lists": {
            k: v
            for k, v in lists.items()
            if isinstance(v, Mapping) and int(v.get("not_after", 0)) + KEY_LEEWAY > now
        }
    }
