"""Runbooks as drills: each runbook's commands run against a live stack (OpenBao, PostgreSQL,
a sidecar) and their effect is checked. A runbook whose commands stop working fails CI."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import hvac
import psycopg
import pytest
from pydantic import SecretStr

from broker.audit.records import verify_lines
from broker.core.errors import BackendUnavailable, VerificationError
from broker.dev.devstack import DevServer
from broker.dev.pgdev import PgCluster
from broker.settings import VaultSettings
from broker.vault.bootstrap import bootstrap
from broker.vault.control import VaultRevocations
from broker.vault.database import DatabaseRole, configure_database, issue_credential
from broker.vault.kv import kv_list, kv_read_versioned
from broker.vault.pki import fetch_ca_pem
from broker.vault.session import VaultSession
from broker.verify import Verifier
from tests.drills import STRICT, operator_env, run_runbook
from tests.harness import (
    Harness,
    root_client,
    running_sidecar,
    setup_database,
    unique_agent,
    write_manifest,
)

pytestmark = pytest.mark.integration

DRILL = """\
agent: {agent}
policy_version: drill-1
system_owner: platform@acme.example
risk_owner: security@acme.example
actions:
  tickets.read:
    accountable: support-lead@acme.example
    credential: {{kind: jwt, audience: tickets, ttl: 5m}}
    inputs:
      id: {{type: string}}
  payments.refund:
    accountable: finance-ops@acme.example
    credential: {{kind: vault_token, policies: [stripe-refund], ttl: 5m, uses: 5}}
  orders.read:
    accountable: data-lead@acme.example
    credential: {{kind: dynamic, mount: database, role: orders-readonly, ttl: 5m}}
"""


def security_operator(openbao: DevServer, who: str = "sec-oncall@acme.example") -> str:
    created = root_client(openbao).auth.token.create(
        policies=["broker-security-operator"], meta={"operator": who}, ttl="1h"
    )
    return str(created["auth"]["client_token"])


@pytest.fixture
async def drill(openbao: DevServer, postgres: PgCluster, tmp_path: Path) -> AsyncIterator[Harness]:
    setup_database(openbao, postgres)
    manifest = write_manifest(tmp_path, DRILL.format(agent=unique_agent("drill")))
    async with running_sidecar(openbao, manifest, tmp_path) as h:
        yield h


async def _mint_all(h: Harness) -> dict[str, dict[str, Any]]:
    minted = {}
    for action, inputs in (
        ("tickets.read", {"id": "T-1"}),
        ("payments.refund", {}),
        ("orders.read", {}),
    ):
        status, body, _ = await h.ask(action, inputs)
        assert status == 200, body
        minted[action] = body["credential"]
    return minted


def _verify(openbao: DevServer, token: str) -> Any:
    """As a gateway would: the Vault CA, and the control state for revocations."""
    revocations = VaultRevocations(
        VaultSettings(addr=openbao.addr, token=SecretStr(openbao.root_token))
    )
    return Verifier([fetch_ca_pem(openbao.addr)], revocations=revocations).verify(
        token, audience="tickets"
    )


def _can_login(postgres: PgCluster, cred: dict[str, Any]) -> bool:
    try:
        psycopg.connect(postgres.dsn(cred["username"], cred["password"])).close()
    except psycopg.OperationalError:
        return False
    return True


def _token_alive(openbao: DevServer, cred: dict[str, Any]) -> bool:
    """Asked with the root token, so that the check does not spend one of the token's uses."""
    try:
        root_client(openbao).auth.token.lookup_accessor(cred["vault_id"])
    except hvac.exceptions.VaultError:
        return False
    return True


