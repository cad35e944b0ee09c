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


@dataclass
class NodeAgentProcess:
    socket: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    log: Path


def start_node_agent(
    vault_addr: str, state_dir: Path, role_files: tuple[Path, Path], timeout: float = 30.0
) -> NodeAgentProcess:
    """``role_files``: its AppRole login (``broker.dev.stack.node_agent_files``)."""
    role_file, secret_file = role_files
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
