"""Off-the-shelf gateway verifiers for the issuer tests: an issuer process, Node's ``jose``
installed by npm into the repository's ignored build area, and pyjwt's ``PyJWKClient``.

The npm install is cached in ``build/node-verifier`` (with npm's own cache beside it), so
the suite reinstalls only when ``tests/node/package.json`` changes. If npm cannot install,
the tests that need it fail; they never skip."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker.sidecar.probe import probe

ROOT = Path(__file__).resolve().parent.parent
NODE_SRC = ROOT / "tests" / "node"
NODE_DIR = ROOT / "build" / "node-verifier"


def node_verifier() -> Path:
    """The directory holding verify.mjs and its node_modules; installs once, then reuses."""
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    wanted = (NODE_SRC / "package.json").read_text()
    stamp = NODE_DIR / ".installed-package.json"
    if not (stamp.exists() and stamp.read_text() == wanted):
        (NODE_DIR / "package.json").write_text(wanted)
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is not on PATH: the Node gateway verifier cannot be installed")
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts",
             "--cache", str(ROOT / "build" / "npm-cache")],
            cwd=NODE_DIR, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            pytest.fail(f"npm install failed ({result.returncode}):\n{result.stderr[-2000:]}")
        stamp.write_text(wanted)
    for script in NODE_SRC.glob("*.mjs"):
        shutil.copyfile(script, NODE_DIR / script.name)
    return NODE_DIR


def run_node(
    issuer: str, cases: list[dict[str, Any]], script: str = "verify.mjs"
) -> list[dict[str, Any]]:
    """Every case through jose in one Node process; one result per case, in order."""
    directory = node_verifier()
    node = shutil.which("node")
    assert node is not None, "node is not on PATH"
    result = subprocess.run(
        [node, str(directory / script), issuer],
        input=json.dumps(cases), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out: list[dict[str, Any]] = json.loads(result.stdout)
    assert len(out) == len(cases)
    return out


@dataclass
class IssuerProc:
    url: str
    process: subprocess.Popen[bytes] = field(repr=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def issuer_process(
    vault_addr: str, token: str, log: Path, refresh: float = 0.2
) -> Iterator[IssuerProc]:
    """``broker issuer`` as gateways meet it: a separate process on a loopback port."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "BROKER_"))}
    env.update(VAULT_ADDR=vault_addr, VAULT_TOKEN=token)
    cmd = [sys.executable, "-m", "broker.cli", "issuer", "--listen", f"127.0.0.1:{port}",
           "--refresh", str(refresh)]  # fmt: skip
    with open(log, "ab") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not probe(("127.0.0.1", port)):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "broker issuer was not ready in 30 s"
            time.sleep(0.05)
        yield IssuerProc(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        process.wait(10)
