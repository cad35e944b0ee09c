"""The fleet ledger document's pure changes: leases, reclaim, give back, validation."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from broker.core import fleetdoc
from broker.core.errors import LedgerInvalid
from broker.core.fleetdoc import LeaseLost, grants, lease, slice_size, summary
from broker.core.fleetshare import RateMeter
from broker.core.limits import window_start
from broker.core.manifest import Budget

PATH = "ledger/a"
DAY = Budget(limit=100, per=86400)
BUDGETS = {"usd": DAY}
NOW = 1_700_000_000.0
TTL = 30.0


def take(
    doc: Any,
    replica: str,
    need: float,
    spent: float = 0,
    now: float = NOW,
    budgets: dict[str, Budget] = BUDGETS,
    held: frozenset[str] | None = None,
) -> Any:
    window = window_start(now, DAY.per)
    return lease(
        doc,
        PATH,
        budgets=budgets,
        held=held or frozenset(),
        replica=replica,
        spent={"usd": (window, Decimal(repr(spent)))},
        needs={"usd": Decimal(repr(need))} if need else {},
        now=now,
        ttl=TTL,
    )


def test_leases_never_add_up_past_the_limit() -> None:
    """However many replicas ask, granted slices plus used never exceed the limit."""
    doc = None
    for i in range(50):
        doc = take(doc, f"r{i % 4}", need=1, spent=0)
        entry = doc["budgets"]["usd"]
        held = sum(Decimal(x["granted"]) for x in entry["leases"].values())
        assert held + Decimal(entry["used"]) <= 100


def test_slice_shrinks_near_the_cap_to_one_call() -> None:
    """Far from the cap a replica takes a share; near it, exactly what the call needs."""
    assert slice_size(Decimal(100), Decimal(1), 4) == Decimal(12)  # whole calls only
    assert slice_size(Decimal(3), Decimal(1), 4) == Decimal(1)
    assert slice_size(Decimal("0.5"), Decimal(1), 4) == Decimal("0.5")


def test_no_grant_when_free_cannot_cover_the_call() -> None:
    """A call that does not fit in what is free gets nothing (no partial slice)."""
    doc = take(None, "r1", need=99)
    doc = take(doc, "r2", need=5)
    assert grants(doc, "r2")["usd"].granted == 0


def test_a_rest_too_small_for_the_call_goes_back() -> None:
    """Two replicas each holding half a call: the first to fail returns its half, so the
    second can make the call the halves add up to (no call stranded in fragments)."""
    doc = take(None, "a", need=1)
    window = window_start(NOW, DAY.per)
    for name in ("a", "b"):
        entry = doc["budgets"]["usd"]
        entry["leases"][name] = {
            "granted": "50.5" if name == "a" else "49.5",
            "spent": "50" if name == "a" else "49",
            "expires": NOW + TTL,
        }
    doc = take(doc, "a", need=1, spent=50)
    assert grants(doc, "a")["usd"].granted == 50
    doc = lease(
        doc,
        PATH,
        budgets=BUDGETS,
        replica="b",
        spent={"usd": (window, Decimal(49))},
        needs={"usd": Decimal(1)},
        now=NOW,
        ttl=TTL,
    )
    assert grants(doc, "b")["usd"].granted == 50


def test_expired_lease_returns_its_unspent_rest_exactly() -> None:
    """A dead replica's lease, after its TTL, frees granted - spent; its spending stays used."""
    doc = take(None, "dead", need=1)
    doc = take(doc, "dead", need=0, spent=3)  # reported spending of 3 of its slice
    granted = grants(doc, "dead")["usd"].granted
    later = take(doc, "live", need=1, now=NOW + TTL + 1)
    entry = later["budgets"]["usd"]
    assert "dead" not in entry["leases"]
    assert Decimal(entry["used"]) == 3
    assert granted > 3
    assert fleetdoc.free_of(entry) + Decimal(entry["leases"]["live"]["granted"]) == 97


def test_a_replica_reporting_after_its_lease_was_reclaimed_is_told() -> None:
    """Spending reported on a lease already reclaimed raises LeaseLost, never double counts."""
    doc = take(None, "slow", need=1)
    doc = take(doc, "other", need=1, now=NOW + TTL + 1)
    with pytest.raises(LeaseLost):
        take(doc, "slow", need=0, spent=1, now=NOW + TTL + 2, held=frozenset({"usd"}))


def test_give_back_frees_the_rest_at_once() -> None:
    """On shutdown a replica's unspent slice is free immediately; its spending stays used."""
    doc = take(None, "r1", need=1, spent=0)
    window = window_start(NOW, DAY.per)
    back = fleetdoc.give_back(doc, PATH, "r1", {"usd": (window, Decimal(2))})
    assert Decimal(summary(back, PATH, NOW)["usd"]["used"]) == 2
    assert Decimal(summary(back, PATH, NOW)["usd"]["free"]) == 98


