"""The report's first screen: what a security lead asks first, over the report's window.

Pure, like ``broker.audit.report``: records in, figures out. Decisions per hour by outcome give
the time axis; the summary answers "how much happened, what was refused and why, who waited
for approvals and how long, what was killed or revoked, how much budget went, and is the
trail intact" (the last from ``broker audit verify``'s verdict, passed in by the command)."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.audit.report import _HANDLERS, _iso, _text, _time, _windowed
from broker.audit.report_budgets import BudgetLimit, BudgetUse, budget_use

HOUR = 3600
MAX_BUCKETS = 14 * 24  # beyond two weeks of hours, the series is drawn per day


@dataclass(frozen=True)
class Summary:
    decisions: int
    by_outcome: dict[str, int]
    credentials_issued: int
    refusals_by_reason: dict[str, int]
    approvals_requested: int
    approvals_decided: dict[str, int]
    approval_wait_median: float | None
    approval_wait_max: float | None
    kills: int
    revocations: int
    budget_used: dict[str, float]
    budget_use: tuple[BudgetUse, ...]  # against the manifests' limits (``--scopes``)
    bucket_seconds: int
    series: tuple[tuple[str, dict[str, int]], ...]  # (bucket start, outcome -> decisions)
    integrity: str = "not checked"
    integrity_ok: bool | None = None

    def to_json(self) -> dict[str, Any]:
        doc = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return doc | {"budget_use": [u.to_json() for u in self.budget_use]}


@dataclass
class _Acc:
    by_outcome: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    issued: int = 0
    asked_at: dict[str, float] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)
    decided: Counter[str] = field(default_factory=Counter)
    kills: int = 0
    revocations: int = 0
    budget: Counter[str] = field(default_factory=Counter)
    times: list[tuple[float, str]] = field(default_factory=list)


def build_summary(
    records: Iterable[Mapping[str, Any]],
    *,
    now: float,
    since: float | None = None,
    agent: str | None = None,
    budgets: Iterable[BudgetLimit] = (),
    integrity: tuple[str, bool | None] = ("not checked", None),
) -> Summary:
    rows = [r for r in records if isinstance(r, Mapping) and r.get("type") in _HANDLERS]
    start = None if since is None else now - since
    acc = _Acc()
    for r in _windowed(rows, start, agent):
        _take(acc, r)
    begin = start if start is not None else min((t for t, _ in acc.times), default=now)
    bucket = HOUR if (now - begin) / HOUR <= MAX_BUCKETS else 24 * HOUR
    return Summary(
        decisions=sum(acc.by_outcome.values()),
        by_outcome=dict(sorted(acc.by_outcome.items())),
        credentials_issued=acc.issued,
        refusals_by_reason=dict(acc.refusals.most_common()),
        approvals_requested=len(acc.asked_at),
        approvals_decided=dict(sorted(acc.decided.items())),
        approval_wait_median=statistics.median(acc.waits) if acc.waits else None,
        approval_wait_max=max(acc.waits) if acc.waits else None,
        kills=acc.kills,
        revocations=acc.revocations,
        budget_used={k: round(v, 6) for k, v in sorted(acc.budget.items())},
        budget_use=budget_use(rows, budgets, now=now, start=start),
        bucket_seconds=bucket,
        series=_series(acc.times, begin, now, bucket),
        integrity=integrity[0],
        integrity_ok=integrity[1],
    )


def _take(acc: _Acc, r: Mapping[str, Any]) -> None:
    kind, at = r.get("type"), _time(r)
    if kind == "decision":
        outcome = _text(r, "outcome") or "unknown"
        acc.by_outcome[outcome] += 1
        if at is not None:
            acc.times.append((at, outcome))
        if outcome == "deny":
            acc.refusals[_text(r, "reason") or "unknown"] += 1
        if _text(r, "credential_id"):
            acc.issued += 1
            acc.budget.update(_charges(r))
        approval_id = _text(r, "approval_id")
        if outcome == "pending_approval" and approval_id and at is not None:
            acc.asked_at.setdefault(approval_id, at)
    elif kind == "approval":
        _on_approval(acc, r, at)
    elif kind == "control":
        event = _text(r, "event") or ""
        acc.kills += event == "kill"
        acc.revocations += event.startswith("revoke")


def _on_approval(acc: _Acc, r: Mapping[str, Any], at: float | None) -> None:
    event = _text(r, "event") or ""
    if event not in ("approved", "denied", "expired"):
        return
    acc.decided[event] += 1
    asked = acc.asked_at.get(_text(r, "approval_id") or "")
    if asked is not None and at is not None and event != "expired":
        acc.waits.append(max(at - asked, 0.0))


def _charges(r: Mapping[str, Any]) -> dict[str, float]:
    value = r.get("charges")
    if not isinstance(value, Mapping):
        return {}
    return {str(k): float(v) for k, v in value.items() if isinstance(v, int | float)}


def _series(
    times: list[tuple[float, str]], begin: float, end: float, bucket: int
) -> tuple[tuple[str, dict[str, int]], ...]:
    first, last = int(begin // bucket), int(end // bucket)
    counts: dict[int, Counter[str]] = {n: Counter() for n in range(first, last + 1)}
    for at, outcome in times:
        n = int(at // bucket)
        if n in counts:
            counts[n][outcome] += 1
    return tuple((_iso(n * bucket), dict(sorted(c.items()))) for n, c in sorted(counts.items()))