async def test_kill_switch_runbook_stops_everything_the_agent_holds(
    drill: Harness, openbao: DevServer, postgres: PgCluster, tmp_path: Path
) -> None:
    """After the kill-switch runbook: agent_disabled, DB login refused, child token dead, JWT refused."""
    minted = await _mint_all(drill)
    assert _can_login(postgres, minted["orders.read"])
    assert _token_alive(openbao, minted["payments.refund"])
    _verify(openbao, minted["tickets.read"]["token"])  # valid before the drill
    settings = drill.sidecar.runtime.session.settings
    assert settings.secret_id_file is not None
    old_secret = tmp_path / "old-secret-id"
    old_secret.write_text(settings.secret_id_file.read_text())
    env = operator_env(
        openbao.addr,
        security_operator(openbao),
        tmp_path / "ops.jsonl",
        AGENT=drill.sidecar.manifest.agent,
        REASON="drill: runaway refunds",
    )
    out = await run_runbook("kill-switch.md", env)
    assert "kill switch in effect: confirmed" in out
    status, body, _ = await drill.ask("tickets.read", {"id": "T-2"})
    assert (status, body["reason"]) == (403, "agent_disabled")
    assert not _can_login(postgres, minted["orders.read"])
    assert not _token_alive(openbao, minted["payments.refund"])
    with pytest.raises(VerificationError) as refused:
        _verify(openbao, minted["tickets.read"]["token"])
    assert refused.value.code == "token_revoked"
    # The agent's machine login is gone too: its secret id no longer logs in.
    with pytest.raises(BackendUnavailable, match="invalid role or secret ID"):
        VaultSession(settings.model_copy(update={"secret_id_file": old_secret})).login()
    ops = [json.loads(line) for line in (tmp_path / "ops.jsonl").read_text().splitlines()]
    assert ops[-1]["operator"] == "sec-oncall@acme.example"
    assert ops[-1]["event"] == "kill"
    # The sidecar's own trail records the kill it obeyed.
    trail = [json.loads(line) for line in drill.audit_path.read_text().splitlines()]
    assert any(r.get("type") == "control" and r.get("event") == "kill" for r in trail)

    env["REASON"] = "drill over: refund tool fixed"
    env["SECRET_ID_FILE"] = str(settings.secret_id_file)
    await run_runbook("revive-an-agent.md", env)
    for _ in range(100):
        if not drill.sidecar.runtime.control.killed and drill.sidecar.runtime.available():
            break
        await _tick()
    again = await drill.ask("tickets.read", {"id": "T-3"})
    assert again[0] == 200, (again[1], drill.sidecar.runtime.vault_problem)


def _control_docs(openbao: DevServer) -> dict[str, Any]:
    client = root_client(openbao)
    paths = ["control/global", "control/revoked"]
    paths += [f"control/agents/{a}" for a in kv_list(client, "control/agents/")]
    return {path: kv_read_versioned(client, path) for path in paths}


@pytest.mark.parametrize("flags", [STRICT, ()], ids=["set -u", "no set -u"])
@pytest.mark.parametrize(
    ("runbook", "unset"),
    [
        ("kill-switch.md", "AGENT"),
        ("revoke-credentials.md", "CREDENTIAL_ID"),
        ("revive-an-agent.md", "SECRET_ID_FILE"),
    ],
)
async def test_an_unset_variable_stops_the_runbook_and_changes_nothing(
    drill: Harness,
    openbao: DevServer,
    tmp_path: Path,
    runbook: str,
    unset: str,
    flags: tuple[str, ...],
) -> None:
    """With a variable unset, the runbook stops at the first block that needs it (under
    `set -u`, and even without it, by its own guard); control state is untouched."""
    await _mint_all(drill)
    variables = {
        "AGENT": drill.sidecar.manifest.agent,
        "REASON": "drill",
        "CREDENTIAL_ID": "0" * 32,
        "ACTION": "tickets.read",
        "SECRET_ID_FILE": str(tmp_path / "secret-id"),
    }
    del variables[unset]
    env = operator_env(
        openbao.addr, security_operator(openbao), tmp_path / "ops.jsonl", **variables
    )
    before = _control_docs(openbao)
    with pytest.raises(AssertionError, match=f"{unset}: set {unset}|{unset}: unbound variable"):
        await run_runbook(runbook, env, flags=flags)
    assert _control_docs(openbao) == before
    assert (await drill.ask("tickets.read", {"id": "T-1"}))[0] == 200


async def _tick() -> None:
    import asyncio

    await asyncio.sleep(0.05)


