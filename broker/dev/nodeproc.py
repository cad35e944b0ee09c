"""``broker up`` runs one ``broker node-agent`` for its sidecars, as a DaemonSet would on a
node: logged in with its own AppRole (``broker_node_agent``, which reads control/version and
nothing else), serving ``node-agent.sock`` in the state directory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from broker.core.errors import BackendUnavailable
from broker.sidecar.nodewire import Confirmation, decode
from broker.vault._errors import translate_errors
from broker.vault.layout import APPROLE_MOUNT, NODE_AGENT_ROLE
from broker.vault.session import VaultClient


@dataclass
class NodeAgentProcess:
    socket: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    log: Path


def node_agent_files(client: VaultClient, directory: Path, addr: str) -> tuple[Path, Path]:
    """A fresh secret id of the node agent's AppRole, in files only its process reads."""
    approle = client.auth.approle
    with translate_errors("a secret id for the node agent", addr):
        role_id = approle.read_role_id(role_name=NODE_AGENT_ROLE, mount_point=APPROLE_MOUNT)
        secret = approle.generate_secret_id(role_name=NODE_AGENT_ROLE, mount_point=APPROLE_MOUNT)
    directory.mkdir(parents=True, exist_ok=True)
    files = directory / "node-agent.role-id", directory / "node-agent.secret-id"
    for path, value in zip(
        files, (role_id["data"]["role_id"], secret["data"]["secret_id"]), strict=True
    ):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value)
    return files


def start_node_agent(
    client: VaultClient, vault_addr: str, state_dir: Path, timeout: float = 30.0
) -> NodeAgentProcess:
    role_file, secret_file = node_agent_files(client, state_dir / "secrets", vault_addr)
    skip = ("VAULT_TOKEN", "BAO_TOKEN", "BROKER_VAULT_ADDRS", "BROKER_VAULT_AUTH")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    env.update(
        VAULT_ADDR=vault_addr,
        BROKER_ROLE_ID_FILE=str(role_file),
        BROKER_SECRET_ID_FILE=str(secret_file),
    )
    sock = state_dir / "node-agent.sock"
    cmd = [sys.executable, "-m", "broker.cli", "node-agent", "--socket", str(sock)]
    log = state_dir / "node-agent.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    agent = NodeAgentProcess(sock, process, log)
    try:
        wait_confirming(agent, timeout)
    except BaseException:
        process.terminate()
        process.wait(10)
        raise
    return agent


def first_line(path: Path, timeout: float = 2.0) -> Confirmation | str:
    """What the agent at ``path`` says first: a confirmation, or its error."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        line = s.makefile("rb").readline()
    return decode(line, time.monotonic())


def wait_confirming(agent: NodeAgentProcess, timeout: float) -> None:
    """Until the agent confirms a control version (it has logged in and read Vault)."""
    deadline = time.monotonic() + timeout
    said: Confirmation | str = "no answer"
    while time.monotonic() < deadline:
        if agent.process.poll() is not None:
            raise BackendUnavailable(
                f"the node agent exited with status {agent.process.returncode}; see {agent.log}"
            )
        try:
            said = first_line(agent.socket)
        except (OSError, ValueError):
            said = "not listening yet"
        if isinstance(said, Confirmation):
            return
        time.sleep(0.1)
    raise BackendUnavailable(f"the node agent did not confirm within {timeout:.0f} s: {said}")
