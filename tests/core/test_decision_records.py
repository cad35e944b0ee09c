"""Decisions written out in full: every field of allow, pending and deny as the audit trail
gets them, the detail of each rule's refusal, explain's trace, approval conditions with
``any`` and several terms, and the compiled-plan cache."""

from __future__ import annotations

from typing import Any

import pytest

from broker.core import decision
from broker.core.decision import ActionRequest, decide, explain, inputs_hash
from broker.core.limits import UsageSnapshot
from broker.core.manifest import Manifest
from broker.core.reasons import Outcome
from tests.strategies import refund_manifest

NOW = 1_767_225_600.0  # a UTC midnight
MANIFEST = refund_manifest()
EMPTY = UsageSnapshot()
REFUND_RACI = {
    "accountable": "finance-ops@acme.example",
    "consulted": ["billing-lead@acme.example"],
    "informed": [],
    "approvers": ["finance-ops@acme.example"],
}
REFUND_TOKEN = {"kind": "vault_token", "policies": ("stripe-refund",), "ttl": 30, "uses": 1}


def req(action: str, **inputs: Any) -> ActionRequest:
    return ActionRequest(action=action, inputs=inputs, request_id="t")


def refund(amount: float) -> ActionRequest:
    return req("stripe.refund", ticket_id="CS-1", amount_usd=amount)


def test_inputs_hash_is_pinned() -> None:
    """The inputs hash is sha256 over the canonical JSON of agent, action and inputs."""
    digest = inputs_hash(
        "support-refund-agent", "stripe.refund", {"ticket_id": "CS-1", "amount_usd": 120}
    )
    assert digest == "sha256:f46550a64b352b20e41be0c64d56b30b81ab0652087a78bf863022c579404b9d"


def test_pending_decision_in_full() -> None:
    """A pending decision carries the manifest's reason, expiry, charges, credential and RACI."""
    d = decide(refund(120), MANIFEST, EMPTY, NOW)
    assert d.to_json() == {
        "outcome": "pending_approval",
        "reason": "approval_required",
        "approval_reason": "needs_human_approval_over_100",
        "detail": "needs approval by finance-ops@acme.example",
        "charges": {"refunds-usd": 120.0, "refunds-usd-hourly": 120.0, "tool-calls": 1.0},
        "credential": REFUND_TOKEN,
        "raci": REFUND_RACI,
        "policy_version": "refund-policy-2026-02",
        "manifest_hash": MANIFEST.content_hash,
        "action": "stripe.refund",
        "agent": "support-refund-agent",
        "inputs_hash": inputs_hash(
            "support-refund-agent", "stripe.refund", {"ticket_id": "CS-1", "amount_usd": 120}
        ),
        "retry_after": None,
        "approval_expires_in": 900,
    }
    assert d.http_status == 202


def test_allowed_decision_in_full() -> None:
    """An allowed decision: no reason, no approval fields, its credential and charges."""
    d = decide(refund(40), MANIFEST, EMPTY, NOW)
    assert d.to_json() == {
        "outcome": "allow",
        "reason": None,
        "approval_reason": None,
        "detail": "stripe.refund is within scope",
        "charges": {"refunds-usd": 40.0, "refunds-usd-hourly": 40.0, "tool-calls": 1.0},
        "credential": REFUND_TOKEN,
        "raci": REFUND_RACI,
        "policy_version": "refund-policy-2026-02",
        "manifest_hash": MANIFEST.content_hash,
        "action": "stripe.refund",
        "agent": "support-refund-agent",
        "inputs_hash": inputs_hash(
            "support-refund-agent", "stripe.refund", {"ticket_id": "CS-1", "amount_usd": 40}
        ),
        "retry_after": None,
        "approval_expires_in": None,
    }
    assert d.http_status == 200


def test_denied_decision_of_a_gated_action_in_full() -> None:
    """A refused call of an action with an approval gate has no approval fields, no charges,
    no credential, and says when to retry."""
    usage = UsageSnapshot(budgets={"refunds-usd": 1950.5})
    d = decide(refund(120), MANIFEST, usage, NOW + 3600)
    assert d.to_json() == {
        "outcome": "deny",
        "reason": "budget_exhausted",
        "approval_reason": None,
        "detail": "refunds-usd: 1950.5 used + 120 exceeds 2000 per 86400s",
        "charges": {},
        "credential": None,
        "raci": REFUND_RACI,
        "policy_version": "refund-policy-2026-02",
        "manifest_hash": MANIFEST.content_hash,
        "action": "stripe.refund",
        "agent": "support-refund-agent",
        "inputs_hash": inputs_hash(
            "support-refund-agent", "stripe.refund", {"ticket_id": "CS-1", "amount_usd": 120}
        ),
        "retry_after": 86400.0 - 3600,
        "approval_expires_in": None,
    }
    assert d.http_status == 403


