"""Checkpoints signed by a real OpenBao transit key, verified offline, and the published head."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import hvac
import pytest

from broker.audit.log import AuditLog
from broker.audit.records import checkpoint_message, signature_problem
from broker.cli import main
from broker.core.errors import PermissionDenied
from broker.dev.devstack import DevServer
from broker.vault.asyncapi import AsyncVault
from broker.vault.transit import LoopCheckpointSigner, TransitCheckpointSigner

pytestmark = pytest.mark.integration


@pytest.fixture
def signer(openbao: DevServer) -> TransitCheckpointSigner:
    """A signer for a fresh agent id, so tests do not see each other's heads."""
    client = hvac.Client(url=openbao.addr, token=openbao.root_token)
    signer = TransitCheckpointSigner(client, agent=f"agent-{uuid.uuid4().hex[:8]}")
    signer.ensure_key()
    return signer


@pytest.fixture
def vault_env(openbao: DevServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VAULT_ADDR", "BAO_ADDR", "VAULT_TOKEN", "BAO_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VAULT_ADDR", openbao.addr)
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)


def test_ensure_key_is_idempotent(signer: TransitCheckpointSigner) -> None:
    """A second ensure finds the key present (the fixture created it)."""
    assert signer.ensure_key() == "present"


def test_transit_signature_verifies_offline(signer: TransitCheckpointSigner) -> None:
    """An ed25519 transit signature verifies with cryptography and the key's public bytes."""
    message = checkpoint_message(7, "sha256:" + "a" * 64, signer.agent)
    signature, version = signer.sign(message)
    keys = signer.public_keys()
    assert signature.startswith(f"vault:v{version}:")
    assert signature_problem(message, signature, keys) == ""
    assert signature_problem(
        checkpoint_message(8, "sha256:" + "a" * 64, signer.agent), signature, keys
    )
    assert signature_problem(checkpoint_message(7, "sha256:" + "a" * 64, "other"), signature, keys)


def test_published_head_round_trips(signer: TransitCheckpointSigner) -> None:
    """publish_head stores seq, hash and signature in KV v2; read_head returns them."""
    assert signer.read_head() is None
    signer.publish_head(signer.agent, 3, "sha256:" + "b" * 64, "vault:v1:c2ln")
    head = signer.read_head()
    assert head is not None
    assert (head.seq, head.hash, head.signature) == (3, "sha256:" + "b" * 64, "vault:v1:c2ln")


def write_trail(path: Path, signer: TransitCheckpointSigner, n: int) -> None:
    with AuditLog(path, signer=signer, agent=signer.agent, checkpoint_every=5) as log:
        for i in range(n):
            log.append_sync({"type": "decision", "agent_id": signer.agent, "request_id": f"r{i}"})
            log.wait_checkpoints()


