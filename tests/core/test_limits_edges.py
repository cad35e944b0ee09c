"""Budgets, rates and concurrency exactly at their limits: one unit below fits, at the limit a
budget still fits (a rate or the cap does not), one unit above never fits. Checked through
``decide`` with fixed figures and with the real ledger, and at the edges of time windows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings

from broker.core.decision import ActionRequest, decide
from broker.core.limits import UsageLedger, UsageSnapshot, window_end
from broker.core.reasons import Outcome, ReasonCode
from tests.strategies import (
    BUDGET_EDGES,
    LOOSE_LIMITS,
    RATE_EDGES,
    Edge,
    edges,
    refund_manifest,
)

NOW = 1_767_225_600.0 + 7 * 3600  # 07:00 UTC: a day and an hour window are both open


@dataclass(frozen=True)
class Charge:
    """A minimal chargeable decision."""

    action: str = "stripe.refund"
    charges: Mapping[str, float] = field(default_factory=dict)


def refund(amount: float) -> ActionRequest:
    return ActionRequest(
        action="stripe.refund", inputs={"ticket_id": "CS-1", "amount_usd": amount}, request_id="r"
    )


def ticket() -> ActionRequest:
    return ActionRequest(action="zendesk.get_ticket", inputs={"ticket_id": "CS-1"}, request_id="t")


REASON_OF = {
    **dict.fromkeys(BUDGET_EDGES, ReasonCode.budget_exhausted),
    **dict.fromkeys(RATE_EDGES, ReasonCode.rate_limited),
    "concurrency": ReasonCode.concurrency_limit,
}


def ledger_for(edge: Edge) -> UsageLedger:
    """The edge's usage, built by charging a real ledger call by call."""
    ledger = UsageLedger.for_manifest(refund_manifest(edge.limits))
    for budget, amounts in edge.budgets.items():
        for i, amount in enumerate(amounts):
            ledger.charge(Charge(charges={budget: amount}), f"b{i}", NOW - 1, NOW)
    for key, count in edge.rates.items():
        action = "zendesk.get_ticket" if key == "agent" else key
        for i in range(count):
            at = NOW - 30 + 30 * i / count  # spread over the last half minute, all inside
            ledger.charge(Charge(action), f"r{i}", at, at)
    for i in range(edge.in_flight):
        ledger.charge(Charge(), f"c{i}", NOW + 60, NOW)
    return ledger


def assert_edge_decided(edge: Edge, usage: Any) -> None:
    d = decide(edge.request, refund_manifest(edge.limits), usage, NOW)
    if edge.fits:
        assert d.outcome is not Outcome.deny, (edge.kind, edge.offset, d.detail)
    else:
        assert (d.outcome, d.reason) == (Outcome.deny, REASON_OF[edge.kind]), d.detail


@settings(max_examples=400)
@given(edges())
def test_decide_at_the_edge_of_each_limit(edge: Edge) -> None:
    """With fixed usage figures, a call fits exactly when its limit's edge says it fits."""
    assert_edge_decided(edge, edge.snapshot())


@settings(max_examples=200, deadline=None)
@given(edges())
def test_ledger_at_the_edge_of_each_limit(edge: Edge) -> None:
    """The same edges, with the usage charged call by call into a real ledger."""
    assert_edge_decided(edge, ledger_for(edge))


# -- single edges, written out -------------------------------------------------------------

MONEY = [
    pytest.param(0.2, 0.1, 0.3, True, id="0.2 + 0.1 is exactly a 0.30 budget"),
    pytest.param(1949.99, 50.01, 2000.0, True, id="cents that land exactly on the limit"),
    pytest.param(1949.99, 50.02, 2000.0, False, id="one cent over the limit"),
    pytest.param(1949.99, 50.0, 2000.0, True, id="one cent under the limit"),
    pytest.param(1949.99, 50.0100000001, 2000.0, False, id="a ten-billionth of a dollar over"),
    pytest.param(5825754.53, 618.99, 5826373.52, True, id="exactly, where floats overshoot"),
    pytest.param(2000.0, 0.0, 2000.0, True, id="a free call on a spent budget"),
    pytest.param(0.0, 2000.0, 2000.0, True, id="one call worth the whole budget"),
    pytest.param(0.0, 2000.01, 2000.0, False, id="one call worth more than the budget"),
]


@pytest.mark.parametrize(("used", "amount", "limit", "fits"), MONEY)
def test_budget_edges_in_cents(used: float, amount: float, limit: float, fits: bool) -> None:
    """A budget holds used + cost == limit exactly, in decimal, and refuses one cent more."""
    manifest = refund_manifest({**LOOSE_LIMITS, "daily": limit})
    d = decide(refund(amount), manifest, UsageSnapshot({"refunds-usd": used}), NOW)
    assert (d.outcome is not Outcome.deny) is fits, d.detail
    if not fits:
        assert d.reason is ReasonCode.budget_exhausted
        assert d.detail.startswith("refunds-usd: ")


