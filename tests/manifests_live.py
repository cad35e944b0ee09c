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

import pytest

from broker.cli import main
from broker.dev.devstack import DevServer
from broker.dev.stack import grant_for
from broker.scopes.loader import load_manifest
from broker.vault.bootstrap import bootstrap
from broker.vault.layout import PLATFORM_EDITOR_POLICY, SECURITY_OPERATOR_POLICY
from tests.harness import Harness, root_client, running_sidecar

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
    config.setdefault("manifest_poll_interval", 0.1)
    async with running_sidecar(openbao, Path(f"vault:{agent}"), tmp_path, **config) as h:
        yield h


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
