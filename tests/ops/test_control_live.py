"""The runbook commands against a live stack (OpenBao, PostgreSQL, real sidecars): revocation
reaches what was minted, not what is alive; bad targets change nothing; concurrent commands
lose nothing. Commands run as an operator runs them: ``broker.cli.main`` with a
``broker-security-operator`` token (in worker threads, so that in-process sidecars keep
answering), and as real ``broker`` processes where the process boundary matters."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import hvac
import psycopg
import pytest

from broker.cli import main as cli_main
from broker.dev.devstack import DevServer
from broker.dev.pgdev import PgCluster
from broker.ops.control import Control
from broker.scopes.loader import load_manifest
from broker.vault.bootstrap import bootstrap
from broker.vault.kv import kv_list, kv_read, kv_read_versioned
from broker.vault.session import VaultSession, make_client
from tests.harness import (
    REPO,
    Harness,
    process_env,
    root_client,
    running_sidecar,
    setup_database,
    unique_agent,
    write_manifest,
)
from tests.ops.test_runbook_drills import security_operator
from tests.sidecar.test_sidecar_crash import _free_port, _ready

pytestmark = pytest.mark.integration

MANIFEST = """\
agent: {agent}
policy_version: control-1
system_owner: platform@acme.example
risk_owner: security@acme.example
concurrency: 500
actions:
  tickets.read:
    accountable: support-lead@acme.example
    credential: {{kind: jwt, audience: tickets, ttl: 5m}}
  payments.refund:
    accountable: finance-ops@acme.example
    credential: {{kind: vault_token, policies: [stripe-refund], ttl: 5m, uses: 5}}
  orders.read:
    accountable: data-lead@acme.example
    credential: {{kind: dynamic, mount: database, role: orders-readonly, ttl: 5m}}
"""


@pytest.fixture
def operator(openbao: DevServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The operator's environment for in-process CLI calls."""
    token = security_operator(openbao)
    monkeypatch.setenv("VAULT_ADDR", openbao.addr)
    monkeypatch.setenv("VAULT_TOKEN", token)
    monkeypatch.delenv("BAO_TOKEN", raising=False)
    monkeypatch.delenv("BROKER_OPERATOR_AUDIT", raising=False)
    return token


@pytest.fixture
async def live(openbao: DevServer, postgres: PgCluster, tmp_path: Path) -> AsyncIterator[Harness]:
    setup_database(openbao, postgres)
    manifest = write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("ctl")))
    async with running_sidecar(openbao, manifest, tmp_path, poll_interval=0.05) as h:
        yield h


async def broker(*argv: str) -> int:
    """``broker ARGV`` in-process, in a worker thread; the exit code (argparse errors too)."""

    def run() -> int:
        try:
            return cli_main(list(argv))
        except SystemExit as exc:
            return int(exc.code or 0)

    return await asyncio.to_thread(run)


def token_alive(openbao: DevServer, accessor: str) -> bool:
    try:
        root_client(openbao).auth.token.lookup_accessor(accessor)
    except hvac.exceptions.VaultError:
        return False
    return True


def lease_alive(openbao: DevServer, lease_id: str) -> bool:
    try:
        root_client(openbao).sys.read_lease(lease_id)
    except hvac.exceptions.VaultError:
        return False
    return True


def can_login(postgres: PgCluster, cred: dict[str, Any]) -> bool:
    try:
        psycopg.connect(postgres.dsn(cred["username"], cred["password"])).close()
    except psycopg.OperationalError:
        return False
    return True


def control_snapshot(openbao: DevServer, agent: str) -> dict[str, Any]:
    """Everything a runbook command could change: control documents with their versions, the
    login registry, the agent's AppRole secret ids."""
    client = root_client(openbao)
    docs = {
        path: kv_read_versioned(client, path)
        for path in (
            "control/global",
            "control/revoked",
            *tuple(f"control/agents/{a}" for a in kv_list(client, "control/agents/")),
        )
    }
    registry = {a: kv_list(client, f"sidecars/{a}") for a in kv_list(client, "sidecars/")}
    secret_ids = client.list(f"auth/approle/role/broker-{agent}/secret-id")
    return {"docs": docs, "registry": registry, "secret_ids": secret_ids["data"]["keys"]}


