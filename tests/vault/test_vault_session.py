"""The sidecar's own Vault identity: AppRole login from files, renewal at half-life, and a
fresh login when the token was revoked. Real OpenBao; only the clock is injected."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.core.errors import BackendUnavailable, ConfigError
from broker.dev.devstack import DevServer
from broker.dev.stack import approle_files
from broker.settings import VaultSettings
from broker.testing import FakeClock
from broker.vault.bootstrap import AgentGrant, bootstrap
from broker.vault.session import VaultSession
from tests.harness import root_client, unique_agent

pytestmark = pytest.mark.integration


@pytest.fixture
def approle(openbao: DevServer, tmp_path: Path) -> VaultSettings:
    agent = unique_agent("session")
    client = root_client(openbao)
    bootstrap(client, [AgentGrant(agent)], addr=openbao.addr)
    role_file, secret_file = approle_files(client, agent, tmp_path)
    return VaultSettings(addr=openbao.addr, role_id_file=role_file, secret_id_file=secret_file)


def test_approle_login_renews_at_half_life(openbao: DevServer, approle: VaultSettings) -> None:
    """Before half the TTL nothing happens; after it the same token is renewed in Vault."""
    clock = FakeClock()
    session = VaultSession(approle, clock=clock)
    session.login()
    accessor = session.accessor
    ttl = root_client(openbao).auth.token.lookup_accessor(accessor)["data"]["creation_ttl"]
    clock.advance(ttl / 2 - 5)
    session.ensure_fresh()
    info = root_client(openbao).auth.token.lookup_accessor(accessor)["data"]
    assert not info.get("last_renewal_time")
    clock.advance(10)
    session.ensure_fresh()
    info = root_client(openbao).auth.token.lookup_accessor(accessor)["data"]
    assert info.get("last_renewal_time")
    assert session.accessor == accessor


def test_revoked_token_leads_to_a_fresh_login(openbao: DevServer, approle: VaultSettings) -> None:
    """A revoked sidecar token cannot be renewed: the session logs in again with its AppRole."""
    clock = FakeClock()
    session = VaultSession(approle, clock=clock)
    session.login()
    old = session.accessor
    root_client(openbao).auth.token.revoke_accessor(old)
    clock.advance(3600)
    session.ensure_fresh()
    assert session.accessor != old
    assert session.healthy()


def test_missing_secret_file_is_named(tmp_path: Path, openbao: DevServer) -> None:
    """A missing secret id file is a configuration error that names the file."""
    settings = VaultSettings(
        addr=openbao.addr, role_id_file=tmp_path / "role-id", secret_id_file=tmp_path / "nope"
    )
    (tmp_path / "role-id").write_text("x")
    with pytest.raises(ConfigError, match="nope"):
        VaultSession(settings).login()


def test_wrong_secret_is_refused_by_vault(approle: VaultSettings, tmp_path: Path) -> None:
    """A secret id Vault does not know fails the login; nothing is half-authenticated."""
    bad = tmp_path / "bad-secret"
    bad.write_text("00000000-0000-0000-0000-000000000000")
    session = VaultSession(approle.model_copy(update={"secret_id_file": bad}))
    with pytest.raises(BackendUnavailable):
        session.login()
    assert session.accessor == ""
