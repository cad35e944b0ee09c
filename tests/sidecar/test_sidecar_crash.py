"""A sidecar killed with SIGKILL under load loses no record of a credential a client received,
its audit trail still verifies, and after a restart its budgets continue where they were."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from broker.audit.records import verify_lines
from broker.dev.devstack import DevServer
from tests.harness import REPO, process_env, unique_agent, write_manifest

pytestmark = pytest.mark.integration

LIMIT = 400
MANIFEST = f"""\
agent: {{agent}}
policy_version: crash-1
system_owner: platform@acme.example
risk_owner: risk@acme.example
budgets:
  calls: {{{{limit: {LIMIT}, per: 1d, unit: calls}}}}
actions:
  read.thing:
    accountable: owner@acme.example
    credential: {{{{kind: jwt, audience: things, ttl: 60s}}}}
    cost: {{{{calls: 1}}}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(manifest: Path, audit: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "broker.cli",
        "sidecar",
        "--manifest",
        str(manifest),
        "--listen",
        f"127.0.0.1:{port}",
        "--audit",
        str(audit),
    ]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def _ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("sidecar not ready")


async def _hammer(url: str, received: list[str], stop: asyncio.Event) -> None:
    """Eight clients asking until the sidecar dies; keeps every credential id received."""
    async with aiohttp.ClientSession() as http:

        async def client() -> None:
            while not stop.is_set():
                try:
                    async with http.post(
                        f"{url}/v1/credentials", json={"action": "read.thing"}
                    ) as resp:
                        body = await resp.json()
                except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError):
                    return
                if resp.status == 200:
                    received.append(body["credential"]["credential_id"])

        await asyncio.gather(*(client() for _ in range(8)))


async def test_sigkill_under_load_loses_no_record_and_budgets_continue(
    openbao: DevServer, tmp_path: Path
) -> None:
    """Every credential a client got is in the trail; after restart the budget ends at the limit."""
    manifest = write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("crash")))
    env = process_env(openbao, manifest, tmp_path / "secrets")
    audit = tmp_path / "audit.jsonl"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"

    first = _start(manifest, audit, env, port)
    received: list[str] = []
    try:
        await _ready(url)
        stop = asyncio.Event()
        load = asyncio.create_task(_hammer(url, received, stop))
        while len(received) < 100:
            await asyncio.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        stop.set()
        await load
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()

    records = [
        json.loads(line)
        for line in audit.read_bytes().splitlines(keepends=True)
        if line.endswith(b"\n")
    ]
    recorded = {r.get("credential_id") for r in records if r.get("outcome") == "allow"}
    assert set(received) <= recorded, "a client holds a credential the trail does not know"
    before = len(recorded)
    assert before < LIMIT

    second = _start(manifest, audit, env, port)
    try:
        await _ready(url)
        granted = 0
        async with aiohttp.ClientSession() as http:
            for _ in range(LIMIT - before + 5):
                async with http.post(
                    f"{url}/v1/credentials", json={"action": "read.thing"}
                ) as resp:
                    body = await resp.json()
                    if resp.status == 200:
                        granted += 1
                    else:
                        assert body["reason"] == "budget_exhausted"
        assert granted == LIMIT - before, "the budget did not continue where the trail left it"
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(10)
    assert verify_lines(audit.read_bytes().splitlines(keepends=True)).ok
