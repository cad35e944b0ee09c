"""The ``--json`` shapes of ``scopes explain``, ``scopes published``, ``scopes verify``,
``approvals approve|deny`` and ``probe``: each parsed and checked key by key, the live ones
against a real OpenBao and real sidecars. The shapes are documented in README.md ("Scripts
and CI")."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from broker.cli import main
from broker.dev.devstack import DevServer
from broker.scopes.loader import load_manifest
from tests.harness import SCOPES, approver_token, free_port, running_sidecar, unique_agent
from tests.manifests_live import platform_editor, prepare_agent, scope_dir, vault_sidecar

REFUND = SCOPES / "support-refund-agent.yaml"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main(list(argv))
    return code, json.loads(capsys.readouterr().out)


def test_explain_json_lists_every_rule_and_the_decision(capsys: pytest.CaptureFixture[str]) -> None:
    """`scopes explain --json`: the rules in order with their status, then the decision."""
    code, doc = _run(
        capsys, "scopes", "explain", "--scopes", str(SCOPES), "--agent", "support-refund-agent",
        "--action", "stripe.refund", "--inputs", '{"ticket_id": "CS-1", "amount_usd": 120}',
        "--now", "1767225600", "--json",
    )  # fmt: skip
    assert code == 0
    assert set(doc) == {"agent", "action", "rules", "decision"}
    assert (doc["agent"], doc["action"]) == ("support-refund-agent", "stripe.refund")
    assert doc["rules"][0] == {"rule": "agent_enabled", "status": "pass", "detail": ""}
    assert [r["status"] for r in doc["rules"]][-1] in {"pending", "skipped"}
    assert all(set(r) == {"rule", "status", "detail"} for r in doc["rules"])
    assert doc["decision"] == {
        "outcome": "pending_approval",
        "reason": "approval_required",
        "detail": "needs approval by finance-ops@acme.example",
    }


@pytest.mark.parametrize(
    ("inputs", "outcome", "reason"),
    [
        ('{"ticket_id": "CS-1", "amount_usd": 5}', "allow", None),
        ('{"ticket_id": "nope", "amount_usd": 5}', "deny", "constraint_violation"),
    ],
)
def test_explain_json_decisions(
    capsys: pytest.CaptureFixture[str], inputs: str, outcome: str, reason: str | None
) -> None:
    """An allowed request has no reason; a refused one names its stable reason code."""
    _, doc = _run(
        capsys, "scopes", "explain", "--scopes", str(SCOPES), "--agent", "support-refund-agent",
        "--action", "stripe.refund", "--inputs", inputs, "--now", "1767225600", "--json",
    )  # fmt: skip
    assert (doc["decision"]["outcome"], doc["decision"]["reason"]) == (outcome, reason)


def test_probe_json_when_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    """`probe --json` against a port nobody listens on: ok false, exit 1."""
    port = free_port()
    code, doc = _run(capsys, "probe", "--listen", f"127.0.0.1:{port}", "--json")
    assert code == 1
    assert doc == {"ok": False, "listen": f"127.0.0.1:{port}", "path": "/readyz"}


@pytest.mark.integration
async def test_probe_json_against_a_ready_sidecar(
    openbao: DevServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`probe --json` against a live sidecar: ok true, exit 0."""
    async with running_sidecar(openbao, REFUND, tmp_path) as h:
        listen = h.url.removeprefix("http://")
        code = await asyncio.to_thread(main, ["probe", "--listen", listen, "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "listen": listen, "path": "/readyz"}


async def _cli_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], token: str, *argv: str
) -> tuple[int, Any]:
    monkeypatch.setenv("VAULT_TOKEN", token)
    monkeypatch.delenv("BAO_TOKEN", raising=False)
    monkeypatch.delenv("BROKER_OPERATOR_AUDIT", raising=False)
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.integration
async def test_published_and_verify_json(
    openbao: DevServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`scopes published --json` names the version, hash, publisher and history; `scopes
    verify --json` says not_published, no_sidecar, enforced (a sidecar reading Vault) and
    not_enforced with why (a sidecar reading a file), with exit codes 1, 0, 0, 1."""
    monkeypatch.setenv("VAULT_ADDR", openbao.addr)
    agent = unique_agent("json")
    v1 = scope_dir(tmp_path, agent, "v1", pay=False)
    v2 = scope_dir(tmp_path, agent, "v2", pay=True)
    prepare_agent(openbao, v2)
    editor = platform_editor(openbao)
    code, doc = await _cli_json(monkeypatch, capsys, editor, "scopes", "verify", str(v1), "--json")
    assert (code, doc["verdict"], doc["published"]) == (1, "not_published", None)
    assert main(["scopes", "publish", str(v1)]) == 0
    code, doc = await _cli_json(monkeypatch, capsys, editor, "scopes", "published", agent, "--json")
    assert code == 0
    assert set(doc) == {"agent", "version", "policy_version", "content_hash", "published_by",
                        "published_at", "versions"}  # fmt: skip
    assert (doc["agent"], doc["version"], doc["policy_version"]) == (agent, 1, "v1")
    assert doc["content_hash"] == load_manifest(v1).content_hash
    assert doc["published_by"] == "alice@acme.example"
    assert list(doc["versions"]) == ["1"]
    code, doc = await _cli_json(monkeypatch, capsys, editor, "scopes", "verify", str(v1), "--json")
    assert (code, doc["verdict"], doc["sidecar_hash"]) == (0, "no_sidecar", None)
    assert doc["published"] == {"version": 1, "content_hash": load_manifest(v1).content_hash}
    async with vault_sidecar(openbao, agent, tmp_path / "vault-run"):
        code, doc = await _cli_json(
            monkeypatch, capsys, editor, "scopes", "verify", str(v1), "--json", "--wait", "5"
        )
    assert (code, doc["verdict"]) == (0, "enforced")
    assert doc["sidecar_hash"] == load_manifest(v1).content_hash
    async with running_sidecar(openbao, v1, tmp_path / "file-run"):
        assert main(["scopes", "publish", str(v2), "--approve-widening", "test"]) == 0
        code, doc = await _cli_json(
            monkeypatch, capsys, editor, "scopes", "verify", str(v2), "--json", "--wait", "0"
        )
    assert (code, doc["verdict"]) == (1, "not_enforced")
    assert doc["sidecar_hash"] == load_manifest(v1).content_hash
    assert "from a file" in doc["why"]


@pytest.mark.integration
@pytest.mark.parametrize(("verb", "extra"), [("approve", []), ("deny", ["--reason", "too much"])])
async def test_approve_and_deny_json(
    openbao: DevServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    verb: str,
    extra: list[str],
) -> None:
    """`approvals approve|deny --json`: the decision recorded, by whom, for which request."""
    monkeypatch.setenv("VAULT_ADDR", openbao.addr)
    async with running_sidecar(openbao, REFUND, tmp_path) as h:
        status, body, _ = await h.ask("stripe.refund", {"ticket_id": "CS-9", "amount_usd": 150})
        assert status == 202, body
        token = approver_token(openbao, "finance-ops@acme.example")
        code, doc = await _cli_json(
            monkeypatch, capsys, token, "approvals", verb, body["approval_id"], *extra, "--json"
        )
    assert code == 0
    assert set(doc) == {"decision", "by", "at", "approval_id", "agent_id", "action",
                        "request_id", "inputs_hash", "reason"}  # fmt: skip
    assert doc["decision"] == {"approve": "approved", "deny": "denied"}[verb]
    assert (doc["approval_id"], doc["agent_id"]) == (body["approval_id"], "support-refund-agent")
    assert (doc["action"], doc["by"]) == ("stripe.refund", "finance-ops@acme.example")
    assert doc["reason"] == (extra[1] if extra else "")
