"""The approval lifecycle (pure): a state table, the binding to exact inputs, who may approve.

::

    pending ──approve──▶ approved ──redeem──▶ redeemed
       │                   │   ▲                 │
       ├──deny───▶ denied  │   └─────reopen──────┘   (the mint after redeem failed)
       └──expire─▶ expired ◀──expire──┘

An approval is bound to ``inputs_hash(agent, action, inputs)`` of the call that asked for it,
so a redeem for other inputs is refused. A request nobody decides expires ``expires_in``
seconds after it was made; an approval, once given, may be redeemed for ``expires_in``
seconds after the approval, and only once. Expiry is a function of the clock
(``state_at``), so it holds even before anyone writes the ``expired`` state down.
Only a human listed in the manifest's ``approval.approvers`` may approve or deny.

The approval document is shared state that several identities may write, so it is not what
proves an approval: each approver's ``Decided`` record, stored where only that approver's
Vault identity can create it, is. ``vouch_problem`` is the sidecar's check before a redeem.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from broker.core.decision import inputs_hash
from broker.core.errors import BrokerError, NotFound
from broker.core.plan import Raci
from broker.core.reasons import ReasonCode

APPROVAL_ID = re.compile(r"^apr_[0-9a-f]{20}$")


class State(StrEnum):
    pending = "pending"
    approved = "approved"
    denied = "denied"
    expired = "expired"
    redeemed = "redeemed"


class Event(StrEnum):
    approve = "approve"
    deny = "deny"
    expire = "expire"
    redeem = "redeem"
    reopen = "reopen"


TRANSITIONS: Mapping[tuple[State, Event], State] = MappingProxyType(
    {
        (State.pending, Event.approve): State.approved,
        (State.pending, Event.deny): State.denied,
        (State.pending, Event.expire): State.expired,
        (State.approved, Event.redeem): State.redeemed,
        (State.approved, Event.expire): State.expired,
        (State.redeemed, Event.reopen): State.approved,
    }
)

# Why a redeem of an approval in this state is refused (the contract's 403 reasons). A spent
# approval answers approval_expired: its single use is gone.
REDEEM_REFUSALS: Mapping[State, ReasonCode] = MappingProxyType(
    {
        State.denied: ReasonCode.approval_denied,
        State.expired: ReasonCode.approval_expired,
        State.redeemed: ReasonCode.approval_expired,
    }
)

# The past-tense name of each event, as audit records and notifications call it.
EVENT_NAMES: Mapping[Event, str] = MappingProxyType(
    {
        Event.approve: "approved",
        Event.deny: "denied",
        Event.expire: "expired",
        Event.redeem: "redeemed",
        Event.reopen: "reopened",
    }
)


class ApprovalError(BrokerError):
    """An operator or sidecar action that the lifecycle refuses."""

    code = "approval_conflict"
    http_status = 409


class NotAnApprover(ApprovalError):
    code = "not_an_approver"
    http_status = 403


@dataclass(frozen=True, slots=True)
class Step:
    """One transition in an approval's history."""

    event: Event
    by: str
    at: float
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event.value, "by": self.by, "at": self.at, "reason": self.reason}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Step:
        return cls(Event(doc["event"]), str(doc["by"]), float(doc["at"]), str(doc["reason"]))


