"""The pure decision core: rule order, refusals, explain, binding, and safety properties."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from broker.core.decision import (
    RULES,
    ActionRequest,
    Decision,
    decide,
    explain,
    inputs_hash,
)
from broker.core.limits import UsageLedger, UsageSnapshot
from broker.core.reasons import Outcome, ReasonCode
from tests.strategies import (
    ACTIONS_IN_SCOPE,
    limit_sets,
    now_values,
    refund_manifest,
    requests,
    tightened,
    usages,
)

NOW = 1_767_225_600.0
MANIFEST = refund_manifest()
EMPTY = UsageSnapshot()


def req(action: str, **inputs: Any) -> ActionRequest:
    return ActionRequest(action=action, inputs=inputs, request_id="t")


def refund(amount: Any) -> ActionRequest:
    return req("stripe.refund", ticket_id="CS-1", amount_usd=amount)


def test_small_refund_is_allowed_with_its_credential_and_charges() -> None:
    """An in-scope call within every limit is allowed, with the manifest's credential."""
    d = decide(refund(50), MANIFEST, EMPTY, NOW)
    assert (d.outcome, d.reason) == (Outcome.allow, None)
    assert d.credential is not None
    assert d.credential.kind == "vault_token"
    assert d.charges == {"refunds-usd": 50.0, "refunds-usd-hourly": 50.0, "tool-calls": 1.0}


def test_decision_is_stamped_with_policy_hash_and_raci() -> None:
    """Every decision names the policy version, manifest hash and the owning humans."""
    d = decide(refund(50), MANIFEST, EMPTY, NOW)
    assert d.policy_version == "refund-policy-2026-02"
    assert d.manifest_hash == MANIFEST.content_hash
    assert d.raci is not None
    assert d.raci.accountable == "finance-ops@acme.example"
    assert d.raci.approvers == ("finance-ops@acme.example",)
    assert d.agent == "support-refund-agent"


def test_large_refund_is_pending_with_the_manifest_reason() -> None:
    """A refund over $100 waits for approval and carries the manifest's reason text."""
    d = decide(refund(120), MANIFEST, EMPTY, NOW)
    assert d.outcome is Outcome.pending_approval
    assert d.reason is ReasonCode.approval_required
    assert d.approval_reason == "needs_human_approval_over_100"
    assert d.approval_expires_in == 900
    assert d.http_status == 202


REFUSALS = [
    ("agent disabled", refund(5), EMPTY, True, ReasonCode.agent_disabled),
    ("unknown action", req("stripe.payout", amount_usd=5), EMPTY, False, ReasonCode.unknown_action),
    ("undeclared input", req("stripe.refund", ticket_id="CS-1", amount_usd=5, to="x"), EMPTY,
     False, ReasonCode.invalid_inputs),
    ("missing input", req("stripe.refund", ticket_id="CS-1"), EMPTY, False,
     ReasonCode.invalid_inputs),
    ("string amount", refund("5"), EMPTY, False, ReasonCode.invalid_inputs),
    ("bool amount", refund(True), EMPTY, False, ReasonCode.invalid_inputs),
    ("null amount", refund(None), EMPTY, False, ReasonCode.invalid_inputs),
    ("integer beyond 2**53", refund(2**53), EMPTY, False, ReasonCode.invalid_inputs),
    ("lone surrogate (no JCS form)", req("zendesk.get_ticket", ticket_id="CS-1\ud800"), EMPTY,
     False, ReasonCode.invalid_inputs),
    ("over max", refund(500.01), EMPTY, False, ReasonCode.constraint_violation),
    ("under min", refund(-1), EMPTY, False, ReasonCode.constraint_violation),
    ("pattern", req("zendesk.get_ticket", ticket_id="CS-1\n"), EMPTY, False,
     ReasonCode.constraint_violation),
    ("concurrency", refund(5), UsageSnapshot(in_flight_count=4), False,
     ReasonCode.concurrency_limit),
    ("agent rate", refund(5), UsageSnapshot(rates={"agent": 600}), False,
     ReasonCode.rate_limited),
    ("action rate", refund(5), UsageSnapshot(rates={"stripe.refund": 10}), False,
     ReasonCode.rate_limited),
    ("daily budget", refund(60), UsageSnapshot(budgets={"refunds-usd": 1950}), False,
     ReasonCode.budget_exhausted),
    ("hourly budget", refund(20), UsageSnapshot(budgets={"refunds-usd-hourly": 490}), False,
     ReasonCode.budget_exhausted),
    ("call budget", req("zendesk.get_ticket", ticket_id="CS-1"),
     UsageSnapshot(budgets={"tool-calls": 5000}), False, ReasonCode.budget_exhausted),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_", "usage", "disabled", "reason"),
    [r[1:] for r in REFUSALS],
    ids=[r[0] for r in REFUSALS],
)
def test_refusals(
    request_: ActionRequest, usage: UsageSnapshot, disabled: bool, reason: ReasonCode
) -> None:
    """Each refusal case is denied with its stable reason code and no credential."""
    d = decide(request_, MANIFEST, usage, NOW, agent_disabled=disabled)
    assert (d.outcome, d.reason) == (Outcome.deny, reason)
    assert d.credential is None
    assert d.charges == {}