async def test_platform_editor_cannot_pull_the_kill_switch(
    drill: Harness, openbao: DevServer, tmp_path: Path
) -> None:
    """Vault's policies decide: a platform editor's token is refused by the kill command."""
    editor = root_client(openbao).auth.token.create(policies=["broker-platform-editor"], ttl="1h")[
        "auth"
    ]["client_token"]
    env = operator_env(
        openbao.addr, editor, tmp_path / "ops.jsonl", AGENT=drill.sidecar.manifest.agent, REASON="x"
    )
    with pytest.raises(AssertionError, match="permission denied"):
        await run_runbook("kill-switch.md", env)
    assert (await drill.ask("tickets.read", {"id": "T-1"}))[0] == 200


async def test_revoke_runbook_revokes_by_id_by_action_and_by_agent(
    drill: Harness, openbao: DevServer, postgres: PgCluster, tmp_path: Path
) -> None:
    """The revoke runbook kills the named token, the action's JWTs, then everything the agent held."""
    minted = await _mint_all(drill)
    env = operator_env(
        openbao.addr,
        security_operator(openbao),
        tmp_path / "ops.jsonl",
        AGENT=drill.sidecar.manifest.agent,
        ACTION="tickets.read",
        CREDENTIAL_ID=minted["payments.refund"]["credential_id"],
    )
    await run_runbook("revoke-credentials.md", env)
    assert not _token_alive(openbao, minted["payments.refund"])
    assert not _can_login(postgres, minted["orders.read"])
    with pytest.raises(VerificationError):
        _verify(openbao, minted["tickets.read"]["token"])
    assert (await drill.ask("tickets.read", {"id": "T-9"}))[0] == 200  # revoked, not disabled


async def test_rotate_signing_key_runbook_rekeys_the_sidecar(
    drill: Harness, openbao: DevServer, tmp_path: Path
) -> None:
    """After rotation the sidecar signs with a new generation; old tokens still verify until expiry."""
    before = (await drill.ask("tickets.read", {"id": "T-1"}))[1]["credential"]["token"]
    generation = drill.sidecar.runtime.signer.generation
    env = operator_env(openbao.addr, security_operator(openbao), tmp_path / "ops.jsonl")
    await run_runbook("rotate-signing-key.md", env)
    assert drill.sidecar.runtime.signer.generation == generation + 1
    after = (await drill.ask("tickets.read", {"id": "T-1"}))[1]["credential"]["token"]
    assert _verify(openbao, before).generation == generation
    assert _verify(openbao, after).generation == generation + 1


async def test_rotate_agent_secret_runbook_retires_the_old_secret(
    drill: Harness, openbao: DevServer, tmp_path: Path
) -> None:
    """The old AppRole secret id stops working; the new file logs in."""
    settings = drill.sidecar.runtime.session.settings
    assert settings.secret_id_file is not None
    old_secret = settings.secret_id_file.read_text()
    new_file = tmp_path / "new-secret-id"
    env = operator_env(
        openbao.addr,
        security_operator(openbao),
        tmp_path / "ops.jsonl",
        AGENT=drill.sidecar.manifest.agent,
        SECRET_ID_FILE=str(new_file),
    )
    await run_runbook("rotate-agent-secret.md", env)
    assert new_file.stat().st_mode & 0o777 == 0o600
    old = tmp_path / "old-secret-id"
    old.write_text(old_secret)
    with pytest.raises(BackendUnavailable):
        VaultSession(settings.model_copy(update={"secret_id_file": old})).login()
    VaultSession(settings.model_copy(update={"secret_id_file": new_file})).login()


