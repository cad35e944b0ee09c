"""The report as one self-contained HTML page: inline CSS, SVG charts drawn here, no network.

Every chart is an ``<svg class="chart chart-KIND" id="KIND-N" data-agent=...>`` whose bars are
``<rect class="bar" data-label=... data-value=...>`` sized from the numbers, so a browser test
can count the bars and read their values back. A few lines of inline script record each bar's
laid-out size (``data-drawn``) once the page has rendered; nothing else depends on scripts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from broker.audit.report import AgentReport, Layers, Report
from broker.audit.report_page import CSS as PAGE_CSS
from broker.audit.report_page import short_id, summary_section
from broker.audit.report_summary import Summary

BAR_WIDTH, BAR_GAP, PLOT_HEIGHT, LABEL_SPACE = 56, 16, 160, 44
TRUST_WIDTH, TRUST_HEIGHT = 480, 28
COLOURS = {
    "allow": "#2e7d32",
    "deny": "#c62828",
    "pending_approval": "#f9a825",
    "auto": "#1565c0",
    "approved": "#8e24aa",
}
DEFAULT_COLOUR = "#546e7a"

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
.charts { display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; }
figure { margin: 0; } figcaption { font-weight: 600; margin-bottom: .3em; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
table { border-collapse: collapse; margin: 1em 0; width: 100%; table-layout: fixed;
  font-size: 12px; }
th, td { border: 1px solid #ddd; padding: .25em .4em; text-align: right;
  font-variant-numeric: tabular-nums; }
td:first-child, td:last-child { overflow-wrap: anywhere; }
.amount { white-space: nowrap; }
th { font-size: 11px; overflow-wrap: normal; hyphens: auto; }
th:first-child, td:first-child { width: 14%; }
th:first-child, td:first-child { text-align: left; }
tr.total td { font-weight: 600; background: #f5f5f5; }
.empty { color: #777; font-style: italic; }
"""

# Records each bar's laid-out size, proving in a dumped DOM that the browser drew it.
_SCRIPT = """
document.querySelectorAll("svg.chart rect.bar").forEach(function (bar) {
  var box = bar.getBBox();
  bar.setAttribute("data-drawn", box.width.toFixed(1) + "x" + box.height.toFixed(1));
});
document.body.setAttribute("data-charts-drawn", document.querySelectorAll("svg.chart").length);
// An amount laid out on more than one line was broken mid-number.
document.querySelectorAll(".amount").forEach(function (amount) {
  amount.setAttribute("data-lines", amount.getClientRects().length);
});
// The page must fit its window: a browser test compares these at 1280 px.
document.body.setAttribute("data-scroll-width", document.documentElement.scrollWidth);
document.body.setAttribute("data-client-width", document.documentElement.clientWidth);
"""


def _a(value: object) -> str:
    return escape(str(value), quote=True)


def bar_chart(kind: str, chart_id: str, agent: str, values: Mapping[str, int]) -> str:
    """Vertical bars, one per label, height proportional to the largest value."""
    if not values:
        return f'<p class="empty" id="{_a(chart_id)}">none</p>'
    top = max(values.values()) or 1
    width = len(values) * (BAR_WIDTH + BAR_GAP) + BAR_GAP
    height = PLOT_HEIGHT + LABEL_SPACE
    parts = [
        f'<svg class="chart chart-{_a(kind)}" id="{_a(chart_id)}" data-agent="{_a(agent)}" '
        f'data-bars="{len(values)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" xmlns="http://www.w3.org/2000/svg">'
    ]
    for n, (label, value) in enumerate(values.items()):
        h = round(PLOT_HEIGHT * value / top, 1)
        x, y = BAR_GAP + n * (BAR_WIDTH + BAR_GAP), 16 + PLOT_HEIGHT - h
        colour = COLOURS.get(label, DEFAULT_COLOUR)
        parts += [
            f'<rect class="bar" data-label="{_a(label)}" data-value="{value}" x="{x}" '
            f'y="{y}" width="{BAR_WIDTH}" height="{h}" fill="{colour}">'
            f"<title>{escape(label)}: {value}</title></rect>",
            f'<text x="{x + BAR_WIDTH / 2}" y="{y - 3}" text-anchor="middle">{value}</text>',
            f'<text x="{x + BAR_WIDTH / 2}" y="{16 + PLOT_HEIGHT + 14}" '
            f'text-anchor="middle">{escape(_fit(label))}</text>',
        ]
    parts.append("</svg>")
    return "".join(parts)


def _fit(label: str, room: int = 11) -> str:
    """A bar label cut to its bar's width, so neighbours never overlap (full one on hover)."""
    return label if len(label) <= room else label[: room - 1] + "…"