def test_rule_order_follows_the_documented_sequence() -> None:
    """Rules run in the order the design fixes: kill switch first, approval last."""
    assert [name for name, _ in RULES] == [
        "agent_enabled",
        "action_in_scope",
        "inputs_valid",
        "constraints",
        "concurrency",
        "agent_rate",
        "action_rate",
        "budgets",
        "approval",
    ]


def test_earlier_rules_win_when_several_fail() -> None:
    """A disabled agent asking for an unknown action is refused as disabled."""
    d = decide(req("nope.nope"), MANIFEST, UsageSnapshot(in_flight_count=99), NOW,
               agent_disabled=True)  # fmt: skip
    assert d.reason is ReasonCode.agent_disabled


def test_rate_refusal_carries_retry_after() -> None:
    """A rate-limited refusal tells the agent when to retry, from the ledger's log."""
    ledger = UsageLedger.for_manifest(MANIFEST)
    for i in range(10):
        ledger.charge(decide(refund(1), MANIFEST, ledger, NOW + i), f"c{i}", NOW + i, NOW + i)
    d = decide(refund(1), MANIFEST, ledger, NOW + 20)
    assert d.reason is ReasonCode.rate_limited
    assert d.retry_after == pytest.approx(40.0)
    assert d.http_status == 429


def test_budget_refusal_retries_at_the_window_end() -> None:
    """A budget refusal's retry_after is the time left in the budget's UTC-day window."""
    d = decide(refund(60), MANIFEST, UsageSnapshot(budgets={"refunds-usd": 1950}), NOW + 3600)
    assert d.retry_after == pytest.approx(86400 - 3600)


def test_inputs_hash_binds_exact_inputs_not_key_order() -> None:
    """The inputs hash changes with any input value but not with key order."""
    a = inputs_hash("ag", "x.y", {"a": 1, "b": "2"})
    assert a == inputs_hash("ag", "x.y", {"b": "2", "a": 1})
    assert a != inputs_hash("ag", "x.y", {"a": 2, "b": "2"})
    assert a != inputs_hash("ag", "x.z", {"a": 1, "b": "2"})
    assert a.startswith("sha256:")


def test_action_request_rejects_non_finite_numbers() -> None:
    """NaN and infinity cannot reach the core, so hashing and comparisons stay sound."""
    for bad in (math.nan, math.inf):
        with pytest.raises(ValidationError):
            ActionRequest(action="a.b", inputs={"x": [bad]}, request_id="r")


def test_explain_lists_every_rule_then_the_decision() -> None:
    """explain reports each rule in order, marks later ones skipped, ends in the decision."""
    trace = explain(refund(60), MANIFEST, UsageSnapshot(budgets={"refunds-usd": 1950}), NOW)
    assert [r.rule for r in trace] == [name for name, _ in RULES] + ["decision"]
    statuses = {r.rule: r.status for r in trace}
    assert statuses["budgets"] == "fail"
    assert statuses["approval"] == "skipped"
    assert trace[-1].decision is not None
    assert trace[-1].decision.reason is ReasonCode.budget_exhausted


