"""An idle sidecar, started as ``broker sidecar`` is, carries what serving needs and not the
other commands: no report, MCP gateway, bench or issuer module, and no pyjwt before a proof."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from broker.dev.devstack import DevServer
from broker.dev.stack import approle_files, grant_for
from broker.scopes.loader import load_manifest
from broker.vault.bootstrap import bootstrap
from tests.harness import REPO, root_client, unique_agent, write_manifest

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


def test_a_ready_sidecar_loads_no_other_command(openbao: DevServer, tmp_path: Path) -> None:
    """Ready and serving, it has loaded aiohttp and hvac but nothing of reports, MCP, benches."""
    manifest = write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("foot")))
    agent = load_manifest(manifest).agent
    client = root_client(openbao)
    bootstrap(client, [grant_for(load_manifest(manifest))], addr=openbao.addr)
    role_file, secret_file = approle_files(client, agent, tmp_path / "secrets")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(
        VAULT_ADDR=openbao.addr,
        BROKER_ROLE_ID_FILE=str(role_file),
        BROKER_SECRET_ID_FILE=str(secret_file),
    )
    cmd = [sys.executable, "-c", RUN, "sidecar", "--manifest", str(manifest)]
    cmd += ["--listen", f"unix:{tmp_path / 's.sock'}", "--audit", str(tmp_path / "a.jsonl")]
    out = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("MODULES "))
    modules = set(line.split()[1:])
    assert {"aiohttp", "hvac", "broker.sidecar.service"} <= modules  # it did serve
    assert sorted(m for m in modules if m.startswith(NOT_IN_A_SIDECAR)) == []
