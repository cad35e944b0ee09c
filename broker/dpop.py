"""An agent's DPoP key (RFC 9449): make the proofs that bind its tokens to it.

Give ``broker.client`` a ``DPoPKey`` and every mint carries a proof, so the sidecar writes
the key's thumbprint into the token (``cnf.jkt``). Presenting the token to a tool then
takes ``key.headers(method, url, token)``: ``Authorization: DPoP <token>`` and a fresh
``DPoP`` proof for that very request. A copy of the token without the key is refused.

This module ships with the client and imports nothing else of the package; checking
proofs is ``broker.core.dpop`` (used by ``broker.verify`` and the sidecar). The private key
stays in this object: it is in no repr, and ``public_jwk`` is all that leaves."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["DPoPKey"]

_PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class DPoPKey:
    """A key pair held by one agent process; ES256 (P-256) or EdDSA (Ed25519)."""

    def __init__(self, private: _PrivateKey, *, clock: Callable[[], float] = time.time) -> None:
        if isinstance(private, Ed25519PrivateKey):
            self.alg = "EdDSA"
            self.public_jwk = jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
        elif isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(
            private.curve, ec.SECP256R1
        ):
            self.alg = "ES256"
            self.public_jwk = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
        else:
            raise ValueError("a DPoP key is Ed25519 or ECDSA P-256")
        self._private = private
        self._clock = clock
        members = ("crv", "kty", "x", "y") if self.alg == "ES256" else ("crv", "kty", "x")
        canonical = json.dumps({m: self.public_jwk[m] for m in members}, separators=(",", ":"))
        self.thumbprint = _b64url(hashlib.sha256(canonical.encode()).digest())  # RFC 7638

    @classmethod
    def generate(cls, alg: str = "ES256", *, clock: Callable[[], float] = time.time) -> DPoPKey:
        if alg == "ES256":
            return cls(ec.generate_private_key(ec.SECP256R1()), clock=clock)
        if alg == "EdDSA":
            return cls(Ed25519PrivateKey.generate(), clock=clock)
        raise ValueError(f"DPoP keys are ES256 or EdDSA, not {alg!r}")

    def __repr__(self) -> str:
        return f"DPoPKey({self.alg}, jkt={self.thumbprint})"

    def proof(self, method: str, url: str, access_token: str | None = None) -> str:
        """A one-time proof for ``method url`` (query and fragment are not part of it),
        with ``ath`` when it goes with ``access_token``."""
        parts = urllib.parse.urlsplit(url)
        claims: dict[str, Any] = {
            "jti": uuid.uuid4().hex,
            "htm": method.upper(),
            "htu": urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
            "iat": int(self._clock()),
        }
        if access_token is not None:
            digest = hashlib.sha256(access_token.encode("ascii")).digest()
            claims["ath"] = _b64url(digest)
        header = {"typ": "dpop+jwt", "jwk": self.public_jwk}
        return jwt.encode(claims, self._private, algorithm=self.alg, headers=header)

    def headers(self, method: str, url: str, access_token: str) -> dict[str, str]:
        """The headers that present a DPoP-bound ``access_token`` on ``method url``."""
        return {
            "Authorization": f"DPoP {access_token}",
            "DPoP": self.proof(method, url, access_token),
        }