def test_merge_style_approval_without_when_always_applies() -> None:
    """An approval with no condition makes every call pending."""
    data = MANIFEST.model_dump()
    data["actions"]["stripe.refund"]["approval"]["when"] = {}
    always = type(MANIFEST).model_validate(data)
    assert decide(refund(1), always, EMPTY, NOW).outcome is Outcome.pending_approval


# -- properties ----------------------------------------------------------------------------


@given(requests(), usages(), now_values, st.booleans())
def test_explain_and_decide_never_disagree(
    request_: ActionRequest, usage: UsageSnapshot, now: float, disabled: bool
) -> None:
    """explain's final decision equals decide's for the same arguments."""
    trace = explain(request_, MANIFEST, usage, now, agent_disabled=disabled)
    assert trace[-1].decision == decide(request_, MANIFEST, usage, now, agent_disabled=disabled)


@given(requests(), usages(), now_values)
def test_decide_is_deterministic(request_: ActionRequest, usage: UsageSnapshot, now: float) -> None:
    """Equal arguments give equal decisions."""
    assert decide(request_, MANIFEST, usage, now) == decide(request_, MANIFEST, usage, now)


@given(requests(st.text(max_size=20).filter(lambda a: a not in ACTIONS_IN_SCOPE)), usages())
def test_nothing_outside_the_manifest_is_ever_allowed(
    request_: ActionRequest, usage: UsageSnapshot
) -> None:
    """Any action the manifest does not declare is refused as unknown_action."""
    d = decide(request_, MANIFEST, usage, NOW)
    assert (d.outcome, d.reason) == (Outcome.deny, ReasonCode.unknown_action)


def _dec(value: float) -> Decimal:
    return Decimal(repr(float(value)))


def _within_limits(d: Decision, usage: UsageSnapshot, limits: dict[str, Any]) -> bool:
    manifest = refund_manifest(limits)
    budgets_ok = all(  # in decimal, as decide compares where floats could tip it
        _dec(usage.budget_used(b, NOW)) + _dec(amount) <= _dec(manifest.budgets[b].limit)
        for b, amount in d.charges.items()
    )
    action_rate = limits["ticket_rate" if d.action == "zendesk.get_ticket" else "refund_rate"]
    return (
        budgets_ok
        and usage.in_flight(NOW) < limits["concurrency"]
        and usage.rate_count("agent", 60, NOW) < limits["agent_rate"]
        and usage.rate_count(d.action, 60, NOW) < action_rate
    )


@settings(max_examples=300)
@given(limit_sets(), requests(), usages())
def test_over_budget_rate_or_concurrency_is_never_allowed(
    limits: dict[str, Any], request_: ActionRequest, usage: UsageSnapshot
) -> None:
    """Whatever is allowed or pending fits every budget, rate and the concurrency cap."""
    d = decide(request_, refund_manifest(limits), usage, NOW)
    if d.outcome is not Outcome.deny:
        assert d.action in ACTIONS_IN_SCOPE
        assert _within_limits(d, usage, limits)


@settings(max_examples=300)
@given(limit_sets().flatmap(lambda lim: st.tuples(st.just(lim), tightened(lim))), requests(),
       usages())  # fmt: skip
def test_tightening_a_limit_never_turns_a_deny_into_an_allow(
    pair: tuple[dict[str, Any], dict[str, Any]], request_: ActionRequest, usage: UsageSnapshot
) -> None:
    """Lowering any limit can only refuse more, never allow what was refused."""
    loose, tight = pair
    before = decide(request_, refund_manifest(loose), usage, NOW)
    after = decide(request_, refund_manifest(tight), usage, NOW)
    if before.outcome is Outcome.deny:
        assert after.outcome is Outcome.deny
    if after.outcome is not Outcome.deny:
        assert after.outcome == before.outcome
