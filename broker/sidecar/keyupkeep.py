"""The signing key's upkeep in Vault: its certificate (issued by the broker CA, checked to
still chain to the CA Vault publishes, re-certified at once when it does not), the public keys
and status lists published for the issuer, and the token renewal and key rotation the control
loop runs in a worker thread (key generation is CPU work; its Vault calls are handed to the event
loop, the sidecar's only HTTP client). A mixin of ``Runtime``, over its session and signer."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from broker.core.controlstate import ControlState
from broker.sidecar.signing import ActionTokenSigner, PublishedKey
from broker.vault.asyncapi import AsyncVault, LoopBridge
from broker.vault.calls import Steps
from broker.vault.jwks import publish_keys_steps, publish_status_steps
from broker.vault.layout import PKI_MOUNT
from broker.vault.pki import SignedCert, sign_csr_steps
from broker.vault.session import VaultSession

if TYPE_CHECKING:
    from broker.vault.session import VaultClient

log = logging.getLogger("broker.sidecar.runtime")

# How often the published CA is read to check that the signing certificate still chains to
# it (a CA replaced in Vault is noticed within this plus one poll, then the key re-certified).
CA_CHECK_EVERY = 10.0
T = TypeVar("T")


class KeyUpkeep:
    agent: str
    session: VaultSession
    signer: ActionTokenSigner
    control: ControlState
    _poller: AsyncVault
    _clock: Callable[[], float]
    _mono: Callable[[], float]

    def _init_key_upkeep(self) -> None:
        self.bridge: LoopBridge | None = None  # set by ``Runtime.start``, on its loop
        self._cert: x509.Certificate | None = None  # the signing key's current certificate
        self._ca_pem = ""
        self._ca: x509.Certificate | None = None  # the CA Vault publishes, as last read
        self._ca_checked_at = -float("inf")
        self.ca_mismatch = False
        self.recertified = 0  # keys certified again because the CA changed
        # The status lists as last published: a revocation that changes none of this
        # sidecar's bits (another agent's token, or no token issued) writes nothing.
        self._status_lists: dict[str, dict[str, Any]] | None = None
        self.status_writes = 0

    def certificate_problem(self) -> str:
        """'' while the signing key holds a certificate that is valid now."""
        cert = self._cert
        if cert is None:
            return "no certified signing key yet"
        if cert.not_valid_after_utc.timestamp() <= self._clock():
            return "the signing certificate has expired"
        if self.ca_mismatch:
            return "the signing certificate does not chain to the CA Vault publishes"
        return ""

    def _chains(self) -> bool:
        cert, ca = self._cert, self._ca
        if cert is None or ca is None:
            return True  # nothing to compare (no key is reported on its own)
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    async def _check_ca(self) -> None:
        """Read the published CA (at most every CA_CHECK_EVERY s); a certificate that no
        longer chains to it marks the key for certification before the next mint."""
        if self._mono() - self._ca_checked_at < CA_CHECK_EVERY:
            return
        pem = await self._poller.get_text(f"{PKI_MOUNT}/ca/pem", "read of the broker CA")
        self._ca_checked_at = self._mono()
        if pem != self._ca_pem:
            try:
                self._ca = x509.load_pem_x509_certificate(pem.encode())
            except ValueError:
                self._ca = None  # no CA published (yet): nothing to compare against
            self._ca_pem = pem
        mismatch = not self._chains()
        if mismatch and not self.ca_mismatch:
            log.warning("the signing certificate no longer chains to the published CA")
        self.ca_mismatch = mismatch

    @property
    def sync_client(self) -> VaultClient | LoopBridge:
        """For the stores that worker threads drive: the event loop's client once running
        (no hvac in a sidecar), the session's hvac client before (tests, tools)."""
        return self.bridge if self.bridge is not None else self.session.client

    def _on_loop(self, steps: Steps[T]) -> T:
        """From the rotation's worker thread: a Vault operation, run on the event loop."""
        if self.bridge is None:
            raise RuntimeError("the runtime has not started: no event loop for Vault calls")
        return self.bridge.run_steps(steps)

    def _issue_cert(self, csr_pem: str, ttl: str, alg: str) -> SignedCert:
        signed = self._on_loop(sign_csr_steps(self.agent, csr_pem, ttl, alg))
        self._cert = x509.load_pem_x509_certificate(signed.certificate_pem.encode())
        return signed

    def _publish_keys(self, keys: Sequence[PublishedKey]) -> None:
        """In the rotation's worker thread: the public keys go to Vault before they sign."""
        entries = [k.to_json() for k in keys]
        self._on_loop(publish_keys_steps(self.agent, entries, self._clock()))
        # The new keys' status lists exist before a token names them.
        self._on_loop(self._status_steps())

    async def _publish_status(self) -> None:
        """Which of this sidecar's tokens are revoked, for the issuer."""
        await self.session.aio.run(self._status_steps())

    def _status_steps(self) -> Steps[None]:
        ledger = self.signer.status
        if ledger is not None:
            now = self._clock()
            lists = ledger.snapshot(self.control, now)
            if lists == self._status_lists:
                return
            yield from publish_status_steps(self.agent, lists, now)
            self._status_lists = lists
            self.status_writes += 1

    def _maintain(self, generation: int) -> None:
        """In a worker thread: certify a new key when one is due."""
        if self.ca_mismatch or self.signer.needs_rotation(self._clock(), generation):
            mismatch = self.ca_mismatch
            # A key under a CA nobody trusts any more is replaced at once, not after PREPUBLISH.
            self.signer.rotate(generation, None if mismatch else self._clock())
            self.ca_mismatch = not self._chains()
            if mismatch and not self.ca_mismatch:
                self.recertified += 1
                log.warning("signing key certified again under the published CA")
