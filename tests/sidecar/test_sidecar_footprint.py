"""An idle sidecar, started as ``broker sidecar`` is, carries what serving needs and not the
other commands: no report, MCP gateway, bench or issuer module, and no pyjwt before a proof;
and, idle or minting, no second HTTP stack: every Vault call goes through aiohttp."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.dev.devstack import DevServer
from broker.sidecar.probe import probe
from tests.harness import (
    REPO,
    process_env,
    setup_database,
    unique_agent,
    write_manifest,
)
from tests.pgcluster import PgCluster

pytestmark = pytest.mark.integration

MANIFEST = """\
agent: {agent}
policy_version: footprint-1
system_owner: platform@acme.example
risk_owner: risk@acme.example
actions:
  read.thing:
    accountable: owner@acme.example
    credential: {{kind: jwt, audience: things, ttl: 60s}}
"""
# Runs the real command line in a process; once /readyz answers 200 it lists the modules
# loaded, then stops the sidecar the way SIGTERM does.
RUN = """
import os, signal, sys, threading, time
from broker.cli import main
from broker.sidecar.probe import probe

def report():
    while not probe(sys.argv[sys.argv.index("--listen") + 1][5:]):
        time.sleep(0.05)
    print("MODULES", " ".join(sorted(sys.modules)), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=report, daemon=True).start()
sys.exit(main(sys.argv[1:]))
"""
NOT_IN_A_SIDECAR = ("broker.audit.report", "broker.mcpgw", "broker.dev", "broker.issuer", "jwt")


# A second HTTP stack (about 6 MB resident) that a sidecar on aiohttp does not need.
SECOND_STACK = ("hvac", "requests", "urllib3", "charset_normalizer")


def _sidecar_command(openbao: DevServer, manifest: Path, tmp_path: Path, script: str) -> Any:
    """The command and environment of a sidecar for ``manifest``, bootstrapped, on AppRole."""
    env = process_env(openbao, manifest, tmp_path / "secrets")
    cmd = [sys.executable, "-c", script, "sidecar", "--manifest", str(manifest)]
    cmd += ["--listen", f"unix:{tmp_path / 's.sock'}", "--audit", str(tmp_path / "a.jsonl")]
    return cmd, env


def _modules(stdout: str) -> set[str]:
    line = next(x for x in stdout.splitlines() if x.startswith("MODULES "))
    return set(line.split()[1:])


def test_a_ready_sidecar_loads_no_other_command(openbao: DevServer, tmp_path: Path) -> None:
    """Ready and serving, it has loaded aiohttp but nothing of reports, MCP, benches, and no
    second HTTP stack (hvac, requests)."""
    manifest = write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("foot")))
    cmd, env = _sidecar_command(openbao, manifest, tmp_path, RUN)
    out = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    modules = _modules(out.stdout)
    assert {"aiohttp", "broker.sidecar.service"} <= modules  # it did serve
    assert sorted(m for m in modules if m.startswith(NOT_IN_A_SIDECAR)) == []
    assert sorted(m for m in modules if m.split(".")[0] in SECOND_STACK) == []


# MANIFEST's JWT action, a Vault child token and a database login.
MINTING = (
    MANIFEST
    + """\
  act.thing:
    accountable: owner@acme.example
    credential: {{kind: vault_token, policies: [things-write], ttl: 30s, uses: 1}}
  db.read_orders:
    accountable: owner@acme.example
    credential: {{kind: dynamic, mount: database, role: orders-readonly, ttl: 2m}}
"""
)
# As RUN, but it lists the modules only once the test has minted (the file ``minted``).
RUN_UNTIL_MINTED = RUN.replace(
    "        time.sleep(0.05)\n",
    "        time.sleep(0.05)\n"
    "    print('READY', flush=True)\n"
    "    while not os.path.exists(os.environ['FOOT_MINTED']):\n"
    "        time.sleep(0.05)\n",
)


async def _mint(sock: Path, action: str, inputs: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as http:
        body = {"action": action, "inputs": inputs}
        async with http.post("http://sidecar/v1/credentials", json=body) as resp:
            answer: dict[str, Any] = await resp.json()
            assert resp.status == 200, answer
            return answer


async def test_a_minting_sidecar_loads_no_second_http_stack(
    openbao: DevServer, postgres: PgCluster, tmp_path: Path
) -> None:
    """After it minted a JWT, a Vault child token and a database login (each a Vault call:
    login, certificate, key publication, token creation, database creds and lease), the
    sidecar has not loaded hvac, requests, urllib3 or charset_normalizer."""
    setup_database(openbao, postgres)
    manifest = write_manifest(tmp_path, MINTING.format(agent=unique_agent("foot")))
    cmd, env = _sidecar_command(openbao, manifest, tmp_path, RUN_UNTIL_MINTED)
    env["FOOT_MINTED"] = str(tmp_path / "minted")
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        sock = tmp_path / "s.sock"
        async with asyncio.timeout(120):
            while not probe(str(sock)):
                assert proc.poll() is None, proc.stderr.read()[-2000:] if proc.stderr else ""
                await asyncio.sleep(0.1)
            minted = [
                await _mint(sock, "read.thing", {}),
                await _mint(sock, "act.thing", {}),
                await _mint(sock, "db.read_orders", {}),
            ]
        (tmp_path / "minted").touch()
        stdout, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-2000:]
    assert [m["credential"]["kind"] for m in minted] == ["jwt", "vault_token", "dynamic"]
    modules = _modules(stdout)
    assert {"aiohttp", "broker.sidecar.minting"} <= modules
    assert sorted(m for m in modules if m.split(".")[0] in SECOND_STACK) == []
