"""The usage ledger's less travelled paths: windows rolling over between charges, refunds
and releases of credentials that are gone, clock steps backwards, manifests without rates,
the agent-wide rate window, and the snapshot's defaults."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from broker.core.limits import UsageLedger, UsageSnapshot, window_start
from broker.core.manifest import Manifest
from tests.strategies import refund_manifest

DAY = 86400
NOW = 1_767_225_600.0  # a UTC midnight


@dataclass(frozen=True)
class Charge:
    action: str = "stripe.refund"
    charges: Mapping[str, float] = field(default_factory=dict)


def ledger() -> UsageLedger:
    return UsageLedger.for_manifest(refund_manifest())


USD = "refunds-usd"


def test_window_start_just_below_a_boundary() -> None:
    """The last representable instant before midnight still belongs to the day before."""
    before = math.nextafter(NOW, 0.0)
    assert window_start(before, DAY) == NOW - DAY
    assert window_start(NOW, DAY) == NOW


def test_new_window_starts_from_zero_then_adds() -> None:
    """The first charge of a new day counts from zero, not from yesterday's total."""
    led = ledger()
    led.charge(Charge(charges={USD: 70.0}), "a", NOW - 10, NOW - 20)
    led.charge(Charge(charges={USD: 5.0}), "b", NOW + 30, NOW + 1)
    led.charge(Charge(charges={USD: 2.5}), "c", NOW + 30, NOW + 2)
    assert led.budget_used(USD, NOW + 3) == 7.5


def test_refund_of_the_whole_charge_leaves_zero() -> None:
    """Refunding the only charge of the window leaves exactly nothing used."""
    led = ledger()
    charge = Charge(charges={USD: 5.0})
    led.charge(charge, "a", NOW + 30, NOW)
    led.refund(charge, "a", NOW)
    assert led.budget_used(USD, NOW) == 0.0
    assert led.to_json()["budgets"][USD] == {"window_start": NOW, "used": "0.0"}


def test_refund_after_the_window_rolled_leaves_the_old_window_alone() -> None:
    """A refund made after midnight for a charge of the day before changes no record."""
    led = ledger()
    charge = Charge(charges={USD: 5.0})
    led.charge(charge, "a", NOW - 5, NOW - 10)
    before = led.to_json()["budgets"]
    led.refund(charge, "a", NOW + 1)
    assert led.to_json()["budgets"] == before


def test_refund_after_the_budget_left_the_manifest() -> None:
    """A refund for a budget the new manifest no longer has is a quiet no-op, not a crash."""
    led = ledger()
    charge = Charge(charges={USD: 5.0})
    led.charge(charge, "a", NOW + 30, NOW)
    data = refund_manifest().model_dump()
    del data["budgets"][USD], data["budgets"]["refunds-usd-hourly"]
    data["actions"]["stripe.refund"]["cost"] = {"tool-calls": 1}
    led.configure(Manifest.model_validate(data))
    led.refund(charge, "a", NOW)
    assert led.budget_used(USD, NOW) == 0.0


def test_refund_of_a_released_credential_at_a_later_time() -> None:
    """Refunding a credential already released, at a later time than its call, breaks nothing."""
    led = ledger()
    led.charge(Charge(), "a", NOW + 30, NOW)
    assert led.release("a")
    led.refund(Charge(), "a", NOW + 5)
    assert led.rate_count("stripe.refund", 60, NOW + 5) == 1
    assert led.in_flight(NOW + 5) == 0


def test_release_all_of_some_ids_frees_only_those() -> None:
    """release_all with ids frees those slots, ignores unknown ids, keeps the others."""
    led = ledger()
    for cid in ("a", "b"):
        led.charge(Charge(), cid, NOW + 30, NOW)
    led.release_all(["a", "unknown"])
    assert led.in_flight(NOW) == 1
    assert led.release("b")


def test_clock_step_backwards_keeps_the_log_sorted() -> None:
    """A call made after the clock stepped back is logged at the last time seen."""
    led = ledger()
    led.charge(Charge(), "a", NOW + 130, NOW + 100)
    led.charge(Charge(), "b", NOW + 130, NOW + 90)
    assert led.to_json()["rates"]["stripe.refund"] == [NOW + 100, NOW + 100]


def test_rate_count_and_retry_after_of_a_key_never_called() -> None:
    """A key with no calls has a count of zero and nothing to wait for."""
    led = ledger()
    assert led.rate_count("stripe.refund", 60, NOW) == 0
    assert led.retry_after("stripe.refund", 1, 60, NOW) == 0.0


def test_retry_after_below_one_second() -> None:
    """Half a second before the oldest call leaves the window, retry_after is half a second."""
    led = ledger()
    led.charge(Charge(), "a", NOW + 100, NOW)
    assert led.retry_after("stripe.refund", 1, 60, NOW + 59.5) == pytest.approx(0.5)


