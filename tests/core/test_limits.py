"""Usage ledger: exact budgets, sliding rate windows, expiring concurrency, persistence."""

from __future__ import annotations

import json
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.decision import ActionRequest, decide
from broker.core.limits import UsageLedger, UsageSnapshot, window_start
from broker.core.reasons import Outcome
from tests.strategies import limit_sets, refund_manifest

DAY = 86_400
NOW = 1_767_225_600.0  # a UTC midnight


class Charge:
    """A minimal chargeable decision."""

    def __init__(self, action: str = "stripe.refund", /, **charges: float) -> None:
        self.action = action
        self.charges = MappingProxyType(charges)


def ledger() -> UsageLedger:
    return UsageLedger.for_manifest(refund_manifest())


def test_budget_windows_are_utc_days() -> None:
    """A 1d budget resets at UTC midnight, not 24 hours after the first charge."""
    led = ledger()
    led.charge(Charge(**{"refunds-usd": 100}), "c1", NOW + DAY - 5, NOW + DAY - 10)
    assert led.budget_used("refunds-usd", NOW + DAY - 1) == 100
    assert led.budget_used("refunds-usd", NOW + DAY) == 0
    assert window_start(NOW + DAY - 1, DAY) == NOW


@given(st.lists(st.decimals(0, 500, places=2), max_size=40))
def test_budget_charges_sum_exactly(amounts: list[Decimal]) -> None:
    """N charges add up to exactly their total (no float drift)."""
    led = ledger()
    for i, amount in enumerate(amounts):
        led.charge(Charge(**{"refunds-usd": float(amount)}), f"c{i}", NOW + 1, NOW)
    assert led.budget_used("refunds-usd", NOW) == float(sum(amounts, Decimal(0)))


def test_rate_window_slides_and_reports_retry_after() -> None:
    """Calls leave the rate window exactly `per` seconds after they were made."""
    led = ledger()
    for t in (0, 10, 20):
        led.charge(Charge(), f"c{t}", NOW + t + 1, NOW + t)
    assert led.rate_count("stripe.refund", 60, NOW + 59) == 3
    assert led.rate_count("stripe.refund", 60, NOW + 60) == 2
    assert led.rate_count("agent", 60, NOW + 75) == 1
    assert led.retry_after("stripe.refund", 3, 60, NOW + 30) == 30
    assert led.retry_after("stripe.refund", 2, 60, NOW + 30) == 40
    assert led.retry_after("stripe.refund", 4, 60, NOW + 30) == 0


def test_concurrency_slots_free_on_release_or_expiry() -> None:
    """A credential holds a slot until released or until it expires."""
    led = ledger()
    led.charge(Charge(), "a", NOW + 30, NOW)
    led.charge(Charge(), "b", NOW + 60, NOW)
    assert led.in_flight(NOW) == 2
    assert led.release("a") is True
    assert led.release("a") is False
    assert led.in_flight(NOW) == 1
    assert led.in_flight(NOW + 60) == 0
    led.release_all()
    assert led.in_flight(NOW) == 0


def test_refund_undoes_a_charge_whose_mint_failed() -> None:
    """refund returns the budget, the rate-log entry and the slot of a failed mint."""
    led = ledger()
    kept = Charge(**{"refunds-usd": 10})
    failed = Charge(**{"refunds-usd": 0.1})
    led.charge(kept, "a", NOW + 30, NOW)
    led.charge(failed, "b", NOW + 30, NOW + 1)
    led.refund(failed, "b", NOW + 1)
    assert led.budget_used("refunds-usd", NOW + 2) == 10
    assert led.rate_count("stripe.refund", 60, NOW + 2) == 1
    assert led.in_flight(NOW + 2) == 1


def test_persistence_round_trip_continues_where_it_stopped() -> None:
    """A restarted sidecar restores budgets, rate logs and in-flight credentials exactly."""
    led = ledger()
    led.charge(Charge(**{"refunds-usd": 0.1, "tool-calls": 1}), "a", NOW + 30, NOW)
    led.charge(Charge(**{"refunds-usd": 0.2}), "b", NOW + 30, NOW + 1)
    restored = UsageLedger.from_json(json.loads(json.dumps(led.to_json())))
    assert restored.to_json() == led.to_json()
    assert restored.budget_used("refunds-usd", NOW + 2) == 0.3
    assert restored.rate_count("agent", 60, NOW + 2) == 2
    assert restored.in_flight(NOW + 2) == 2


def test_unknown_ledger_format_is_refused() -> None:
    """A snapshot from another format version is not silently misread."""
    with pytest.raises(ValueError, match="format"):
        UsageLedger.from_json({"format": 99})


def test_charging_an_unconfigured_budget_fails_loudly() -> None:
    """A charge for a budget the ledger does not know is an error, not a silent no-op."""
    with pytest.raises(KeyError):
        ledger().charge(Charge(**{"nope": 1}), "a", NOW + 1, NOW)


def test_snapshot_reports_fixed_figures() -> None:
    """UsageSnapshot answers with the figures it was given, in every window."""
    snap = UsageSnapshot({"b": 5}, {"agent": 3}, 2)
    assert (snap.budget_used("b", 0), snap.rate_count("agent", 1, 0), snap.in_flight(0)) == (
        5,
        3,
        2,
    )
    assert snap.retry_after("agent", 3, 60, 0) == 60
    assert snap.retry_after("agent", 4, 60, 0) == 0


steps = st.lists(
    st.tuples(
        st.floats(0, 20, allow_nan=False),  # seconds to advance
        st.sampled_from(["zendesk.get_ticket", "stripe.refund"]),
        st.integers(0, 300),  # refund amount
        st.integers(1, 120),  # credential lifetime
        st.booleans(),  # release one held credential
    ),
    max_size=60,
)


@settings(max_examples=150)
@given(limit_sets(), steps)
def test_driven_by_decide_the_ledger_never_exceeds_any_limit(
    limits: dict[str, Any], script: list[tuple[float, str, int, int, bool]]
) -> None:
    """Deciding then charging, over time, never exceeds concurrency, rate or budget limits."""
    manifest = refund_manifest(limits)
    led, now, held = UsageLedger.for_manifest(manifest), NOW, []
    allowed: list[tuple[float, str]] = []
    for advance, action, amount, life, release in script:
        now += advance
        inputs: dict[str, Any] = {"ticket_id": "CS-1"}
        if action == "stripe.refund":
            inputs["amount_usd"] = amount
        d = decide(ActionRequest(action=action, inputs=inputs, request_id="r"), manifest, led, now)
        if d.outcome is Outcome.allow:
            led.charge(d, f"c{len(allowed)}", now + life, now)
            held.append(f"c{len(allowed)}")
            allowed.append((now, action))
        if release and held:
            led.release(held.pop(0))
        assert led.in_flight(now) <= limits["concurrency"]
        assert sum(1 for t, _ in allowed if t > now - 60) <= limits["agent_rate"]
        for budget in manifest.budgets:
            assert led.budget_used(budget, now) <= manifest.budgets[budget].limit + 1e-9
