"""``broker report``: the three metric layers, summarised from audit trails.

Reads trail files (or directories of ``*.jsonl``), builds the report with the pure
``broker.audit.report`` and prints it as aligned tables, ``--json``, or writes ``--html FILE``.
A missing or unreadable input is exit 1 naming it: a report silently built from part of the
trail would understate exactly the numbers it exists to show.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from broker.audit.file import chain_files
from broker.audit.records import parse_line
from broker.audit.report import Layers, Report, build_report, parse_since
from broker.audit.report_budgets import BudgetLimit, BudgetUse, budget_use, limits_of

EXIT_OK, EXIT_UNREADABLE = 0, 1
ALL_ACTIONS = "(all)"


class UnreadableInput(Exception):
    """An input file or directory that cannot be read; the message names it."""


def register(
    commands: argparse._SubParsersAction[Any], bench: argparse._SubParsersAction[Any]
) -> None:
    report = commands.add_parser(
        "report", help="throughput, integrity and trust per agent and action, from audit trails"
    )
    report.add_argument("files", nargs="+", type=Path, metavar="AUDIT_FILE")
    report.add_argument("--since", type=_since, help="only the last 30m, 12h, 7d, 2w, ...")
    report.add_argument("--agent", help="only this agent")
    report.add_argument("--html", type=Path, metavar="FILE", help="also write an HTML report")
    report.add_argument("--json", action="store_true", help="print JSON instead of tables")
    report.add_argument(
        "--scopes", type=Path, metavar="DIR", help="manifests: show budget use against their limits"
    )
    report.set_defaults(func=run_report)


def _since(text: str) -> float:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def run_report(args: argparse.Namespace, *, now: Callable[[], float] = time.time) -> int:
    try:
        records = list(read_records(args.files))
    except UnreadableInput as exc:
        print(f"broker report: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    at = now()
    report = build_report(records, now=at, since=args.since, agent=args.agent)
    limits = _limits(args)
    start = None if args.since is None else at - args.since
    budgets = budget_use(records, limits, now=at, start=start)
    if args.html is not None:
        from broker.audit.report_html import render_html
        from broker.audit.report_summary import build_summary

        summary = build_summary(
            records, now=at, since=args.since, agent=args.agent, budgets=limits,
            integrity=integrity(args.files),
        )  # fmt: skip
        try:
            args.html.write_text(render_html(report, summary), encoding="utf-8")
        except OSError as exc:
            print(f"broker report: cannot write {args.html}: {exc.strerror}", file=sys.stderr)
            return EXIT_UNREADABLE
    if args.json:
        doc = report.to_json() | ({"budget_use": [u.to_json() for u in budgets]} if limits else {})
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(render_text(report))
        if limits:
            print("\n".join(["", " BUDGETS (this window, of the limit)", *budget_lines(budgets)]))
        if args.html is not None:
            print(f"HTML report written to {args.html}")
    return EXIT_OK


def _limits(args: argparse.Namespace) -> list[BudgetLimit]:
    """The budgets declared by the manifests of ``--scopes`` (none without it)."""
    if args.scopes is None:
        return []
    from broker.scopes.loader import load_manifests

    return limits_of(load_manifests([args.scopes]), args.agent)


def budget_lines(budgets: Sequence[BudgetUse]) -> list[str]:
    rows = [
        [f"{u.agent} {u.budget}", f"{u.current:g}", f"{u.limit:g}", f"{u.current_share:.0%}",
         f"{u.peak:g}", u.unit]
        for u in budgets
    ]  # fmt: skip
    return _table(("budget", "used now", "limit", "share", "peak", "unit"), rows)


def trail_files(inputs: Sequence[Path]) -> Iterator[Path]:
    """Each trail named (a file, or every ``*.jsonl`` of a directory) with its sealed
    segments before it, in chain order: the whole history, not just the active segment."""
    for path in inputs:
        if path.is_dir():
            found = sorted(path.glob("*.jsonl"))
            if not found:
                raise UnreadableInput(f"no *.jsonl audit files in directory {path}")
            for trail in found:
                yield from chain_files(trail)
        else:
            yield from chain_files(path) if path.exists() else [path]


def read_records(inputs: Sequence[Path]) -> Iterator[dict[str, Any]]:
    """Every record of every input; a line that is not a JSON object is skipped with a note."""
    for path in trail_files(inputs):
        try:
            with path.open("rb") as lines:
                for number, line in enumerate(lines, 1):
                    record, problem = parse_line(line.rstrip(b"\n"))
                    if record is not None:
                        yield record
                    elif line.strip():
                        print(
                            f"broker report: {path}:{number}: skipped: {problem}", file=sys.stderr
                        )
        except OSError as exc:
            raise UnreadableInput(f"cannot read {path}: {exc.strerror}") from exc


def integrity(inputs: Sequence[Path]) -> tuple[str, bool]:
    """The hash chain of each trail, checked offline (``broker audit verify`` also checks
    Vault's anchors): "chain intact" or where it breaks."""
    from broker.audit.records import verify_lines

    for path in inputs:
        for trail in sorted(path.glob("*.jsonl")) if path.is_dir() else [path]:
            files = chain_files(trail) if trail.exists() else [trail]
            result = verify_lines(_lines(files))
            if not result.ok:
                return f"DAMAGED: {trail.name} at seq {result.first_bad_seq}", False
    return "chain intact (anchors not checked)", True


def _lines(files: Sequence[Path]) -> Iterator[bytes]:
    for path in files:
        with path.open("rb") as handle:
            yield from handle


# --- terminal tables ---------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    out = []
    for row in [header, *rows]:
        # The first and last columns are text (names, reasons, ids); the rest are numbers.
        middle = [c.rjust(w) for c, w in zip(row[1:-1], widths[1:-1], strict=True)]
        cells = [row[0].ljust(widths[0]), *middle, row[-1].ljust(widths[-1])]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _amounts(values: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:g}" for k, v in values.items()) or "-"


def _counts(values: Mapping[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items()) or "-"


def _throughput(name: str, layers: Layers) -> list[str]:
    t = layers.throughput
    o = t.by_outcome
    return [
        name,
        str(t.decisions),
        str(o.get("allow", 0)),
        str(o.get("deny", 0)),
        str(o.get("pending_approval", 0)),
        str(t.credentials_issued),
        str(t.ok_outcomes),
        _amounts(t.cost_per_ok),
    ]


def _integrity(name: str, layers: Layers) -> list[str]:
    i = layers.integrity
    return [
        name,
        str(i.refusals),
        str(i.errors),
        str(i.rollbacks),
        str(i.approval_denials),
        str(i.revocations),
        _counts(i.refusals_by_reason),
    ]


def _trust(name: str, layers: Layers) -> list[str]:
    t = layers.trust
    return [
        name,
        str(t.auto_executed),
        str(t.approved),
        _pct(t.auto_share),
        _pct(t.approved_share),
        str(t.overrides),
        _pct(t.override_rate),
        _pct(t.audit_completeness),
        ",".join(t.missing_outcome) or "-",
    ]


_LAYERS = (
    (
        "THROUGHPUT",
        ("action", "decisions", "allow", "deny", "pending", "issued", "ok", "cost/ok"),
        _throughput,
    ),
    (
        "INTEGRITY",
        ("action", "refusals", "errors", "rollbacks", "appr.denied", "revoked", "by reason"),
        _integrity,
    ),
    (
        "TRUST",
        (
            "action",
            "auto",
            "approved",
            "auto%",
            "approved%",
            "overrides",
            "override%",
            "audit complete",
            "missing outcome",
        ),
        _trust,
    ),
)


def render_text(report: Report) -> str:
    window = f"since {report.window_start}" if report.window_start else "all time"
    lines = [f"broker report: {report.records} records, {window} (at {report.generated_at})"]
    if not report.agents:
        lines.append("no decisions in the selected records")
    for agent in report.agents:
        lines += ["", f"agent {agent.agent}"]
        for title, header, row in _LAYERS:
            rows = [row(a.action, a.layers) for a in agent.actions]
            rows.append(row(ALL_ACTIONS, agent.total))
            lines += ["", f" {title}", *_table(header, rows)]
    return "\n".join(lines)
