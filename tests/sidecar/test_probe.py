"""``broker probe``: the health-check command answers without the heavy imports."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.cli import main
from broker.sidecar.probe import parse_listen, probe_node_agent

CHECK = """
import sys
from broker.cli import main
code = main(["probe", "--listen", "127.0.0.1:9"])
print(code, sorted(m for m in ("hvac", "aiohttp", "pydantic") if m in sys.modules))
"""


def test_probe_imports_neither_hvac_nor_aiohttp_nor_pydantic() -> None:
    """A health check every 10 s pays for one GET, not for the whole command line."""
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "1 []"


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("unix:/run/x.sock", ("unix", "/run/x.sock")),
        ("127.0.0.1:8080", ("tcp", 8080)),
        ("9", ("tcp", 9)),
    ],
)
def test_listen_addresses_parse(listen: str, expected: tuple[str, str | int]) -> None:
    """unix:PATH and loopback ports are what a probe may name."""
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["0.0.0.0:9", "127.0.0.1:x", "127.0.0.1:70000"])
def test_a_bad_listen_address_is_refused_with_exit_2(
    listen: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not loopback, not a port: a usage error naming --listen, never a probe of elsewhere."""
    assert main(["probe", "--listen", listen]) == 2
    assert "--listen" in capsys.readouterr().err


CHECK_NODE = """
import sys
from broker.cli import main
code = main(["probe", "--node-agent", "/nonexistent/node-agent.sock"])
print(code, sorted(m for m in ("hvac", "aiohttp", "pydantic") if m in sys.modules))
"""


def test_the_node_agent_probe_imports_nothing_heavy_either() -> None:
    """The DaemonSet's liveness check is as light as the sidecar's."""
    out = subprocess.run(
        [sys.executable, "-c", CHECK_NODE], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "1 []"


@pytest.mark.parametrize(
    ("agent", "why"),
    [
        ("none", "cannot connect"),
        ("silent", "said nothing for 0.3 s"),
        ("hangs up", "hung up without a line"),
        ("garbage", "not a node agent's line"),
        ("another wire version", "not a node agent's line: not wire version 1"),
    ],
)
def test_a_node_agent_that_is_not_there_or_not_one_fails_the_probe(
    agent: str, why: str, sockdir: Path
) -> None:
    """No socket, silence, a hang-up or a line no agent writes: not alive, saying which."""
    path = sockdir / "node-agent.sock"
    lines = {"garbage": b"hello\n", "another wire version": b'{"v": 2, "version": 3}\n'}
    with contextlib.ExitStack() as stack:
        if agent != "none":
            server = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            server.bind(str(path))
            server.listen()
            stack.enter_context(_answering(server, lines.get(agent), agent == "silent"))
        ok, said = probe_node_agent(str(path), wait=0.3)
    assert not ok
    assert why in said


@contextlib.contextmanager
def _answering(server: socket.socket, line: bytes | None, hold: bool) -> Iterator[None]:
    """Accept one connection: write ``line``, or hold it open silently, or hang up."""
    held: list[socket.socket] = []

    def serve() -> None:
        conn, _ = server.accept()
        if line is not None:
            conn.sendall(line)
        if hold:
            held.append(conn)
        else:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(timeout=5)
        for conn in held:
            conn.close()
