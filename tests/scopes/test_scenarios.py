"""Manifest test cases: the committed cases pass and a wrong expectation shows a diff."""

from __future__ import annotations

import shutil
from pathlib import Path

from broker.core.reasons import ReasonCode
from broker.scopes.scenarios import format_results, run_directory

SCOPES = Path(__file__).resolve().parents[2] / "scopes"
DECIDE_REASONS = {
    ReasonCode.agent_disabled,
    ReasonCode.unknown_action,
    ReasonCode.invalid_inputs,
    ReasonCode.constraint_violation,
    ReasonCode.concurrency_limit,
    ReasonCode.rate_limited,
    ReasonCode.budget_exhausted,
    ReasonCode.approval_required,
}


def scope_copy(tmp_path: Path, cases: str) -> Path:
    shutil.copy(SCOPES / "support-refund-agent.yaml", tmp_path)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "cases.yaml").write_text(cases)
    return tmp_path


def test_committed_cases_all_pass() -> None:
    """Every case in scopes/tests passes against the committed manifests."""
    results, issues = run_directory(SCOPES)
    assert issues == []
    assert results
    assert [r.name for r in results if not r.passed] == []


def test_committed_cases_cover_every_reason_decide_can_give() -> None:
    """The example cases exercise every reason code that decide can return."""
    results, _ = run_directory(SCOPES)
    seen = {r.decision.reason for r in results if r.decision is not None}
    assert seen >= DECIDE_REASONS


def test_wrong_expectation_fails_with_a_readable_diff(tmp_path: Path) -> None:
    """A case expecting the wrong outcome fails and shows expected and actual side by side."""
    scope = scope_copy(
        tmp_path,
        "agent: support-refund-agent\ncases:\n  - name: wrong\n"
        "    request: {action: stripe.refund, inputs: {ticket_id: CS-1, amount_usd: 50}}\n"
        "    expect: {outcome: deny, reason: budget_exhausted}\n",
    )
    [result], _ = run_directory(scope)
    assert not result.passed
    assert result.diff[:4] == (
        "- outcome: deny",
        "+ outcome: allow",
        "- reason: budget_exhausted",
        "+ reason: null",
    )
    assert "FAIL  cases.yaml: wrong" in format_results([result])


def test_case_for_an_unknown_agent_fails(tmp_path: Path) -> None:
    """A case naming an agent with no manifest fails instead of passing vacuously."""
    scope = scope_copy(
        tmp_path,
        "cases:\n  - name: ghost\n    agent: ghost-agent\n"
        "    request: {action: a.b}\n    expect: {outcome: deny}\n",
    )
    [result], _ = run_directory(scope)
    assert not result.passed
    assert "no manifest for agent 'ghost-agent'" in result.diff[0]


def test_malformed_case_file_is_reported_with_its_path(tmp_path: Path) -> None:
    """A case file with an unknown key is an issue naming file, line and path."""
    scope = scope_copy(tmp_path, "cases:\n  - name: x\n    request: {action: a.b}\n    expct: {}\n")
    results, issues = run_directory(scope)
    assert results == []
    assert any("cases.yaml:4: cases.0.expct: unknown key" in i for i in issues)
    assert any("cases.yaml:2: cases.0.expect: required field missing" in i for i in issues)
