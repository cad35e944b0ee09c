"""The fleet ledger's pure parts: what a call costs, its settings, the view decide reads."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from broker.cli.stack import _lease_ttl, ledger_kind
from broker.core.decision import ActionRequest
from broker.core.errors import ConfigError
from broker.core.fleetdoc import Grant
from broker.core.limits import window_start
from broker.scopes.loader import manifest_from_text
from broker.sidecar.fleetledger import FleetLedger, request_costs

MANIFEST = """\
agent: pay-agent
policy_version: v1
system_owner: o@acme.example
risk_owner: r@acme.example
budgets:
  usd: {limit: 100, per: 1d, unit: usd}
actions:
  pay.out:
    accountable: f@acme.example
    credential: {kind: jwt, audience: pay, ttl: 60s}
    inputs:
      usd: {type: number, min: 0}
    cost: {usd: inputs.usd}
"""
NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [({"usd": 12.5}, Decimal("12.5")), ({}, Decimal(0)), ({"usd": True}, Decimal(0))],
)
def test_request_costs_read_the_declared_input(inputs: dict[str, Any], expected: Decimal) -> None:
    """A cost from an input is that input's number; missing or mistyped costs 0 (decide refuses)."""
    manifest = manifest_from_text(MANIFEST, "test")
    assert request_costs(
        manifest, ActionRequest(action="pay.out", inputs=inputs, request_id="r1")
    ) == {"usd": expected}


def test_budget_used_is_the_limit_minus_the_slice_left() -> None:
    """decide sees used = limit - rest of this replica's live slice; none at all once expired."""
    ledger = FleetLedger(ttl=30.0)
    ledger.configure(manifest_from_text(MANIFEST, "test"))
    ledger._grants["usd"] = Grant(window_start(NOW, 86400), Decimal(10), Decimal(0), NOW + 30)
    assert ledger.budget_used("usd", NOW) == 90.0
    assert ledger.budget_used("usd", NOW + 25) == 100.0  # inside the skew margin: no slice


@pytest.mark.parametrize(
    ("value", "ok"), [("local", True), ("vault", True), ("", False), ("redis", False)]
)
def test_ledger_setting_is_checked(value: str, ok: bool) -> None:
    """BROKER_LEDGER is local or vault; anything else is config_invalid, never a default."""
    if ok:
        assert ledger_kind(value) == value
    else:
        with pytest.raises(ConfigError):
            ledger_kind(value)


@pytest.mark.parametrize("value", ["0", "-5", "abc", "nan", "99999"])
def test_lease_ttl_out_of_range_is_refused(value: str) -> None:
    """BROKER_LEDGER_LEASE_TTL outside 1..3600 s is a config error naming the setting."""
    with pytest.raises(ConfigError, match="BROKER_LEDGER_LEASE_TTL"):
        _lease_ttl(value)


LIMITED = """\
agent: lim-agent
policy_version: v1
system_owner: o@acme.example
risk_owner: r@acme.example
concurrency: 4
rate: {limit: 20, per: 1m, fallback: local_share}
actions:
  read.thing:
    accountable: f@acme.example
    credential: {kind: jwt, audience: things, ttl: 60s}
    rate: {limit: 10, per: 1m}
"""


def limited() -> FleetLedger:
    ledger = FleetLedger(ttl=30.0)
    ledger.configure(manifest_from_text(LIMITED, "test"))
    return ledger


def test_rate_count_is_the_limit_minus_the_slice_left() -> None:
    """decide sees a shared rate as limit - rest of this replica's slice; none: at the limit."""
    ledger = limited()
    assert ledger.rate_count("read.thing", 60, NOW) == 10  # no slice yet: refused until leased
    start = window_start(NOW, 60)
    ledger._grants["rate:read.thing:60"] = Grant(start, Decimal(4), Decimal(0), NOW + 30)
    assert ledger.rate_count("read.thing", 60, NOW) == 6
    assert ledger.retry_after("read.thing", 10, 60, NOW) == start + 60 - NOW


def test_a_local_share_counts_each_call_replicas_times() -> None:
    """With the store away and the slice spent, a local_share rate allows limit / replicas
    here; a rate without the fallback stays at its limit (fails closed)."""
    ledger = limited()
    ledger._down, ledger._replicas = True, 4
    assert ledger.rate_count("agent", 60, NOW) == 0
    assert ledger.rate_count("read.thing", 60, NOW) == 10
    ledger._replicas = 0  # never reached the store: no share
    assert ledger.rate_count("agent", 60, NOW) == 20


def test_in_flight_is_the_cap_minus_the_spare_slots() -> None:
    """decide sees cap - (slots leased - credentials in flight here); no lease: the cap."""
    ledger = limited()
    assert ledger.in_flight(NOW) == 4
    ledger._slots = (3, NOW + 30)
    assert ledger.in_flight(NOW) == 1
    assert ledger.in_flight(NOW + 25) == 4  # inside the skew margin: no slots