def test_unknown_action_has_no_raci() -> None:
    """An action outside the manifest has no owners to name: raci is null."""
    d = decide(req("stripe.payout"), MANIFEST, EMPTY, NOW)
    assert (d.raci, d.to_json()["raci"], d.http_status) == (None, None, 403)


TICKET = {"ticket_id": "CS-1"}
DETAILS = [
    ("agent disabled", refund(5), EMPTY, True, "agent support-refund-agent is disabled", None),
    ("unknown action", req("stripe.payout"), EMPTY, False, "'stripe.payout' is not in scope",
     None),
    ("undeclared input", req("zendesk.get_ticket", ticket_id="CS-1", to="x"), EMPTY, False,
     "input 'to' is not declared", None),
    ("wrong type", req("zendesk.get_ticket", ticket_id=5), EMPTY, False,
     "input 'ticket_id' must be a string", None),
    ("missing inputs", req("stripe.refund"), EMPTY, False,
     "missing inputs: amount_usd, ticket_id", None),
    ("no canonical form", req("zendesk.get_ticket", ticket_id="CS-1\ud800"), EMPTY, False,
     "inputs have no RFC 8785 canonical form", None),
    ("constraint", refund(600), EMPTY, False, "input 'amount_usd' must be <= 500.0 (max)", None),
    ("concurrency", req("zendesk.get_ticket", **TICKET), UsageSnapshot(in_flight_count=4), False,
     "4 credentials in flight (cap 4)", None),
    ("agent rate", req("zendesk.get_ticket", **TICKET), UsageSnapshot(rates={"agent": 600}),
     False, "agent: 600 calls per 60s reached", 60.0),
    ("action rate", req("zendesk.get_ticket", **TICKET),
     UsageSnapshot(rates={"zendesk.get_ticket": 60}), False,
     "zendesk.get_ticket: 60 calls per 60s reached", 60.0),
    ("budget", refund(60), UsageSnapshot(budgets={"refunds-usd": 1950.5}), False,
     "refunds-usd: 1950.5 used + 60 exceeds 2000 per 86400s", 86400.0),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_", "usage", "disabled", "detail", "retry_after"),
    [c[1:] for c in DETAILS],
    ids=[c[0] for c in DETAILS],
)
def test_refusal_details(
    request_: ActionRequest,
    usage: UsageSnapshot,
    disabled: bool,
    detail: str,
    retry_after: float | None,
) -> None:
    """Each rule's refusal says exactly what was wrong, and when to retry where that helps."""
    d = decide(request_, MANIFEST, usage, NOW, agent_disabled=disabled)
    assert (d.outcome, d.detail, d.retry_after) == (Outcome.deny, detail, retry_after)


EARLY = [
    pytest.param(refund(5), True, id="agent disabled"),
    pytest.param(req("stripe.payout", amount_usd=5), False, id="unknown action"),
    pytest.param(req("zendesk.get_ticket", ticket_id="CS-1", to="x"), False, id="undeclared"),
    pytest.param(req("stripe.refund", ticket_id="CS-1"), False, id="missing input"),
]


@pytest.mark.parametrize(("request_", "disabled"), EARLY)
def test_refusals_before_the_inputs_rule_carry_the_inputs_hash(
    request_: ActionRequest, disabled: bool
) -> None:
    """A call refused before its inputs are checked is still recorded with the hash of the
    inputs it asked with, for this agent and the action it named."""
    d = decide(request_, MANIFEST, EMPTY, NOW, agent_disabled=disabled)
    assert d.outcome is Outcome.deny
    assert d.inputs_hash == inputs_hash(MANIFEST.agent, request_.action, request_.inputs)


def test_inputs_without_a_canonical_form_are_recorded_as_unbindable() -> None:
    """Inputs that have no RFC 8785 form cannot be hashed: the refusal says so, whether the
    inputs rule or an earlier one refused them."""
    lone = req("zendesk.get_ticket", ticket_id="CS-1\ud800")
    for disabled in (False, True):
        d = decide(lone, MANIFEST, EMPTY, NOW, agent_disabled=disabled)
        assert (d.outcome, d.inputs_hash) == (Outcome.deny, decision.UNBINDABLE)


