"""Who may reach a sidecar's unix socket: the group and mode of the file, and the peer
allowlist (SO_PEERCRED). The agent is played by real other OS users (``setpriv``), as an agent
container running under another uid in the pod's fsGroup would be."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.core.errors import ConfigError
from broker.dev.devstack import DevServer
from broker.sidecar.listener import SocketAccess, parse_group, parse_listen, parse_socket_mode
from tests.harness import SCOPES, running_sidecar

AGENT_GID = 65534  # nogroup: the group the agent container shares with the sidecar
AGENT_UID = 65534  # nobody
STRANGER = 12345  # a uid/gid in no group of the socket

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A directory every user may traverse (the emptyDir), unlike pytest's 0700 tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="broker-sock-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _mint_as(uid: int, gid: int, sock: Path) -> tuple[int, str]:
    """curl's exit code and body, run as uid/gid: a refund through the sidecar's socket."""
    body = json.dumps({"action": "stripe.refund", "inputs": {"ticket_id": "CS-9", "amount_usd": 5}})
    proc = await asyncio.create_subprocess_exec(
        "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
        "curl", "-s", "--unix-socket", str(sock), "-H", "Content-Type: application/json",
        "-d", body, "http://sidecar/v1/credentials",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


@needs_root
@pytest.mark.integration
async def test_group_member_mints_and_stranger_is_refused_by_mode(
    openbao: DevServer, tmp_path: Path, socket_dir: Path
) -> None:
    """Mode 0660 with the agent's group: a member mints; a user outside it cannot connect."""
    sock = socket_dir / "sidecar.sock"
    access = SocketAccess(group=AGENT_GID, mode=0o660)
    manifest = SCOPES / "support-refund-agent.yaml"
    async with running_sidecar(
        openbao, manifest, tmp_path, listen=f"unix:{sock}", socket_access=access
    ):
        assert (sock.stat().st_mode & 0o777, sock.stat().st_gid) == (0o660, AGENT_GID)
        code, out = await _mint_as(AGENT_UID, AGENT_GID, sock)
        assert (code, json.loads(out)["credential"]["kind"]) == (0, "vault_token"), out
        code, out = await _mint_as(STRANGER, STRANGER, sock)
        assert (code, out) == (7, "")  # curl: could not connect (EACCES)


@needs_root
@pytest.mark.integration
async def test_peer_allowlist_refuses_a_group_member_that_is_not_listed(
    openbao: DevServer, tmp_path: Path, socket_dir: Path
) -> None:
    """With an allowlisted uid, another member of the socket's group connects but gets 403."""
    sock = socket_dir / "sidecar.sock"
    listed = AGENT_UID - 1
    access = SocketAccess(group=AGENT_GID, mode=0o660, allow_uids=frozenset({listed}))
    manifest = SCOPES / "support-refund-agent.yaml"
    async with running_sidecar(
        openbao, manifest, tmp_path, listen=f"unix:{sock}", socket_access=access
    ):
        code, out = await _mint_as(listed, AGENT_GID, sock)
        assert (code, json.loads(out)["credential"]["kind"]) == (0, "vault_token"), out
        code, out = await _mint_as(AGENT_UID, AGENT_GID, sock)
        assert (code, json.loads(out)["error"]) == (0, "peer_not_allowed"), out


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: SocketAccess(group=1, mode=0o666), "0666"),
        (lambda: SocketAccess(group=1, mode=0o664), "0664"),
        (lambda: SocketAccess(mode=0o660), "needs --socket-group"),
        (lambda: SocketAccess(group=1, mode=0o060), "0060"),
        (lambda: parse_socket_mode("rw-rw----"), "octal"),
        (lambda: parse_group("no-such-group-xyz"), "no such group"),
    ],
)
def test_socket_access_refusals(make: object, needle: str) -> None:
    """A mode that reaches others, a group mode without a group, a bad mode or group: refused."""
    with pytest.raises(ConfigError, match=needle):
        make()  # type: ignore[operator]


def test_allowlist_semantics() -> None:
    """Empty allowlists admit anyone the file mode admits; otherwise the uid or the gid must match."""
    assert SocketAccess().allows(5, 5)
    listed = SocketAccess(allow_uids=frozenset({1}), allow_gids=frozenset({2}))
    assert [listed.allows(1, 9), listed.allows(9, 2), listed.allows(9, 9)] == [True, True, False]


def test_parse_group_and_listen() -> None:
    """A gid is taken as is, a name is looked up; tcp stays loopback only."""
    assert (parse_group("65534"), parse_group("root")) == (65534, 0)
    assert parse_socket_mode("0660") == 0o660
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1"):
        parse_listen("0.0.0.0:8080")
