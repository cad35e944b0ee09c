"""``broker up``: a whole development stack on this machine, and nothing left behind.

It starts (or uses) a Vault/OpenBao, bootstraps it, starts a throwaway PostgreSQL when a
manifest asks for dynamic database credentials and the PostgreSQL 15 binaries are there,
gives each agent's sidecar its own AppRole secret (files, 0600, as Vault Agent reads
them), and runs one ``broker sidecar`` process per manifest on a unix socket. Everything it
started is stopped by process id, in reverse order, on SIGINT or SIGTERM."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.core.errors import BackendUnavailable, ConfigError
from broker.core.manifest import DynamicCredential, Manifest, VaultTokenCredential
from broker.dev.devstack import DevServer, start_dev_server
from broker.dev.issuerproc import IssuerProcess, start_issuer
from broker.dev.nodeproc import NodeAgentProcess, start_node_agent
from broker.dev.pgdev import PG_BINDIR, PgCluster, start_cluster, stop_cluster
from broker.scopes.loader import load_manifests
from broker.settings import VaultSettings
from broker.sidecar.probe import probe
from broker.vault._errors import translate_errors
from broker.vault.bootstrap import AgentGrant, Step, TokenAction, bootstrap
from broker.vault.database import DatabaseRole, configure_database
from broker.vault.layout import APPROLE_MOUNT, DATABASE_MOUNT, NODE_AGENT_ROLE, approle_role
from broker.vault.session import VaultClient, make_client

DEMO_DB = "postgres"


def grant_for(manifest: Manifest) -> AgentGrant:
    """What Vault must know of ``manifest``: each ``vault_token`` action's exact limits,
    dynamic secret paths, and the approvers who need a Vault identity."""
    creds = [a.credential for a in manifest.actions.values()]
    return AgentGrant(
        agent=manifest.agent,
        token_policies=frozenset(
            p for c in creds if isinstance(c, VaultTokenCredential) for p in c.policies
        ),
        dynamic_paths=frozenset(
            f"{c.mount}/creds/{c.role}" for c in creds if isinstance(c, DynamicCredential)
        ),
        token_actions=tuple(
            TokenAction(name, frozenset(c.policies), c.ttl, c.uses)
            for name, a in sorted(manifest.actions.items())
            if isinstance(c := a.credential, VaultTokenCredential)
        ),
        approvers=frozenset(
            who for a in manifest.actions.values() if a.approval for who in a.approval.approvers
        ),
    )


def dynamic_roles(manifests: Sequence[Manifest]) -> dict[str, DynamicCredential]:
    return {
        c.role: c
        for m in manifests
        for a in m.actions.values()
        if isinstance(c := a.credential, DynamicCredential) and c.mount == DATABASE_MOUNT
    }


def check_reachable(client: VaultClient, addr: str) -> None:
    with translate_errors("health check", addr):
        status = client.sys.read_health_status(method="GET")
    if not isinstance(status, dict):
        raise BackendUnavailable(f"Vault at {addr} is not ready (sealed or uninitialised)")


@dataclass
class SidecarProcess:
    agent: str
    socket: Path
    process: subprocess.Popen[bytes]
    audit: Path


@dataclass
class Stack:
    state_dir: Path
    vault_addr: str
    operator_token: str = field(repr=False)
    dev_server: DevServer | None = None
    postgres: PgCluster | None = None
    sidecars: list[SidecarProcess] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    issuer: IssuerProcess | None = None
    node_agent: NodeAgentProcess | None = None  # sidecars started after it use it

    def stop(self, *, remove_state: bool = False) -> None:
        """Stop everything started, by process id; the state directory (audit trails, secret
        files) is kept for inspection unless ``remove_state``."""
        for sc in reversed(self.sidecars):
            _terminate(sc.process)
        self.sidecars.clear()
        if self.node_agent is not None:
            _terminate(self.node_agent.process)
            self.node_agent = None
        if self.issuer is not None:
            _terminate(self.issuer.process)
            self.issuer = None
        if self.postgres is not None:
            stop_cluster(self.postgres)
            self.postgres = None
        if self.dev_server is not None:
            self.dev_server.stop()
            self.dev_server = None
        if remove_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)


def _terminate(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)


def approle_files(
    client: VaultClient, agent: str, directory: Path, *, role: str | None = None
) -> tuple[Path, Path]:
    """A fresh secret id for the agent's AppRole (or ``role``: the node agent's), written
    where its process reads it, as ``<agent>.role-id`` and ``<agent>.secret-id``."""
    role = role or approle_role(agent)
    role_id = client.auth.approle.read_role_id(role_name=role, mount_point=APPROLE_MOUNT)["data"][
        "role_id"
    ]
    secret_id = client.auth.approle.generate_secret_id(role_name=role, mount_point=APPROLE_MOUNT)[
        "data"
    ]["secret_id"]
    role_file, secret_file = directory / f"{agent}.role-id", directory / f"{agent}.secret-id"
    _write_secret(role_file, role_id)
    _write_secret(secret_file, secret_id)
    return role_file, secret_file


def _demo_database(client: VaultClient, manifests: Sequence[Manifest], pg: PgCluster) -> list[Step]:
    try:
        import psycopg  # only the dev stack needs a driver: it creates the demo table
    except ImportError as exc:
        raise ConfigError(
            "the demo database needs psycopg: pip install 'agent-credential-broker[dev]'"
        ) from exc

    with psycopg.connect(pg.superuser_dsn(DEMO_DB), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, item text, usd numeric)"
        )
        conn.execute(
            "INSERT INTO orders (item, usd) SELECT 'demo', 42 WHERE NOT EXISTS (SELECT 1 FROM orders)"
        )
    roles = {
        name: DatabaseRole(
            grants=("SELECT ON TABLE public.orders",),
            default_ttl=spec.ttl,
            max_ttl=max(spec.ttl, 3600),
        )
        for name, spec in dynamic_roles(manifests).items()
    }
    done = configure_database(
        client,
        mount=DATABASE_MOUNT,
        connection_name="demo-postgres",
        host=pg.host,
        port=pg.port,
        username=pg.superuser,
        password=pg.password,
        dbname=DEMO_DB,
        sslmode="disable",
        roles=roles,
    )
    return [Step(thing, state) for thing, state in done]


def start_sidecar(
    stack: Stack,
    manifest_path: Path,
    agent: str,
    vault: VaultSettings,
    *,
    role_files: tuple[Path, Path] | None,
    replica: int | None = None,
) -> SidecarProcess:
    """One sidecar process; with ``replica`` (``broker up --replicas N``) the i-th of several
    for the agent, with its own socket and trail, sharing the agent's limits through the fleet
    ledger in Vault (``BROKER_LEDGER=vault``)."""
    name = agent if replica is None else f"{agent}-r{replica}"
    socket = stack.state_dir / f"{name}.sock"
    audit = stack.state_dir / "audit" / f"{name}.jsonl"
    # BROKER_VAULT_ADDRS would win over VAULT_ADDR: this stack's Vault is the one given here.
    skip = ("VAULT_TOKEN", "BAO_TOKEN", "BROKER_VAULT_ADDRS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    env["VAULT_ADDR"] = vault.addr
    env.pop("BROKER_NODE_AGENT_SOCKET", None)
    if stack.node_agent is not None:
        env["BROKER_NODE_AGENT_SOCKET"] = str(stack.node_agent.socket)
    if replica is not None:
        env["BROKER_LEDGER"] = "vault"
    if stack.issuer is not None:
        env["BROKER_ISSUER_URL"] = stack.issuer.url  # the iss of this sidecar's tokens
    if source := env.pop("BROKER_BENCH_SIDECAR_SOURCE", ""):
        # Benches only: the sidecars run another checkout's code (the code before a change,
        # measured by the same bench); everything else runs this one. ``-m`` puts the working
        # directory first on the path, so the sidecar runs from there.
        env["PYTHONPATH"] = source
    if role_files is not None:
        env["BROKER_ROLE_ID_FILE"], env["BROKER_SECRET_ID_FILE"] = map(str, role_files)
    elif vault.token is not None:
        env["VAULT_TOKEN"] = vault.token.get_secret_value()
    cmd = [
        sys.executable,
        "-m",
        "broker.cli",
        "sidecar",
        "--manifest",
        str(manifest_path),
        "--listen",
        f"unix:{socket}",
        "--audit",
        str(audit),
    ]
    log = open(stack.state_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
    process = subprocess.Popen(
        cmd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=env.get("PYTHONPATH") if source else None,
    )
    log.close()
    sc = SidecarProcess(agent, socket, process, audit)
    stack.sidecars.append(sc)
    return sc


def node_agent_files(client: VaultClient, directory: Path) -> tuple[Path, Path]:
    """The node agent's AppRole login (``broker_node_agent``: reads control/version only)."""
    return approle_files(client, "node-agent", directory / "secrets", role=NODE_AGENT_ROLE)


