"""``broker scopes publish|diff|replay|published|verify``: a manifest's way into production.

A manifest reaches sidecars only through ``publish``, which validates it, runs its test
cases (``tests/*.yaml`` beside it) and stores it in Vault with the operator's own token, so
Vault's policies decide who may publish (the platform editor). Each publish (or refusal) is
appended to the operator audit trail (``--audit-log`` or ``BROKER_OPERATOR_AUDIT``) with the
publisher's identity, the policy version and the content hash. Exit codes: 0 fine,
1 findings (failed tests, widening changes, a sidecar that did not switch), 2 errors.

A manifest reference is a file, or ``vault:<agent>[@version]`` for a published version."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from broker.core.errors import BrokerError, ConfigError, ManifestError, PermissionDenied
from broker.core.manifest import Manifest
from broker.ops.operator import add_operator_options, operator_audit, operator_client


def add_scopes_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Called by ``cli_scopes.register`` with the ``scopes`` sub-command group."""
    p = sub.add_parser("publish", help="validate, test and publish manifests to Vault")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument(
        "--approve-widening",
        metavar="REASON",
        help="publish even though the change widens what the agent may do; the reason is "
        "recorded in the operator audit trail",
    )
    _vault_options(p)
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("diff", help="what changed between two manifests; widening marked")
    p.add_argument("old", metavar="OLD", help="file or vault:<agent>[@version]")
    p.add_argument("new", metavar="NEW", help="file or vault:<agent>[@version]")
    p.add_argument("--fail-on-widening", action="store_true", help="exit 1 if anything widens")
    p.add_argument("--json", action="store_true", help="print the changes as JSON")
    _vault_options(p)
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("replay", help="re-decide an audit trail under a candidate manifest")
    p.add_argument("candidate", metavar="CANDIDATE", help="file or vault:<agent>[@version]")
    p.add_argument("--audit", type=Path, required=True, action="append", help="trail file(s)")
    p.add_argument("--since", help="only report requests of the last 7d, 12h, ...")
    p.add_argument(
        "--baseline",
        help="the manifest the trail was recorded under (lets redacted inputs whose "
        "declaration is unchanged be replayed), e.g. vault:<agent>@3; default: every version "
        "published in Vault (when VAULT_ADDR and VAULT_TOKEN are set) and the candidate, each "
        "record compared with the one whose hash it carries",
    )
    p.add_argument(
        "--allow-widening", action="store_true", help="report widening, but exit 0 (signed off)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _vault_options(p)
    p.set_defaults(func=_replay)

    p = sub.add_parser("published", help="an agent's published manifest and its versions")
    p.add_argument("agent")
    p.add_argument("--yaml", action="store_true", help="print the stored YAML")
    p.add_argument("--json", action="store_true", help="print the version and history as JSON")
    _vault_options(p)
    p.set_defaults(func=cmd_published)

    p = sub.add_parser("verify", help="is this file what is published, and what the sidecar runs?")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the sidecar")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    _vault_options(p)
    p.set_defaults(func=cmd_verify)


def _replay(args: argparse.Namespace) -> int:
    from broker.cli.replay import cmd_replay

    return cmd_replay(args)


def _vault_options(p: argparse.ArgumentParser) -> None:
    add_operator_options(p)


def _client(args: argparse.Namespace) -> tuple[Any, str]:
    return operator_client(args)


def _print_issues(exc: ManifestError) -> None:
    print(f"invalid: {exc.detail}", file=sys.stderr)  # the detail lists every issue


# -- publish -------------------------------------------------------------------------------


def checked_manifest(path: Path) -> tuple[Manifest, str, int]:
    """The manifest, its exact text, and how many of its test cases passed. Raises
    ``ManifestError`` when it does not load, a case fails, or it has no cases."""
    from broker.scopes.loader import load_manifest
    from broker.scopes.scenarios import format_results

    manifest = load_manifest(path)
    results, issues = _cases_for(manifest, path.parent)
    failed = [r for r in results if not r.passed]
    if failed or issues:
        lines = format_results(failed) + issues
        raise ManifestError(f"{path}: {len(failed) + len(issues)} test case problem(s)", lines)
    if not results:
        raise ManifestError(
            f"{path}: no test cases for {manifest.agent} in {path.parent / 'tests'}; "
            "a manifest is published with its tests"
        )
    return manifest, path.read_text(encoding="utf-8"), len(results)


def _cases_for(manifest: Manifest, scope_dir: Path) -> tuple[list[Any], list[str]]:
    from broker.scopes.loader import load_model
    from broker.scopes.scenarios import CaseFile, case_files, run_case

    results, issues = [], []
    for case_path in case_files(scope_dir):
        spec, file_issues = load_model(case_path, CaseFile)
        issues += file_issues
        if spec is None:
            continue
        for case in spec.cases:
            if (case.agent or spec.agent) == manifest.agent:
                results.append(run_case(case_path, spec, case, {manifest.agent: manifest}))
    return results, issues


def cmd_publish(args: argparse.Namespace) -> int:
    from broker.scopes.loader import expand_paths

    files, missing = expand_paths(args.paths)
    if missing:
        raise ConfigError("; ".join(missing))
    checked = []
    for path in files:
        try:
            checked.append((path, *checked_manifest(path)))
        except ManifestError as exc:
            _print_issues(exc)
            return 1
    if args.approve_widening is not None and not args.approve_widening.strip():
        raise ConfigError("--approve-widening needs a reason (who signed off, and why)")
    client, addr = _client(args)
    refused = 0
    for path, manifest, text, passed in checked:
        refused += not _publish_one(args, (client, addr), path, (manifest, text, passed))
    return 1 if refused else 0


def _publish_one(
    args: argparse.Namespace,
    vault: tuple[Any, str],
    path: Path,
    checked: tuple[Manifest, str, int],
) -> bool:
    """Publish one manifest; False when it was refused as widening without a sign-off."""
    from broker.ops.control import whoami
    from broker.scopes.diff import diff_manifests, widening
    from broker.sidecar.watcher import validate_published
    from broker.vault.manifests import PublishedManifest, read_manifest, write_manifest

    (client, addr), (manifest, text, passed) = vault, checked
    operator = whoami(client, addr).identity
    now = time.time()
    body = {
        "type": "manifest",
        "event": "publish",
        "operator": operator,
        "at": round(now, 6),
        "agent": manifest.agent,
        "policy_version": manifest.policy_version,
        "content_hash": manifest.content_hash,
        "source": str(path),
    }
    try:
        current = read_manifest(client, manifest.agent, addr=addr)
        if current is not None and current.content_hash == manifest.content_hash:
            print(f"unchanged  {manifest.agent}  version {current.version}  {current.content_hash}")
            return True
        wide: list[Any] = []
        if current is not None:
            try:
                changes = diff_manifests(validate_published(current, manifest.agent), manifest)
                for change in changes:
                    print(f"  {change}")
                wide = widening(changes)
            except ManifestError:
                print(f"  (the current version {current.version} is invalid; replacing it)")
        if wide and args.approve_widening is None:
            detail = f"{len(wide)} widening change(s); publish with --approve-widening REASON"
            operator_audit(args, {**body, "status": "refused", "detail": detail})
            print(f"REFUSED    {manifest.agent}: {detail}")
            return False
        if wide:
            body |= {"widening": [str(c).strip() for c in wide],
                     "approved_widening": args.approve_widening}  # fmt: skip
        published = PublishedManifest(
            manifest.agent, 0, text, manifest.content_hash, manifest.policy_version, operator, now
        )
        cas = current.version if current is not None else None
        version = write_manifest(client, published, addr, cas=cas)
        _bump(client, addr)
    except PermissionDenied as exc:
        operator_audit(args, {**body, "status": "refused", "detail": exc.detail})
        raise
    operator_audit(args, {**body, "status": "ok", "version": version, "tests_passed": passed})
    print(
        f"published  {manifest.agent}  version {version}  {manifest.policy_version}  "
        f"{manifest.content_hash}  by {operator} ({passed} test cases passed)"
    )
    return True


def _bump(client: Any, addr: str) -> None:
    """Sidecars look at their published manifest when control/version moves (and every
    10 s regardless): a bump that fails costs only that wait, so it is a warning."""
    from broker.vault.control import control_written

    try:
        control_written(client, addr)
    except BrokerError as exc:
        print(f"  (control/version not bumped: {exc.detail}; sidecars see it within 10 s)")


def resolve(ref: str, args: argparse.Namespace) -> Manifest:
    """A file, or ``vault:<agent>[@version]`` read with the operator's token."""
    from broker.sidecar.watcher import VAULT_SOURCE

    if not ref.startswith(VAULT_SOURCE):
        from broker.scopes.loader import load_manifest

        return load_manifest(ref)
    from broker.sidecar.watcher import validate_published
    from broker.vault.manifests import read_manifest

    agent, _, version = ref[len(VAULT_SOURCE) :].partition("@")
    if version and not version.isdigit():
        raise ConfigError(f"{ref}: expected vault:<agent>[@<version number>]")
    client, addr = _client(args)
    published = read_manifest(client, agent, int(version) if version else None, addr)
    if published is None:
        raise ConfigError(f"{ref}: nothing is published there")
    return validate_published(published, agent)


def cmd_diff(args: argparse.Namespace) -> int:
    from broker.scopes.diff import diff_manifests, widening

    try:
        old, new = resolve(args.old, args), resolve(args.new, args)
    except ManifestError as exc:
        _print_issues(exc)
        return 2
    changes = diff_manifests(old, new)
    wide = widening(changes)
    if args.json:
        rows = [{"where": c.where, "what": c.what, "effect": str(c.effect)} for c in changes]
        print(json.dumps({"changes": rows, "widening": len(wide)}, indent=2))
        return 1 if wide and args.fail_on_widening else 0
    for change in changes:
        print(change)
    print(f"{len(changes)} change(s), {len(wide)} widening")
    return 1 if wide and args.fail_on_widening else 0


def not_enforced_reason(beat: dict[str, Any], agent: str, version: int) -> str:
    """Why a live sidecar does not run the published version, from its heartbeat."""
    source = str(beat.get("manifest_source") or "file")
    if not source.startswith("vault:"):
        return (
            "the sidecar reads its manifest from a file, not from Vault; run it with "
            f"--manifest vault:{agent} (broker up does) or edit its file and restart it"
        )
    refused = beat.get("manifest_refused")
    if isinstance(refused, str):
        refused = json.loads(refused)  # the heartbeat stores documents as JSON strings
    if isinstance(refused, dict) and refused.get("version") == version:
        return f"the sidecar refused version {version}: {refused.get('reason')}"
    return (
        f"the sidecar has not loaded version {version} yet; its manifest poll may be failing "
        "(see `manifest.last_error` in its /readyz)"
    )


# -- published / verify --------------------------------------------------------------------


def cmd_published(args: argparse.Namespace) -> int:
    from broker.audit.records import iso_utc
    from broker.vault.manifests import manifest_versions, read_manifest

    client, addr = _client(args)
    current = read_manifest(client, args.agent, addr=addr)
    if current is None:
        print(f"{args.agent}: nothing published")
        return 1
    if args.yaml:
        sys.stdout.write(current.yaml)
        return 0
    versions = manifest_versions(client, args.agent, addr)
    if args.json:
        print(json.dumps(_published_json(current, versions), indent=2))
        return 0
    print(
        f"{args.agent}  version {current.version}  {current.policy_version}  "
        f"{current.content_hash}  by {current.published_by} "
        f"at {iso_utc(current.published_at)}"
    )
    for version, created in versions.items():
        print(f"  version {version}  {created}")
    return 0


def _published_json(current: Any, versions: Any) -> dict[str, Any]:
    from broker.audit.records import iso_utc

    return {
        "agent": current.agent,
        "version": current.version,
        "policy_version": current.policy_version,
        "content_hash": current.content_hash,
        "published_by": current.published_by,
        "published_at": iso_utc(current.published_at),
        "versions": {str(k): str(v) for k, v in versions.items()},
    }


def cmd_verify(args: argparse.Namespace) -> int:
    from broker.cli.scopes_verify import run_verify

    return run_verify(args)
