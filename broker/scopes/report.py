"""What ``broker scopes test`` ran, for people and for CI: which actions and reasons the
cases covered, the run as JSON, and as JUnit XML (one ``testsuite`` per case file).

Pure: results in, text out; the command writes the files."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from broker.core.manifest import Manifest
from broker.core.reasons import ReasonCode
from broker.scopes.scenarios import CaseResult


def coverage(results: Iterable[CaseResult], manifests: Mapping[str, Manifest]) -> dict[str, Any]:
    """Per agent: the actions its manifest grants that some case asked for, and those none
    did; the refusal reasons the cases produced, and the reasons no case reached."""
    results = list(results)
    reasons = Counter(str(r.decision.reason) for r in results if r.decision and r.decision.reason)
    agents = {}
    for agent, manifest in sorted(manifests.items()):
        asked = {r.decision.action for r in results if r.decision and r.decision.agent == agent}
        granted = set(manifest.actions)
        agents[agent] = {
            "actions_covered": sorted(granted & asked),
            "actions_not_covered": sorted(granted - asked),
        }
    return {
        "agents": agents,
        "reasons_covered": dict(sorted(reasons.items())),
        "reasons_not_covered": sorted(str(c) for c in ReasonCode if str(c) not in reasons),
    }


def coverage_lines(summary: Mapping[str, Any]) -> list[str]:
    lines = []
    for agent, row in summary["agents"].items():
        missing = ", ".join(row["actions_not_covered"]) or "none"
        lines.append(
            f"coverage  {agent}: {len(row['actions_covered'])} action(s) asked for; "
            f"never asked for: {missing}"
        )
    reached = ", ".join(f"{k} ({v})" for k, v in summary["reasons_covered"].items())
    lines.append(f"coverage  refusal reasons reached: {reached or 'none'}")
    return lines


def results_json(results: Iterable[CaseResult], issues: Iterable[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {
            "file": str(r.file),
            "name": r.name,
            "passed": r.passed,
            "diff": list(r.diff),
            "outcome": str(r.decision.outcome) if r.decision else None,
            "reason": str(r.decision.reason) if r.decision and r.decision.reason else None,
        }
        for r in results
    ]
    rows += [{"file": None, "name": issue, "passed": False, "diff": [issue]} for issue in issues]
    return rows


def junit_xml(results: Iterable[CaseResult], issues: Iterable[str]) -> str:
    """JUnit XML as CI systems read it: a suite per case file, a ``failure`` per failed case
    with the expected/actual diff; a case file that does not load is an ``error``."""
    suites: dict[str, list[CaseResult]] = {}
    for r in results:
        suites.setdefault(str(r.file), []).append(r)
    issues = list(issues)
    root = ET.Element("testsuites", name="broker scopes test")
    for file, cases in suites.items():
        failed = sum(not c.passed for c in cases)
        suite = ET.SubElement(
            root, "testsuite", name=file, tests=str(len(cases)), failures=str(failed), errors="0"
        )
        for case in cases:
            element = ET.SubElement(suite, "testcase", classname=file, name=case.name)
            if not case.passed:
                failure = ET.SubElement(
                    element, "failure", message=case.diff[0] if case.diff else ""
                )
                failure.text = "\n".join(case.diff)
    if issues:
        suite = ET.SubElement(
            root, "testsuite", name="case files", tests=str(len(issues)), failures="0",
            errors=str(len(issues)),
        )  # fmt: skip
        for issue in issues:
            element = ET.SubElement(suite, "testcase", classname="case files", name=issue[:80])
            ET.SubElement(element, "error", message=issue).text = issue
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
