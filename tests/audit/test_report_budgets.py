"""Budget use against the manifests' limits: charged in the current window and at the busiest
window of the report's range, per agent and budget (``broker report --scopes DIR``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broker.audit.report import parse_since
from broker.audit.report_budgets import BudgetLimit, budget_use
from broker.audit.report_html import render_html
from broker.audit.report_summary import build_summary
from tests.audit.test_report import NOW, cli, trail_file, trail_records, week_report

__all__ = ["trail_file"]  # the fixture, used below by name

DAY = 86_400
TODAY = NOW - NOW % DAY  # 2027-01-15T00:00:00Z
USD = BudgetLimit("a1", "usd", 200.0, DAY, "usd")


def charge(
    at: float, amount: float, agent: str = "a1", credential: str | None = "c"
) -> dict[str, Any]:
    record: dict[str, Any] = {"type": "decision", "agent_id": agent, "at": at,
                              "outcome": "allow", "charges": {"usd": amount}}  # fmt: skip
    if credential:
        record["credential_id"] = credential
    return record


TRAIL = [
    charge(TODAY + 60, 30),
    charge(TODAY + 120, 20),
    charge(TODAY - 3600, 70),  # yesterday, the busiest day
    charge(TODAY + 180, 500, credential=None),  # refused: nothing minted, nothing charged
    charge(TODAY + 240, 900, agent="a2"),  # another agent's budget
    charge(NOW + 60, 40),  # after `now`: not yet
]


@pytest.mark.parametrize(
    ("start", "current", "peak", "peak_window"),
    [
        (None, 50.0, 70.0, "2027-01-14T00:00:00Z"),
        (TODAY - 2 * DAY, 50.0, 70.0, "2027-01-14T00:00:00Z"),
        (TODAY + 3600, 50.0, 50.0, "2027-01-15T00:00:00Z"),  # yesterday outside the range
    ],
)
def test_current_window_and_peak(
    start: float | None, current: float, peak: float, peak_window: str
) -> None:
    """Today's charges against the limit; the busiest window of the range; refused requests,
    other agents and records after `now` not counted; the current window counted whole."""
    (use,) = budget_use(TRAIL, [USD], now=NOW, start=start)
    assert (use.current, use.peak, use.peak_window) == (current, peak, peak_window)
    assert use.current_share == current / 200.0


def test_a_budget_never_charged_reads_zero() -> None:
    """A declared budget with no charge is still shown: 0 now, 0 at peak, no peak window."""
    (use,) = budget_use(TRAIL, [BudgetLimit("a3", "usd", 10.0, 3600, "usd")], now=NOW)
    assert (use.current, use.peak, use.peak_window) == (0.0, 0.0, None)


@pytest.mark.parametrize(
    ("limit", "shown", "css"), [(1000.0, "5%", ""), (60.0, "83%", "warn"), (50.0, "100%", "bad")]
)
def test_html_shows_the_fullest_budget(limit: float, shown: str, css: str) -> None:
    """The summary tile shows the fullest budget's share of its limit this window, amber from
    80 %, red from 100 %, and a row per budget in the table under the tiles."""
    budgets = [BudgetLimit("a1", "usd", limit, DAY, "usd")]
    summary = build_summary(TRAIL, now=NOW, since=parse_since("7d"), budgets=budgets)
    page = render_html(week_report(), summary)
    tile = page.split('data-figure="budget"', 1)[1].split("</div></div>", 1)[0]
    assert f'data-value="{shown}"' in tile
    assert page.split('data-figure="budget"', 1)[0].endswith(f'<div class="figure {css}" ')
    assert '<tr data-budget="a1/usd" data-current="50">' in page


def test_cli_report_with_scopes(
    trail_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`broker report --scopes DIR` reads the limits from the manifests: the known trail
    charged usd 140 and queries 3 yesterday, nothing today."""
    scopes = tmp_path / "scopes"
    scopes.mkdir()
    (scopes / "a1.yaml").write_text(MANIFEST)
    assert cli(["report", "--json", "--since", "7d", "--scopes", str(scopes), str(trail_file)]) == 0
    doc = json.loads(capsys.readouterr().out)
    got = {(u["budget"], u["current"], u["peak"], u["limit"], u["per"]) for u in doc["budget_use"]}
    assert got == {("usd", 0.0, 140.0, 2000.0, DAY), ("queries", 0.0, 3.0, 50.0, 3600)}
    assert cli(["report", "--since", "7d", "--scopes", str(scopes), str(trail_file)]) == 0
    out = capsys.readouterr().out
    assert " BUDGETS (this window, of the limit)" in out
    rows = [line.split() for line in out.split(" BUDGETS", 1)[1].splitlines()[2:]]
    assert rows == [
        ["a1", "queries", "0", "50", "0%", "3", "queries"],
        ["a1", "usd", "0", "2000", "0%", "140", "usd"],
    ]


def test_cli_report_without_scopes_has_no_budget_use(
    trail_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --scopes the JSON is the report alone (no limits are known)."""
    assert cli(["report", "--json", str(trail_file)]) == 0
    assert "budget_use" not in json.loads(capsys.readouterr().out)


def test_known_trail_charges() -> None:
    """The shared trail's charges, as the budget table sums them (usd 10 ten days ago too)."""
    limits = [BudgetLimit("a1", "usd", 2000.0, DAY, "usd")]
    (use,) = budget_use(trail_records(), limits, now=NOW)
    assert (use.peak, use.peak_window) == (140.0, "2027-01-14T00:00:00Z")


MANIFEST = """\
agent: a1
policy_version: p1
system_owner: platform@acme.example
risk_owner: risk@acme.example
budgets:
  usd: {limit: 2000, per: 1d, unit: usd}
  queries: {limit: 50, per: 1h, unit: queries}
actions:
  stripe.refund:
    accountable: finance-ops@acme.example
    credential: {kind: jwt, audience: stripe, ttl: 60s}
    cost: {usd: 1}
  db.read:
    accountable: data-lead@acme.example
    credential: {kind: jwt, audience: db, ttl: 60s}
    cost: {queries: 1}
"""
