"""Stable reason codes for refusals and the outcome of a decision.

Refusals are values, not exceptions: ``decide`` returns a ``Decision`` carrying one of these
codes. The tables below are the single source for HTTP statuses and for generated docs; a
code must never be renamed once published, because agents and dashboards key on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType


class Outcome(StrEnum):
    allow = "allow"
    deny = "deny"
    pending_approval = "pending_approval"


class ReasonCode(StrEnum):
    unknown_action = "unknown_action"
    invalid_inputs = "invalid_inputs"
    constraint_violation = "constraint_violation"
    budget_exhausted = "budget_exhausted"
    rate_limited = "rate_limited"
    concurrency_limit = "concurrency_limit"
    agent_disabled = "agent_disabled"
    approval_required = "approval_required"
    approval_denied = "approval_denied"
    approval_expired = "approval_expired"
    backend_unavailable = "backend_unavailable"
    audit_unavailable = "audit_unavailable"
    credential_revoked = "credential_revoked"
    control_state_stale = "control_state_stale"
    ledger_unavailable = "ledger_unavailable"
    dpop_required = "dpop_required"


_R = ReasonCode

REASON_HTTP_STATUS: Mapping[ReasonCode, int] = MappingProxyType(
    {
        _R.unknown_action: 403,
        _R.invalid_inputs: 403,
        _R.constraint_violation: 403,
        _R.budget_exhausted: 403,
        _R.rate_limited: 429,
        _R.concurrency_limit: 429,
        _R.agent_disabled: 403,
        _R.approval_required: 202,
        _R.approval_denied: 403,
        _R.approval_expired: 403,
        _R.backend_unavailable: 503,
        _R.audit_unavailable: 503,
        _R.credential_revoked: 403,
        _R.control_state_stale: 503,
        _R.ledger_unavailable: 503,
        _R.dpop_required: 403,
    }
)

REASON_DESCRIPTION: Mapping[ReasonCode, str] = MappingProxyType(
    {
        _R.unknown_action: "The action is not declared in the agent's scope manifest.",
        _R.invalid_inputs: "An input is undeclared, missing, or of the wrong type.",
        _R.constraint_violation: "An input breaks a declared constraint (min, max, pattern, ...).",
        _R.budget_exhausted: "The call's cost would exceed a budget in its current window.",
        _R.rate_limited: "The agent-wide or per-action call rate is exhausted; retry later.",
        _R.concurrency_limit: "The agent already holds its maximum of live credentials.",
        _R.agent_disabled: "The agent is disabled by the kill switch.",
        _R.approval_required: "The call needs a human approval before a credential is minted.",
        _R.approval_denied: "An approver listed in the manifest refused the call.",
        _R.approval_expired: "The approval request expired before anyone decided.",
        _R.backend_unavailable: "Vault/OpenBao is unreachable, sealed or refusing; nothing minted.",
        _R.audit_unavailable: "The audit trail cannot be written; nothing minted.",
        _R.credential_revoked: "The credential or approval was revoked.",
        _R.control_state_stale: (
            "The sidecar's copy of the kill and revocation state is too old; nothing minted."
        ),
        _R.ledger_unavailable: (
            "The fleet's shared usage ledger cannot be reached and this replica's slice is "
            "spent; nothing minted."
        ),
        _R.dpop_required: (
            "The action's manifest requires a DPoP proof (RFC 9449) with the request, so that "
            "the token is bound to the agent's key; none came."
        ),
    }
)


def http_status(reason: ReasonCode | None, outcome: Outcome) -> int:
    """The HTTP status for a decision: 200 for allow, else the reason's status."""
    if outcome is Outcome.allow:
        return 200
    if reason is None:
        return 202 if outcome is Outcome.pending_approval else 403
    return REASON_HTTP_STATUS[reason]


def reasons_markdown() -> str:
    """A Markdown table of every reason code, for the docs."""
    rows = ["| code | HTTP | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{c}` | {REASON_HTTP_STATUS[c]} | {REASON_DESCRIPTION[c]} |" for c in ReasonCode]
    return "\n".join(rows) + "\n"