async def mint(h: Harness, action: str) -> dict[str, Any]:
    status, body, _ = await h.ask(action)
    assert status == 200, body
    credential: dict[str, Any] = body["credential"]
    return credential


# -- revocation reaches what was minted, not what is alive ----------------------------------


def _sidecar_process(manifest: Path, env: dict[str, str], port: int, audit: Path) -> Any:
    cmd = [sys.executable, "-m", "broker.cli", "sidecar", "--manifest", str(manifest)]
    cmd += ["--listen", f"127.0.0.1:{port}", "--audit", str(audit)]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


@contextlib.contextmanager
def _reaped(*procs: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def _mint_over_http(url: str, action: str, n: int) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        out = []
        for _ in range(n):
            async with http.post(f"{url}/v1/credentials", json={"action": action}) as resp:
                body = await resp.json()
                assert resp.status == 200, body
                out.append(body["credential"])
        return out


@pytest.mark.parametrize("restarted", [True, False], ids=["restarted", "never-restarted"])
async def test_kill_after_sigkill_revokes_every_token_and_lease_the_dead_sidecar_minted(
    openbao: DevServer,
    postgres: PgCluster,
    tmp_path: Path,
    operator: str,
    restarted: bool,
) -> None:
    """SIGKILL a sidecar holding 10 child tokens and 3 leases (restart it, or not), then kill:
    every token and lease fails lookup, and PostgreSQL refuses every login."""
    setup_database(openbao, postgres)
    manifest = write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("dead")))
    agent = load_manifest(manifest).agent
    env = process_env(openbao, manifest, tmp_path / "secrets", demo=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    first = _sidecar_process(manifest, env, port, tmp_path / "audit.jsonl")
    with _reaped(first):
        await _ready(url)
        tokens = await _mint_over_http(url, "payments.refund", 10)
        leases = await _mint_over_http(url, "orders.read", 3)
        # No heartbeat wait: the last ones were minted a moment before the process dies.
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert all(token_alive(openbao, t["vault_id"]) for t in tokens)
    assert all(can_login(postgres, cred) for cred in leases)
    second = _sidecar_process(manifest, env, port, tmp_path / "audit.jsonl")
    with _reaped(second):
        if restarted:
            await _ready(url)
        else:
            second.kill()
            second.wait()
        code = await broker("kill", "--agent", agent, "--reason", "dead sidecar drill")
    assert code == 0
    assert [t["vault_id"] for t in tokens if token_alive(openbao, t["vault_id"])] == []
    assert [c["lease_id"] for c in leases if lease_alive(openbao, c["lease_id"])] == []
    assert [c["username"] for c in leases if can_login(postgres, c)] == []


async def test_revoke_jti_right_after_the_mint_leaves_the_token_dead_in_vault(
    live: Harness, openbao: DevServer, operator: str
) -> None:
    """50 times: `broker revoke --jti` 0-50 ms after the mint; on exit 0 the token is dead."""
    rng = random.Random(12)
    alive_after_success = []
    for _ in range(50):
        cred = await mint(live, "payments.refund")
        await asyncio.sleep(rng.uniform(0, 0.05))
        code = await broker("revoke", "--jti", cred["credential_id"], "--reason", "leak")
        assert code == 0
        if token_alive(openbao, cred["vault_id"]):
            alive_after_success.append(cred["credential_id"])
    assert alive_after_success == []


async def test_revoke_jti_of_a_lease_right_after_the_mint_drops_the_database_login(
    live: Harness, openbao: DevServer, postgres: PgCluster, operator: str
) -> None:
    """The same for database credentials: lease gone and login refused when the command exits 0."""
    for _ in range(5):
        cred = await mint(live, "orders.read")
        assert await broker("revoke", "--jti", cred["credential_id"]) == 0
        assert not lease_alive(openbao, cred["lease_id"])
        assert not can_login(postgres, cred)


async def test_revoke_jti_by_vault_id_needs_no_sidecar(
    live: Harness, openbao: DevServer, operator: str
) -> None:
    """A token accessor or a lease id given as --jti is revoked straight in Vault and verified."""
    token = await mint(live, "payments.refund")
    lease = await mint(live, "orders.read")
    assert await broker("revoke", "--jti", token["vault_id"]) == 0
    assert await broker("revoke", "--jti", lease["lease_id"]) == 0
    assert not token_alive(openbao, token["vault_id"])
    assert not lease_alive(openbao, lease["lease_id"])


async def test_revoke_agent_reaches_a_dead_sidecars_credentials_and_the_live_one_recovers(
    live: Harness, openbao: DevServer, operator: str
) -> None:
    """revoke --agent revokes every recorded sidecar token; the running sidecar logs in again."""
    held = [await mint(live, "payments.refund") for _ in range(3)]
    assert await broker("revoke", "--agent", live.sidecar.manifest.agent) == 0
    assert [c for c in held if token_alive(openbao, c["vault_id"])] == []
    for _ in range(100):
        status, _, _ = await live.ask("payments.refund")
        if status == 200:
            break
        await asyncio.sleep(0.05)
    assert status == 200


async def test_revoke_action_spares_other_actions_of_a_running_sidecar(
    live: Harness, openbao: DevServer, postgres: PgCluster, operator: str
) -> None:
    """revoke --agent --action revokes that action's Vault credentials and leaves the others."""
    token = await mint(live, "payments.refund")
    lease = await mint(live, "orders.read")
    agent = live.sidecar.manifest.agent
    assert await broker("revoke", "--agent", agent, "--action", "payments.refund") == 0
    assert not token_alive(openbao, token["vault_id"])
    assert lease_alive(openbao, lease["lease_id"])
    assert can_login(postgres, lease)


# -- the machine login ----------------------------------------------------------------------


async def test_after_kill_the_old_secret_id_cannot_log_in_and_revive_issues_a_working_one(
    live: Harness, openbao: DevServer, operator: str, tmp_path: Path
) -> None:
    """Kill destroys the AppRole secret ids; revive writes a fresh one the sidecar uses."""
    settings = live.sidecar.runtime.session.settings
    assert settings.secret_id_file is not None
    old = tmp_path / "old-secret-id"
    old.write_text(settings.secret_id_file.read_text())
    agent = live.sidecar.manifest.agent
    assert await broker("kill", "--agent", agent, "--reason", "stolen login") == 0
    with pytest.raises(Exception, match="invalid role or secret ID"):
        VaultSession(settings.model_copy(update={"secret_id_file": old})).login()
    code = await broker(
        "revive",
        "--agent",
        agent,
        "--reason",
        "INC-1 over",
        "--secret-id-file",
        str(settings.secret_id_file),
    )
    assert code == 0
    for _ in range(100):
        status, body, _ = await live.ask("tickets.read")
        if status == 200:
            break
        await asyncio.sleep(0.05)
    assert status == 200, body
    with pytest.raises(Exception, match="invalid role or secret ID"):
        VaultSession(settings.model_copy(update={"secret_id_file": old})).login()


# -- bad targets ----------------------------------------------------------------------------

BAD_TARGETS = [
    (("kill", "--agent", ""), "empty_target"),
    (("kill", "--agent", "nosuch-agent"), "unknown_agent"),
    (("kill", "--agent", "Not An Id"), "unknown_agent"),
    (("revoke", "--agent", ""), "empty_target"),
    (("revoke", "--agent", "nosuch-agent"), "unknown_agent"),
    (("revoke", "--jti", ""), "empty_target"),
    (("revoke", "--jti", "doesnotexist"), "unknown_credential"),
    (("revoke", "--jti", "0123456789abcdef0000000000000001"), "unknown_credential"),
    (("revoke", "--jti", "database/creds/orders-readonly/nosuch"), "unknown_credential"),
    (("revoke", "--agent", "{agent}", "--action", ""), "empty_target"),
    (("revoke", "--agent", "{agent}", "--action", "nosuch.action"), "unknown_action"),
    (("revive", "--agent", "", "--reason", "x", "--secret-id-file", "{tmp}/s"), "empty_target"),
    (
        ("revive", "--agent", "nosuch-agent", "--reason", "x", "--secret-id-file", "{tmp}/s"),
        "unknown_agent",
    ),
    (("revive", "--agent", "{agent}", "--reason", "x"), "usage"),
    (("revive", "--all", "--reason", "x", "--secret-id-file", "{tmp}/s"), "usage"),
    (("revoke", "--action", "tickets.read"), "one of the arguments"),
    (("kill",), "one of the arguments"),
]


@pytest.mark.parametrize(("argv", "error"), BAD_TARGETS, ids=[" ".join(a) for a, _ in BAD_TARGETS])
async def test_a_bad_target_is_a_usage_error_that_changes_nothing(
    live: Harness,
    openbao: DevServer,
    operator: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: tuple[str, ...],
    error: str,
) -> None:
    """Exit 2 with an error naming the problem; control state, registry and secret ids unchanged."""
    agent = live.sidecar.manifest.agent
    await mint(live, "payments.refund")
    before = control_snapshot(openbao, agent)
    args = [a.format(agent=agent, tmp=tmp_path) for a in argv]
    assert await broker(*args) == 2
    assert error in capsys.readouterr().err
    assert control_snapshot(openbao, agent) == before
    assert (await live.ask("tickets.read"))[0] == 200


# -- typed control state --------------------------------------------------------------------


async def test_a_hand_written_false_string_is_refused_and_revive_all_repairs_it(
    live: Harness, openbao: DevServer, operator: str, tmp_path: Path
) -> None:
    """`bao kv patch ... killed_all=false` stores a string: sidecars fail closed naming it,
    `broker status` names it, and `broker revive --all` writes the typed value back. The raw
    write does not bump control/version: the sidecar still reads it, on its periodic full read."""
    client = root_client(openbao)
    live.sidecar.runtime.full_read_every = 1.0  # the default is 10 s; the mechanism is the same
    doc = kv_read(client, "control/global") or {}
    client.secrets.kv.v2.create_or_update_secret(
        path="control/global", secret={**doc, "killed_all": "false"}, mount_point="broker-kv"
    )
    for _ in range(100):
        if not live.sidecar.runtime.available():
            break
        await asyncio.sleep(0.05)
    status, body, _ = await live.ask("tickets.read")
    assert status == 503, body
    assert "killed_all must be true or false" in live.sidecar.runtime.vault_problem
    assert await broker("status") == 1  # a check failed: the control state is mistyped
    code = await broker(
        "revive", "--all", "--reason", "typed again", "--secret-id-dir", str(tmp_path / "ids")
    )
    assert code == 0
    assert (kv_read(client, "control/global") or {})["killed_all"] is False
    settings = live.sidecar.runtime.session.settings
    assert settings.secret_id_file is not None
    fresh = tmp_path / "ids" / f"{live.sidecar.manifest.agent}.secret-id"
    settings.secret_id_file.write_text(fresh.read_text())
    for _ in range(100):
        if (await live.ask("tickets.read"))[0] == 200:
            break
        await asyncio.sleep(0.05)
    assert (await live.ask("tickets.read"))[0] == 200


async def test_revive_by_name_does_not_lift_a_fleet_wide_kill(
    live: Harness, openbao: DevServer, operator: str, tmp_path: Path
) -> None:
    """After kill --all, revive --agent says the fleet-wide kill still holds and exits 1."""
    agent = live.sidecar.manifest.agent
    try:
        assert await broker("kill", "--all", "--reason", "fleet drill") == 0
        code = await broker(
            "revive", "--agent", agent, "--reason", "x", "--secret-id-file", str(tmp_path / "s")
        )
        assert code == 1
        assert (kv_read(root_client(openbao), "control/global") or {})["killed_all"] is True
    finally:
        code = await broker(
            "revive", "--all", "--reason", "drill over", "--secret-id-dir", str(tmp_path / "d")
        )
    assert code == 0
    assert (kv_read(root_client(openbao), "control/global") or {})["killed_all"] is False


# -- concurrent commands ---------------------------------------------------------------------


async def _jwts(h: Harness, n: int) -> list[str]:
    return [(await mint(h, "tickets.read"))["credential_id"] for _ in range(n)]


def _revoked(openbao: DevServer) -> set[str]:
    return set((kv_read(root_client(openbao), "control/revoked") or {}).get("jtis") or {})


async def test_eight_concurrent_cli_revocations_lose_none(
    live: Harness, openbao: DevServer, operator: str
) -> None:
    """20 rounds of 8 `broker revoke --jti` at once: all 160 are in control state afterwards."""
    wanted: set[str] = set()
    for _ in range(20):
        ids = await _jwts(live, 8)
        codes = await asyncio.gather(*(broker("revoke", "--jti", cid) for cid in ids))
        assert codes == [0] * 8
        wanted |= set(ids)
    assert wanted - _revoked(openbao) == set()


async def test_eight_concurrent_api_revocations_lose_none(
    live: Harness, openbao: DevServer, operator: str
) -> None:
    """The same through the `Control` API, one client per thread, 20 rounds."""
    controls = [Control(make_client(openbao.addr, operator), openbao.addr) for _ in range(8)]
    wanted: set[str] = set()
    for _ in range(20):
        ids = await _jwts(live, 8)
        reports = await asyncio.gather(
            *(
                asyncio.to_thread(c.revoke_id, cid, "race")
                for c, cid in zip(controls, ids, strict=True)
            )
        )
        assert [r.failures for r in reports] == [[]] * 8
        wanted |= set(ids)
    assert wanted - _revoked(openbao) == set()


async def test_eight_broker_processes_revoking_at_once_lose_none(
    live: Harness, openbao: DevServer, operator: str
) -> None:
    """Real processes, one round of 8 (each costs seconds of start-up on a loaded machine)."""
    env = {**os.environ}
    wanted: set[str] = set()
    for _ in range(1):
        ids = await _jwts(live, 8)
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "broker.cli",
                "revoke",
                "--jti",
                cid,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            for cid in ids
        ]
        assert [await p.wait() for p in procs] == [0] * 8
        wanted |= set(ids)
    assert wanted - _revoked(openbao) == set()


