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
    parts = []
    for name, used in s.budget_used.items():
        limit = s.budget_limits.get(name)
        parts.append(f"{name} {used:g}" + (f" of {limit:g} per window" if limit else ""))
    return "; ".join(parts) or "no budget charged"


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
            _figure("budget", "budget charged", len(s.budget_used), _budget_detail(s)),
            _figure("integrity", "audit trail", s.integrity, "", verdict_css),
        )
    )  # fmt: skip
    return (
        '<section id="summary"><h2>Summary</h2>'
        f'<div class="figures">{figures}</div>{series_chart(s)}</section>'
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
