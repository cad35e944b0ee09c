"""``broker scopes ...`` (validate, test, explain, schema; the lifecycle commands are in
``cli_lifecycle``) and ``broker bench decide``.

A thin shell over the pure core: it reads files and the clock, prints, and maps outcomes to
exit codes (0 fine, 1 findings). Bad command-line input raises ``ConfigError`` (exit 2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from broker.core.errors import ConfigError, ManifestError

DEFAULT_SCOPES = "scopes"
BENCH_MANIFEST = "scopes/support-refund-agent.yaml"


def register(
    commands: argparse._SubParsersAction[Any], bench: argparse._SubParsersAction[Any]
) -> None:
    scopes = commands.add_parser("scopes", help="validate, test and explain scope manifests")
    sub = scopes.add_subparsers(dest="scopes_command", required=True, metavar="WHAT")

    validate = sub.add_parser("validate", help="check manifests; list every problem")
    validate.add_argument("paths", nargs="*", default=[DEFAULT_SCOPES], metavar="PATH")
    validate.add_argument("--json", action="store_true", help="print the verdict as JSON")
    validate.set_defaults(func=cmd_validate)

    test = sub.add_parser(
        "test", help="run the cases in PATH/tests/*.yaml, a case file, or a manifest's cases"
    )
    test.add_argument("paths", nargs="*", default=[DEFAULT_SCOPES], metavar="PATH")
    test.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML here")
    test.add_argument("--json", action="store_true", help="print the results as JSON")
    test.set_defaults(func=cmd_test)

    explain = sub.add_parser("explain", help="show every rule evaluated for one request")
    explain.add_argument("--agent", required=True)
    explain.add_argument("--action", required=True)
    explain.add_argument("--inputs", default="{}", help="JSON object of inputs")
    explain.add_argument("--scopes", default=DEFAULT_SCOPES, metavar="DIR")
    explain.add_argument("--usage", default="{}", help='JSON: {"budgets": {}, "rate": {}, ...}')
    explain.add_argument("--now", type=float, default=None, help="epoch seconds (default: now)")
    explain.add_argument("--disabled", action="store_true", help="as if the agent were killed")
    explain.add_argument("--json", action="store_true", help="print the rules and the decision")
    explain.set_defaults(func=cmd_explain)

    schema = sub.add_parser("schema", help="print the manifest JSON Schema")
    schema.set_defaults(func=cmd_schema)

    from broker.cli.lifecycle import add_scopes_commands

    add_scopes_commands(sub)  # publish, diff, replay, published, verify

    decide = bench.add_parser("decide", help="decisions per second on one core")
    decide.add_argument("--seconds", type=float, default=3.0, help="total measuring time")
    decide.add_argument("--rounds", type=int, default=5)
    decide.add_argument("--manifest", default=BENCH_MANIFEST, metavar="PATH")
    decide.set_defaults(func=cmd_bench_decide)


def cmd_validate(args: argparse.Namespace) -> int:
    from broker.scopes.loader import load_manifests

    try:
        manifests = load_manifests(args.paths)
    except ManifestError as exc:
        if args.json:
            print(json.dumps({"ok": False, "issues": exc.issues}, indent=2))
        else:
            _print_issues(exc)
        return 1
    rows = [
        {"agent": m.agent, "policy_version": m.policy_version, "content_hash": m.content_hash}
        for m in manifests
    ]
    if args.json:
        print(json.dumps({"ok": True, "manifests": rows}, indent=2))
    for m in manifests if not args.json else ():
        print(f"ok  {m.agent}  {m.policy_version}  {m.content_hash}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from broker.scopes.report import coverage, coverage_lines, junit_xml, results_json
    from broker.scopes.scenarios import format_results

    results, issues, manifests = [], [], {}
    for raw in args.paths:
        try:
            found, found_issues, loaded = _run_cases(Path(raw))
        except ManifestError as exc:
            _print_issues(exc)
            return 1
        results += found
        issues += found_issues
        manifests.update(loaded)
    failed = sum(not r.passed for r in results) + len(issues)
    passed = len(results) - sum(not r.passed for r in results)
    if args.junit:
        args.junit.write_text(junit_xml(results, issues), encoding="utf-8")
    summary = coverage(results, manifests)
    if args.json:
        doc = {"passed": passed, "failed": failed, "cases": results_json(results, issues)}
        print(json.dumps({**doc, "coverage": summary}, indent=2))
    else:
        for line in format_results(results) + issues + coverage_lines(summary):
            print(line)
        print(f"{passed} passed, {failed} failed")
    if not results and not issues:
        print(f"no test case ran for {' '.join(args.paths)}", file=sys.stderr)
    return 1 if failed or not passed else 0


def _run_cases(path: Path) -> tuple[list[Any], list[str], dict[str, Any]]:
    """Cases for a scope directory (``PATH/tests/*.yaml``), one case file (in a ``tests``
    directory beside its manifests), or one manifest file (the cases naming its agent)."""
    from broker.cli.lifecycle import _cases_for
    from broker.scopes.loader import load_manifest, load_manifests
    from broker.scopes.scenarios import run_directory, run_file

    if path.is_dir():
        results, issues = run_directory(path)
        return results, issues, {m.agent: m for m in load_manifests([path])}
    if not path.is_file():
        raise ConfigError(f"{path}: no such file or directory")
    if path.parent.name == "tests":
        manifests = {m.agent: m for m in load_manifests([path.parent.parent])}
        return *run_file(path, manifests), manifests
    manifest = load_manifest(path)
    return *_cases_for(manifest, path.parent), {manifest.agent: manifest}


def cmd_explain(args: argparse.Namespace) -> int:
    from broker.core.decision import ActionRequest, explain
    from broker.scopes.loader import load_manifests
    from broker.scopes.scenarios import CaseUsage

    try:
        manifests = {m.agent: m for m in load_manifests([args.scopes])}
    except ManifestError as exc:
        _print_issues(exc)
        return 1
    manifest = manifests.get(args.agent)
    if manifest is None:
        raise ConfigError(f"no manifest for agent {args.agent!r} in {args.scopes}")
    usage = _parse_model(CaseUsage, args.usage, "--usage")
    request = _parse_model(
        ActionRequest,
        json.dumps({"action": args.action, "request_id": "explain", "inputs": _json(args.inputs)}),
        "--inputs",
    )
    now = time.time() if args.now is None else args.now
    snapshot = _snapshot(usage)
    *rules, final = explain(request, manifest, snapshot, now, agent_disabled=args.disabled)
    if args.json:
        print(json.dumps(explained_json(args.agent, args.action, rules, final), indent=2))
        return 0
    for result in rules:
        print(f"{result.status:<8} {result.rule:<16} {result.detail}".rstrip())
    print(f"decision: {final.status}: {final.detail}")
    return 0


def explained_json(agent: str, action: str, rules: list[Any], final: Any) -> dict[str, Any]:
    """``scopes explain --json``: each rule in order, then the decision it came to."""
    decision = final.decision
    return {
        "agent": agent,
        "action": action,
        "rules": [{"rule": r.rule, "status": r.status, "detail": r.detail} for r in rules],
        "decision": {
            "outcome": decision.outcome.value,
            "reason": decision.reason.value if decision.reason else None,
            "detail": decision.detail,
        },
    }


def cmd_schema(args: argparse.Namespace) -> int:
    del args
    sys.stdout.write(schema_text())
    return 0


def schema_text() -> str:
    """The JSON Schema exactly as committed in ``scopes/manifest.schema.json``."""
    from broker.core.manifest import manifest_json_schema

    return json.dumps(manifest_json_schema(), indent=2, sort_keys=True) + "\n"


def cmd_bench_decide(args: argparse.Namespace) -> int:
    if args.seconds <= 0 or args.rounds < 1:
        raise ConfigError("--seconds must be > 0 and --rounds >= 1")
    rates, mix = run_bench(Path(args.manifest), args.seconds, args.rounds)
    print(f"outcome mix per round: {mix}")
    print(f"rounds: {', '.join(f'{r:,.0f}' for r in rates)} decisions/s")
    print(f"median: {statistics.median(rates):,.0f} decisions/s (one core)")
    return 0


def run_bench(path: Path, seconds: float, rounds: int) -> tuple[list[float], dict[str, int]]:
    """Decisions per second in each round, over a fixed allow/deny/pending request mix."""
    from broker.core.decision import decide
    from broker.core.limits import UsageLedger
    from broker.scopes.loader import load_manifest

    manifest = load_manifest(path)
    ledger = UsageLedger.for_manifest(manifest)
    requests, now = _bench_requests(), 1_767_225_600.0
    mix: dict[str, int] = {}
    for request in requests:
        outcome = str(decide(request, manifest, ledger, now).outcome)
        mix[outcome] = mix.get(outcome, 0) + 1
    rates = []
    for _ in range(rounds):
        count, start, deadline = 0, time.perf_counter(), time.perf_counter() + seconds / rounds
        while time.perf_counter() < deadline:
            for request in requests:
                decide(request, manifest, ledger, now)
            count += len(requests)
        rates.append(count / (time.perf_counter() - start))
    return rates, mix


def _bench_requests() -> list[Any]:
    from broker.core.decision import ActionRequest

    refunds = [12.5, 80, 99.99, 150, 480, 900, -3]
    specs: list[tuple[str, dict[str, Any]]] = [
        ("stripe.refund", {"ticket_id": "CS-1042", "amount_usd": a}) for a in refunds
    ]
    specs += [
        ("zendesk.get_ticket", {"ticket_id": "CS-19422"}),
        ("zendesk.get_ticket", {"ticket_id": "CS-19422"}),
        ("zendesk.get_ticket", {"ticket_id": "DROP TABLE"}),
        ("stripe.refund", {"ticket_id": "CS-1", "amount_usd": "50"}),
        ("deploy.production", {}),
    ]
    return [
        ActionRequest(action=a, inputs=i, request_id=f"bench-{n}") for n, (a, i) in enumerate(specs)
    ]


# -- helpers -------------------------------------------------------------------------------


def _print_issues(exc: ManifestError) -> None:
    # ``detail`` already lists every issue, one per line.
    print(f"invalid: {exc.detail}", file=sys.stderr)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON: {exc}") from exc


def _parse_model(model: Any, text: str, option: str) -> Any:
    from pydantic import ValidationError

    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{option}: {problems}") from exc


def _snapshot(usage: Any) -> Any:
    from broker.core.limits import UsageSnapshot

    return UsageSnapshot(usage.budgets, usage.rate, usage.in_flight)
