"""``replay``: a recorded trail re-decided under a candidate manifest reports exactly the
requests whose decision changes, flags the widening ones, keeps usage as the candidate would
have had it, and never guesses a redacted input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broker.audit.records import iso_utc, redact
from broker.audit.replay import replay
from broker.cli import main
from broker.core.decision import ActionRequest, decide
from broker.core.limits import UsageLedger
from broker.core.manifest import Manifest
from broker.scopes.scenarios import DEFAULT_NOW

RECORDED = """\
agent: refund-bot
policy_version: refunds-1
system_owner: platform@acme.example
risk_owner: risk@acme.example
budgets:
  usd: {limit: 300, per: 1d, unit: usd}
actions:
  zendesk.get_ticket:
    accountable: support-lead@acme.example
    credential: {kind: jwt, audience: zendesk, ttl: 60s}
    inputs:
      ticket_id: {type: string, pattern: '^CS-[0-9]+$'}
    redact: [ticket_id]
  stripe.refund:
    accountable: finance-ops@acme.example
    credential: {kind: jwt, audience: stripe, ttl: 30s}
    inputs:
      ticket_id: {type: string, pattern: '^CS-[0-9]+$'}
      amount_usd: {type: number, min: 0, max: 200}
    cost: {usd: inputs.amount_usd}
    redact: [ticket_id]
"""
# The candidate lowers the refund limit to $100 a call and adds crm.lookup.
CANDIDATE = RECORDED.replace("max: 200", "max: 100").replace("refunds-1", "refunds-2") + """\
  crm.lookup:
    accountable: support-lead@acme.example
    credential: {kind: jwt, audience: crm, ttl: 60s}
