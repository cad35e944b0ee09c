"""Start real sidecars against the session's OpenBao, in-process, for integration tests.

Each sidecar logs in with its own AppRole (as in production), serves on 127.0.0.1 on an
ephemeral port, and writes its audit trail under the test's tmp_path."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import hvac
import psycopg

from broker.dev.devstack import DevServer
from broker.dev.pgdev import PgCluster
from broker.dev.stack import approle_files, grant_for
from broker.scopes.loader import load_manifest
from broker.settings import VaultSettings
from broker.sidecar.main import Sidecar, SidecarConfig
from broker.vault.bootstrap import bootstrap
from broker.vault.database import DatabaseRole, configure_database
from broker.vault.session import make_client

REPO = Path(__file__).resolve().parent.parent
SCOPES = REPO / "scopes"


def root_client(openbao: DevServer) -> hvac.Client:
    return make_client(openbao.addr, openbao.root_token)


def approver_token(openbao: DevServer, approver: str, ttl: str = "10m") -> str:
    """What an admin gives an approver: a token bound to the Vault identity named as the
    manifest names the approver (the only identity that may record that approver's decisions)."""
    created = root_client(openbao).auth.token.create(
        role_name="broker-approver",
        entity_alias=approver,
        policies=["broker-approver"],
        meta={"operator": approver},
        ttl=ttl,
    )
    return str(created["auth"]["client_token"])


def write_manifest(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"manifest-{secrets.token_hex(3)}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def unique_agent(prefix: str = "test-agent") -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def setup_database(openbao: DevServer, postgres: PgCluster, role: str = "orders-readonly") -> None:
    """The ``database`` mount with a read-only role on a demo ``orders`` table (idempotent)."""
    with psycopg.connect(postgres.superuser_dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY, usd numeric)")
        conn.execute("INSERT INTO orders VALUES (1, 42) ON CONFLICT DO NOTHING")
        conn.execute("CREATE TABLE IF NOT EXISTS payroll (id int PRIMARY KEY, salary numeric)")
    configure_database(
        root_client(openbao),
        mount="database",
        connection_name="test-postgres",
        host=postgres.host,
        port=postgres.port,
        username=postgres.superuser,
        password=postgres.password,
        sslmode="disable",
        roles={
            role: DatabaseRole(
                grants=("SELECT ON TABLE public.orders",), default_ttl=300, max_ttl=3600
            )
        },
    )


@dataclass
class Harness:
    sidecar: Sidecar
    url: str
    http: aiohttp.ClientSession
    audit_path: Path

    async def ask(
        self, action: str, inputs: dict[str, Any] | None = None, **extra: Any
    ) -> tuple[int, dict[str, Any], Any]:
        body = {"action": action, "inputs": inputs or {}, **extra}
        async with self.http.post(f"{self.url}/v1/credentials", json=body) as resp:
            return resp.status, await resp.json(), resp.headers

    async def raw(self, method: str, path: str, **kw: Any) -> tuple[int, dict[str, Any], Any]:
        async with self.http.request(method, f"{self.url}{path}", **kw) as resp:
            return resp.status, await resp.json(content_type=None), resp.headers


@asynccontextmanager
async def running_sidecar(
    openbao: DevServer, manifest_path: Path, tmp_path: Path, **config: Any
) -> AsyncIterator[Harness]:
    """A sidecar for a manifest file (bootstrapped here), or for ``vault:<agent>`` (the
    agent bootstrapped and its manifest published beforehand)."""
    client = root_client(openbao)
    source = str(manifest_path)
    if source.startswith("vault:"):
        agent = source.removeprefix("vault:")
    else:
        manifest = load_manifest(manifest_path)
        bootstrap(client, [grant_for(manifest)], demo=True, addr=openbao.addr)
        agent = manifest.agent
    role_file, secret_file = approle_files(client, agent, tmp_path / "secrets")
    cfg = SidecarConfig(
        manifest_path=manifest_path,
        vault=VaultSettings(
            addr=config.pop("vault_addr", openbao.addr),
            addrs=config.pop("vault_addrs", ()),
            role_id_file=role_file,
            secret_id_file=secret_file,
            tls=config.pop("vault_tls", None),
        ),
        listen=config.pop("listen", "127.0.0.1:0"),
        audit_path=config.pop("audit_path", tmp_path / "audit" / f"{agent}.jsonl"),
        poll_interval=config.pop("poll_interval", 0.1),
        **config,
    )
    sidecar = Sidecar(cfg)
    url = await sidecar.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Harness(sidecar, url, http, cfg.audit_path)
    finally:
        await sidecar.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@asynccontextmanager
async def forward(port: int, target: str) -> AsyncIterator[None]:
    """A TCP forwarder on 127.0.0.1:port to Vault: 'Vault comes up' at that address."""
    host, _, target_port = target.removeprefix("http://").rpartition(":")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(target_port))
        writers.extend((writer, up_writer))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
        await server.wait_closed()


def process_env(
    openbao: DevServer, manifest: Path, secrets_dir: Path, *, demo: bool = False, **extra: str
) -> dict[str, str]:
    """The environment of a sidecar run as its own process: the agent bootstrapped, its own
    AppRole login in files (as in production), no VAULT_/BAO_ variable of the test's own."""
    client = root_client(openbao)
    loaded = load_manifest(manifest)
    bootstrap(client, [grant_for(loaded)], demo=demo, addr=openbao.addr)
    role_file, secret_file = approle_files(client, loaded.agent, secrets_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(
        VAULT_ADDR=openbao.addr,
        BROKER_ROLE_ID_FILE=str(role_file),
        BROKER_SECRET_ID_FILE=str(secret_file),
        **extra,
    )
    return env