def wait_ready(sc: SidecarProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sc.process.poll() is not None:
            raise BackendUnavailable(
                f"the sidecar for {sc.agent} exited with status {sc.process.returncode}"
            )
        if sc.socket.exists() and probe(str(sc.socket)):
            return
        time.sleep(0.1)
    raise BackendUnavailable(f"the sidecar for {sc.agent} was not ready within {timeout:.0f}s")


def up(
    paths: Sequence[Path],
    *,
    vault: VaultSettings | None,
    state_dir: Path | None = None,
    with_postgres: bool = True,
    replicas: int = 1,
    node_agent: bool = True,
) -> Stack:
    """Start everything; on any failure, stop what was started and raise. ``replicas`` > 1
    runs that many sidecars per agent, sharing its budgets, rates and concurrency cap."""
    manifests_with_paths = _load(paths)
    state = state_dir or Path(tempfile.mkdtemp(prefix="broker-up-"))
    state.mkdir(parents=True, exist_ok=True)
    stack = Stack(state_dir=state, vault_addr="", operator_token="")
    try:
        _start_vault(stack, vault)
        client = make_client(stack.vault_addr, stack.operator_token)
        manifests = [m for _, m in manifests_with_paths]
        stack.steps += bootstrap(
            client,
            [grant_for(m) for m in manifests],
            demo=stack.dev_server is not None,
            addr=stack.vault_addr,
        )
        if (
            with_postgres
            and dynamic_roles(manifests)
            and stack.dev_server is not None
            and PG_BINDIR.exists()
        ):
            stack.postgres = start_cluster()
            stack.steps += _demo_database(client, manifests, stack.postgres)
        stack.issuer = start_issuer(client, stack.vault_addr, state)
        if node_agent:  # one control poll for every sidecar below
            stack.node_agent = start_node_agent(
                stack.vault_addr, state, node_agent_files(client, state)
            )
        sidecar_vault = VaultSettings(addr=stack.vault_addr)
        for path, manifest in manifests_with_paths:
            source = path
            if stack.dev_server is not None:  # never publish into a Vault we did not start
                stack.steps.append(publish_example(client, path, manifest, stack.vault_addr))
                source = Path(f"vault:{manifest.agent}")
            for i in range(replicas):
                where = state / "secrets" / (f"r{i}" if replicas > 1 else "")
                files = approle_files(client, manifest.agent, where)
                start_sidecar(
                    stack,
                    source,
                    manifest.agent,
                    sidecar_vault,
                    role_files=files,
                    replica=i if replicas > 1 else None,
                )
        for sc in stack.sidecars:
            wait_ready(sc)
    except BaseException:
        stack.stop()
        raise
    return stack


def publish_example(client: VaultClient, path: Path, manifest: Manifest, addr: str) -> Step:
    """Publish a manifest file to the dev Vault, so its sidecar runs ``--manifest
    vault:<agent>`` as in production and ``broker scopes publish`` changes what it enforces."""
    from broker.vault.manifests import PublishedManifest, read_manifest, write_manifest

    current = read_manifest(client, manifest.agent, addr=addr)
    if current is not None and current.content_hash == manifest.content_hash:
        return Step(f"manifest vault:{manifest.agent}", "present")
    published = PublishedManifest(
        manifest.agent, 0, path.read_text(encoding="utf-8"), manifest.content_hash,
        manifest.policy_version, "broker up", time.time(),
    )  # fmt: skip
    write_manifest(client, published, addr, cas=current.version if current else 0)
    return Step(f"manifest vault:{manifest.agent}", "created")


def _load(paths: Sequence[Path]) -> list[tuple[Path, Manifest]]:
    from broker.scopes.loader import expand_paths

    files, problems = expand_paths(paths)
    if problems:
        raise ConfigError("; ".join(problems))
    manifests = load_manifests(files)
    by_agent = {m.agent: m for m in manifests}
    return [(f, by_agent[m.agent]) for f, m in zip(files, manifests, strict=True)]


def _start_vault(stack: Stack, vault: VaultSettings | None) -> None:
    if vault is None:
        stack.dev_server = start_dev_server(log_path=stack.state_dir / "bao.log")
        stack.vault_addr, stack.operator_token = stack.dev_server.addr, stack.dev_server.root_token
        return
    if vault.token is None:
        raise ConfigError(
            "--vault-addr needs an operator token in VAULT_TOKEN (or BAO_TOKEN) to bootstrap"
        )
    stack.vault_addr, stack.operator_token = vault.addr, vault.token.get_secret_value()
    check_reachable(make_client(vault.addr, stack.operator_token, timeout=3.0), vault.addr)


def describe(stack: Stack) -> Iterator[str]:
    yield f"Vault/OpenBao: {stack.vault_addr}" + (
        " (dev server started by broker up)" if stack.dev_server else ""
    )
    if stack.postgres is not None:
        yield f"PostgreSQL:    127.0.0.1:{stack.postgres.port} (throwaway, for dynamic credentials)"
    yield f"State:         {stack.state_dir}"
    if stack.node_agent is not None:
        yield f"Node agent:    unix:{stack.node_agent.socket}  (one control poll for the sidecars)"
    if stack.issuer is not None:
        yield f"Issuer:        {stack.issuer.url}  (JWKS: {stack.issuer.url}/.well-known/jwks.json)"
    for sc in stack.sidecars:
        yield f"sidecar {sc.socket.stem:<27} unix:{sc.socket}  (audit: {sc.audit})"


def example_request(stack: Stack, manifests: dict[str, Any] | None = None) -> str:
    sc = next(
        (s for s in stack.sidecars if s.agent == "support-refund-agent"),
        stack.sidecars[0] if stack.sidecars else None,
    )
    if sc is None:
        return ""
    body = '{"action": "zendesk.get_ticket", "inputs": {"ticket_id": "CS-19422"}}'
    return f"curl -s --unix-socket {sc.socket} http://sidecar/v1/credentials -H 'content-type: application/json' -d '{body}'"
