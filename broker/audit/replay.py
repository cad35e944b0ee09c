"""Replay an audit trail under a candidate manifest: which recorded decisions would change?
Pure given the records (``broker scopes replay`` reads the file).

Every ``decision`` record of the candidate's agent is re-decided, in trail order, at its
recorded time, against a ``UsageLedger`` that the replay itself keeps: it is charged for
what the *candidate* would have allowed (not what was allowed then), released by the
trail's ``outcome`` records, and emptied by kills and mass revocations, as in the sidecar.
A request refused then because the agent was disabled is replayed as disabled.

The original decision is the decision core's: a record refused only because Vault or the
audit trail was down (``backend_unavailable``) counts as the allow or pending it was.

Redacted inputs (``hmac-sha256:...``) cannot be re-checked. Our choice: a request is still
replayed when its redacted inputs cannot change the candidate's answer, that is, for each
redacted input, one of:
- the candidate does not have the action, or does not declare the input (refused anyway);
- the candidate declares it as a string with no constraint, and neither an approval
  condition nor a cost reads it;
- a baseline manifest is known for the record (the one whose content hash the record carries:
  ``broker scopes replay`` finds every published version in Vault by default, or takes
  ``--baseline``), the original decision got past the input checks, the input's declaration is the same in the
  baseline and the candidate, and neither an approval condition nor a cost reads it: the
  value passed those checks then, so it passes them now.
Otherwise it is reported as "not replayable (redacted input X)", never guessed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from broker.audit.records import iso_utc
from broker.core.constraints import condition_terms
from broker.core.decision import ActionRequest, Decision, decide
from broker.core.limits import UsageLedger
from broker.core.manifest import Action, Manifest
from broker.core.reasons import Outcome

REDACTED_PREFIX = "hmac-sha256:"
_RANK = {"deny": 0, "pending_approval": 1, "allow": 2}
# Refusals decided before (or at) the input checks: later checks never saw the values.
_BEFORE_CONSTRAINTS = frozenset(
    {"agent_disabled", "unknown_action", "invalid_inputs", "constraint_violation"}
)
_SIDECAR_OVERRIDES = frozenset({"backend_unavailable", "audit_unavailable"})

Verdict = tuple[str, str | None]  # outcome, reason


def show(verdict: Verdict) -> str:
    outcome, reason = verdict
    return f"{outcome} ({reason})" if reason and outcome != "allow" else outcome


@dataclass(frozen=True, slots=True)
class Replayed:
    request_id: str
    at: float
    action: str
    before: Verdict
    after: Verdict | None  # None: not replayable
    note: str = ""

    @property
    def widens(self) -> bool:
        return self.after is not None and _RANK[self.after[0]] > _RANK[self.before[0]]


@dataclass
class ReplayReport:
    candidate: Manifest
    since: float | None
    replayed: int = 0
    changed: list[Replayed] = field(default_factory=list)
    not_replayable: list[Replayed] = field(default_factory=list)

    @property
    def widening(self) -> list[Replayed]:
        return [r for r in self.changed if r.widens]

    @property
    def unchanged(self) -> int:
        return self.replayed - len(self.changed) - len(self.not_replayable)

    def groups(self) -> list[tuple[str, Verdict, Verdict, list[Replayed]]]:
        """Changes grouped by action and (before, after); widening groups first."""
        grouped: dict[tuple[str, Verdict, Verdict], list[Replayed]] = {}
        for r in self.changed:
            assert r.after is not None
            grouped.setdefault((r.action, r.before, r.after), []).append(r)
        return sorted(
            ((a, b, c, rs) for (a, b, c), rs in grouped.items()),
            key=lambda g: (not g[3][0].widens, g[0], show(g[1]), show(g[2])),
        )

    def to_json(self) -> dict[str, Any]:
        def row(r: Replayed) -> dict[str, Any]:
            after = None if r.after is None else list(r.after)
            return {"request_id": r.request_id, "at": iso_utc(r.at), "action": r.action,
                    "before": list(r.before), "after": after, "widens": r.widens, "note": r.note}  # fmt: skip

        return {
            "candidate": {
                "agent": self.candidate.agent,
                "content_hash": self.candidate.content_hash,
            },
            "replayed": self.replayed,
            "unchanged": self.unchanged,
            "widening": len(self.widening),
            "changed": [row(r) for r in self.changed],
            "not_replayable": [row(r) for r in self.not_replayable],
        }

    def lines(self) -> list[str]:
        c = self.candidate
        window = f" since {iso_utc(self.since)}" if self.since is not None else ""
        out = [
            f"replayed {self.replayed} decisions{window} under {c.agent} "
            f"{c.policy_version} ({c.content_hash})"
        ]
        for action, before, after, records in self.groups():
            mark = "WIDENS " if records[0].widens else "changed"
            out.append(f"{mark}  {action}: {show(before)} -> {show(after)}  [{len(records)}]")
            out += [f"           {r.request_id} at {iso_utc(r.at)}" for r in records]
        notes: dict[tuple[str, str], list[Replayed]] = {}
        for r in self.not_replayable:
            notes.setdefault((r.action, r.note), []).append(r)
        for (action, note), records in sorted(notes.items()):
            out.append(f"not replayable ({note})  {action}  [{len(records)}]")
            out += [f"           {r.request_id} at {iso_utc(r.at)}" for r in records]
        out.append(
            f"{self.unchanged} unchanged, {len(self.changed)} changed "
            f"({len(self.widening)} widening), {len(self.not_replayable)} not replayable"
        )
        return out


def record_time(record: Mapping[str, Any]) -> float:
    at = record.get("at")
    if isinstance(at, int | float) and not isinstance(at, bool):
        return float(at)
    stamp = str(record.get("timestamp", "")).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


def record_action(record: Mapping[str, Any]) -> str:
    if isinstance(record.get("action"), str):
        return str(record["action"])
    calls = record.get("tool_calls") or [{}]
    return str(calls[-1].get("tool", ""))  # every call of the request so far, this one last


def original_verdict(record: Mapping[str, Any]) -> Verdict:
    """The decision core's answer then, seen through any sidecar override."""
    reason = record.get("reason")
    if reason in _SIDECAR_OVERRIDES:
        if record.get("approval_reason"):
            return "pending_approval", "approval_required"
        return "allow", None
    return str(record.get("outcome")), None if reason is None else str(reason)


