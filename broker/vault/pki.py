"""Vault PKI: certify a sidecar's in-memory Ed25519 or P-256 key for minutes; publish the CA.

Each agent has one PKI role per key type (Vault roles name one ``key_type``), both allowing
only the agent's own id as common name.

The private key never leaves the sidecar process: only a CSR travels to Vault."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING

from broker.core.errors import BackendUnavailable
from broker.vault._errors import translate_errors
from broker.vault.calls import Call, Steps, drive, expect
from broker.vault.layout import PKI_MOUNT, pki_role

if TYPE_CHECKING:
    import hvac


@dataclass(frozen=True)
class SignedCert:
    certificate_pem: str
    serial: str
    ca_chain: tuple[str, ...] = ()  # PEM, issuing CA first: the JWK's x5c after the leaf


def sign_csr(
    client: hvac.Client, agent: str, csr_pem: str, ttl: str, addr: str = "", *, alg: str = "EdDSA"
) -> SignedCert:
    return drive(client, sign_csr_steps(agent, csr_pem, ttl, alg))


def sign_csr_steps(agent: str, csr_pem: str, ttl: str, alg: str) -> Steps[SignedCert]:
    body = {"csr": csr_pem, "common_name": agent, "ttl": ttl, "format": "pem"}
    call = Call("POST", f"{PKI_MOUNT}/sign/{pki_role(agent, alg)}", "certificate signing", body)
    data = (yield from expect(call))["data"]
    chain = data.get("ca_chain") or [data.get("issuing_ca")]
    return SignedCert(
        certificate_pem=data["certificate"],
        serial=data["serial_number"],
        ca_chain=tuple(str(pem) for pem in chain if pem),
    )


def revoke_certificate(client: hvac.Client, serial: str, addr: str = "") -> None:
    with translate_errors("certificate revocation", addr):
        client.write_data(f"{PKI_MOUNT}/revoke", data={"serial_number": serial})


def fetch_ca_pem(addr: str, timeout: float = 5.0) -> str:
    """The broker CA, from Vault's unauthenticated CA endpoint: what verifiers trust."""
    url = f"{addr.rstrip('/')}/v1/{PKI_MOUNT}/ca/pem"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - operator-set Vault URL
            body: bytes = resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise BackendUnavailable(f"cannot fetch the broker CA from {url}: {exc}") from exc
    text = body.decode()
    if "BEGIN CERTIFICATE" not in text:
        raise BackendUnavailable(f"Vault at {addr} has no broker CA yet; run `broker bootstrap`")
    return text