def test_budget_charged_in_tenths_reaches_its_limit_exactly() -> None:
    """Three charges of 0.1 fit a 0.3 budget through the real ledger; a fourth does not."""
    manifest = refund_manifest({**LOOSE_LIMITS, "daily": 0.3})
    ledger = UsageLedger.for_manifest(manifest)
    for i in range(3):
        d = decide(refund(0.1), manifest, ledger, NOW)
        assert d.outcome is Outcome.allow, (i, d.detail)
        ledger.charge(d, f"c{i}", NOW + 30, NOW)
    assert decide(refund(0.1), manifest, ledger, NOW).reason is ReasonCode.budget_exhausted


def test_budget_window_edge() -> None:
    """A day's usage counts until the last instant of the UTC day and is gone at midnight."""
    manifest = refund_manifest({**LOOSE_LIMITS, "daily": 100.0})
    ledger = UsageLedger.for_manifest(manifest)
    ledger.charge(Charge(charges={"refunds-usd": 100.0}), "c", NOW + 30, NOW)
    midnight = window_end(NOW, 86400)
    assert decide(refund(1), manifest, ledger, midnight - 0.001).reason is (
        ReasonCode.budget_exhausted
    )
    assert decide(refund(1), manifest, ledger, midnight).outcome is Outcome.allow


def test_rate_window_edge_and_retry_after() -> None:
    """A call leaves the window exactly ``per`` seconds later; retry_after says precisely when."""
    manifest = refund_manifest({"refund_rate": 3})
    ledger = UsageLedger.for_manifest(manifest)
    for i, at in enumerate((NOW, NOW + 10, NOW + 20)):
        ledger.charge(Charge(), f"c{i}", at + 1, at)
    refused = decide(refund(1), manifest, ledger, NOW + 25)
    assert (refused.reason, refused.retry_after) == (ReasonCode.rate_limited, 35.0)
    assert decide(refund(1), manifest, ledger, NOW + 59.999).reason is ReasonCode.rate_limited
    assert decide(refund(1), manifest, ledger, NOW + 60).outcome is Outcome.allow


def test_agent_rate_counts_every_action() -> None:
    """The agent-wide rate is spent by calls of any action, the per-action rate by its own."""
    manifest = refund_manifest({"agent_rate": 2, "refund_rate": 5})
    ledger = UsageLedger.for_manifest(manifest)
    ledger.charge(Charge("zendesk.get_ticket"), "t1", NOW + 1, NOW)
    assert decide(refund(1), manifest, ledger, NOW).outcome is Outcome.allow
    ledger.charge(Charge("zendesk.get_ticket"), "t2", NOW + 1, NOW)
    d = decide(refund(1), manifest, ledger, NOW)
    assert (d.reason, d.detail) == (ReasonCode.rate_limited, "agent: 2 calls per 60s reached")


def test_concurrency_slot_frees_at_the_expiry_instant() -> None:
    """A credential holds its slot until its expiry time, and not a moment after."""
    manifest = refund_manifest({"concurrency": 1})
    ledger = UsageLedger.for_manifest(manifest)
    ledger.charge(Charge(), "c", NOW + 30, NOW)
    held = decide(ticket(), manifest, ledger, NOW + 29.999)
    assert (held.reason, held.detail) == (
        ReasonCode.concurrency_limit,
        "1 credentials in flight (cap 1)",
    )
    assert decide(ticket(), manifest, ledger, NOW + 30).outcome is Outcome.allow


def test_loose_limits_leave_every_edge_case_to_its_own_limit() -> None:
    """The strategies' far-away limits really are far: a plain refund is allowed under them."""
    d = decide(refund(1), refund_manifest(LOOSE_LIMITS), UsageSnapshot(), NOW)
    assert d.outcome is Outcome.allow


def test_concurrency_refusal_says_when_the_oldest_slot_frees() -> None:
    """Retry-After on a concurrency refusal is the time until the oldest credential in flight
    expires (53 s here), not a token 1 s; a released credential no longer counts."""
    manifest = refund_manifest({"concurrency": 2})
    ledger = UsageLedger.for_manifest(manifest)
    ledger.charge(Charge(), "old", NOW + 60, NOW)
    ledger.charge(Charge(), "new", NOW + 90, NOW + 5)
    refused = decide(ticket(), manifest, ledger, NOW + 7)
    assert refused.reason is ReasonCode.concurrency_limit
    assert refused.retry_after == pytest.approx(53.0)
    ledger.release("old")
    ledger.charge(Charge(), "newest", NOW + 100, NOW + 8)
    assert decide(ticket(), manifest, ledger, NOW + 10).retry_after == pytest.approx(80.0)