@dataclass(frozen=True, slots=True)
class Approval:
    """One approval request as stored in Vault: who asked, for what, why, and what happened."""

    id: str
    agent: str
    action: str
    inputs: Mapping[str, Any]
    inputs_hash: str
    workflow: str | None
    request_id: str
    reason: str
    message: str
    raci: Raci
    policy_version: str
    manifest_hash: str
    created_at: float
    expires_in: int
    state: State = State.pending
    history: tuple[Step, ...] = ()
    noted: int = 0  # how many history steps the sidecar has audited and announced
    credential_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def deadline(self) -> float | None:
        """When the current state lapses: undecided or unredeemed approvals expire."""
        if self.state is State.pending:
            return self.created_at + self.expires_in
        if self.state is State.approved:
            return self.decided_at() + self.expires_in
        return None

    def decided_at(self) -> float:
        steps = [s for s in self.history if s.event is Event.approve]
        return steps[-1].at if steps else self.created_at

    def state_at(self, now: float) -> State:
        """The state at time ``now``, expiry included even before it is written down."""
        deadline = self.deadline
        return State.expired if deadline is not None and now >= deadline else self.state

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "agent": self.agent,
            "action": self.action,
            "inputs": dict(self.inputs),
            "inputs_hash": self.inputs_hash,
            "workflow": self.workflow,
            "request_id": self.request_id,
            "reason": self.reason,
            "message": self.message,
            "raci": raci_json(self.raci),
            "policy_version": self.policy_version,
            "manifest_hash": self.manifest_hash,
            "created_at": self.created_at,
            "expires_in": self.expires_in,
            "expires_at": self.created_at + self.expires_in,
            "state": self.state.value,
            "history": [s.to_json() for s in self.history],
            "noted": self.noted,
            "credential_id": self.credential_id,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Approval:
        r = doc["raci"]
        raci = Raci(
            str(r["accountable"]),
            tuple(r["consulted"]),
            tuple(r["informed"]),
            tuple(r["approvers"]),
        )
        return cls(
            id=str(doc["id"]),
            agent=str(doc["agent"]),
            action=str(doc["action"]),
            inputs=dict(doc["inputs"]),
            inputs_hash=str(doc["inputs_hash"]),
            workflow=doc.get("workflow"),
            request_id=str(doc["request_id"]),
            reason=str(doc["reason"]),
            message=str(doc.get("message", "")),
            raci=raci,
            policy_version=str(doc["policy_version"]),
            manifest_hash=str(doc["manifest_hash"]),
            created_at=float(doc["created_at"]),
            expires_in=int(doc["expires_in"]),
            state=State(doc["state"]),
            history=tuple(Step.from_json(s) for s in doc.get("history") or ()),
            noted=int(doc.get("noted", 0)),
            credential_id=doc.get("credential_id"),
            extra=dict(doc.get("extra") or {}),
        )


def raci_json(raci: Raci) -> dict[str, Any]:
    return {
        "accountable": raci.accountable,
        "consulted": list(raci.consulted),
        "informed": list(raci.informed),
        "approvers": list(raci.approvers),
    }


def recipients(raci: Raci) -> list[str]:
    """Who hears about an approval: the accountable human, then consulted and informed."""
    return list(dict.fromkeys((raci.accountable, *raci.consulted, *raci.informed)))