def test_explain_trace_of_a_refusal_in_full() -> None:
    """explain: each rule passes, the failing one says why, the rest are skipped, then the
    decision with its summary."""
    usage = UsageSnapshot(budgets={"refunds-usd": 1950.5})
    trace = [(r.rule, r.status, r.detail) for r in explain(refund(60), MANIFEST, usage, NOW)]
    why = "refunds-usd: 1950.5 used + 60 exceeds 2000 per 86400s"
    assert trace == [
        ("agent_enabled", "pass", ""),
        ("action_in_scope", "pass", ""),
        ("inputs_valid", "pass", ""),
        ("constraints", "pass", ""),
        ("concurrency", "pass", ""),
        ("agent_rate", "pass", ""),
        ("action_rate", "pass", ""),
        ("budgets", "fail", f"budget_exhausted: {why}"),
        ("approval", "skipped", ""),
        ("decision", "deny (budget_exhausted)", why),
    ]


def test_explain_trace_of_a_pending_and_an_allowed_call() -> None:
    """A gate is 'pending' in the trace; an allowed call's summary has no reason."""
    pending = explain(refund(120), MANIFEST, EMPTY, NOW)
    assert [(r.rule, r.status, r.detail) for r in pending[-2:]] == [
        ("approval", "pending", "approval_required: needs approval by finance-ops@acme.example"),
        (
            "decision",
            "pending_approval (approval_required)",
            "needs approval by finance-ops@acme.example",
        ),
    ]
    allowed = explain(refund(5), MANIFEST, EMPTY, NOW)
    assert {r.status for r in allowed[:-1]} == {"pass"}
    assert (allowed[-1].status, allowed[-1].detail) == ("allow", "stripe.refund is within scope")


# -- approval conditions -------------------------------------------------------------------

GATED = Manifest.model_validate(
    {
        "agent": "gated-agent",
        "policy_version": "gated-1",
        "system_owner": "platform@acme.example",
        "risk_owner": "risk@acme.example",
        "actions": {
            "pay.out": {
                "accountable": "finance-ops@acme.example",
                "credential": {"kind": "jwt", "audience": "pay", "ttl": "60s"},
                "inputs": {
                    "usd": {"type": "number"},
                    "region": {"type": "string"},
                    "vip": {"type": "boolean", "required": False},
                },
                "approval": {
                    "when": {
                        "usd": {"gt": 100},
                        "region": {"eq": "eu"},
                        "any": [{"vip": {"eq": False}}, {"usd": {"ge": 1000}}],
                    },
                    "approvers": ["finance-ops@acme.example"],
                },
            }
        },
    }
)
CONDITIONS = [
    pytest.param(50, "eu", False, Outcome.allow, id="first term fails"),
    pytest.param(150, "us", False, Outcome.allow, id="second term fails"),
    pytest.param(150, "eu", False, Outcome.pending_approval, id="all terms, first 'any' option"),
    pytest.param(150, "eu", True, Outcome.allow, id="neither 'any' option"),
    pytest.param(1500, "eu", True, Outcome.pending_approval, id="second 'any' option"),
    pytest.param(150, "eu", None, Outcome.pending_approval, id="absent optional input holds"),
]


@pytest.mark.parametrize(("usd", "region", "vip", "outcome"), CONDITIONS)
def test_approval_condition_terms_and_any(
    usd: float, region: str, vip: bool | None, outcome: Outcome
) -> None:
    """Every term of a condition must hold, ``any`` needs one option, an absent input holds."""
    inputs: dict[str, Any] = {"usd": usd, "region": region}
    if vip is not None:
        inputs["vip"] = vip
    assert decide(req("pay.out", **inputs), GATED, EMPTY, NOW).outcome is outcome


# -- the compiled-plan cache ---------------------------------------------------------------


def test_plan_follows_the_manifest_asked_for() -> None:
    """Alternating between two manifests, each decision uses its own manifest's limits."""
    tight, loose = refund_manifest({"max_amount": 10.0}), refund_manifest()
    for _ in range(2):
        assert decide(refund(50), tight, EMPTY, NOW).outcome is Outcome.deny
        assert decide(refund(50), loose, EMPTY, NOW).outcome is Outcome.allow


def test_pending_detail_names_every_approver() -> None:
    """With several approvers, the pending detail names each of them, in manifest order."""
    data = MANIFEST.model_dump()
    data["actions"]["stripe.refund"]["approval"]["approvers"] = [
        "finance-ops@acme.example",
        "cfo@acme.example",
    ]
    d = decide(refund(120), Manifest.model_validate(data), EMPTY, NOW)
    assert d.detail == "needs approval by finance-ops@acme.example, cfo@acme.example"
