"""The three-layer report, built from audit records (pure: no clock, no file).

Throughput (decisions, credentials issued, cost per successful outcome), integrity (refusals
by reason, errors and rollbacks reported, approval denials, revocations) and trust (share
auto-executed vs approved, override rate, audit completeness), per agent and per action.

How records are joined:
- A decision record names its action in ``action`` (older ones: the last tool call); an outcome record names only
  its ``credential_id`` and is attributed to the action of that credential's decision.
  Approval and control records are attributed through ``approval_id`` / ``credential_id``
  when they do not name an action; what cannot be attributed counts for the agent only.
- A credential is *issued* when a decision record carries its id, or an outcome record names
  it (an outcome without its decision is a gap in the trail, reported under trust). It was
  *approved* when its decision carries an ``approval_id`` or ``human_override``, or an approval
  record redeemed it; otherwise it was auto-executed.
- Cost of a successful credential: its decision's ``charges``, each budget replaced by the
  reported actual ``cost`` when the outcome gives one.
- Overrides are counted once per approval (or request): an approval record and the decision
  it led to, both flagged ``human_override``, are one override.
- ``since`` keeps records from ``now - since`` on; an outcome follows its credential's
  decision, so a credential decided before the window is wholly outside it.
Checkpoints and unknown record types are skipped; records without a time are kept.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from broker.audit.reportmodel import (
    ActionReport,
    AgentReport,
    Integrity,
    Layers,
    Report,
    Throughput,
    Trust,
)

__all__ = [
    "UNKNOWN_AGENT",
    "ActionReport",
    "AgentReport",
    "Integrity",
    "Layers",
    "Report",
    "Throughput",
    "Trust",
    "build_report",
    "parse_since",
]

SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
UNKNOWN_AGENT = "(unknown)"


def parse_since(text: str) -> float:
    """``"7d"`` -> seconds; units s, m, h, d, w."""
    match = _SINCE.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 30m, 12h, 7d, 2w)")
    return float(match.group(1)) * SINCE_UNITS[match.group(2)]


# --- accumulation ------------------------------------------------------------------------


@dataclass
class _Credential:
    agent: str
    action: str | None
    decided: bool = False
    approved: bool = False
    charges: dict[str, float] = field(default_factory=dict)
    status: str | None = None
    cost: dict[str, float] = field(default_factory=dict)

    def spent(self) -> dict[str, float]:
        return {**self.charges, **self.cost}


@dataclass
class _Tally:
    decisions: int = 0
    by_outcome: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    approvals: Counter[str] = field(default_factory=Counter)
    revocations: int = 0
    kills: int = 0
    overrides: set[str] = field(default_factory=set)
    credentials: dict[str, _Credential] = field(default_factory=dict)


class _Book:
    def __init__(self) -> None:
        self.agents: dict[str, _Tally] = {}
        self.actions: dict[tuple[str, str], _Tally] = {}
        self.credentials: dict[str, _Credential] = {}
        self.approval_owner: dict[str, tuple[str, str | None]] = {}

    def tallies(self, agent: str, action: str | None) -> list[_Tally]:
        found = [self.agents.setdefault(agent, _Tally())]
        if action is not None:
            found.append(self.actions.setdefault((agent, action), _Tally()))
        return found

    def credential(self, cid: str, agent: str, action: str | None) -> _Credential:
        cred = self.credentials.get(cid)
        if cred is None:
            cred = self.credentials[cid] = _Credential(agent, action)
            for tally in self.tallies(agent, action):
                tally.credentials[cid] = cred
        return cred


def _text(record: Mapping[str, Any], key: str) -> str | None:
    value = record.get(key)
    return value if isinstance(value, str) and value else None


def _amounts(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        return {}
    return {
        str(k): float(v)
        for k, v in value.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _time(record: Mapping[str, Any]) -> float | None:
    at = record.get("at")
    if isinstance(at, int | float) and not isinstance(at, bool):
        return float(at)
    stamp = _text(record, "timestamp")
    if stamp is None:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _action_of(record: Mapping[str, Any]) -> str | None:
    """The record's own ``action``; older records name it only as their last tool call
    (``tool_calls`` lists every call of the request so far, this one last)."""
    action = _text(record, "action")
    if action:
        return action
    calls = record.get("tool_calls")
    if isinstance(calls, list) and calls and isinstance(calls[-1], Mapping):
        return _text(calls[-1], "tool")
    return None


def _agent_of(record: Mapping[str, Any]) -> str:
    return _text(record, "agent_id") or _text(record, "agent") or UNKNOWN_AGENT


def _on_decision(book: _Book, r: Mapping[str, Any]) -> None:
    agent, action = _agent_of(r), _action_of(r)
    outcome = _text(r, "outcome") or "unknown"
    approval_id = _text(r, "approval_id")
    if approval_id:
        book.approval_owner.setdefault(approval_id, (agent, action))
    for tally in book.tallies(agent, action):
        tally.decisions += 1
        tally.by_outcome[outcome] += 1
        if outcome == "deny":
            tally.refusals[_text(r, "reason") or "unknown"] += 1
        if r.get("human_override") is True:
            tally.overrides.add(_override_key(r))
    cid = _text(r, "credential_id")
    if cid:
        cred = book.credential(cid, agent, action)
        cred.decided = True
        cred.charges = _amounts(r.get("charges"))
        cred.approved = cred.approved or bool(approval_id) or r.get("human_override") is True


def _on_outcome(book: _Book, r: Mapping[str, Any]) -> None:
    cid = _text(r, "credential_id")
    if not cid:
        return
    known = book.credentials.get(cid)
    cred = known or book.credential(cid, _agent_of(r), None)
    cred.status = _text(r, "status") or "unknown"
    cred.cost = _amounts(r.get("cost"))


def _on_approval(book: _Book, r: Mapping[str, Any]) -> None:
    approval_id = _text(r, "approval_id")
    owner = book.approval_owner.get(approval_id or "")
    agent = _text(r, "agent_id") or (owner[0] if owner else UNKNOWN_AGENT)
    action = _action_of(r) or (owner[1] if owner else None)
    event = _text(r, "event") or "unknown"
    for tally in book.tallies(agent, action):
        tally.approvals[event] += 1
        if r.get("human_override") is True:
            tally.overrides.add(_override_key(r))
    cid = _text(r, "credential_id")
    if event == "redeemed" and cid:
        book.credential(cid, agent, action).approved = True


def _on_control(book: _Book, r: Mapping[str, Any]) -> None:
    event = _text(r, "event") or ""
    cred = book.credentials.get(_text(r, "credential_id") or "")
    agent = _text(r, "agent_id") or (cred.agent if cred else UNKNOWN_AGENT)
    action = _action_of(r) or (cred.action if cred else None)
    for tally in book.tallies(agent, action):
        if event.startswith("revoke"):
            tally.revocations += 1
        elif event == "kill":
            tally.kills += 1


def _override_key(r: Mapping[str, Any]) -> str:
    for key in ("approval_id", "request_id", "credential_id"):
        value = _text(r, key)
        if value:
            return f"{key}:{value}"
    return f"record:{r.get('seq', id(r))}"


_HANDLERS = {
    "decision": _on_decision,
    "outcome": _on_outcome,
    "approval": _on_approval,
    "control": _on_control,
}


# --- the window --------------------------------------------------------------------------


def _windowed(
    rows: list[Mapping[str, Any]], start: float | None, agent: str | None
) -> Iterator[Mapping[str, Any]]:
    def inside(r: Mapping[str, Any]) -> bool:
        t = _time(r)
        return start is None or t is None or t >= start

    decided_all = {_text(r, "credential_id") for r in rows if r.get("type") == "decision"}
    decided_in = {
        _text(r, "credential_id") for r in rows if r.get("type") == "decision" and inside(r)
    }
    for r in rows:
        if agent is not None and _text(r, "agent_id") not in (agent, None):
            continue
        if r.get("type") == "outcome":
            cid = _text(r, "credential_id")
            if cid in decided_in or (cid not in decided_all and inside(r)):
                yield r
        elif inside(r):
            yield r


# --- assembly ----------------------------------------------------------------------------


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def _sum(amounts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    total: Counter[str] = Counter()
    for each in amounts:
        total.update(each)
    return {k: round(v, 6) for k, v in sorted(total.items())}


def _layers(t: _Tally) -> Layers:
    creds = t.credentials
    statuses = Counter(c.status for c in creds.values() if c.status is not None)
    ok = statuses["ok"]
    cost = _sum(c.spent() for c in creds.values() if c.status == "ok")
    decided = [c for c in creds.values() if c.decided]
    approved = sum(1 for c in decided if c.approved)
    complete = sum(1 for c in decided if c.status is not None)
    throughput = Throughput(
        decisions=t.decisions,
        by_outcome=dict(sorted(t.by_outcome.items())),
        credentials_issued=len(creds),
        outcomes_reported=dict(sorted(statuses.items())),
        ok_outcomes=ok,
        cost_total=cost,
        cost_per_ok={k: round(v / ok, 6) for k, v in cost.items()} if ok else {},
    )
    integrity = Integrity(
        refusals=sum(t.refusals.values()),
        refusals_by_reason=dict(sorted(t.refusals.items())),
        errors=statuses["error"],
        rollbacks=statuses["rolled_back"],
        approvals=dict(sorted(t.approvals.items())),
        approval_denials=t.approvals["denied"],
        revocations=t.revocations,
        kills=t.kills,
    )
    trust = Trust(
        auto_executed=len(decided) - approved,
        approved=approved,
        auto_share=_ratio(len(decided) - approved, len(decided)),
        approved_share=_ratio(approved, len(decided)),
        overrides=len(t.overrides),
        override_rate=_ratio(len(t.overrides), t.decisions),
        audit_complete=complete,
        audit_completeness=_ratio(complete, len(creds)),
        missing_outcome=tuple(sorted(k for k, c in creds.items() if c.status is None)),
        missing_decision=tuple(sorted(k for k, c in creds.items() if not c.decided)),
    )
    return Layers(throughput, integrity, trust)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_report(
    records: Iterable[Mapping[str, Any]],
    *,
    now: float,
    since: float | None = None,
    agent: str | None = None,
) -> Report:
    """The report over ``records`` (one dict per trail line); ``since`` in seconds."""
    rows = [r for r in records if isinstance(r, Mapping) and r.get("type") in _HANDLERS]
    start = None if since is None else now - since
    book = _Book()
    # Decisions first, so outcomes, approvals and revocations can find what they refer to.
    kept = sorted(_windowed(rows, start, agent), key=lambda r: r.get("type") != "decision")
    for r in kept:
        _HANDLERS[str(r.get("type"))](book, r)
    agents = tuple(
        AgentReport(
            agent=name,
            total=_layers(tally),
            actions=tuple(
                ActionReport(action, _layers(book.actions[(name, action)]))
                for (owner, action) in sorted(book.actions)
                if owner == name
            ),
        )
        for name, tally in sorted(book.agents.items())
        if agent is None or name == agent
    )
    return Report(
        generated_at=_iso(now),
        window_start=None if start is None else _iso(start),
        records=len(kept),
        agents=agents,
    )