@pytest.mark.usefixtures("vault_env")
def test_verify_checks_signatures_and_the_published_head(
    signer: TransitCheckpointSigner, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trail written with real checkpoints verifies against Vault's keys and head."""
    path = tmp_path / "audit.jsonl"
    write_trail(path, signer, 12)
    assert main(["audit", "verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "signatures verified" in out
    assert f"published head for {signer.agent}" in out


@pytest.mark.usefixtures("vault_env")
def test_truncated_tail_behind_a_checkpoint_is_detected(
    signer: TransitCheckpointSigner, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cutting whole records off the end is invisible to the chain alone (offline says so,
    exit 3, not "intact") but fails against Vault's head."""
    path = tmp_path / "audit.jsonl"
    write_trail(path, signer, 12)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-4]))
    assert main(["audit", "verify", str(path), "--offline"]) == 3
    assert "anchors NOT checked" in capsys.readouterr().out
    assert main(["audit", "verify", str(path), "--agent", signer.agent]) == 1
    out = capsys.readouterr().out
    assert f"first bad seq {len(lines) - 3}" in out
    assert "removed" in out


@pytest.mark.usefixtures("vault_env")
def test_forged_checkpoint_signature_is_detected(
    signer: TransitCheckpointSigner, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint re-signed with a key Vault does not have fails verification online."""
    from broker.audit.records import InMemorySigner

    path = tmp_path / "audit.jsonl"
    with AuditLog(path, signer=InMemorySigner(), agent=signer.agent, checkpoint_every=3) as log:
        for i in range(3):
            log.append_sync({"type": "decision", "agent_id": signer.agent, "request_id": f"r{i}"})
            log.wait_checkpoints()
    assert main(["audit", "verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "first bad seq 4" in out
    assert "signature" in out


async def test_loop_signer_signs_and_publishes_through_the_event_loop(
    openbao: DevServer, signer: TransitCheckpointSigner
) -> None:
    """The sidecar's signer, called from a worker thread as the audit log calls it, makes its
    Vault calls on the event loop: the signature verifies offline and the head is readable."""
    vault = AsyncVault(openbao.addr, lambda: openbao.root_token)
    loop_signer = LoopCheckpointSigner(vault, asyncio.get_running_loop(), agent=signer.agent)
    message = checkpoint_message(11, "sha256:" + "d" * 64, signer.agent)
    try:
        signature, version = await asyncio.to_thread(loop_signer.sign, message)
        await asyncio.to_thread(
            loop_signer.publish_head, signer.agent, 11, "sha256:" + "d" * 64, signature
        )
    finally:
        await vault.close()
    assert signature.startswith(f"vault:v{version}:")
    assert signature_problem(message, signature, signer.public_keys()) == ""
    head = signer.read_head()
    assert head is not None
    assert (head.seq, head.signature) == (11, signature)


async def test_loop_signer_refused_by_vault_raises_the_projects_error(
    openbao: DevServer,
) -> None:
    """A token Vault refuses gives PermissionDenied (which the audit log notes and retries),
    and the message carries no token."""
    vault = AsyncVault(openbao.addr, lambda: "hvs.not-a-token")
    loop_signer = LoopCheckpointSigner(vault, asyncio.get_running_loop(), agent="nobody")
    try:
        with pytest.raises(PermissionDenied) as caught:
            await asyncio.to_thread(loop_signer.sign, b"message")
    finally:
        await vault.close()
    assert "hvs." not in str(caught.value)


def test_an_agents_login_signs_only_with_its_own_checkpoint_key(
    openbao: DevServer, tmp_path: Path
) -> None:
    """Bootstrap gives each agent its own transit key; agent A's AppRole login signs with
    A's key and is refused B's (an attacker holding A's login cannot checkpoint B's trail)."""
    from broker.dev.stack import approle_files
    from broker.vault.bootstrap import AgentGrant, bootstrap

    root = hvac.Client(url=openbao.addr, token=openbao.root_token)
    a, b = f"ckpt-a-{uuid.uuid4().hex[:6]}", f"ckpt-b-{uuid.uuid4().hex[:6]}"
    bootstrap(root, [AgentGrant(a), AgentGrant(b)], addr=openbao.addr)
    role_file, secret_file = approle_files(root, a, tmp_path)
    login = hvac.Client(url=openbao.addr)
    login.auth.approle.login(role_file.read_text().strip(), secret_file.read_text().strip())
    own = TransitCheckpointSigner(login, agent=a)
    message = checkpoint_message(1, "sha256:" + "e" * 64, a)
    signature, _ = own.sign(message)
    with pytest.raises(PermissionDenied):
        TransitCheckpointSigner(login, agent=b).sign(checkpoint_message(1, "sha256:" + "e" * 64, b))
    with pytest.raises(PermissionDenied):
        TransitCheckpointSigner(login, agent=a, key="audit-checkpoint").sign(message)
    keys_a = TransitCheckpointSigner(root, agent=a).public_keys()
    keys_b = TransitCheckpointSigner(root, agent=b).public_keys()
    assert signature_problem(message, signature, keys_a) == ""
    assert signature_problem(message, signature, keys_b)
