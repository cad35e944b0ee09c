"""The three-layer report: exact numbers from a known trail, the window, the CLI and HTML forms."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pytest

from broker.audit.log import AuditLog
from broker.audit.records import InMemorySigner
from broker.audit.report import build_report, parse_since
from broker.audit.report_html import render_html
from broker.cli.report import register, run_report

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
DAY = 86_400.0
RECENT, OLD = NOW - DAY, NOW - 10 * DAY
REFUND, READ = "stripe.refund", "db.read"


def _iso(at: float) -> str:
    from broker.audit.records import iso_utc

    return iso_utc(at)


def decision(
    action: str,
    outcome: str,
    *,
    at: float = RECENT,
    agent: str = "a1",
    reason: str | None = None,
    credential: str | None = None,
    kind: str = "jwt",
    charges: dict[str, float] | None = None,
    approval_id: str | None = None,
    override: bool = False,
) -> dict[str, Any]:
    """A decision record shaped like ``CredentialService._record`` writes it."""
    status = "ok" if outcome == "allow" else "blocked"
    call: dict[str, Any] = {"tool": action, "status": status}
    if reason:
        call["reason"] = reason
    record: dict[str, Any] = {
        "type": "decision",
        "timestamp": _iso(at),
        "at": at,
        "agent_id": agent,
        "workflow": "wf",
        "request_id": f"req_{credential or approval_id or id(call)}",
        "tool_calls": [call],
        "outcome": outcome,
        "reason": reason,
        "approval_reason": "large refund" if outcome == "pending_approval" else None,
        "credential_id": credential,
        "credential_kind": kind if credential else None,
        "charges": charges or {},
        "human_override": override,
        "raci": {"accountable": "ops"},
        "policy_version": "v1",
        "manifest_hash": "sha256:00",
    }
    if approval_id:
        record["approval_id"] = approval_id
    return record


def outcome(
    cid: str, status: str, cost: dict[str, float] | None = None, *, at: float = RECENT
) -> dict[str, Any]:
    return {
        "type": "outcome",
        "timestamp": _iso(at + 5),
        "agent_id": "a1",
        "credential_id": cid,
        "status": status,
        "cost": cost or {},
    }


def approval(event: str, approval_id: str, **extra: Any) -> dict[str, Any]:
    """An approval record shaped like ``ApprovalGate._record`` writes it (the pending decision
    record is the request; approval records follow its lifecycle)."""
    record = {
        "type": "approval",
        "timestamp": _iso(RECENT + 60),
        "agent_id": "a1",
        "action": REFUND,
        "credential_id": None,
        "human_override": event == "approved",
    }
    return {**record, "event": event, "approval_id": approval_id, **extra}


def trail_records() -> list[dict[str, Any]]:
    """The known mix for agent a1 (in the last day unless noted):

    stripe.refund: c1..c4 allowed (usd 10 each): c1 ok with actual cost usd 12.5, c2 ok,
      c3 error (then revoked), c4 rolled_back; 2 budget_exhausted denials; 2 pending approvals,
      apr_1 approved by a human and redeemed as c8 (usd 100, no outcome yet), apr_2 denied;
      and c0, ten days old, ok with actual cost usd 1000.
    db.read: c5..c7 allowed (queries 1 each), all ok, c7 with actual cost queries 3;
      1 rate_limited denial.
    Agent a2: one agent_disabled denial and a kill. Plus a checkpoint and an unknown type.
    """
    usd, q = {"usd": 10.0}, {"queries": 1.0}
    return [
        decision(REFUND, "allow", at=OLD, credential="c0", charges=usd),
        outcome("c0", "ok", {"usd": 1000.0}, at=OLD),
        *(decision(REFUND, "allow", credential=f"c{i}", charges=usd) for i in range(1, 5)),
        *(decision(READ, "allow", credential=f"c{i}", kind="dynamic", charges=q) for i in (5, 6, 7)),
        decision(REFUND, "deny", reason="budget_exhausted"),
        decision(REFUND, "deny", reason="budget_exhausted"),
        decision(READ, "deny", reason="rate_limited"),
        decision(REFUND, "pending_approval", approval_id="apr_1"),
        decision(REFUND, "pending_approval", approval_id="apr_2"),
        {"type": "checkpoint", "seq": 99, "head_seq": 98, "signature": "x"},
        {"type": "heartbeat", "agent_id": "a1", "timestamp": _iso(RECENT)},
        approval("approved", "apr_1"),
        approval("denied", "apr_2"),
        approval("redeemed", "apr_1", credential_id="c8"),
        decision(
            REFUND, "allow", credential="c8", charges={"usd": 100.0}, approval_id="apr_1", override=True
        ),
        outcome("c1", "ok", {"usd": 12.5}),
        outcome("c2", "ok"),
        outcome("c3", "error"),
        outcome("c4", "rolled_back"),
        outcome("c5", "ok"),
        outcome("c6", "ok"),
        outcome("c7", "ok", {"queries": 3.0}),
        {"type": "control", "event": "revoke", "agent_id": "a1", "credential_id": "c3",
         "timestamp": _iso(RECENT + 100)},
        decision(READ, "deny", agent="a2", reason="agent_disabled"),
        {"type": "control", "event": "kill", "agent_id": "a2", "timestamp": _iso(RECENT)},
    ]  # fmt: skip


def week_report() -> Any:
    return build_report(trail_records(), now=NOW, since=parse_since("7d"))


def test_throughput_layer_exact() -> None:
    """Decisions, credentials issued and cost per ok outcome match the known mix (last 7 days)."""
    a1 = week_report().agents[0]
    refund_t = next(a.layers.throughput for a in a1.actions if a.action == REFUND)
    read = next(a.layers.throughput for a in a1.actions if a.action == READ)
    assert [a.action for a in a1.actions] == [READ, REFUND]
    assert refund_t.decisions == 9
    assert refund_t.by_outcome == {"allow": 5, "deny": 2, "pending_approval": 2}
    assert refund_t.credentials_issued == 5
    assert refund_t.outcomes_reported == {"error": 1, "ok": 2, "rolled_back": 1}
    assert refund_t.cost_total == {"usd": 22.5}
    assert refund_t.cost_per_ok == {"usd": 11.25}
    assert (read.decisions, read.credentials_issued, read.ok_outcomes) == (4, 3, 3)
    assert read.cost_per_ok == {"queries": 1.666667}
    total = a1.total.throughput
    assert total.decisions == 13
    assert total.by_outcome == {"allow": 8, "deny": 3, "pending_approval": 2}
    assert (total.credentials_issued, total.ok_outcomes) == (8, 5)
    assert total.cost_total == {"queries": 5.0, "usd": 22.5}
    assert total.cost_per_ok == {"queries": 1.0, "usd": 4.5}


def test_integrity_layer_exact() -> None:
    """Refusals by reason, errors, rollbacks, approval denials and revocations are exact."""
    report = week_report()
    a1, a2 = report.agents
    i = a1.total.integrity
    assert i.refusals == 3
    assert i.refusals_by_reason == {"budget_exhausted": 2, "rate_limited": 1}
    assert (i.errors, i.rollbacks, i.approval_denials, i.revocations, i.kills) == (1, 1, 1, 1, 0)
    assert i.approvals == {"approved": 1, "denied": 1, "redeemed": 1}
    refund = next(a.layers.integrity for a in a1.actions if a.action == REFUND)
    assert refund.revocations == 1  # the revoke names c3, a stripe.refund credential
    assert refund.refusals_by_reason == {"budget_exhausted": 2}
    assert a2.agent == "a2"
    assert a2.total.integrity.refusals_by_reason == {"agent_disabled": 1}
    assert a2.total.integrity.kills == 1


def test_trust_layer_exact() -> None:
    """Auto vs approved shares, the deduplicated override, and audit completeness are exact."""
    a1 = week_report().agents[0]
    t = a1.total.trust
    assert (t.auto_executed, t.approved) == (7, 1)
    assert (t.auto_share, t.approved_share) == (0.875, 0.125)
    assert t.overrides == 1  # the approval record and its decision are one override
    assert t.override_rate == round(1 / 13, 6)
    assert (t.audit_complete, t.audit_completeness) == (7, 0.875)
    assert t.missing_outcome == ("c8",)
    assert t.missing_decision == ()
    refund = next(a.layers.trust for a in a1.actions if a.action == REFUND)
    assert (refund.auto_share, refund.approved_share, refund.audit_completeness) == (0.8, 0.2, 0.8)
    assert refund.override_rate == round(1 / 9, 6)


def test_since_window_drops_old_credential_and_its_outcome() -> None:
    """Without --since the ten-day-old c0 and its usd 1000 outcome count; with 7d they do not."""
    everything = build_report(trail_records(), now=NOW)
    t = everything.agents[0].total
    assert (t.throughput.decisions, t.throughput.credentials_issued) == (14, 9)
    assert t.throughput.cost_total == {"queries": 5.0, "usd": 1022.5}
    assert t.trust.audit_completeness == round(8 / 9, 6)
    week = week_report()
    assert week.window_start == "2027-01-08T08:00:00Z"
    assert week.agents[0].total.throughput.decisions == 13
    # A 12h window keeps nothing of the day-old mix.
    assert build_report(trail_records(), now=NOW, since=parse_since("12h")).agents == ()


def test_outcome_without_decision_is_a_gap() -> None:
    """An outcome whose decision is missing is issued, incomplete and listed as such."""
    report = build_report([outcome("cx", "ok")], now=NOW)
    t = report.agents[0].total.trust
    assert (t.missing_decision, t.audit_completeness) == (("cx",), 0.0)


def test_agent_filter_and_json_round_trip() -> None:
    """--agent keeps one agent; to_json is plain JSON with the same numbers."""
    report = build_report(trail_records(), now=NOW, since=7 * DAY, agent="a2")
    assert [a.agent for a in report.agents] == ["a2"]
    doc = json.loads(json.dumps(week_report().to_json()))
    assert doc["agents"][0]["total"]["trust"]["missing_outcome"] == ["c8"]
    assert doc["agents"][0]["total"]["throughput"]["cost_per_ok"] == {"queries": 1.0, "usd": 4.5}


@pytest.mark.parametrize(
    ("text", "seconds"), [("7d", 604800.0), ("12h", 43200.0), ("30m", 1800.0), ("2w", 1209600.0)]
)
def test_parse_since(text: str, seconds: float) -> None:
    """Durations in s, m, h, d and w parse to seconds."""
    assert parse_since(text) == seconds


def test_parse_since_refuses_garbage() -> None:
    """A duration without a unit is refused, naming what was given."""
    with pytest.raises(ValueError, match="'7'"):
        parse_since("7")


# --- the CLI -----------------------------------------------------------------------------


def write_trail(path: Path, records: list[dict[str, Any]]) -> Path:
    """A real hash-chained trail, written by AuditLog; its own checkpoints replace ours."""
    with AuditLog(path, signer=InMemorySigner(), agent="a1", checkpoint_every=5) as log:
        for record in records:
            if record["type"] != "checkpoint":
                log.append_sync(record)
    return path


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="broker")
    commands = parser.add_subparsers(dest="command", required=True)
    register(commands, argparse.ArgumentParser().add_subparsers())
    args = parser.parse_args(argv)
    return run_report(args, now=lambda: NOW)


def rows_of(out: str, section: str) -> dict[str, list[str]]:
    """The whitespace-split rows of one layer table of the first agent, by action."""
    block = out.split(f" {section}\n", 1)[1].split("\n\n", 1)[0]
    return {line.split()[0]: line.split()[1:] for line in block.splitlines()[1:]}


@pytest.fixture
def trail_file(tmp_path: Path) -> Path:
    return write_trail(tmp_path / "a1.jsonl", trail_records())


def test_cli_terminal_tables(trail_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The terminal form prints the exact numbers of every layer, per action and in total."""
    assert cli(["report", "--since", "7d", "--agent", "a1", str(trail_file)]) == 0
    out = capsys.readouterr().out
    assert "since 2027-01-08T08:00:00Z" in out
    through = rows_of(out, "THROUGHPUT")
    assert through[REFUND] == ["9", "5", "2", "2", "5", "2", "usd=11.25"]
    assert through["(all)"] == ["13", "8", "3", "2", "8", "5", "queries=1", "usd=4.5"]
    integrity = rows_of(out, "INTEGRITY")
    assert integrity["(all)"] == ["3", "1", "1", "1", "1", "budget_exhausted=2", "rate_limited=1"]
    trust = rows_of(out, "TRUST")
    assert trust["(all)"] == ["7", "1", "87.5%", "12.5%", "1", "7.7%", "87.5%", "c8"]
    assert trust[READ] == ["3", "0", "100.0%", "0.0%", "0", "0.0%", "100.0%", "-"]


