"""Publishing manifests to the real OpenBao: validated and tested first, versioned, audited
with the publisher's identity, and Vault alone decides who may publish and who may read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.core.errors import PermissionDenied
from broker.dev.devstack import DevServer
from broker.dev.stack import approle_files
from broker.settings import VaultSettings
from broker.sidecar.watcher import validate_published
from broker.vault.manifests import manifest_versions, raw_write, read_manifest
from broker.vault.session import VaultSession
from tests.harness import root_client, unique_agent
from tests.manifests_live import (
    cli,
    platform_editor,
    prepare_agent,
    scope_dir,
    security_operator,
)

pytestmark = pytest.mark.integration

FAILING_CASES = """\
agent: {agent}
cases:
  - name: a claim that does not hold
    request: {{action: read.thing, inputs: {{id: T-1}}}}
    expect: {{outcome: deny}}
"""


def _audit(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_platform_editor_publishes_a_tested_manifest(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publish stores YAML, hash, policy version and publisher as a new KV version, skips an
    unchanged manifest, and records each publish in the operator audit trail."""
    agent, audit = unique_agent("pub"), tmp_path / "operator.jsonl"
    path = scope_dir(tmp_path, agent, "v1", pay=True)
    prepare_agent(openbao, path)
    token = platform_editor(openbao, "alice@acme.example")
    args = ("scopes", "publish", str(path), "--vault-addr", openbao.addr, "--audit-log", str(audit))
    assert await cli(monkeypatch, token, *args) == 0
    assert await cli(monkeypatch, token, *args) == 0  # unchanged: no new version
    stored = read_manifest(root_client(openbao), agent)
    assert stored is not None
    manifest = validate_published(stored, agent)
    assert (stored.version, stored.yaml) == (1, path.read_text())
    assert (stored.published_by, stored.policy_version) == ("alice@acme.example", "v1")
    assert list(manifest_versions(root_client(openbao), agent)) == [1]
    (record,) = _audit(audit)
    assert (record["event"], record["status"]) == ("publish", "ok")
    assert record["operator"] == "alice@acme.example"
    assert (record["content_hash"], record["policy_version"]) == (manifest.content_hash, "v1")
    assert record["version"] == 1


async def test_publish_refuses_a_manifest_whose_cases_fail(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing test case stops the publish before Vault is touched."""
    agent = unique_agent("pub")
    path = scope_dir(tmp_path, agent, "v1", pay=False, cases=FAILING_CASES)
    prepare_agent(openbao, path)
    code = await cli(monkeypatch, platform_editor(openbao), "scopes", "publish", str(path),
                     "--vault-addr", openbao.addr)  # fmt: skip
    assert code == 1
    assert read_manifest(root_client(openbao), agent) is None


async def test_security_operator_may_not_publish(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Vault refuses a publish by the security operator; the refusal is on the record."""
    agent, audit = unique_agent("pub"), tmp_path / "operator.jsonl"
    path = scope_dir(tmp_path, agent, "v1", pay=False)
    prepare_agent(openbao, path)
    code = await cli(monkeypatch, security_operator(openbao), "scopes", "publish", str(path),
                     "--vault-addr", openbao.addr, "--audit-log", str(audit))  # fmt: skip
    assert code == 1  # refused by Vault (PermissionDenied), not a usage error
    assert read_manifest(root_client(openbao), agent) is None
    (record,) = _audit(audit)
    assert (record["status"], record["operator"]) == ("refused", "sec@acme.example")


async def test_sidecar_identity_reads_its_own_manifest_and_nothing_else(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logged in with its AppRole, a sidecar reads its manifest, and Vault refuses it writing
    that manifest or reading another agent's."""
    agent, other = unique_agent("own"), unique_agent("other")
    path, other_path = (scope_dir(tmp_path, a, "v1", pay=False) for a in (agent, other))
    editor = platform_editor(openbao)
    for p in (path, other_path):
        prepare_agent(openbao, p)
        assert await cli(monkeypatch, editor, "scopes", "publish", str(p),
                         "--vault-addr", openbao.addr) == 0  # fmt: skip
    role, secret = approle_files(root_client(openbao), agent, tmp_path / "secrets")
    session = VaultSession(
        VaultSettings(addr=openbao.addr, role_id_file=role, secret_id_file=secret)
    )
    session.login()
    mine = read_manifest(session.client, agent)
    assert mine is not None
    assert mine.version == 1
    with pytest.raises(PermissionDenied):
        raw_write(session.client, agent, {**mine.to_doc(), "yaml": "agent: widened"})
    with pytest.raises(PermissionDenied):
        read_manifest(session.client, other)
    stored = read_manifest(root_client(openbao), agent)
    assert stored is not None
    assert stored.version == 1


async def test_diff_and_published_read_vault_versions(
    openbao: DevServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``scopes diff vault:<agent>@1 FILE`` compares a published version with a file."""
    agent = unique_agent("diff")
    v1 = scope_dir(tmp_path, agent, "v1", pay=False)
    v2 = scope_dir(tmp_path, agent, "v2", pay=True)
    prepare_agent(openbao, v1)
    editor = platform_editor(openbao)
    assert await cli(monkeypatch, editor, "scopes", "publish", str(v1),
                     "--vault-addr", openbao.addr) == 0  # fmt: skip
    capsys.readouterr()
    code = await cli(monkeypatch, editor, "scopes", "diff", f"vault:{agent}@1", str(v2),
                     "--vault-addr", openbao.addr, "--fail-on-widening")  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert "WIDENS   actions.pay.out: action added" in out
    assert await cli(monkeypatch, editor, "scopes", "published", agent,
                     "--vault-addr", openbao.addr) == 0  # fmt: skip
    assert "version 1  v1" in capsys.readouterr().out


async def test_publish_refuses_widening_without_a_named_sign_off(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A widening change is refused (exit 1, on the record, Vault untouched) unless
    ``--approve-widening REASON`` names a reason, which the audit record then carries."""
    agent, audit = unique_agent("wide"), tmp_path / "operator.jsonl"
    narrow = scope_dir(tmp_path, agent, "v1", pay=False)
    wide = scope_dir(tmp_path, agent, "v2", pay=True)
    prepare_agent(openbao, wide)
    editor = platform_editor(openbao)
    common = ("--vault-addr", openbao.addr, "--audit-log", str(audit))
    assert await cli(monkeypatch, editor, "scopes", "publish", str(narrow), *common) == 0
    assert await cli(monkeypatch, editor, "scopes", "publish", str(wide), *common) == 1
    stored = read_manifest(root_client(openbao), agent)
    assert stored is not None
    assert stored.policy_version == "v1"
    assert await cli(monkeypatch, editor, "scopes", "publish", str(wide), *common,
                     "--approve-widening", "CHG-42 signed off by risk") == 0  # fmt: skip
    stored = read_manifest(root_client(openbao), agent)
    assert stored is not None
    assert stored.policy_version == "v2"
    _, refused, approved = _audit(audit)
    assert (refused["status"], refused["policy_version"]) == ("refused", "v2")
    assert "widening" in str(refused["detail"])
    assert (approved["status"], approved["approved_widening"]) == (
        "ok",
        "CHG-42 signed off by risk",
    )
    assert "pay.out: action added" in str(approved["widening"])
