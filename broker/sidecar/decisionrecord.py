"""The decision record: what the trail says about one request, and the claims and summary
derived from the same decision. Pure: ``CredentialService._record`` gathers the inputs as
stored (redacted under the manifest that decided) and appends what this builds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.audit.records import iso_utc
from broker.audit.redaction import MAX_REFUSED_DETAIL, bound_inputs, clip
from broker.core.decision import ActionRequest, Decision, raci_json
from broker.core.manifest import JwtCredential
from broker.core.reasons import Outcome, ReasonCode


@dataclass(frozen=True)
class Recorded:
    """What the service knows beyond the decision when it writes the record."""

    outcome: Outcome
    reason: ReasonCode | None
    inputs: dict[str, Any]  # as stored: redacted fields already replaced
    inputs_hash: str
    tool_calls: list[dict[str, Any]]  # the request's tool calls so far, this one included
    detail: str | None = None
    credential: tuple[str, str, int] | None = None  # id, kind, ttl
    vault_id: str | None = None


def decision_record(
    req: ActionRequest,
    decision: Decision,
    now: float,
    rec: Recorded,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The record body; a refusal's inputs and detail are bounded (a flood of refused
    requests must not fill the disk)."""
    inputs, clipped, detail = rec.inputs, None, rec.detail
    if rec.outcome is Outcome.deny:
        inputs, clipped = bound_inputs(inputs)
        detail = clip(detail or decision.detail, MAX_REFUSED_DETAIL)
    credential = rec.credential
    body: dict[str, Any] = {
        "type": "decision",
        "timestamp": iso_utc(now),
        "at": round(now, 6),
        "agent_id": decision.agent,
        "workflow": req.workflow,
        "request_id": req.request_id,
        "inputs": inputs,
        "action": req.action,
        "tool_calls": rec.tool_calls,
        "output": detail or decision.detail,
        "policy_version": decision.policy_version,
        "human_override": False,
        "outcome": rec.outcome.value,
        "reason": rec.reason.value if rec.reason else None,
        "approval_reason": decision.approval_reason,
        "credential_id": credential[0] if credential else None,
        "credential_kind": credential[1] if credential else None,
        "ttl": credential[2] if credential else None,
        "vault_id": rec.vault_id,
        "raci": raci_json(decision.raci) if decision.raci else {},
        "manifest_hash": decision.manifest_hash,
        "inputs_hash": rec.inputs_hash,
        "charges": dict(decision.charges),
        **(extra or {}),
    }
    if clipped is not None:
        body["inputs_clipped"] = clipped
    return body


def tool_call(
    action: str, status: str, decision: Decision, reason: ReasonCode | None
) -> dict[str, Any]:
    call: dict[str, Any] = {"tool": action, "status": status}
    if decision.outcome is Outcome.pending_approval and decision.approval_reason:
        call["reason"] = decision.approval_reason
    elif reason is not None:
        call["reason"] = reason.value
    return call


def jwt_claims(decision: Decision) -> dict[str, Any]:
    """The action token's claims that come from the decision (the signer adds the rest)."""
    spec = decision.credential
    if not isinstance(spec, JwtCredential) or decision.raci is None:
        raise TypeError("action-token claims need a jwt credential spec and a RACI")
    return {
        "audience": spec.audience,
        "alg": spec.alg,
        "action": decision.action,
        "accountable": decision.raci.accountable,
        "policy_version": decision.policy_version,
        "inputs_hash": decision.inputs_hash,
        "manifest_hash": decision.manifest_hash,
    }


def decision_summary(decision: Decision) -> dict[str, Any]:
    return {
        "action": decision.action,
        "policy_version": decision.policy_version,
        "manifest_hash": decision.manifest_hash,
        "accountable": decision.raci.accountable if decision.raci else None,
    }