def test_new_window_starts_empty() -> None:
    """Leases and usage of yesterday do not count today."""
    doc = take(None, "r1", need=1, spent=0)
    doc = take(doc, "r1", need=0, spent=1)
    tomorrow = take(doc, "r2", need=1, now=NOW + 86400)
    assert Decimal(summary(tomorrow, PATH, NOW + 86400)["usd"]["used"]) == 0


@pytest.mark.parametrize(
    ("doc", "names"),
    [
        ({"format": 2, "budgets": {}}, "format"),
        ({"format": 1}, "format"),
        ({"format": 1, "budgets": {"usd": []}}, "budgets.usd"),
        (
            {
                "format": 1,
                "budgets": {
                    "usd": {
                        "window_start": 0,
                        "per": 86400,
                        "used": "x",
                        "limit": "1",
                        "leases": {},
                    }
                },
            },
            "budgets.usd.used",
        ),
        (
            {
                "format": 1,
                "budgets": {
                    "usd": {
                        "window_start": 0,
                        "per": 86400,
                        "used": "-1",
                        "limit": "1",
                        "leases": {},
                    }
                },
            },
            "budgets.usd.used",
        ),
        (
            {
                "format": 1,
                "budgets": {
                    "usd": {"window_start": 0, "per": "1d", "used": "0", "limit": "1", "leases": {}}
                },
            },
            "budgets.usd.per",
        ),
        (
            {
                "format": 1,
                "budgets": {
                    "usd": {"window_start": "today", "used": "0", "limit": "1", "leases": {}}
                },
            },
            "window_start",
        ),
        (
            {
                "format": 1,
                "budgets": {
                    "usd": {
                        "window_start": 0,
                        "per": 86400,
                        "used": "0",
                        "limit": "1",
                        "leases": {"r": {"granted": "1", "spent": "5", "expires": 1.0}},
                    }
                },
            },
            "leases.r",
        ),
        (
            {
                "format": 1,
                "budgets": {
                    "usd": {
                        "window_start": 0,
                        "per": 86400,
                        "used": "0",
                        "limit": "1",
                        "leases": {"r": {"granted": 1, "spent": "0", "expires": 1.0}},
                    }
                },
            },
            "leases.r.granted",
        ),
    ],
)
def test_nonsense_documents_are_refused_naming_the_field(doc: Any, names: str) -> None:
    """A hand-edited document is a LedgerInvalid naming the field, never a silent reset."""
    with pytest.raises(LedgerInvalid) as caught:
        take(doc, "r1", need=1)
    assert caught.value.code == "ledger_invalid"
    assert names in caught.value.detail


def test_status_prints_used_leased_free_and_window_end(capsys: pytest.CaptureFixture[str]) -> None:
    """`broker status` shows each budget's used, free, leases per replica and window end."""
    from broker.cli.control import _print_ledger

    doc = take(None, "r1", need=1)
    doc = take(doc, "r1", need=0, spent=3)
    _print_ledger(summary(doc, PATH, NOW))
    _print_ledger({"error": "ledger_invalid", "detail": "ledger/a: budgets.usd.used ..."})
    out = capsys.readouterr().out.splitlines()
    end = window_start(NOW, DAY.per) + DAY.per
    assert out[0] == f"  budget usd: used 3 of 100.0, free 50.0, leased r1 47, window ends {end}"
    assert out[1] == "  ledger: ledger_invalid: ledger/a: budgets.usd.used ..."


def test_an_exact_budget_is_reserved_per_call() -> None:
    """A budget marked exact never hands out a slice ahead: each grant is what the call needs."""
    exact = {"usd": Budget(limit=100, per=86400, exact=True)}
    doc = take(None, "r1", need=2, budgets=exact)
    assert grants(doc, "r1")["usd"].granted == 2
    assert grants(take(None, "r1", need=2), "r1")["usd"].granted > 2  # not exact: a slice


def test_spending_made_on_a_local_share_is_counted_when_reported() -> None:
    """Spending beyond the grant (made while the store was away) raises granted, never lost."""
    doc = take(None, "r1", need=0, spent=7)
    entry = doc["budgets"]["usd"]["leases"]["r1"]
    assert (entry["granted"], entry["spent"]) == ("7", "7")


def ask(doc: Any, replica: str, in_use: int, need: int, now: float = NOW) -> Any:
    return lease(
        doc,
        PATH,
        budgets={},
        replica=replica,
        spent={},
        needs={},
        now=now,
        ttl=TTL,
        slots=fleetdoc.SlotAsk(limit=5, in_use=in_use, need=need, hold=60.0),
    )


