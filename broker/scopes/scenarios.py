"""Manifest test cases, like ``opa test``: YAML files in ``scopes/tests/`` that state what
``decide`` must answer for a request under given usage. Platform teams review a manifest
change together with the cases it changes.

File format::

    agent: support-refund-agent     # default agent for the cases (optional)
    now: 1767225600                 # default epoch seconds (optional)
    cases:
      - name: refund over the daily budget is refused
        request: {action: stripe.refund, inputs: {ticket_id: CS-1, amount_usd: 60}}
        usage: {budgets: {refunds-usd: 1950}, rate: {agent: 0, stripe.refund: 0}, in_flight: 0}
        agent_disabled: false
        expect: {outcome: deny, reason: budget_exhausted}

``expect`` compares only the fields it names: outcome, reason, approval_reason, charges,
credential_kind. ``usage.rate`` counts calls per rate key (``agent`` or an action name).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, Strict

from broker.core.decision import ActionRequest, Decision, decide
from broker.core.limits import UsageSnapshot
from broker.core.manifest import Manifest
from broker.core.reasons import Outcome, ReasonCode
from broker.scopes.loader import load_manifests, load_model

DEFAULT_NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CaseRequest(_Strict):
    action: str
    inputs: dict[str, JsonValue] = Field(default_factory=dict)
    workflow: str | None = None


class CaseUsage(_Strict):
    budgets: dict[str, Annotated[float, Strict()]] = Field(default_factory=dict)
    rate: dict[str, Annotated[int, Strict()]] = Field(default_factory=dict)
    in_flight: Annotated[int, Strict()] = Field(default=0, ge=0)


class Expect(_Strict):
    outcome: Outcome
    reason: ReasonCode | None = None
    approval_reason: str | None = None
    charges: dict[str, Annotated[float, Strict()]] | None = None
    credential_kind: str | None = None


class Case(_Strict):
    name: str = Field(min_length=1)
    agent: str | None = None
    now: Annotated[float, Strict()] | None = None
    request: CaseRequest
    usage: CaseUsage = CaseUsage()
    agent_disabled: Annotated[bool, Strict()] = False
    expect: Expect


class CaseFile(_Strict):
    agent: str | None = None
    now: Annotated[float, Strict()] = DEFAULT_NOW
    cases: list[Case] = Field(min_length=1)


@dataclass(frozen=True)
class CaseResult:
    file: Path
    name: str
    passed: bool
    diff: tuple[str, ...] = ()
    decision: Decision | None = None


def case_files(scope_dir: Path) -> list[Path]:
    tests = scope_dir / "tests"
    if not tests.is_dir():
        return []
    return sorted(p for p in tests.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def run_directory(scope_dir: Path) -> tuple[list[CaseResult], list[str]]:
    """Run every case in ``scope_dir/tests`` against the manifests in ``scope_dir``.

    Raises ``ManifestError`` when a manifest does not load; case-file problems are returned.
    """
    manifests = {m.agent: m for m in load_manifests([scope_dir])}
    results: list[CaseResult] = []
    issues: list[str] = []
    for path in case_files(scope_dir):
        file_results, file_issues = run_file(path, manifests)
        results += file_results
        issues += file_issues
    return results, issues


def run_file(path: Path, manifests: Mapping[str, Manifest]) -> tuple[list[CaseResult], list[str]]:
    spec, issues = load_model(path, CaseFile)
    if spec is None:
        return [], issues
    return [run_case(path, spec, case, manifests) for case in spec.cases], []


def run_case(
    path: Path, spec: CaseFile, case: Case, manifests: Mapping[str, Manifest]
) -> CaseResult:
    agent = case.agent or spec.agent
    manifest = manifests.get(agent or "")
    if manifest is None:
        return CaseResult(path, case.name, False, (f"no manifest for agent {agent!r}",))
    decision = decide(
        _request(case),
        manifest,
        _usage(case.usage),
        case.now if case.now is not None else spec.now,
        agent_disabled=case.agent_disabled,
    )
    diff = tuple(compare(case.expect, decision))
    return CaseResult(path, case.name, not diff, diff, decision)


def _request(case: Case) -> ActionRequest:
    return ActionRequest(
        action=case.request.action,
        inputs=case.request.inputs,
        workflow=case.request.workflow,
        request_id=f"scenario:{case.name}"[:256],
    )


def _usage(usage: CaseUsage) -> UsageSnapshot:
    return UsageSnapshot(budgets=usage.budgets, rates=usage.rate, in_flight_count=usage.in_flight)


def actual_fields(decision: Decision) -> dict[str, Any]:
    kind = decision.credential.kind if decision.credential is not None else None
    return {
        "outcome": str(decision.outcome),
        "reason": None if decision.reason is None else str(decision.reason),
        "approval_reason": decision.approval_reason,
        "charges": dict(decision.charges),
        "credential_kind": kind,
    }


def compare(expect: Expect, decision: Decision) -> list[str]:
    """``- expected`` / ``+ actual`` lines for every field that differs; [] when all match."""
    wanted = expect.model_dump(mode="json", include=expect.model_fields_set | {"outcome"})
    actual = actual_fields(decision)
    lines: list[str] = []
    for name, value in wanted.items():
        if value != actual[name]:
            lines += [f"- {name}: {_show(value)}", f"+ {name}: {_show(actual[name])}"]
    if lines:
        lines.append(f"  (detail: {decision.detail})")
    return lines


def _show(value: object) -> str:
    return "null" if value is None else str(value)


def format_results(results: list[CaseResult]) -> list[str]:
    """Readable report lines: one per case, with the diff under each failure."""
    lines: list[str] = []
    for r in results:
        lines.append(f"{'PASS' if r.passed else 'FAIL'}  {r.file.name}: {r.name}")
        lines += [f"      {d}" for d in r.diff]
    return lines
