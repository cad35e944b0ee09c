"""The asyncio Vault client against a real OpenBao: KV documents for the control poll and
the heartbeat, and errors translated into the project's own."""

from __future__ import annotations

import socket
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import hvac
import pytest

from broker.core.errors import BackendUnavailable, PermissionDenied
from broker.dev.devstack import DevServer
from broker.settings import VaultTLS
from broker.vault.asyncapi import AsyncVault, ssl_context
from broker.vault.bootstrap import bootstrap
from broker.vault.layout import KV_MOUNT

pytestmark = pytest.mark.integration


@pytest.fixture
async def vault(openbao: DevServer) -> AsyncIterator[AsyncVault]:
    bootstrap(hvac.Client(url=openbao.addr, token=openbao.root_token), [], addr=openbao.addr)
    client = AsyncVault(openbao.addr, lambda: openbao.root_token, timeout=2.0)
    yield client
    await client.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_missing_document_reads_as_none(vault: AsyncVault) -> None:
    """No document at the path is not an error: the poll treats it as "nothing set"."""
    assert await vault.kv_read(f"test/{uuid.uuid4().hex}") is None


async def test_a_written_document_reads_back(vault: AsyncVault, openbao: DevServer) -> None:
    """kv_write stores a KV v2 version that hvac reads too, and kv_read returns its data."""
    path = f"test/{uuid.uuid4().hex}"
    await vault.kv_write(path, {"killed": True, "reason": "drill", "n": 3})
    assert await vault.kv_read(path) == {"killed": True, "reason": "drill", "n": 3}
    hv = hvac.Client(url=openbao.addr, token=openbao.root_token)
    read = hv.secrets.kv.v2.read_secret_version(
        path=path, mount_point=KV_MOUNT, raise_on_deleted_version=True
    )
    assert read["data"]["data"]["reason"] == "drill"


async def test_a_deleted_document_reads_as_none(vault: AsyncVault, openbao: DevServer) -> None:
    """A soft-deleted latest version reads as no document, as hvac's reader does here."""
    path = f"test/{uuid.uuid4().hex}"
    await vault.kv_write(path, {"a": 1})
    hv = hvac.Client(url=openbao.addr, token=openbao.root_token)
    hv.secrets.kv.v2.delete_latest_version_of_secret(path=path, mount_point=KV_MOUNT)
    assert await vault.kv_read(path) is None


async def test_a_refused_token_is_permission_denied_without_the_token(
    openbao: DevServer,
) -> None:
    """403 from Vault becomes PermissionDenied (the runtime then logs in again)."""
    client = AsyncVault(openbao.addr, lambda: "hvs.refused-token-value")
    try:
        with pytest.raises(PermissionDenied) as caught:
            await client.kv_read("control/global")
    finally:
        await client.close()
    assert "refused-token-value" not in str(caught.value)


async def test_an_unreachable_vault_is_backend_unavailable_naming_the_address() -> None:
    """Nothing listening: BackendUnavailable that says where, so the poll fails closed."""
    addr = f"http://127.0.0.1:{_free_port()}"
    client = AsyncVault(addr, lambda: "t", timeout=1.0)
    try:
        with pytest.raises(BackendUnavailable) as caught:
            await client.kv_read("control/global")
    finally:
        await client.close()
    assert addr in str(caught.value)


def test_system_trust_shares_aiohttp_context_and_a_named_ca_gets_its_own() -> None:
    """No CA, no client certificate: aiohttp's one verifying context (True), not a new one
    loading the CA bundle per client; a named CA its own verifying context; skip: False."""
    import certifi

    assert ssl_context(VaultTLS()) is True
    assert ssl_context(VaultTLS(skip_verify=True)) is False
    own = ssl_context(VaultTLS(cacert=Path(certifi.where())))
    assert isinstance(own, ssl.SSLContext)
    assert own.verify_mode == ssl.CERT_REQUIRED
    assert own.check_hostname