async def test_a_kill_racing_a_revoke_never_loses_the_kill_flag(
    live: Harness, openbao: DevServer, operator: str, tmp_path: Path
) -> None:
    """5 rounds: kill and revoke --action at once; both writes survive, the sidecar refuses."""
    agent = live.sidecar.manifest.agent
    secret_file = live.sidecar.runtime.session.settings.secret_id_file
    assert secret_file is not None
    for _ in range(5):
        await asyncio.gather(
            broker("kill", "--agent", agent, "--reason", "race"),
            broker("revoke", "--agent", agent, "--action", "tickets.read"),
        )
        doc = kv_read(root_client(openbao), f"control/agents/{agent}") or {}
        assert doc["killed"] is True
        assert "tickets.read" in doc["revoked_before_action"]
        status, body, _ = await live.ask("tickets.read")
        assert (status, body["reason"]) == (403, "agent_disabled")
        code = await broker(
            "revive",
            "--agent",
            agent,
            "--reason",
            "next round",
            "--secret-id-file",
            str(secret_file),
        )
        assert code == 0
        for _ in range(100):
            if (await live.ask("tickets.read"))[0] == 200:
                break
            await asyncio.sleep(0.05)


async def test_kill_never_revokes_a_heartbeat_token_that_is_not_the_agents_login(
    openbao: DevServer, operator: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A heartbeat naming another token (a dev sidecar on an operator's token, or a forged
    heartbeat): the kill leaves that token alone, says so, and exits 1."""
    from broker.vault.bootstrap import AgentGrant
    from broker.vault.kv import kv_write

    agent = unique_agent("forged")
    client = root_client(openbao)
    bootstrap(client, [AgentGrant(agent=agent)], addr=openbao.addr)
    bystander = client.auth.token.create(policies=["default"], ttl="1h")["auth"]["accessor"]
    kv_write(client, f"heartbeat/{agent}", {"at": 1.0, "accessor": bystander})
    assert await broker("kill", "--agent", agent, "--reason", "forged heartbeat") == 1
    assert "not an AppRole login of the agent" in capsys.readouterr().out
    assert token_alive(openbao, bystander)
