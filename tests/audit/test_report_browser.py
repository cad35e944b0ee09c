"""The HTML report in a real headless Chromium: the charts are drawn, with the report's numbers.

Needs Debian's ``chromium`` at /usr/bin/chromium (``make test`` installs it on CI). Without it
the test is skipped locally, but fails on CI (``CI`` set), where a silent skip would hide it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from broker.audit.report import Report, build_report, parse_since
from broker.audit.report_budgets import BudgetLimit
from broker.audit.report_html import render_html
from broker.audit.report_summary import build_summary
from tests.audit.test_report import NOW, trail_records

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT = 90
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing on CI: install Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    return CHROMIUM


def run_chromium(binary: Path, profile: Path, *args: str) -> str:
    """One headless run, bounded in time; its whole process group is gone afterwards."""
    command = [
        str(binary),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within {TIMEOUT}s")
    finally:
        _kill_group(proc)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}"
    return out


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group has already gone, as it should
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def report() -> Report:
    return build_report(trail_records(), now=NOW, since=parse_since("7d"))


@pytest.fixture(scope="module")
def page(report: Report, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("html") / "report.html"
    budgets = [BudgetLimit("a1", "usd", 2000.0, 86_400, "usd"),
               BudgetLimit("a1", "queries", 50.0, 3600, "queries")]  # fmt: skip
    summary = build_summary(
        trail_records(), now=NOW, since=parse_since("7d"), budgets=budgets,
        integrity=("chain intact (anchors not checked)", True),
    )  # fmt: skip
    path.write_text(render_html(report, summary), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def dom(chromium: Path, page: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    profile = tmp_path_factory.mktemp("chromium-profile")
    return run_chromium(chromium, profile, "--window-size=1280,900", "--dump-dom", page.as_uri())


def drawn_bars(dom: str, chart_id: str) -> list[tuple[str, int, float, float]]:
    """(label, value, drawn width, drawn height) of each bar, as laid out by the browser."""
    svg = re.search(rf'<svg [^>]*id="{chart_id}".*?</svg>', dom, re.S)
    assert svg is not None, f"chart {chart_id} missing from the rendered DOM"
    found = []
    for rect in re.findall(r'<rect class="bar"[^>]*>', svg[0]):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', rect))
        width, height = (float(x) for x in attrs["data-drawn"].split("x"))
        found.append((attrs["data-label"], int(attrs["data-value"]), width, height))
    return found


def test_every_chart_is_drawn(dom: str) -> None:
    """The page's script ran and saw every chart: a1 has three, a2 two (no credentials)."""
    assert 'data-charts-drawn="5"' in dom


def test_outcome_bars_match_the_report(dom: str, report: Report) -> None:
    """Each agent's outcome chart has one drawn bar per outcome, valued as in the report."""
    for n, agent in enumerate(report.agents):
        bars = drawn_bars(dom, f"outcomes-{n}")
        assert {label: value for label, value, _, _ in bars} == agent.total.throughput.by_outcome
        assert all(w > 0 and h > 0 for _, _, w, h in bars)
    allow, deny, pending = drawn_bars(dom, "outcomes-0")
    assert (allow[1], deny[1], pending[1]) == (8, 3, 2)
    # Heights are proportional to the values: 8 : 3 : 2.
    assert allow[3] == pytest.approx(deny[3] * 8 / 3) == pytest.approx(pending[3] * 4)


def test_refusal_bars_match_the_report(dom: str, report: Report) -> None:
    """The refusal chart draws one bar per reason with the report's counts."""
    bars = drawn_bars(dom, "refusals-0")
    expected = report.agents[0].total.integrity.refusals_by_reason
    assert (
        {label: value for label, value, _, _ in bars}
        == expected
        == {
            "budget_exhausted": 2,
            "rate_limited": 1,
        }
    )
    assert bars[0][3] == pytest.approx(2 * bars[1][3])


def test_trust_bar_splits_auto_and_approved(dom: str) -> None:
    """The trust bar is 7 auto to 1 approved, drawn 7 : 1 in width."""
    (auto, a, auto_w, _), (approved, b, approved_w, _) = drawn_bars(dom, "trust-0")
    assert (auto, a, approved, b) == ("auto", 7, "approved", 1)
    assert auto_w == pytest.approx(7 * approved_w)


def test_page_fits_1280_pixels(dom: str) -> None:
    """At 1280 px wide nothing runs off the page: no horizontal overflow."""
    body = re.search(r"<body[^>]*>", dom)
    assert body is not None
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body[0]))
    assert int(attrs["data-client-width"]) > 1200
    assert int(attrs["data-scroll-width"]) <= int(attrs["data-client-width"])


def test_no_amount_is_broken_across_lines(dom: str) -> None:
    """Every cost figure is laid out on one line (a mid-number break gives two line boxes),
    and the figures are rounded for people (1.67, not 1.666667)."""
    lines = re.findall(r'<span class="amount" data-lines="(\d+)">([^<]*)</span>', dom)
    assert len(lines) >= 4
    assert all(n == "1" for n, _ in lines), lines
    assert ("1", "queries\xa01.67") in lines or ("1", "queries&nbsp;1.67") in lines, lines


def test_budgets_are_shown_against_their_limits(dom: str) -> None:
    """With the manifests' limits, the page has one row per budget: nothing charged today
    (the trail's charges were yesterday), usd 140 at peak."""
    rows = re.findall(r'<tr data-budget="([^"]+)" data-current="([^"]+)">', dom)
    assert rows == [("a1/usd", "0"), ("a1/queries", "0")]
    assert re.search(r'data-figure="budget" data-value="0%"', dom)


def _in_week(record: dict[str, object]) -> bool:
    stamp = str(record.get("timestamp", ""))
    return stamp >= "2027-01-08T08:00:00Z"  # NOW - 7 days


def test_summary_figures_match_the_trail(dom: str) -> None:
    """The figures the browser shows are the trail's, counted here straight from the records."""
    shown = dict(re.findall(r'data-figure="([a-z]+)" data-value="([^"]*)"', dom))
    week = [r for r in trail_records() if _in_week(r)]
    decisions = [r for r in week if r["type"] == "decision"]
    assert int(shown["decisions"]) == len(decisions) == 14
    assert int(shown["credentials"]) == sum(bool(r.get("credential_id")) for r in decisions)
    assert int(shown["refusals"]) == sum(r["outcome"] == "deny" for r in decisions)
    assert int(shown["approvals"]) == sum(r["outcome"] == "pending_approval" for r in decisions)
    controls = [r for r in week if r["type"] == "control"]
    assert int(shown["kills"]) == sum(r["event"] == "kill" for r in controls) == 1
    assert int(shown["revocations"]) == sum(r["event"] == "revoke" for r in controls) == 1
    assert shown["integrity"] == "chain intact (anchors not checked)"
    steps = re.findall(r'<rect class="step"[^>]*data-value="(\d+)"', dom)
    assert sum(map(int, steps)) == len(decisions)


def test_screenshot_is_a_real_picture(
    chromium: Path, page: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A screenshot of the page at 1280 px is a PNG with enough detail to hold drawn charts;
    ``BROKER_REPORT_SCREENSHOT=path`` keeps it for a person to look at."""
    out = tmp_path_factory.mktemp("shot")
    shot = Path(os.environ.get("BROKER_REPORT_SCREENSHOT") or out / "report.png")
    run_chromium(
        chromium,
        out / "profile",
        f"--screenshot={shot}",
        "--window-size=1280,1600",
        "--hide-scrollbars",
        page.as_uri(),
    )
    data = shot.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 20_000, f"screenshot is only {len(data)} bytes"