@dataclass(frozen=True, slots=True)
class Decided:
    """An approver's own record of a decision on one approval, bound to the exact request."""

    approver: str
    agent: str
    approval_id: str
    action: str
    inputs_hash: str
    event: Event
    at: float
    reason: str = ""

    @classmethod
    def of(cls, approval: Approval, approver: str, event: Event, at: float, reason: str) -> Decided:
        return cls(
            approver, approval.agent, approval.id, approval.action, approval.inputs_hash,
            event, at, reason,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "approver": self.approver,
            "agent": self.agent,
            "approval_id": self.approval_id,
            "action": self.action,
            "inputs_hash": self.inputs_hash,
            "event": self.event.value,
            "at": self.at,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Decided:
        return cls(
            str(doc["approver"]), str(doc["agent"]), str(doc["approval_id"]),
            str(doc["action"]), str(doc["inputs_hash"]), Event(doc["event"]),
            float(doc["at"]), str(doc.get("reason", "")),
        )  # fmt: skip


def vouch_problem(
    approval: Approval,
    approvers: Sequence[str],
    decided: Decided | None,
    step: Step | None = None,
) -> str | None:
    """Why an approver's step (by default the last approve) is not backed by that approver's
    own decision record, or None.

    ``approvers`` come from the manifest in force, never from the (writable) document."""
    by = step.by if step is not None else approved_by(approval)
    event = step.event if step is not None else Event.approve
    if by not in approvers:
        return (
            f"{by or 'nobody'} is not an approver of {approval.action} under the manifest in force"
        )
    if decided is None:
        return f"{by} recorded no decision on approval {approval.id}"
    bound = (decided.approver, decided.agent, decided.approval_id, decided.action, decided.event)
    if bound != (by, approval.agent, approval.id, approval.action, event):
        return f"{by}'s recorded decision on approval {approval.id} is not this {event.value}"
    if decided.inputs_hash != approval.inputs_hash or not binds(
        approval, approval.action, approval.inputs
    ):
        return f"approval {approval.id} now names other inputs than {by} decided on"
    return None


def check_id(approval_id: str) -> str:
    """An approval id as the sidecar makes them; anything else never reaches a Vault path."""
    if not APPROVAL_ID.fullmatch(approval_id):
        raise NotFound(f"{approval_id[:64]!r} is not an approval id")
    return approval_id


def may_decide(approval: Approval, identity: str) -> bool:
    return identity in approval.raci.approvers


def approved_by(approval: Approval) -> str:
    """Who approved (the last approve step), or '' when nobody has."""
    steps = [s.by for s in approval.history if s.event is Event.approve]
    return steps[-1] if steps else ""


def binds(approval: Approval, action: str, inputs: Mapping[str, Any]) -> bool:
    """True when ``action`` and ``inputs`` are exactly the ones that were approved."""
    return inputs_hash(approval.agent, action, inputs) == approval.inputs_hash


def transition(
    approval: Approval, event: Event, *, at: float, by: str, reason: str = ""
) -> Approval:
    """The approval after ``event``; a lapsed deadline counts as expired first."""
    current = approval.state_at(at) if event is not Event.expire else approval.state
    target = TRANSITIONS.get((current, event))
    if target is None:
        raise ApprovalError(
            f"approval {approval.id} is {current}: it cannot be {EVENT_NAMES[event]}"
        )
    if event is Event.expire and approval.state_at(at) is not State.expired:
        raise ApprovalError(f"approval {approval.id} has not reached its deadline")
    return replace(approval, state=target, history=(*approval.history, Step(event, by, at, reason)))


def decide_as(
    approval: Approval, event: Event, *, identity: str, at: float, reason: str
) -> Approval:
    """An operator's approve or deny: only a listed approver, only while pending."""
    if event not in (Event.approve, Event.deny):
        raise ApprovalError(f"operators approve or deny; {event} is the sidecar's")
    if not may_decide(approval, identity):
        who = ", ".join(approval.raci.approvers)
        raise NotAnApprover(
            f"{identity} may not decide approval {approval.id} for {approval.action}: "
            f"the manifest lists {who}"
        )
    return transition(approval, event, at=at, by=identity, reason=reason)


def redeem_refusal(
    approval: Approval, now: float, action: str | None, inputs: Mapping[str, Any] | None
) -> tuple[ReasonCode, str] | None:
    """Why this redeem is refused, or None; None with a pending state means "wait"."""
    state = approval.state_at(now)
    refusal = REDEEM_REFUSALS.get(state)
    if refusal is not None:
        why = "was already redeemed (single use)" if state is State.redeemed else f"is {state}"
        return refusal, f"approval {approval.id} {why}"
    if inputs is not None and not binds(approval, action or approval.action, inputs):
        return (
            ReasonCode.invalid_inputs,
            f"approval {approval.id} covers other inputs than these (bound to {approval.inputs_hash})",
        )
    return None


def describe_table() -> str:
    """The state table as Markdown, for the docs."""
    rows = ["| from | event | to |", "| --- | --- | --- |"]
    rows += [f"| {s} | {e} | {t} |" for (s, e), t in TRANSITIONS.items()]
    return "\n".join(rows) + "\n"
