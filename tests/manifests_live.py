"""Helpers for the manifest lifecycle tests against the session's OpenBao: a scope directory
with its test cases, a platform editor's token, ``broker scopes publish`` in a thread, and a
sidecar that reads its manifest from Vault."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.cli import main
from broker.devstack import DevServer
from broker.loader import load_manifest
from broker.settings import VaultSettings
from broker.sidecar import Sidecar, SidecarConfig
from broker.stack import approle_files, grant_for
from broker.vault.bootstrap import bootstrap
from broker.vault.layout import PLATFORM_EDITOR_POLICY, SECURITY_OPERATOR_POLICY
from tests.harness import Harness, root_client

MANIFEST = """\
agent: {agent}
policy_version: {version}
system_owner: platform@acme.example
risk_owner: risk@acme.example
actions:
  read.thing:
    accountable: owner@acme.example
    credential: {{kind: jwt, audience: things, ttl: 60s}}
    inputs:
      id: {{type: string, pattern: '^T-[0-9]+$'}}
"""
PAY_OUT = """\
  pay.out:
    accountable: finance@acme.example
    credential: {kind: jwt, audience: payments, ttl: 60s}
"""
CASES = """\
agent: {agent}
cases:
  - name: reading a thing is allowed
    request: {{action: read.thing, inputs: {{id: T-1}}}}
    expect: {{outcome: allow, credential_kind: jwt}}
"""


def scope_dir(tmp_path: Path, agent: str, version: str, *, pay: bool, cases: str = CASES) -> Path:
    """A manifest file beside ``tests/<agent>.yaml``; returns the manifest's path."""
    directory = tmp_path / f"scopes-{version}"
    (directory / "tests").mkdir(parents=True, exist_ok=True)
    (directory / "tests" / f"{agent}.yaml").write_text(cases.format(agent=agent))
    path = directory / f"{agent}.yaml"
    path.write_text(MANIFEST.format(agent=agent, version=version) + (PAY_OUT if pay else ""))
    return path


def operator_token(openbao: DevServer, policy: str, who: str) -> str:
    created = root_client(openbao).auth.token.create(
        policies=[policy], meta={"operator": who}, ttl="1h"
    )
    return str(created["auth"]["client_token"])


def platform_editor(openbao: DevServer, who: str = "alice@acme.example") -> str:
    return operator_token(openbao, PLATFORM_EDITOR_POLICY, who)


def security_operator(openbao: DevServer, who: str = "sec@acme.example") -> str:
    return operator_token(openbao, SECURITY_OPERATOR_POLICY, who)


def prepare_agent(openbao: DevServer, manifest_path: Path) -> None:
    """Bootstrap the agent's policy and AppRole (what ``broker bootstrap`` does)."""
    grant = grant_for(load_manifest(manifest_path))
    bootstrap(root_client(openbao), [grant], demo=True, addr=openbao.addr)


async def cli(monkeypatch: pytest.MonkeyPatch, token: str, *argv: str) -> int:
    """``broker ARGV`` with ``token`` as VAULT_TOKEN, off the event loop (sidecars run in it)."""
    monkeypatch.setenv("VAULT_TOKEN", token)
    monkeypatch.delenv("BAO_TOKEN", raising=False)
    return await asyncio.to_thread(main, list(argv))


@asynccontextmanager
async def vault_sidecar(
    openbao: DevServer, agent: str, tmp_path: Path, **config: Any
) -> AsyncIterator[Harness]:
    """A real sidecar with ``--manifest vault:<agent>``, logged in with its own AppRole."""
    role_file, secret_file = approle_files(root_client(openbao), agent, tmp_path / "secrets")
    cfg = SidecarConfig(
        manifest_path=Path(f"vault:{agent}"),
        vault=VaultSettings(addr=openbao.addr, role_id_file=role_file, secret_id_file=secret_file),
        listen="127.0.0.1:0",
        audit_path=tmp_path / "audit" / f"{agent}.jsonl",
        poll_interval=0.1,
        manifest_poll_interval=config.pop("manifest_poll_interval", 0.1),
        **config,
    )
    sidecar = Sidecar(cfg)
    url = await sidecar.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Harness(sidecar, url, http, cfg.audit_path)
    finally:
        await sidecar.stop()


async def wait_for(check: Callable[[], Any], timeout: float = 5.0) -> float:
    """Poll an async-free or async ``check`` until truthy; seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")
