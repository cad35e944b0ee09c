"""The sidecar's action-token signer: an Ed25519 and a P-256 key held in memory only, each
certified by Vault's PKI for minutes. A manifest picks EdDSA (default) or ES256 per action.

Why not transit: a Vault round trip per token caps minting near Vault's own rate; a key
certified for minutes signs locally at tens of thousands per second while Vault stays
the root of trust (verifiers trust only the CA, and the certificate travels in ``x5c``).
A token never outlives the certificate that vouches for it: ``mint`` caps ``exp`` at the
certificate's expiry, and the key is replaced well before that.

Each new key set is handed to ``publish`` (Vault, where ``broker issuer`` serves it as a JWKS)
before it signs anything. A routine renewal then waits ``PREPUBLISH`` seconds before the new
keys sign, so a gateway that cached the JWKS a moment ago already knows them; a generation
change (an operator's ``broker rotate signing-key``) switches at once."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from broker.core.claims import (
    ALGORITHM,
    ALGORITHMS,
    DEFAULT_ISSUER,
    EDDSA,
    TOKEN_TYPE,
    action_payload,
)
from broker.core.jwk import PrivateKey, new_private_key, public_jwk, sign_raw
from broker.core.statuslist import CAPACITY, Entry, StatusLedger, list_id_for
from broker.vault.pki import SignedCert

# Ask Vault for a new certificate once less than this much of the current one is left.
RENEW_WHEN_LEFT = 10 * 60
CERT_TTL = "15m"
# A routine renewal's keys are published this long before they sign: longer than the JWKS
# max-age the issuer sends and than jose's 30 s refetch cooldown.
PREPUBLISH = 60

CertIssuer = Callable[[str, str, str], SignedCert]  # (csr_pem, ttl, alg) -> certificate
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def _b64(data: str | bytes) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


@dataclass(frozen=True)
class _Key:
    private: PrivateKey = field(repr=False)
    alg: str
    # The JWS header is the same for every token of a key: encoded once, at rotation.
    # (Compact serialisation by hand: pyjwt's encode cost a fifth of the mint path.)
    header: bytes
    x5c: str
    serial: str
    not_after: int
    generation: int
    jwk: Mapping[str, Any]
    list_id: str  # its token status list


@dataclass(frozen=True)
class PublishedKey:
    """What the issuer serves for one key: its JWK, and until when tokens it signed live."""

    agent: str
    jwk: Mapping[str, Any]
    generation: int
    not_after: int  # the certificate's; no token of this key outlives it
    retire_after: int | None = None  # the latest exp it signed, once it no longer signs

    def to_json(self) -> dict[str, Any]:
        return {
            "jwk": dict(self.jwk),
            "gen": self.generation,
            "not_after": self.not_after,
            "retire_after": self.retire_after,
        }


KeyPublisher = Callable[[Sequence[PublishedKey]], None]


@dataclass(frozen=True)
class MintedToken:
    token: str = field(repr=False)
    jti: str
    expires_at: int
    serial: str


@dataclass(frozen=True)
class _KeySet:
    keys: Mapping[str, _Key]
    active_from: float  # mint switches to this set at this time


class ActionTokenSigner:
    """Thread-safe; ``rotate`` is called from a worker thread, ``mint`` from the event loop."""

    def __init__(
        self,
        agent: str,
        issue_cert: CertIssuer,
        *,
        issuer: str = DEFAULT_ISSUER,
        algorithms: Sequence[str] = ALGORITHMS,
        publish: KeyPublisher | None = None,
        prepublish: float = PREPUBLISH,
    ) -> None:
        self.agent = agent
        self.issuer = issuer
        self._issue_cert = issue_cert
        self._algorithms = tuple(algorithms)
        self._publish = publish
        self._prepublish = prepublish
        self._keys: Mapping[str, _Key] = {}
        self._next: _KeySet | None = None
        self._max_exp: dict[str, int] = {}  # serial -> latest exp signed
        self._retired: list[PublishedKey] = []
        self._lock = threading.Lock()
        # Status lists only make sense with an issuer that serves them.
        self.status: StatusLedger | None = (
            StatusLedger(f"{issuer}/statuslists") if issuer.startswith("http") else None
        )

    def __repr__(self) -> str:
        serial = self._keys[ALGORITHM].serial if ALGORITHM in self._keys else None
        return f"ActionTokenSigner(agent={self.agent!r}, serial={serial!r})"

    @property
    def generation(self) -> int:
        key = self._keys.get(ALGORITHM)
        return key.generation if key else -1

    @property
    def serials(self) -> dict[str, str]:
        """The serial (and ``kid``) of the key signing for each algorithm now."""
        return {alg: key.serial for alg, key in self._keys.items()}

    def needs_rotation(self, now: float, generation: int) -> bool:
        keys = self._next.keys if self._next else self._keys
        key = keys.get(ALGORITHM)
        if key is None or key.generation != generation or key.not_after - now < RENEW_WHEN_LEFT:
            return True
        # A list half used is replaced before it can fill up on the mint path.
        ledger = self.status
        if ledger is None:
            return False
        return max(ledger.used(k.list_id) for k in keys.values()) > CAPACITY // 2

    def rotate(self, generation: int, now: float | None = None) -> str:
        """Fresh keys and certificates, published before use; returns the EdDSA key's serial.

        With ``now`` and current keys of the same generation (a routine renewal), the new
        keys sign from ``now + prepublish``; otherwise at once."""
        keys = {alg: self._new_key(alg, generation) for alg in self._algorithms}
        immediate = now is None or self.generation != generation or not self._keys
        if self._publish is not None:
            self._publish(self._publication(keys))
        with self._lock:
            if immediate:
                self._retire(self._keys)
                self._keys, self._next = keys, None
            else:
                assert now is not None
                self._next = _KeySet(keys, now + self._prepublish)
        return keys[ALGORITHM].serial if ALGORITHM in keys else next(iter(keys.values())).serial

    def _publication(self, new: Mapping[str, _Key]) -> list[PublishedKey]:
        live = [self._published(k, None) for k in self._keys.values()]
        pending = [
            self._published(k, None) for k in (self._next.keys if self._next else {}).values()
        ]
        fresh = [self._published(k, None) for k in new.values()]
        return [*self._retired, *live, *pending, *fresh]

    def _published(self, key: _Key, retire_after: int | None) -> PublishedKey:
        return PublishedKey(self.agent, key.jwk, key.generation, key.not_after, retire_after)

    def _retire(self, keys: Mapping[str, _Key]) -> None:
        self._retired = [self._published(k, self._max_exp.pop(k.serial, 0)) for k in keys.values()]

    def _new_key(self, alg: str, generation: int) -> _Key:
        private = new_private_key(alg)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.agent)]))
            .sign(private, None if alg == EDDSA else hashes.SHA256())
        )
        signed = self._issue_cert(
            csr.public_bytes(serialization.Encoding.PEM).decode(), CERT_TTL, alg
        )
        cert = x509.load_pem_x509_certificate(signed.certificate_pem.encode())
        x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        header = {"alg": alg, "kid": signed.serial, "typ": TOKEN_TYPE, "x5c": [x5c]}
        chain = [x5c, *(_der_b64(pem) for pem in signed.ca_chain)]
        not_after = int(cert.not_valid_after_utc.timestamp())
        if self.status is not None:
            self.status.open(self.agent, signed.serial, generation, not_after)
        return _Key(
            header=_b64(json.dumps(header, separators=(",", ":"))),
            private=private,
            alg=alg,
            x5c=x5c,
            serial=signed.serial,
            not_after=not_after,
            generation=generation,
            jwk=public_jwk(private.public_key(), kid=signed.serial, alg=alg, x5c=chain),
            list_id=list_id_for(signed.serial),
        )

    def _current(self, now: float, alg: str) -> _Key:
        pending = self._next
        if pending is not None and now >= pending.active_from:
            with self._lock:
                if self._next is pending:
                    self._retire(self._keys)
                    self._keys, self._next = pending.keys, None
        key = self._keys.get(alg)
        if key is None:
            raise RuntimeError(f"the signer has no certified {alg} key yet")
        return key

    def mint(
        self,
        now: float,
        ttl: int,
        *,
        jti: str | None = None,
        alg: str = ALGORITHM,
        **claims: Any,
    ) -> MintedToken:
        key = self._current(now, alg)
        issued = int(now)
        if key.not_after - issued < 1:
            raise RuntimeError("the signer's certificate has expired; rotate first")
        ttl = max(1, min(ttl, key.not_after - issued))
        jti = jti or uuid.uuid4().hex
        status = None
        if self.status is not None:
            entry = Entry(jti, issued, issued + ttl, str(claims.get("action", "")))
            status = self.status.allocate(key.list_id, entry)
        payload = action_payload(
            issuer=self.issuer,
            agent=self.agent,
            now=issued,
            ttl=ttl,
            jti=jti,
            generation=key.generation,
            status=status,
            **claims,
        )
        signing_input = key.header + b"." + _b64(_COMPACT.encode(payload))
        token = signing_input + b"." + _b64(sign_raw(key.private, signing_input))
        if self._max_exp.get(key.serial, 0) < issued + ttl:
            self._max_exp[key.serial] = issued + ttl
        return MintedToken(
            token=token.decode("ascii"), jti=jti, expires_at=issued + ttl, serial=key.serial
        )


def _der_b64(pem: str) -> str:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