"""  # fmt: skip

KEY = b"k" * 32


def _manifest(text: str, tmp_path: Path, name: str) -> tuple[Manifest, Path]:
    from broker.scopes.loader import load_manifest

    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return load_manifest(path), path


def record_trail(manifest: Manifest, calls: list[tuple[str, str, dict[str, Any]]]) -> list[Any]:
    """Decision records as the sidecar writes them (same fields, redaction, charging)."""
    ledger, records = UsageLedger.for_manifest(manifest), []
    for n, (rid, action, inputs) in enumerate(calls):
        now = DEFAULT_NOW + 10 * n
        req = ActionRequest(action=action, inputs=inputs, request_id=rid)
        d = decide(req, manifest, ledger, now)
        cid = None
        if str(d.outcome) == "allow":
            assert d.credential is not None
            cid = f"cred-{rid}"
            ledger.charge(d, cid, now + d.credential.ttl, now)
        spec = manifest.actions.get(action)
        records.append({
            "type": "decision", "timestamp": iso_utc(now), "at": now,
            "agent_id": manifest.agent, "request_id": rid,
            "inputs": redact(inputs, spec.redact if spec else (), KEY),
            "tool_calls": [{"tool": action, "status": "ok" if cid else "blocked"}],
            "outcome": str(d.outcome), "reason": d.reason and str(d.reason),
            "approval_reason": d.approval_reason, "credential_id": cid,
            "manifest_hash": d.manifest_hash, "charges": dict(d.charges),
        })  # fmt: skip
    return records


CALLS = [
    ("r1-small-refund", "stripe.refund", {"ticket_id": "CS-1", "amount_usd": 50}),
    ("r2-large-refund", "stripe.refund", {"ticket_id": "CS-2", "amount_usd": 150}),
    ("r3-refund", "stripe.refund", {"ticket_id": "CS-3", "amount_usd": 80}),
    ("r4-crm", "crm.lookup", {}),
    ("r5-ticket", "zendesk.get_ticket", {"ticket_id": "CS-4"}),
    ("r6-bad-ticket", "zendesk.get_ticket", {"ticket_id": "nope"}),
]


@pytest.fixture
def trail(tmp_path: Path) -> tuple[Manifest, Manifest, list[Any]]:
    old, _ = _manifest(RECORDED, tmp_path, "old")
    new, _ = _manifest(CANDIDATE, tmp_path, "new")
    return old, new, record_trail(old, CALLS)


def _changes(report: Any) -> dict[str, tuple[Any, Any, bool]]:
    return {r.request_id: (r.before, r.after, r.widens) for r in report.changed}


def test_replay_lists_exactly_the_changed_requests(trail: Any) -> None:
    """With the baseline, only the over-limit refund (narrowed) and the new action (widened)
    change; the widening one is flagged and listed first. The ticket id that failed its
    pattern then cannot be proved either way now, so it is reported as not replayable."""
    old, new, records = trail
    report = replay(records, new, baseline=old)
    assert _changes(report) == {
        "r2-large-refund": (("allow", None), ("deny", "constraint_violation"), False),
        "r4-crm": (("deny", "unknown_action"), ("allow", None), True),
    }
    assert [r.request_id for r in report.widening] == ["r4-crm"]
    assert [r.request_id for r in report.not_replayable] == ["r6-bad-ticket"]
    assert (report.replayed, report.unchanged) == (6, 3)
    assert report.groups()[0][0] == "crm.lookup"
    assert report.lines()[1].startswith("WIDENS   crm.lookup: deny (unknown_action) -> allow")


def test_redacted_constrained_input_is_not_replayable_without_a_baseline(trail: Any) -> None:
    """A redacted input that the candidate constrains is reported, never guessed; requests
    whose redacted input cannot matter (unknown action) are still replayed."""
    _, new, records = trail
    report = replay(records, new)
    assert {r.request_id for r in report.not_replayable} == {
        "r1-small-refund", "r2-large-refund", "r3-refund", "r5-ticket", "r6-bad-ticket"
    }  # fmt: skip
    assert {r.note for r in report.not_replayable} == {"redacted input ticket_id"}
    assert list(_changes(report)) == ["r4-crm"]
    assert "not replayable (redacted input ticket_id)" in "\n".join(report.lines())


def test_redacted_input_failed_then_is_not_relaxed(trail: Any) -> None:
    """A request refused at the constraint check stays not replayable: its value never passed."""
    old, new, records = trail
    bad = [r for r in records if r["request_id"] == "r6-bad-ticket"]
    assert bad[0]["reason"] == "constraint_violation"
    doc = new.model_dump(mode="json")
    doc["actions"]["zendesk.get_ticket"]["inputs"]["ticket_id"]["max_length"] = 10
    stricter = Manifest.model_validate(doc)
    report = replay(bad, stricter, baseline=old)
    assert [r.note for r in report.not_replayable] == ["redacted input ticket_id"]


def test_usage_follows_the_candidate(tmp_path: Path) -> None:
    """Budget use is what the candidate would have allowed: a refund refused then for budget
    is allowed when the candidate had refused an earlier, larger one (deny -> allow widens)."""
    old, _ = _manifest(RECORDED.replace("redact: [ticket_id]", "redact: []"), tmp_path, "o")
    new, _ = _manifest(CANDIDATE.replace("redact: [ticket_id]", "redact: []"), tmp_path, "n")
    calls = [("a", "stripe.refund", {"ticket_id": "CS-1", "amount_usd": 190}),
             ("b", "stripe.refund", {"ticket_id": "CS-1", "amount_usd": 100}),
             ("c", "stripe.refund", {"ticket_id": "CS-1", "amount_usd": 60})]  # fmt: skip
    records = record_trail(old, calls)
    assert [r["reason"] for r in records] == [None, None, "budget_exhausted"]
    report = replay(records, new)
    assert _changes(report) == {
        "a": (("allow", None), ("deny", "constraint_violation"), False),
        "c": (("deny", "budget_exhausted"), ("allow", None), True),
    }


def test_sidecar_overrides_count_as_the_core_decision(trail: Any) -> None:
    """A record refused only because Vault was down is compared as the allow it was."""
    old, new, records = trail
    first = dict(records[0], outcome="deny", reason="backend_unavailable", credential_id=None)
    report = replay([first], new, baseline=old)
    assert (report.replayed, report.changed) == (1, [])


def test_since_reports_only_recent_requests_but_counts_all_usage(trail: Any) -> None:
    """``since`` narrows the report, not the usage replayed before it."""
    old, new, records = trail
    report = replay(records, new, baseline=old, since=DEFAULT_NOW + 25)
    assert report.replayed == 3
    assert list(_changes(report)) == ["r4-crm"]


def test_cli_replay_exits_non_zero_on_widening(trail: Any, tmp_path: Path, capsys: Any) -> None:
    """``broker scopes replay`` prints the report and exits 1 when access widens."""
    records = trail[2]
    audit = tmp_path / "audit.jsonl"
    audit.write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "old.yaml").write_text(RECORDED)
    (tmp_path / "new.yaml").write_text(CANDIDATE)
    args = ["scopes", "replay", "--audit", str(audit), str(tmp_path / "new.yaml")]
    assert main([*args, "--baseline", str(tmp_path / "old.yaml")]) == 1
    out = capsys.readouterr().out
    assert "WIDENS   crm.lookup" in out
    assert "3 unchanged, 2 changed (1 widening), 1 not replayable" in out
    assert main([*args, "--allow-widening"]) == 0
    assert main(["scopes", "replay", "--audit", str(audit), str(tmp_path / "old.yaml")]) == 0


def test_each_record_is_compared_with_the_manifest_that_decided_it(trail: Any) -> None:
    """Several baselines: each record uses the one whose hash it carries, as one would."""
    old, new, records = trail
    assert _changes(replay(records, new, baseline=[new, old])) == _changes(
        replay(records, new, baseline=old)
    )
    assert replay(records, new, baseline=[new]).not_replayable  # no record was decided by new


def test_cli_replay_defaults_to_the_recording_manifest(
    trail: Any, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``--baseline`` (and no Vault), replaying the trail under the very manifest that
    recorded it changes nothing; only the request whose redacted input failed its check then
    stays unreplayable (without the default, all five redacted requests were)."""
    for name in ("VAULT_ADDR", "BAO_ADDR", "VAULT_TOKEN", "BAO_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    audit = tmp_path / "audit.jsonl"
    audit.write_text("".join(json.dumps(r) + "\n" for r in trail[2]))
    (tmp_path / "old.yaml").write_text(RECORDED)
    assert main(["scopes", "replay", "--audit", str(audit), str(tmp_path / "old.yaml")]) == 0
    out = capsys.readouterr().out
    assert "baseline: the candidate only" in out
    assert "5 unchanged, 0 changed (0 widening), 1 not replayable" in out
    assert "r6-bad-ticket" in out


def test_cli_replay_json(trail: Any, tmp_path: Path, capsys: Any) -> None:
    """``scopes replay --json`` gives counts and each changed request with before and after."""
    audit = tmp_path / "audit.jsonl"
    audit.write_text("".join(json.dumps(r) + "\n" for r in trail[2]))
    (tmp_path / "old.yaml").write_text(RECORDED)
    (tmp_path / "new.yaml").write_text(CANDIDATE)
    args = ["scopes", "replay", "--audit", str(audit), str(tmp_path / "new.yaml"), "--json"]
    assert main([*args, "--baseline", str(tmp_path / "old.yaml")]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert (doc["replayed"], doc["unchanged"], doc["widening"]) == (6, 3, 1)
    widening = [c for c in doc["changed"] if c["widens"]]
    assert [(c["action"], c["before"], c["after"]) for c in widening] == [
        ("crm.lookup", ["deny", "unknown_action"], ["allow", None])
    ]
