"""The first part of the HTML report: the summary a security lead reads first, and decisions
over time (stacked by outcome). Inline SVG and CSS only: the file needs no network.

Each summary figure is ``<div class="figure" data-figure=NAME data-value=N>``, so the browser
test reads the numbers back from the laid-out page and checks them against the trail."""

from __future__ import annotations

from html import escape

from broker.audit.report_summary import Summary

SERIES_WIDTH, SERIES_HEIGHT, AXIS = 1160, 160, 18
OUTCOME_COLOURS = {"allow": "#2e7d32", "deny": "#c62828", "pending_approval": "#f9a825"}
ID_SHOWN = 10

CSS = """
#summary .figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr));
  gap: .8em; margin: 1em 0; }
.figure { border: 1px solid #ddd; border-radius: 6px; padding: .6em .8em; background: #fafafa; }
.figure .value { font-size: 1.6em; font-weight: 600; }
.figure[data-figure="integrity"] .value { font-size: 1.1em; }
.figure .label { color: #555; } .figure .detail { color: #555; font-size: .9em; }
.figure.bad { border-color: #c62828; background: #fdecea; }
.figure.good { border-color: #2e7d32; }
.figure.warn { border-color: #f9a825; background: #fff8e1; }
table.budgets caption { text-align: left; font-weight: 600; }
table.budgets td:nth-child(-n+3), table.budgets th:nth-child(-n+3) { text-align: left; }
svg.series { width: 100%; height: auto; }
abbr.id { text-decoration: underline dotted; cursor: help; }
"""


def short_id(value: str) -> str:
    """A long id cut to its first characters, the full value on hover."""
    if len(value) <= ID_SHOWN + 1:
        return escape(value)
    return (
        f'<abbr class="id" title="{escape(value, quote=True)}">{escape(value[:ID_SHOWN])}…</abbr>'
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _figure(name: str, label: str, value: object, detail: str = "", css: str = "") -> str:
    return (
        f'<div class="figure {css}" data-figure="{name}" data-value="{escape(str(value))}">'
        f'<div class="value">{escape(str(value))}</div><div class="label">{escape(label)}</div>'
        f'<div class="detail">{escape(detail)}</div></div>'
    )


def _budget_detail(s: Summary) -> str:
    return "; ".join(f"{name} {used:g}" for name, used in s.budget_used.items()) or (
        "no budget charged"
    )


def _budget_figure(s: Summary) -> str:
    """Without limits (no ``--scopes``): what was charged. With them: the fullest budget's
    share of its limit in the current window, red from 100 %, amber from 80 %."""
    if not s.budget_use:
        return _figure("budget", "budget charged", len(s.budget_used), _budget_detail(s))
    fullest = max(s.budget_use, key=lambda u: u.current_share)
    share = fullest.current_share
    css = "bad" if share >= 1 else ("warn" if share >= 0.8 else "")
    detail = f"{fullest.agent} {fullest.budget}: {fullest.current:,.6g} of {fullest.limit:,.6g}"
    return _figure("budget", "fullest budget, this window", f"{share:.0%}", detail, css)


def _window(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def budget_table(s: Summary) -> str:
    """Each declared budget: charged in the current window against its limit, and the
    busiest window of the report's range."""
    if not s.budget_use:
        return ""
    rows = "".join(
        f'<tr data-budget="{escape(u.agent)}/{escape(u.budget)}" data-current="{u.current:g}">'
        f"<td>{escape(u.agent)}</td><td>{escape(u.budget)}</td><td>{_window(u.per)}</td>"
        f'<td class="num">{u.current:,.6g} {escape(u.unit)}</td>'
        f'<td class="num">{u.limit:,.6g}</td><td class="num">{u.current_share:.0%}</td>'
        f'<td class="num">{u.peak:,.6g}</td><td>{(u.peak_window or "-")[:16]}</td></tr>'
        for u in s.budget_use
    )
    return (
        '<table class="budgets"><caption>Budgets against their limits</caption><tr>'
        "<th>agent</th><th>budget</th><th>window</th><th>used now</th><th>limit</th>"
        f"<th>share</th><th>peak</th><th>peak window</th></tr>{rows}</table>"
    )


def summary_section(s: Summary) -> str:
    refusals = sum(s.refusals_by_reason.values())
    reasons = ", ".join(f"{k} {v}" for k, v in s.refusals_by_reason.items()) or "none"
    decided = ", ".join(f"{k} {v}" for k, v in s.approvals_decided.items()) or "none decided"
    waits = f"wait median {_duration(s.approval_wait_median)}, max {_duration(s.approval_wait_max)}"
    verdict_css = "" if s.integrity_ok is None else ("good" if s.integrity_ok else "bad")
    figures = "".join(
        (
            _figure("decisions", "decisions", s.decisions,
                    ", ".join(f"{k} {v}" for k, v in s.by_outcome.items())),
            _figure("credentials", "credentials issued", s.credentials_issued),
            _figure("refusals", "refusals", refusals, reasons),
            _figure("approvals", "approvals requested", s.approvals_requested,
                    f"{decided}; {waits}"),
            _figure("kills", "kill switches", s.kills, "", "bad" if s.kills else ""),
            _figure("revocations", "revocations", s.revocations),
            _budget_figure(s),
            _figure("integrity", "audit trail", s.integrity, "", verdict_css),
        )
    )  # fmt: skip
    return (
        '<section id="summary"><h2>Summary</h2>'
        f'<div class="figures">{figures}</div>{budget_table(s)}{series_chart(s)}</section>'
    )


def series_chart(s: Summary) -> str:
    """Decisions per hour (per day over long windows), stacked by outcome."""
    unit = "hour" if s.bucket_seconds == 3600 else "day"
    if not s.series:
        return ""
    top = max((sum(c.values()) for _, c in s.series), default=0) or 1
    step = SERIES_WIDTH / len(s.series)
    parts = [
        f"<figure><figcaption>Decisions per {unit}, by outcome</figcaption>"
        f'<svg class="series" id="series" viewBox="0 0 {SERIES_WIDTH} {SERIES_HEIGHT + AXIS}" '
        'role="img" xmlns="http://www.w3.org/2000/svg">'
    ]
    for n, (start, counts) in enumerate(s.series):
        y = float(SERIES_HEIGHT)
        for outcome, value in counts.items():
            h = SERIES_HEIGHT * value / top
            y -= h
            parts.append(
                f'<rect class="step" data-bucket="{start}" data-outcome="{escape(outcome)}" '
                f'data-value="{value}" x="{n * step:.1f}" y="{y:.1f}" width="{max(step - 1, 1):.1f}" '
                f'height="{h:.1f}" fill="{OUTCOME_COLOURS.get(outcome, "#546e7a")}">'
                f"<title>{start} {escape(outcome)}: {value}</title></rect>"
            )
    labels = {0: s.series[0][0], len(s.series) - 1: s.series[-1][0]}
    for n, text in labels.items():
        anchor = "start" if n == 0 else "end"
        x = 0 if n == 0 else SERIES_WIDTH
        parts.append(f'<text x="{x}" y="{SERIES_HEIGHT + 14}" text-anchor="{anchor}">{text}</text>')
    parts.append(f'<text x="0" y="10">max {top} per {unit}</text></svg></figure>')
    return "".join(parts)