def trust_bar(chart_id: str, agent: str, layers: Layers) -> str:
    """One horizontal bar split into auto-executed and approved credentials."""
    t = layers.trust
    total = t.auto_executed + t.approved
    if not total:
        return f'<p class="empty" id="{_a(chart_id)}">no credentials issued</p>'
    parts = [
        f'<svg class="chart chart-trust" id="{_a(chart_id)}" data-agent="{_a(agent)}" '
        f'data-bars="2" width="{TRUST_WIDTH}" height="{TRUST_HEIGHT + 20}" '
        f'viewBox="0 0 {TRUST_WIDTH} {TRUST_HEIGHT + 20}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg">'
    ]
    x = 0.0
    for label, value in (("auto", t.auto_executed), ("approved", t.approved)):
        w = round(TRUST_WIDTH * value / total, 1)
        parts.append(
            f'<rect class="bar" data-label="{label}" data-value="{value}" x="{x}" y="0" '
            f'width="{w}" height="{TRUST_HEIGHT}" fill="{COLOURS[label]}">'
            f"<title>{label}: {value}</title></rect>"
        )
        x += w
    caption = (
        f"auto {_pct(t.auto_share)} / approved {_pct(t.approved_share)}; "
        f"audit complete {_pct(t.audit_completeness)}"
    )
    parts.append(f'<text x="0" y="{TRUST_HEIGHT + 15}">{escape(caption)}</text></svg>')
    return "".join(parts)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


class _Html(str):
    """A cell already rendered as HTML (escaped inside)."""


def amount(value: float) -> str:
    """A figure for people: thousands grouped, two decimals at most (three significant
    digits below one), no trailing zeros."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1 or value == 0:
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


def _money(values: Mapping[str, float]) -> _Html:
    """Each ``unit amount`` kept on one line; a cell with several wraps between them."""
    return _Html(
        " ".join(
            f'<span class="amount">{escape(k)}&nbsp;{amount(v)}</span>' for k, v in values.items()
        )
        or "-"
    )


_COLUMNS = (
    "action",
    "decisions",
    "issued",
    "ok",
    "cost/ok",
    "refusals",
    "errors",
    "rollbacks",
    "approval denials",
    "revocations",
    "auto",
    "approved",
    "override rate",
    "audit complete",
    "missing outcome",
)


def _row(name: str, layers: Layers, css: str = "") -> str:
    tp, it, tr = layers.throughput, layers.integrity, layers.trust
    cells: Sequence[object] = (
        name,
        tp.decisions,
        tp.credentials_issued,
        tp.ok_outcomes,
        _money(tp.cost_per_ok),
        it.refusals,
        it.errors,
        it.rollbacks,
        it.approval_denials,
        it.revocations,
        _pct(tr.auto_share),
        _pct(tr.approved_share),
        _pct(tr.override_rate),
        _completeness(tr.audit_completeness, len(tr.missing_outcome)),
    )
    body = "".join(f"<td>{c if isinstance(c, _Html) else escape(str(c))}</td>" for c in cells)
    body += f"<td>{_missing(tr.missing_outcome)}</td>"
    return f'<tr class="{css}">{body}</tr>' if css else f"<tr>{body}</tr>"


def _completeness(share: float | None, missing: int) -> str:
    """ "no outcomes reported" rather than a 0% that reads as a failure of the broker."""
    if share is None:
        return "-"
    if share == 0 and missing:
        return "no outcomes reported"
    return _pct(share)


def _missing(ids: Sequence[str]) -> str:
    if not ids:
        return "-"
    shown = ", ".join(short_id(i) for i in ids[:3])
    return f"{len(ids)}: {shown}" + (", …" if len(ids) > 3 else "")


def _agent_section(n: int, agent: AgentReport) -> str:
    name, total = agent.agent, agent.total
    figures = (
        ("Decisions by outcome", bar_chart("outcomes", f"outcomes-{n}", name, _outcomes(total))),
        (
            "Refusals by reason",
            bar_chart("refusals", f"refusals-{n}", name, total.integrity.refusals_by_reason),
        ),
        ("Trust: auto-executed vs approved", trust_bar(f"trust-{n}", name, total)),
    )
    charts = "".join(
        f"<figure><figcaption>{escape(title)}</figcaption>{svg}</figure>" for title, svg in figures
    )
    head = "".join(f"<th>{escape(c)}</th>" for c in _COLUMNS)
    rows = "".join(_row(a.action, a.layers) for a in agent.actions)
    rows += _row("(all)", total, "total")
    return (
        f'<section class="agent" data-agent="{_a(name)}"><h2>Agent {escape(name)}</h2>'
        f'<div class="charts">{charts}</div>'
        f'<table id="numbers-{n}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
        "</section>"
    )


def _outcomes(layers: Layers) -> dict[str, int]:
    order = ("allow", "deny", "pending_approval")
    by = layers.throughput.by_outcome
    return {k: by[k] for k in (*order, *sorted(set(by) - set(order))) if k in by}


def render_html(report: Report, summary: Summary | None = None) -> str:
    window = f"since {report.window_start}" if report.window_start else "all time"
    first = summary_section(summary) if summary is not None else ""
    sections = "".join(_agent_section(n, a) for n, a in enumerate(report.agents))
    if not sections:
        sections = '<p class="empty">No decisions in the selected records.</p>'
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>Credential broker report</title>"
        f"<style>{_CSS}{PAGE_CSS}</style></head><body>"
        "<h1>Credential broker report</h1>"
        f"<p>{report.records} records, {escape(window)}, generated {report.generated_at}.</p>"
        f"{first}<h2>Per agent and action</h2>{sections}<script>{_SCRIPT}</script></body></html>\n"
    )