def test_agent_rate_window_longer_than_every_action_rate() -> None:
    """The log is kept as long as the agent-wide window, even when actions' windows are shorter."""
    data = refund_manifest().model_dump()
    data["rate"] = [{"limit": 100, "per": "1h"}]
    led = UsageLedger.for_manifest(Manifest.model_validate(data))
    led.charge(Charge(), "a", NOW + 30, NOW)
    led.charge(Charge(), "b", NOW + 630, NOW + 600)
    assert led.rate_count("agent", 3600, NOW + 600) == 2


def test_manifest_without_rates_logs_no_calls() -> None:
    """With no rate limits at all, the ledger keeps no call log."""
    data = refund_manifest().model_dump()
    data["rate"] = []
    for action in data["actions"].values():
        action["rate"] = []
    led = UsageLedger.for_manifest(Manifest.model_validate(data))
    led.charge(Charge(), "a", NOW + 30, NOW)
    snapshot = led.to_json()
    assert (snapshot["rate_horizon"], snapshot["rates"]) == (0, {})


def test_unknown_format_and_unknown_budget_errors_say_which() -> None:
    """The errors name the format found and the budget that is not configured."""
    with pytest.raises(ValueError, match="unsupported usage ledger format 7"):
        UsageLedger.from_json({"format": 7})
    with pytest.raises(KeyError, match="budget 'nope' is not configured in this ledger"):
        ledger().charge(Charge(charges={"nope": 1.0}), "a", NOW + 1, NOW)


def test_snapshot_defaults_are_zero() -> None:
    """A snapshot reports zero for any budget or rate it was not given."""
    snap = UsageSnapshot()
    assert (snap.budget_used("x", NOW), snap.rate_count("x", 60, NOW)) == (0.0, 0)
    assert snap.retry_after("x", 1, 60, NOW) == 0.0


def _with_cap(cap: int | None) -> UsageLedger:
    data = refund_manifest().model_dump()
    data["concurrency"] = cap
    return UsageLedger.for_manifest(Manifest.model_validate(data))


@pytest.mark.parametrize(("cap", "listed"), [(None, 0), (5000, 1000)], ids=["no cap", "capped"])
def test_a_snapshot_lists_the_slots_only_when_a_cap_reads_them(
    cap: int | None, listed: int
) -> None:
    """1,000 recorded credentials in flight: without a concurrency cap the snapshot carries
    none of their ids (a busy minute once made each snapshot megabytes long), with one all."""
    led = _with_cap(cap)
    for n in range(1000):
        led.charge(Charge(), f"c{n}", NOW + 60, NOW)
        led.recorded(f"c{n}")
    snapshot = led.to_json()
    assert (len(snapshot["in_flight"]), snapshot["unrecorded"]) == (listed, [])
    assert led.in_flight(NOW) == 1000  # the count for ``broker status`` is kept either way


def test_a_credential_is_unrecorded_from_its_charge_until_its_record_refund_or_expiry() -> None:
    """The snapshot names exactly the credentials charged whose record is not yet written."""
    led = _with_cap(None)
    for cid in ("recorded", "refunded", "expires", "pending"):
        led.charge(Charge(), cid, NOW + (10 if cid == "expires" else 60), NOW)
    led.recorded("recorded")
    led.refund(Charge(), "refunded", NOW)
    assert led.in_flight(NOW + 20) == 2  # reading the count expires "expires"
    assert led.to_json()["unrecorded"] == ["pending"]


def test_slot_frees_in_nothing_in_flight_and_under_a_second() -> None:
    """With nothing in flight there is no slot to wait for; a credential expiring in half a
    second frees its slot in half a second, not a whole one."""
    led = ledger()
    assert led.slot_frees_in(NOW) is None
    led.charge(Charge(), "a", NOW + 0.5, NOW)
    led.charge(Charge(), "b", NOW + 30, NOW)
    assert led.slot_frees_in(NOW) == 0.5
    assert led.slot_frees_in(NOW + 0.5) == 29.5  # "a" has expired: "b" is the oldest left


def test_reported_used_is_the_budget_used_in_the_window() -> None:
    """What metrics and notifications report is the ledger's own count for that budget and
    that instant: this day's total, zero once the day has rolled over."""
    led = ledger()
    led.charge(Charge(charges={USD: 7.5, "tool-calls": 1.0}), "a", NOW + 30, NOW - 10)
    assert led.reported_used(USD, NOW - 1) == 7.5
    assert led.reported_used("tool-calls", NOW - 1) == 1.0
    assert led.reported_used(USD, NOW) == 0.0
    led.charge(Charge(charges={USD: 2.0}), "b", NOW + 30, NOW + 5)
    assert led.reported_used(USD, NOW + 6) == 2.0
