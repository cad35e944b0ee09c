"""The sidecar's action-token signer: an Ed25519 key held in memory only, certified by
Vault's PKI for minutes.

Why not transit: a Vault round trip per token caps minting near Vault's own rate; a key
certified for minutes signs locally at tens of thousands per second while Vault stays
the root of trust (verifiers trust only the CA, and the certificate travels in ``x5c``).
A token never outlives the certificate that vouches for it: ``mint`` caps ``exp`` at the
certificate's expiry, and the key is replaced well before that."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from broker.claims import ALGORITHM, TOKEN_TYPE, action_payload
from broker.vault.pki import SignedCert

# Ask Vault for a new certificate once less than this much of the current one is left.
RENEW_WHEN_LEFT = 10 * 60
CERT_TTL = "15m"

CertIssuer = Callable[[str, str], SignedCert]  # (csr_pem, ttl) -> certificate
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def _b64(data: str | bytes) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


@dataclass(frozen=True)
class _Key:
    private: Ed25519PrivateKey = field(repr=False)
    # The JWS header is the same for every token of a key: encoded once, at rotation.
    # (Compact serialisation by hand: pyjwt's encode cost a fifth of the mint path.)
    header: bytes
    x5c: str
    serial: str
    not_after: int
    generation: int


@dataclass(frozen=True)
class MintedToken:
    token: str = field(repr=False)
    jti: str
    expires_at: int
    serial: str


class ActionTokenSigner:
    """Thread-safe; ``rotate`` is called from a worker thread, ``mint`` from the event loop."""

    def __init__(self, agent: str, issue_cert: CertIssuer) -> None:
        self.agent = agent
        self._issue_cert = issue_cert
        self._key: _Key | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        serial = self._key.serial if self._key else None
        return f"ActionTokenSigner(agent={self.agent!r}, serial={serial!r})"

    @property
    def generation(self) -> int:
        return self._key.generation if self._key else -1

    def needs_rotation(self, now: float, generation: int) -> bool:
        key = self._key
        return key is None or key.generation != generation or key.not_after - now < RENEW_WHEN_LEFT

    def rotate(self, generation: int) -> str:
        """A fresh key and certificate; returns the new certificate's serial."""
        private = Ed25519PrivateKey.generate()
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.agent)]))
            .sign(private, None)
        )
        signed = self._issue_cert(csr.public_bytes(serialization.Encoding.PEM).decode(), CERT_TTL)
        cert = x509.load_pem_x509_certificate(signed.certificate_pem.encode())
        der = cert.public_bytes(serialization.Encoding.DER)
        x5c = base64.b64encode(der).decode()
        header = {"alg": ALGORITHM, "kid": signed.serial, "typ": TOKEN_TYPE, "x5c": [x5c]}
        key = _Key(
            header=_b64(json.dumps(header, separators=(",", ":"))),
            private=private,
            x5c=x5c,
            serial=signed.serial,
            not_after=int(cert.not_valid_after_utc.timestamp()),
            generation=generation,
        )
        with self._lock:
            self._key = key
        return key.serial

    def mint(self, now: float, ttl: int, *, jti: str | None = None, **claims: Any) -> MintedToken:
        key = self._key
        if key is None:
            raise RuntimeError("the signer has no certified key yet")
        issued = int(now)
        if key.not_after - issued < 1:
            raise RuntimeError("the signer's certificate has expired; rotate first")
        ttl = max(1, min(ttl, key.not_after - issued))
        jti = jti or uuid.uuid4().hex
        payload = action_payload(
            agent=self.agent, now=issued, ttl=ttl, jti=jti, generation=key.generation, **claims
        )
        signing_input = key.header + b"." + _b64(_COMPACT.encode(payload))
        token = (signing_input + b"." + _b64(key.private.sign(signing_input))).decode("ascii")
        return MintedToken(token=token, jti=jti, expires_at=issued + ttl, serial=key.serial)