def replay(
    records: Iterable[Mapping[str, Any]],
    candidate: Manifest,
    *,
    since: float | None = None,
    baseline: Manifest | Iterable[Manifest] | None = None,
) -> ReplayReport:
    """Re-decide every recorded request of ``candidate.agent``; report those that change.
    ``baseline``: the manifest(s) the trail may have been recorded under; each record is
    compared with the one whose content hash it carries."""
    report = ReplayReport(candidate, since)
    state = _Replay(candidate, baseline)
    for record in records:
        if record.get("agent_id") != candidate.agent:
            continue
        kind = record.get("type")
        if kind == "outcome" and record.get("credential_id"):
            state.ledger.release(str(record["credential_id"]))
        elif kind == "control" and record.get("event") in ("kill", "revoke"):
            state.ledger.release_all()
        elif kind == "decision":
            result = state.step(record)
            if since is None or result.at >= since:
                report.replayed += 1
                if result.after is None:
                    report.not_replayable.append(result)
                elif result.after != result.before:
                    report.changed.append(result)
    return report


class _Replay:
    def __init__(self, candidate: Manifest, baseline: Manifest | Iterable[Manifest] | None) -> None:
        self.candidate = candidate
        known = [baseline] if isinstance(baseline, Manifest) else list(baseline or ())
        self.baselines = {m.content_hash: m for m in known if m.agent == candidate.agent}
        self.ledger = UsageLedger.for_manifest(candidate)
        self._relaxed: dict[tuple[str, tuple[str, ...]], Manifest] = {}

    def step(self, record: Mapping[str, Any]) -> Replayed:
        at, action = record_time(record), record_action(record)
        before = original_verdict(record)
        inputs = dict(record.get("inputs") or {})
        request_id = str(record.get("request_id", "?"))
        disabled = before[1] == "agent_disabled"
        manifest = self.candidate
        if not disabled:
            chosen, note = self._manifest_for(record, action, inputs, before)
            if chosen is None:
                return Replayed(request_id, at, action, before, None, note)
            manifest = chosen
        request = ActionRequest(
            action=action, inputs=inputs, request_id=request_id, workflow=record.get("workflow")
        )
        decision = decide(request, manifest, self.ledger, at, agent_disabled=disabled)
        redeemed = bool(record.get("approval_id")) and before[0] == "allow"
        if redeemed and decision.outcome is Outcome.pending_approval:
            # A human approved this request then; the candidate still asks for approval, so
            # the credential stands as it was and holds its slot and budget as it did.
            self._charge(decision, record, request_id, at)
            return Replayed(request_id, at, action, before, before)
        if decision.outcome is Outcome.allow:
            self._charge(decision, record, request_id, at)
        after = (str(decision.outcome), None if decision.reason is None else str(decision.reason))
        return Replayed(request_id, at, action, before, after)

    def _charge(self, decision: Decision, record: Mapping[str, Any], rid: str, at: float) -> None:
        assert decision.credential is not None
        credential_id = str(record.get("credential_id") or rid)
        self.ledger.charge(decision, credential_id, at + decision.credential.ttl, at)

    def _manifest_for(
        self, record: Mapping[str, Any], action: str, inputs: Mapping[str, Any], before: Verdict
    ) -> tuple[Manifest | None, str]:
        """The candidate, or a copy with verified redacted inputs unconstrained, or why not."""
        redacted = sorted(
            k for k, v in inputs.items() if isinstance(v, str) and v.startswith(REDACTED_PREFIX)
        )
        spec = self.candidate.actions.get(action)
        relax: list[str] = []
        for name in redacted:
            if spec is None or name not in spec.inputs:
                continue
            verdict = self._redacted_input(record, action, spec, name, before)
            if verdict == "no":
                return None, f"redacted input {name}"
            if verdict == "relax":
                relax.append(name)
        if not relax:
            return self.candidate, ""
        return self._relaxed_manifest(action, tuple(relax)), ""

    def _redacted_input(
        self, record: Mapping[str, Any], action: str, spec: Action, name: str, before: Verdict
    ) -> str:
        """ "ok" (value cannot matter), "relax" (checks known passed), or "no"."""
        if name in _read_by_rules(spec):
            return "no"
        declared = spec.inputs[name]
        if declared.type == "string" and not declared.constraints():
            return "ok"
        base = self.baselines.get(str(record.get("manifest_hash")))
        if (
            base is not None
            and before[1] not in _BEFORE_CONSTRAINTS
            and action in base.actions
            and base.actions[action].inputs.get(name) == declared
        ):
            return "relax"
        return "no"

    def _relaxed_manifest(self, action: str, names: tuple[str, ...]) -> Manifest:
        key = (action, names)
        if key not in self._relaxed:
            data = self.candidate.model_dump(mode="json")
            inputs = data["actions"][action]["inputs"]
            for name in names:
                inputs[name] = {"type": "string", "required": inputs[name]["required"]}
            self._relaxed[key] = Manifest.model_validate(data)
        return self._relaxed[key]


def _read_by_rules(spec: Action) -> set[str]:
    """Inputs whose values an approval condition or a cost reads."""
    names = {v.removeprefix("inputs.") for v in spec.cost.values() if isinstance(v, str)}
    if spec.approval is not None:
        names |= {name for _, name, _, _ in condition_terms(spec.approval.when)}
    return names
