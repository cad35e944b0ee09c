"""Every operator command against a TLS Vault (``bao server -dev -dev-tls``) with a CA of its
own, next to a running ``broker up --vault-addr https://...`` stack: each command first runs
without VAULT_CACERT (exit 3, the stable ``backend_unavailable`` code, the certificate problem
and the variable to set, no traceback), then with it (exit 0).

The cases share one stack and run in table order: the approvals decided were requested when
the stack started, and the commands that take the sidecar's logins away (rotate agent-secret,
kill) come last, revive after kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from broker.dev.devstack import DevServer, start_dev_server
from broker.settings import VaultTLS
from broker.vault.session import make_client
from tests.harness import REPO, SCOPES

pytestmark = pytest.mark.integration
AGENT = "support-refund-agent"
REFUND = SCOPES / f"{AGENT}.yaml"
APPROVER = "finance-ops@acme.example"


@dataclass
class TlsStack:
    bao: DevServer
    state: Path
    approvals: list[str] = field(default_factory=list)

    @property
    def ca(self) -> dict[str, str]:
        return {"VAULT_CACERT": str(self.bao.ca_cert)}

    def mint(self, amount: float) -> dict[str, object]:
        body = json.dumps(
            {"action": "stripe.refund", "inputs": {"ticket_id": "CS-7", "amount_usd": amount}}
        )
        done = subprocess.run(
            ["curl", "-s", "--unix-socket", str(self.state / f"{AGENT}.sock"),
             "http://sidecar/v1/credentials", "-H", "content-type: application/json", "-d", body],
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        answer: dict[str, object] = json.loads(done.stdout)
        return answer

    def approver_token(self) -> str:
        root = make_client(
            self.bao.addr, self.bao.root_token, tls=VaultTLS(cacert=self.bao.ca_cert)
        )
        created = root.auth.token.create(
            role_name="broker-approver", entity_alias=APPROVER, policies=["broker-approver"],
            meta={"operator": APPROVER}, ttl="10m",
        )  # fmt: skip
        return str(created["auth"]["client_token"])


def _env(bao: DevServer, token: str, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "BROKER_"))}
    return clean | {"VAULT_ADDR": bao.addr, "VAULT_TOKEN": token, **extra}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStack]:
    """A TLS OpenBao, `broker up --vault-addr` running the refund agent's sidecar over it, one
    allowed refund in its audit trail and two refunds waiting for approval."""
    bao = start_dev_server(tls=True)
    state = tmp_path_factory.mktemp("tls-stack")
    argv = [sys.executable, "-m", "broker.cli", "up", "--vault-addr", bao.addr, "--no-postgres",
            "--state-dir", str(state), str(REFUND)]  # fmt: skip
    env = _env(bao, bao.root_token, VAULT_CACERT=str(bao.ca_cert))
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not any("stops everything" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        s = TlsStack(bao, state)
        assert s.mint(5)["outcome"] == "allow"
        for _ in range(2):
            pending = s.mint(150)
            assert pending["outcome"] == "pending_approval", pending
            s.approvals.append(str(pending["approval_id"]))
        yield s
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        bao.stop()


Case = Callable[[TlsStack, Path], tuple[list[str], str]]

# (command, how to build its argv and the token it acts with), in the order they run.
CASES: list[tuple[str, Case]] = [
    ("status", lambda s, _: (["status"], s.bao.root_token)),
    ("approvals list", lambda s, _: (["approvals", "list", "--json"], s.bao.root_token)),
    (
        "approvals approve",
        lambda s, _: (
            ["approvals", "approve", s.approvals[0], "--agent", AGENT],
            s.approver_token(),
        ),
    ),
    (
        "approvals deny",
        lambda s, _: (
            ["approvals", "deny", s.approvals[1], "--reason", "no", "--agent", AGENT],
            s.approver_token(),
        ),
    ),
    (
        "audit verify (online)",
        lambda s, _: (
            ["audit", "verify", str(s.state / "audit" / f"{AGENT}.jsonl")],
            s.bao.root_token,
        ),
    ),
    ("scopes publish", lambda s, _: (["scopes", "publish", str(REFUND)], s.bao.root_token)),
    ("scopes published", lambda s, _: (["scopes", "published", AGENT], s.bao.root_token)),
    ("rotate signing-key", lambda s, _: (["rotate", "signing-key"], s.bao.root_token)),
    ("revoke", lambda s, _: (["revoke", "--agent", AGENT], s.bao.root_token)),
    (
        "rotate agent-secret",
        lambda s, tmp: (
            ["rotate", "agent-secret", "--agent", AGENT, "--secret-id-file", str(tmp / "sid")],
            s.bao.root_token,
        ),
    ),
    ("kill", lambda s, _: (["kill", "--agent", AGENT, "--wait", "1"], s.bao.root_token)),
    (
        "revive",
        lambda s, tmp: (
            ["revive", "--agent", AGENT, "--reason", "drill", "--secret-id-file", str(tmp / "sid")],
            s.bao.root_token,
        ),
    ),
]


def _broker(
    s: TlsStack, argv: list[str], token: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *argv], capture_output=True, text=True,
        env=_env(s.bao, token, **extra), cwd=REPO, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(("name", "case"), CASES, ids=[name for name, _ in CASES])
def test_operator_command_needs_the_ca_and_works_with_it(
    stack: TlsStack, tmp_path: Path, name: str, case: Case
) -> None:
    """Without VAULT_CACERT: exit 3, `backend_unavailable`, the certificate problem and the
    variable named, no traceback; then with it the same command succeeds."""
    argv, token = case(stack, tmp_path)
    refused = _broker(stack, argv, token)
    assert refused.returncode == 3, (name, refused.stdout, refused.stderr)
    assert "broker: error: backend_unavailable:" in refused.stderr, refused.stderr
    assert "certificate" in refused.stderr, refused.stderr
    assert "VAULT_CACERT" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr + refused.stdout
    done = _broker(stack, argv, token, **stack.ca)
    assert done.returncode == 0, (name, done.stdout, done.stderr)
