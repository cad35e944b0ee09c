"""The report's summary, from the known trail of ``tests/audit/test_report.py``: every figure a
security lead reads first, and decisions per hour by outcome."""

from __future__ import annotations

import pytest

from broker.audit.report import parse_since
from broker.audit.report_budgets import BudgetLimit
from broker.audit.report_html import amount, render_html
from broker.audit.report_page import short_id
from broker.audit.report_summary import Summary, build_summary
from tests.audit.test_report import NOW, trail_records, week_report


def week() -> Summary:
    return build_summary(
        trail_records(), now=NOW, since=parse_since("7d"), budgets=[BudgetLimit("a1", "usd", 2000.0, 86_400, "usd")],
        integrity=("chain intact (anchors not checked)", True),
    )  # fmt: skip


def test_summary_figures_match_the_known_trail() -> None:
    """Decisions, credentials, refusals by reason, approvals and their wait, kills,
    revocations and budget charged, over the last seven days (c0, ten days old, left out)."""
    s = week()
    assert s.decisions == 14
    assert s.by_outcome == {"allow": 8, "deny": 4, "pending_approval": 2}
    assert s.credentials_issued == 8
    assert s.refusals_by_reason == {
        "budget_exhausted": 2, "rate_limited": 1, "agent_disabled": 1,
    }  # fmt: skip
    assert s.approvals_requested == 2
    assert s.approvals_decided == {"approved": 1, "denied": 1}
    assert s.approval_wait_median == s.approval_wait_max == 60.0
    assert (s.kills, s.revocations) == (1, 1)
    assert s.budget_used == {"queries": 3.0, "usd": 140.0}


def test_series_counts_every_decision_in_its_hour() -> None:
    """One bucket per hour of the window; the buckets add up to the decisions, all in the
    hour of RECENT."""
    s = week()
    series = s.series
    assert s.bucket_seconds == 3600
    assert len(series) == 7 * 24 + 1
    assert sum(sum(c.values()) for _, c in series) == 14
    busy = [(start, c) for start, c in series if c]
    assert len(busy) == 1
    assert busy[0][1] == {"allow": 8, "deny": 4, "pending_approval": 2}
    assert busy[0][0] == "2027-01-14T08:00:00Z"


def test_long_windows_are_drawn_per_day() -> None:
    """Over more than two weeks the series switches to days, so it stays readable."""
    s = build_summary(trail_records(), now=NOW, since=parse_since("30d"))
    assert s.bucket_seconds == 86_400
    assert sum(sum(c.values()) for _, c in s.series) == 15  # c0's decision is inside now


def test_html_puts_the_summary_first_and_shortens_ids() -> None:
    """The page opens with the summary; a missing outcome shows a short id, full on hover;
    "no outcomes reported" rather than 0%."""
    page = render_html(week_report(), week())
    assert page.index('id="summary"') < page.index('class="agent"')
    assert 'data-figure="decisions" data-value="14"' in page
    assert 'data-figure="integrity" data-value="chain intact (anchors not checked)"' in page
    assert "audit complete 0%" not in page


def test_short_id_keeps_the_full_value_on_hover() -> None:
    """A 32-character credential id shows 10 characters and the whole id as its title."""
    full = "9f3a1c0e5b7d2a4f0000000000000042"
    assert short_id(full) == f'<abbr class="id" title="{full}">9f3a1c0e5b…</abbr>'
    assert short_id("c8") == "c8"


@pytest.mark.parametrize(
    ("value", "shown"),
    [(1.666667, "1.67"), (11.25, "11.25"), (4.5, "4.5"), (3.0, "3"), (0.0, "0"),
     (0.012345, "0.0123"), (1234.5678, "1,235"), (999.999, "1,000")],
)  # fmt: skip
def test_amounts_are_rounded_for_people(value: float, shown: str) -> None:
    """Costs in the tables: two decimals at most, three significant digits below one,
    thousands grouped, no trailing zeros."""
    assert amount(value) == shown
