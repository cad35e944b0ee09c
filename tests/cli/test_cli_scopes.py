"""`broker scopes ...` and `broker bench decide`, run in-process through broker.cli.main."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from broker.cli import main

SCOPES = Path(__file__).resolve().parents[2] / "scopes"

GOOD = """\
agent: tiny-agent
policy_version: v1
system_owner: platform@acme.example
risk_owner: risk@acme.example
actions:
  notes.read:
    accountable: owner@acme.example
    credential: {kind: jwt, audience: notes, ttl: 60s}
    inputs:
      limit: {type: integer, max: 10}
"""


def test_validate_accepts_the_committed_scopes(capsys: pytest.CaptureFixture[str]) -> None:
    """`scopes validate scopes/` exits 0 and lists each agent with its hash."""
    assert main(["scopes", "validate", str(SCOPES)]) == 0
    out = capsys.readouterr().out
    assert "ok  support-refund-agent  refund-policy-2026-02  sha256:" in out


def test_validate_lists_every_problem_in_every_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad manifests exit 1, and each problem names its file, line, path and what is wrong."""
    (tmp_path / "no-owner.yaml").write_text(
        GOOD.replace("    accountable: owner@acme.example\n", "")
    )
    (tmp_path / "wrong-type.yaml").write_text(GOOD.replace("max: 10", "max: ten"))
    (tmp_path / "unknown-key.yaml").write_text(GOOD.replace("v1", "v1\ncolour: red"))
    (tmp_path / "malformed.yaml").write_text(GOOD.replace("{type: integer", "{type: [integer"))
    assert main(["scopes", "validate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path}/no-owner.yaml:6: actions.notes.read.accountable: required field" in err
    assert "accountable human" in err
    assert f"{tmp_path}/wrong-type.yaml:10: actions.notes.read.inputs.limit.max: " in err
    assert "valid number (found 'ten')" in err
    assert f"{tmp_path}/unknown-key.yaml:3: colour: unknown key (found 'red')" in err
    assert f"{tmp_path}/malformed.yaml:10: malformed YAML" in err


def test_scopes_test_passes_on_the_committed_cases(capsys: pytest.CaptureFixture[str]) -> None:
    """`scopes test scopes/` runs every case and exits 0 when all pass."""
    assert main(["scopes", "test", str(SCOPES)]) == 0
    assert " passed, 0 failed" in capsys.readouterr().out


def test_scopes_test_fails_with_a_diff_on_a_wrong_expectation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A deliberately wrong expectation exits non-zero and prints expected vs actual."""
    shutil.copy(SCOPES / "support-refund-agent.yaml", tmp_path)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "wrong.yaml").write_text(
        "agent: support-refund-agent\ncases:\n  - name: big refund auto-approved\n"
        "    request: {action: stripe.refund, inputs: {ticket_id: CS-1, amount_usd: 400}}\n"
        "    expect: {outcome: allow}\n"
    )
    assert main(["scopes", "test", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  wrong.yaml: big refund auto-approved" in out
    assert "- outcome: allow" in out
    assert "+ outcome: pending_approval" in out
    assert "0 passed, 1 failed" in out


def test_explain_prints_every_rule_then_the_decision(capsys: pytest.CaptureFixture[str]) -> None:
    """`scopes explain` shows each rule's result in order and ends with the decision."""
    code = main([
        "scopes", "explain", "--scopes", str(SCOPES), "--agent", "support-refund-agent",
        "--action", "stripe.refund", "--inputs", '{"ticket_id": "CS-1", "amount_usd": 120}',
        "--usage", '{"budgets": {"refunds-usd": 100}}', "--now", "1767225600",
    ])  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["pass", "agent_enabled"]
    assert lines[-2].startswith("pending  approval")
    assert lines[-1] == (
        "decision: pending_approval (approval_required): needs approval by finance-ops@acme.example"
    )


def test_explain_rejects_bad_json_as_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Malformed --inputs is a command-line error (exit 2), not a crash."""
    code = main(["scopes", "explain", "--scopes", str(SCOPES), "--agent",
                 "support-refund-agent", "--action", "x.y", "--inputs", "{nope"])  # fmt: skip
    assert code == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_schema_prints_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    """`scopes schema` prints the manifest JSON Schema."""
    assert main(["scopes", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "Agent credential broker scope manifest"


def test_bench_decide_reports_a_rate(capsys: pytest.CaptureFixture[str]) -> None:
    """`bench decide` reports the outcome mix and a median decisions-per-second figure."""
    manifest = SCOPES / "support-refund-agent.yaml"
    assert main(["bench", "decide", "--seconds", "0.05", "--rounds", "1",
                 "--manifest", str(manifest)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "'allow'" in out
    assert "'deny'" in out
    assert "'pending_approval'" in out
    assert "median:" in out
