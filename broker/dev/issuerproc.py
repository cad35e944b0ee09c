"""``broker up`` runs one ``broker issuer`` on a loopback port, with a Vault token that can
only read what verifiers may and sign status lists (the ``broker-issuer`` policy), and tells the sidecars its URL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from broker.core.errors import BackendUnavailable
from broker.vault._errors import translate_errors
from broker.vault.layout import ISSUER_POLICY
from broker.vault.session import VaultClient

ISSUER_TOKEN_TTL = "768h"  # noqa: S105 - a duration, not a secret; a development stack's lifetime; production renews its own token


@dataclass
class IssuerProcess:
    url: str
    port: int
    process: subprocess.Popen[bytes] = field(repr=False)
    log: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def issuer_token(client: VaultClient, addr: str) -> str:
    with translate_errors("creating the issuer's token", addr):
        result = client.auth.token.create(
            policies=[ISSUER_POLICY], ttl=ISSUER_TOKEN_TTL, no_default_policy=True, no_parent=True
        )
    return str(result["auth"]["client_token"])


def start_issuer(client: VaultClient, vault_addr: str, state_dir: Path) -> IssuerProcess:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_TOKEN", "BAO_TOKEN"))}
    env.update(VAULT_ADDR=vault_addr, VAULT_TOKEN=issuer_token(client, vault_addr))
    cmd = [sys.executable, "-m", "broker.cli", "issuer", "--listen", f"127.0.0.1:{port}"]
    cmd += ["--issuer-url", url]
    log = state_dir / "issuer.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    issuer = IssuerProcess(url, port, process, log)
    _wait_ready(issuer)
    return issuer


def _wait_ready(issuer: IssuerProcess, timeout: float = 30.0) -> None:
    from broker.sidecar.probe import probe

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if issuer.process.poll() is not None:
            raise BackendUnavailable(
                f"broker issuer exited with status {issuer.process.returncode}; see {issuer.log}"
            )
        if probe(("127.0.0.1", issuer.port)):
            return
        time.sleep(0.1)
    raise BackendUnavailable(f"broker issuer was not ready within {timeout:.0f}s; see {issuer.log}")
