"""Client certificates to Vault (``VAULT_CLIENT_CERT``/``VAULT_CLIENT_KEY``) against a real
OpenBao whose listener requires and verifies them (``tls_require_and_verify_client_cert``):
hvac, the aiohttp client, a sidecar and an operator command present the certificate and work;
without it the handshake is refused and the error names the variables to set."""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.core.errors import BackendUnavailable
from broker.dev.devstack import DevServer, free_port_pair, spawn_bao, wait_until_ready
from broker.ops.controlbase import whoami
from broker.settings import VaultTLS, tls_from_env
from broker.vault.asyncapi import AsyncVault
from broker.vault.session import make_client
from tests.harness import REPO, SCOPES, running_sidecar

pytestmark = pytest.mark.integration
REFUND = SCOPES / "support-refund-agent.yaml"


class _CA:
    """A throwaway CA that signs the server's and the client's certificates."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.now = datetime.datetime.now(datetime.UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = self._build(self._name("test ca"), self.key.public_key(), ca=True)
        self._write("ca.pem", self.cert.public_bytes(serialization.Encoding.PEM))

    @staticmethod
    def _name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def _build(
        self, subject: x509.Name, public: ec.EllipticCurvePublicKey, **how: object
    ) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name("test ca"))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - datetime.timedelta(minutes=1))
            .not_valid_after(self.now + datetime.timedelta(hours=2))
        )
        if how.get("ca"):
            b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        else:
            b = b.add_extension(x509.ExtendedKeyUsage([how["usage"]]), critical=False)
        if how.get("ip"):
            ip = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
            b = b.add_extension(x509.SubjectAlternativeName([ip]), critical=False)
        return b.sign(self.key, hashes.SHA256())

    def leaf(self, name: str, usage: x509.ObjectIdentifier, ip: bool = False) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._build(self._name(name), key.public_key(), usage=usage, ip=ip)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return (
            self._write(f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM)),
            self._write(f"{name}-key.pem", key_pem),
        )

    def _write(self, name: str, data: bytes) -> Path:
        path = self.where / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path


@dataclass
class MutualTLS:
    dev: DevServer  # the plain dev listener, for bootstrapping as an admin would
    addr: str  # the listener that requires a client certificate
    ca: Path
    client_cert: Path
    client_key: Path

    @property
    def tls(self) -> VaultTLS:
        return VaultTLS(cacert=self.ca, client_cert=self.client_cert, client_key=self.client_key)


@pytest.fixture(scope="module")
def mtls() -> Iterator[MutualTLS]:
    """`bao server -dev` with a second listener that requires and verifies client certificates."""
    workdir = Path(tempfile.mkdtemp(prefix="broker-bao-mtls-"))
    ca = _CA(workdir)
    server_cert, server_key = ca.leaf("server", ExtendedKeyUsageOID.SERVER_AUTH, ip=True)
    client_cert, client_key = ca.leaf("sidecar", ExtendedKeyUsageOID.CLIENT_AUTH)
    dev_port, mtls_port = free_port_pair(), free_port_pair()
    (workdir / "mtls.hcl").write_text(
        f'listener "tcp" {{\n  address = "127.0.0.1:{mtls_port}"\n'
        f'  tls_cert_file = "{server_cert}"\n  tls_key_file = "{server_key}"\n'
        f'  tls_require_and_verify_client_cert = true\n  tls_client_ca_file = "{workdir / "ca.pem"}"\n}}\n'
    )
    root = "root-" + secrets.token_hex(16)
    process = spawn_bao(
        ["server", "-dev", f"-dev-listen-address=127.0.0.1:{dev_port}", "-dev-no-store-token",
         f"-config={workdir / 'mtls.hcl'}"],
        workdir, workdir / "bao.log", {"BAO_DEV_ROOT_TOKEN_ID": root},
    )  # fmt: skip
    dev = DevServer(f"http://127.0.0.1:{dev_port}", root, process, workdir)
    try:
        wait_until_ready(dev.addr, process=process)
        yield MutualTLS(
            dev, f"https://127.0.0.1:{mtls_port}", workdir / "ca.pem", client_cert, client_key
        )
    finally:
        dev.stop()


def test_hvac_presents_the_client_certificate_from_the_environment(mtls: MutualTLS) -> None:
    """VAULT_CLIENT_CERT/KEY (read as Vault's CLI reads them) get hvac through; the CA alone
    is refused by the server, and the error names the client certificate variables."""
    env = {"VAULT_CACERT": str(mtls.ca), "VAULT_CLIENT_CERT": str(mtls.client_cert),
           "VAULT_CLIENT_KEY": str(mtls.client_key)}  # fmt: skip
    client = make_client(mtls.addr, mtls.dev.root_token, tls=tls_from_env(env, mtls.addr))
    assert client.auth.token.lookup_self()["data"]["id"] == mtls.dev.root_token
    bare = make_client(mtls.addr, mtls.dev.root_token, tls=VaultTLS(cacert=mtls.ca))
    with pytest.raises(BackendUnavailable, match="VAULT_CLIENT_CERT"):
        whoami(bare, mtls.addr)


async def test_async_client_presents_the_client_certificate(mtls: MutualTLS) -> None:
    """The aiohttp client loads the pair; without it the server refuses the handshake."""
    good = AsyncVault(mtls.addr, lambda: mtls.dev.root_token, tls=mtls.tls)
    bad = AsyncVault(mtls.addr, lambda: mtls.dev.root_token, tls=VaultTLS(cacert=mtls.ca))
    try:
        assert (await good.get("sys/mounts", "mounts"))["secret/"]["type"] == "kv"
        with pytest.raises(BackendUnavailable, match="VAULT_CLIENT_CERT"):
            await bad.get("sys/mounts", "mounts")
    finally:
        await good.close()
        await bad.close()


async def test_sidecar_mints_through_a_listener_that_requires_client_certificates(
    mtls: MutualTLS, tmp_path: Path
) -> None:
    """A sidecar given the pair logs in (AppRole), loads and mints over mutual TLS."""
    async with running_sidecar(
        mtls.dev, REFUND, tmp_path, vault_addr=mtls.addr, vault_tls=mtls.tls
    ) as h:
        status, body, _ = await h.ask("stripe.refund", {"ticket_id": "CS-1", "amount_usd": 5})
        assert status == 200, body


def test_operator_command_with_and_without_the_client_certificate(mtls: MutualTLS) -> None:
    """`broker status` with VAULT_CLIENT_CERT/KEY exits 0; without them exit 3, naming them."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env = clean | {
        "VAULT_ADDR": mtls.addr,
        "VAULT_TOKEN": mtls.dev.root_token,
        "VAULT_CACERT": str(mtls.ca),
    }

    def status(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "broker.cli", "status", "--json"], capture_output=True,
            text=True, env=env | extra, cwd=REPO, timeout=60, check=False,
        )  # fmt: skip

    refused = status()
    assert refused.returncode == 3, refused.stderr
    assert "VAULT_CLIENT_CERT" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    done = status(VAULT_CLIENT_CERT=str(mtls.client_cert), VAULT_CLIENT_KEY=str(mtls.client_key))
    assert done.returncode == 0, done.stderr