async def test_rotate_backend_root_runbook_changes_the_root_password(
    openbao: DevServer, postgres: PgCluster, tmp_path: Path
) -> None:
    """Vault rotates the connection's root password: the old one fails, issuing still works."""
    root_pw = "drill-root-pw"
    with psycopg.connect(postgres.superuser_dsn(), autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS drill_root")
        conn.execute(f"CREATE ROLE drill_root LOGIN SUPERUSER PASSWORD '{root_pw}'")
    client = root_client(openbao)
    bootstrap(client, [], addr=openbao.addr)  # the security operator policy, as shipped
    setup_database(openbao, postgres)  # the orders table the role grants
    configure_database(
        client,
        mount="drilldb",
        connection_name="drill",
        host=postgres.host,
        port=postgres.port,
        username="drill_root",
        password=root_pw,
        sslmode="disable",
        roles={
            "drill-ro": DatabaseRole(
                grants=("SELECT ON TABLE public.orders",), default_ttl=60, max_ttl=60
            )
        },
    )
    env = operator_env(
        openbao.addr,
        security_operator(openbao),
        tmp_path / "ops.jsonl",
        MOUNT="drilldb",
        CONNECTION="drill",
    )
    await run_runbook("rotate-backend-root.md", env)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(postgres.dsn("drill_root", root_pw)).close()
    cred = issue_credential(client, mount="drilldb", role="drill-ro")
    psycopg.connect(postgres.dsn(cred.username, cred.password)).close()
    client.sys.disable_secrets_engine("drilldb")


async def test_onboard_runbook_prepares_a_new_agent(openbao: DevServer, tmp_path: Path) -> None:
    """Validate, test, bootstrap and credential files: the new agent's sidecar can then log in."""
    agent = unique_agent("onboard")
    scopes = tmp_path / "scopes"
    (scopes / "tests").mkdir(parents=True)
    manifest = write_manifest(scopes, DRILL.format(agent=agent))
    (scopes / "tests" / "cases.yaml").write_text(
        f"cases:\n  - name: reads tickets\n    agent: {agent}\n    request: {{action: tickets.read, inputs: {{id: T-1}}}}\n"
        f"    expect: {{outcome: allow}}\n"
    )
    secrets = tmp_path / "secrets"
    env = operator_env(
        openbao.addr,
        openbao.root_token,
        tmp_path / "ops.jsonl",
        MANIFEST=str(manifest),
        AGENT=agent,
        SECRETS_DIR=str(secrets),
    )
    await run_runbook("onboard-a-new-agent.md", env)
    session = VaultSession(
        VaultSettings(
            addr=openbao.addr,
            role_id_file=secrets / "role-id",
            secret_id_file=secrets / "secret-id",
        )
    )
    session.login()
    assert f"broker-sidecar-{agent}" in session.policies


async def test_post_incident_review_runbook_verifies_and_traces(
    drill: Harness, openbao: DevServer, tmp_path: Path
) -> None:
    """The review runbook proves the trail intact and prints the request's records."""
    status, body, _ = await drill.ask("tickets.read", {"id": "T-7"}, request_id="req_incident42")
    assert status == 200
    records = drill.audit_path.read_bytes().splitlines(keepends=True)
    assert verify_lines(records).ok
    env = operator_env(
        openbao.addr,
        openbao.root_token,
        tmp_path / "ops.jsonl",
        AUDIT=str(drill.audit_path),
        REQUEST_ID="req_incident42",
    )
    out = await run_runbook("post-incident-review.md", env)
    assert "req_incident42" in out
    assert body["credential"]["credential_id"] in out


async def test_change_a_manifest_runbook_publishes_and_the_sidecar_enforces_it(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validate, test, diff, replay, publish, verify: the sidecar ends up enforcing the new file."""
    from tests.manifests_live import cli, platform_editor, prepare_agent, scope_dir, vault_sidecar

    agent = unique_agent("change")
    first = scope_dir(tmp_path, agent, "v1", pay=True)
    prepare_agent(openbao, first)
    editor = platform_editor(openbao)
    monkeypatch.setenv("VAULT_ADDR", openbao.addr)
    assert await cli(monkeypatch, editor, "scopes", "publish", str(first)) == 0
    async with vault_sidecar(openbao, agent, tmp_path) as h:
        assert (await h.ask("read.thing", {"id": "T-1"}))[0] == 200
        stricter = scope_dir(tmp_path, agent, "v2", pay=False)  # drops pay.out: narrows only
        env = operator_env(
            openbao.addr,
            editor,
            tmp_path / "ops.jsonl",
            AGENT=agent,
            MANIFEST=str(stricter),
            AUDIT=str(h.audit_path),
        )
        await run_runbook("change-a-manifest.md", env)
        status, body, _ = await h.ask("pay.out")
    assert (status, body["reason"], body["policy_version"]) == (403, "unknown_action", "v2")
