"""``broker probe``: one GET to a sidecar, for container health checks every few seconds;
``broker probe --node-agent PATH``: one line from a node agent, for its DaemonSet's.

Standard library only, and the command has its own small parser (``broker.cli`` builds it
alone when the first argument is ``probe``): the full command line imports hvac, aiohttp
and pydantic, over a second of CPU per health check."""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import time
from typing import Any

from broker.core.errors import ConfigError
from broker.sidecar.nodewire import MAX_LINE, WireError, decode

# The agent writes a line at least every 0.5 s, unchanged or not: 2 s of silence is a hung
# agent, not a slow one.
NODE_AGENT_WAIT = 2.0


def parse_listen(listen: str) -> tuple[str, str | int]:
    """("unix", path) or ("tcp", port). TCP is loopback only: a sidecar serves its neighbour."""
    if listen.startswith("unix:"):
        return "unix", listen[5:]
    host, _, port = listen.rpartition(":")
    if host not in ("", "127.0.0.1", "localhost"):
        raise ConfigError(
            f"--listen {listen!r}: a sidecar listens on 127.0.0.1 or a unix socket only"
        )
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"--listen {listen!r}: expected unix:PATH or 127.0.0.1:PORT")
    return "tcp", int(port)


def probe(where: str | tuple[str, int], path: str = "/readyz") -> bool:
    """One GET over a unix socket path or to (host, port): True on a 200."""
    family = socket.AF_UNIX if isinstance(where, str) else socket.AF_INET
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        sock.connect(where)
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: sidecar\r\n\r\n".encode())
        return sock.recv(64).split(b"\r\n", 1)[0].endswith(b" 200 OK")
    return False


def probe_node_agent(path: str, wait: float = NODE_AGENT_WAIT) -> tuple[bool, str]:
    """(alive, what it said): alive when a line a node agent writes came within ``wait``.
    Its error line (Vault unreachable) is alive too: a restart would not bring Vault back,
    and its sidecars poll Vault themselves meanwhile."""
    deadline = time.monotonic() + wait
    line = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(wait)
            sock.connect(path)
            while b"\n" not in line and len(line) <= MAX_LINE:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(MAX_LINE)
                if not chunk:
                    return False, "the node agent hung up without a line"
                line += chunk
    except TimeoutError:
        return False, f"the node agent said nothing for {wait:g} s"
    except OSError as exc:
        return False, f"cannot connect: {exc.strerror or exc}"
    try:
        said = decode(line.split(b"\n", 1)[0], time.monotonic())
    except WireError as exc:
        return False, f"not a node agent's line: {exc}"
    if isinstance(said, str):
        return True, f"alive; its last poll of Vault failed: {said}"
    age = time.monotonic() - said.read_at
    return True, f"control/version {said.version}, read {age:.2f} s ago"


def add_probe(commands: argparse._SubParsersAction[Any]) -> None:
    p = commands.add_parser(
        "probe", help="exit 0 if a sidecar answers 200 (container health checks)"
    )
    p.add_argument(
        "--listen", default="unix:/run/broker/sidecar.sock", help="unix:PATH or 127.0.0.1:PORT"
    )
    p.add_argument(
        "--path",
        default="/readyz",
        choices=["/healthz", "/readyz"],
        help="/readyz (default): would it mint now; /healthz: is the process alive",
    )
    p.add_argument(
        "--node-agent",
        metavar="SOCKET",
        help="probe the node agent serving this unix socket instead (its DaemonSet's check)",
    )
    p.add_argument("--json", action="store_true", help='print {"ok", "listen", "path"}')
    p.set_defaults(func=cmd_probe)


def cmd_probe(args: argparse.Namespace) -> int:
    if args.node_agent is not None:
        return _node_agent(args.node_agent, args.json)
    kind, where = parse_listen(args.listen)
    ok = probe(str(where) if kind == "unix" else ("127.0.0.1", int(where)), args.path)
    if args.json:
        print(json.dumps({"ok": ok, "listen": args.listen, "path": args.path}))
    else:
        print("ok" if ok else f"not ok: {args.listen}{args.path}")
    return 0 if ok else 1


def _node_agent(path: str, as_json: bool) -> int:
    if not path:
        raise ConfigError("--node-agent: give the node agent's unix socket path")
    ok, said = probe_node_agent(path)
    if as_json:
        print(json.dumps({"ok": ok, "node_agent": path, "said": said}))
    else:
        print(f"ok: {said}" if ok else f"not ok: {path}: {said}")
    return 0 if ok else 1
