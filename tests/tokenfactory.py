"""A throwaway in-process CA standing in for Vault's PKI, and helpers that build action
tokens by hand, byte by byte, so an attack test can write its hostile token out in full.

Only for unit tests of signing and verification: integration tests use the real OpenBao."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from broker.core.canonical import inputs_digest
from broker.core.claims import ALGORITHM, DEFAULT_ISSUER, TOKEN_TYPE, action_payload
from broker.vault.layout import CA_COMMON_NAME
from broker.vault.pki import SignedCert

AGENT = "agent-a"
OTHER_AGENT = "agent-b"
AUDIENCE = "orders-api"
ACTION = "orders.refund"
INPUTS = {"order_id": "o-123", "amount_usd": 40}

PublicKeyTypes = Any  # the cryptography public key union is long; these helpers accept any
PrivateKeyTypes = Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


def _seconds(ttl: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return int(ttl[:-1]) * units[ttl[-1]] if ttl[-1] in units else int(ttl)


def _hash_for(key: PrivateKeyTypes) -> hashes.SHA256 | None:
    return None if isinstance(key, Ed25519PrivateKey) else hashes.SHA256()


def self_signed(
    key: PrivateKeyTypes, common_name: str, not_before: float, not_after: float
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(not_before))
        .not_valid_after(_utc(not_after))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, _hash_for(key))
    )


@dataclass
class FakeCA:
    """An Ed25519 CA like the one bootstrap creates in ``broker-pki``; ``issue`` has the
    signature of the signer's ``issue_cert`` hook and dates certificates by ``clock``."""

    clock: Callable[[], float]
    common_name: str = CA_COMMON_NAME
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate, repr=False)
    cert: x509.Certificate = field(init=False)
    issued: list[tuple[str, str]] = field(default_factory=list)  # (csr_pem, ttl) per call
    algs: list[str] = field(default_factory=list)  # the alg of each call

    def __post_init__(self) -> None:
        now = self.clock()
        self.cert = self_signed(self.key, self.common_name, now - 86400, now + 86400 * 365)

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def certify(
        self, public_key: PublicKeyTypes, common_name: str, not_before: float, not_after: float
    ) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(not_before))
            .not_valid_after(_utc(not_after))
            .sign(self.key, None)
        )

    def issue(self, csr_pem: str, ttl: str, alg: str = "EdDSA") -> SignedCert:
        """Vault's ``pki/sign``: the CSR's key and common name, valid from 30 s ago for ``ttl``."""
        self.issued.append((csr_pem, ttl))
        self.algs.append(alg)
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        now = self.clock()
        cert = self.certify(csr.public_key(), str(cn), now - 30, now + _seconds(ttl))
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        return SignedCert(
            certificate_pem=pem, serial=f"{cert.serial_number:x}", ca_chain=(self.pem,)
        )


def x5c(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


@dataclass(frozen=True)
class Identity:
    """A signing key and the certificate that speaks for it."""

    key: PrivateKeyTypes = field(repr=False)
    cert: x509.Certificate

    @classmethod
    def certified(
        cls,
        ca: FakeCA,
        common_name: str,
        not_before: float,
        not_after: float,
        key: PrivateKeyTypes | None = None,
    ) -> Identity:
        key = key or Ed25519PrivateKey.generate()
        return cls(key, ca.certify(key.public_key(), common_name, not_before, not_after))

    def header(self, **overrides: Any) -> dict[str, Any]:
        """The header the signer writes; an override of ``None`` removes that field."""
        header = {"alg": ALGORITHM, "typ": TOKEN_TYPE, "x5c": [x5c(self.cert)], "kid": "01"}
        return _apply(header, overrides)

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.key, Ed25519PrivateKey):
            return self.key.sign(data)
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        der = self.key.sign(data, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)  # JWS wants r || s, not DER
        size = (self.key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def claims(now: int, *, agent: str = AGENT, ttl: int = 60, **overrides: Any) -> dict[str, Any]:
    """The payload the signer writes; an override of ``None`` removes that claim."""
    payload = action_payload(
        issuer=DEFAULT_ISSUER,
        agent=agent,
        audience=AUDIENCE,
        action=ACTION,
        accountable="alice@example.com",
        policy_version="v7",
        inputs_hash=inputs_digest(agent, ACTION, INPUTS),
        manifest_hash="sha256:" + "0" * 64,
        now=now,
        ttl=ttl,
        jti="jti-0001",
        generation=3,
    )
    return _apply(payload, overrides)


def _apply(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for name, value in overrides.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def forge(
    header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes] | None
) -> str:
    """A compact JWS built by hand: ``sign`` gets the signing input; ``None`` leaves it empty."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    signature = sign(signing_input.encode()) if sign else b""
    return f"{signing_input}.{b64url(signature)}"
