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