def test_cli_json_and_directory_input(trail_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory of *.jsonl is read whole, and --json prints the report as JSON."""
    assert cli(["report", "--json", "--since", "7d", str(trail_file.parent)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [a["agent"] for a in doc["agents"]] == ["a1", "a2"]
    assert doc["agents"][0]["total"]["integrity"]["refusals"] == 3


def test_cli_html_has_the_numbers(
    trail_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--html writes one self-contained page whose charts and table carry the exact numbers."""
    page = tmp_path / "report.html"
    assert cli(["report", "--since", "7d", "--html", str(page), str(trail_file)]) == 0
    assert str(page) in capsys.readouterr().out
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing fetched
    assert bars(html, "outcomes-0") == {"allow": 8, "deny": 3, "pending_approval": 2}
    assert bars(html, "refusals-0") == {"budget_exhausted": 2, "rate_limited": 1}
    assert bars(html, "trust-0") == {"auto": 7, "approved": 1}
    assert bars(html, "refusals-1") == {"agent_disabled": 1}
    assert "<td>87.5%</td>" in html
    assert '<td><span class="amount">usd&nbsp;11.25</span></td>' in html


def bars(html: str, chart_id: str) -> dict[str, int]:
    """label -> value of the drawn bars of one chart, read from its SVG."""
    svg = re.search(rf'<svg [^>]*id="{chart_id}".*?</svg>', html, re.S)
    assert svg is not None, chart_id
    found = re.findall(r'<rect class="bar" data-label="([^"]+)" data-value="(\d+)"', svg[0])
    return {label: int(value) for label, value in found}


def test_html_escapes_names() -> None:
    """An action or agent name is text in the page, never markup."""
    hostile = decision("<script>alert(1)</script>", "deny", agent='a"><b>', reason="unknown_action")
    html = render_html(build_report([hostile], now=NOW))
    assert "<script>alert" not in html
    assert "<b>" not in html


@pytest.mark.parametrize("missing", ["nope.jsonl", "emptydir"])
def test_cli_unreadable_input_exits_1_naming_it(
    trail_file: Path, tmp_path: Path, missing: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing file or an empty directory is exit 1 with a message that names it."""
    target = tmp_path / missing
    if missing == "emptydir":
        target.mkdir()
    assert cli(["report", str(trail_file), str(target)]) == 1
    err = capsys.readouterr().err
    assert str(target) in err


def test_cli_is_registered_through_the_command_table(
    trail_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`broker report` runs through broker.cli.main once broker.cli.report is in COMMAND_MODULES."""
    from broker import cli

    if "broker.cli.report" not in cli.COMMAND_MODULES:
        pytest.skip("broker.cli.report is not wired into broker.cli.COMMAND_MODULES yet")
    assert cli.main(["report", str(trail_file)]) == 0
    assert "THROUGHPUT" in capsys.readouterr().out