def test_slots_never_add_up_past_the_cap() -> None:
    """Whatever four replicas ask, granted and held slots never exceed the cap."""
    doc = None
    for i in range(40):
        doc = ask(doc, f"r{i % 4}", in_use=min(i // 4, 1), need=1)
        slots = doc["slots"]
        taken = sum(x["granted"] for x in slots["leases"].values())
        assert taken + sum(h[0] for h in slots["held"]) <= 5


def test_a_dead_replicas_slots_are_held_until_its_credentials_expire() -> None:
    """An expired slot lease keeps its slots until expiry + hold, then they are free again."""
    doc = ask(None, "dead", in_use=0, need=1)
    granted = fleetdoc.slot_grant(doc, "dead")[0]
    assert granted >= 1
    doc = ask(doc, "live", in_use=0, need=0, now=NOW + TTL + 1)
    assert fleetdoc.slots_free(doc["slots"]) == 5 - granted
    doc = ask(doc, "live", in_use=0, need=0, now=NOW + TTL + 61)
    assert fleetdoc.slots_free(doc["slots"]) == 5


def test_a_full_cap_gives_the_spare_slots_back() -> None:
    """A replica asking a slot when none is free keeps only the slots in use."""
    doc = ask(None, "r1", in_use=0, need=5)
    doc = ask(doc, "r2", in_use=0, need=1)
    assert fleetdoc.slot_grant(doc, "r2")[0] == 0
    doc = ask(doc, "r1", in_use=2, need=5)  # r1 cannot get 5 more: keeps its 2 in use
    assert fleetdoc.slot_grant(doc, "r1")[0] == 2


@pytest.mark.parametrize(
    ("slots", "field"),
    [
        ({"limit": -1, "leases": {}, "held": []}, "slots.limit"),
        ({"limit": 4, "leases": {}, "held": "x"}, "slots.held"),
        ({"limit": 4, "leases": {}, "held": [[1]]}, "slots.held.0"),
        (
            {"limit": 4, "leases": {"r": {"granted": "2", "expires": 1, "hold": 1}}, "held": []},
            "slots.leases.r.granted",
        ),
        (
            {"limit": 4, "leases": {"r": {"granted": 2, "expires": "soon", "hold": 1}}, "held": []},
            "slots.leases.r.expires",
        ),
    ],
)
def test_nonsense_slots_are_refused_naming_the_field(slots: Any, field: str) -> None:
    """A slots section edited into nonsense: LedgerInvalid naming the field, never a reset."""
    with pytest.raises(LedgerInvalid, match=field.replace(".", r"\.")):
        fleetdoc.validate({"format": 1, "budgets": {}, "slots": slots}, PATH)


def test_slice_follows_the_observed_rate_within_the_fair_share() -> None:
    """A slow replica takes what its rate asks for, a fast one no more than its fair share."""
    assert slice_size(Decimal(1000), Decimal(1), 1, want=Decimal(7)) == 7
    assert slice_size(Decimal(1000), Decimal(1), 1, want=Decimal(900)) == 500
    assert slice_size(Decimal(1000), Decimal(3), 1, want=Decimal(0)) == 3  # never below the call


def test_spending_reported_ahead_never_passes_the_grant_and_give_back_is_exact() -> None:
    """Spending reported ahead stays within the grant; a clean shutdown closes only what was
    really spent, so the unspent rest (ahead included) is free again."""
    window = window_start(NOW, DAY.per)
    doc = take(None, "r1", need=1)
    granted = grants(doc, "r1")["usd"].granted
    doc = lease(
        doc,
        PATH,
        budgets=BUDGETS,
        replica="r1",
        spent={"usd": (window, Decimal(2))},
        needs={},
        now=NOW,
        ttl=TTL,
        ahead={"usd": Decimal(10_000)},
    )
    assert grants(doc, "r1")["usd"].spent == granted  # capped at the grant
    closed = fleetdoc.give_back(doc, PATH, "r1", {"usd": (window, Decimal(2))})
    assert closed["budgets"]["usd"]["used"] == "2"


def test_the_rate_meter_measures_a_young_spell_over_its_own_length() -> None:
    """10 calls in the first 0.2 s read as 50/s (not 10/s); a quiet second forgets them."""
    meter = RateMeter()
    for i in range(10):
        meter.add("calls", Decimal(1), NOW + i * 0.02)
    assert round(meter.calls("calls", NOW + 0.2)) == 50
    assert round(meter.amount("calls", NOW + 0.2)) == 50
    assert meter.calls("calls", NOW + 5) == 0
