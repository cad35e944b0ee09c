"""``broker scopes replay``: re-decide a recorded trail under a candidate manifest, each
record compared with the manifest that decided it (``broker.audit.replay`` is the pure part)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from broker.cli.lifecycle import _client, _print_issues, resolve
from broker.core.errors import ConfigError, ManifestError
from broker.core.manifest import Manifest


def audit_records(paths: list[Path]) -> Iterator[dict[str, Any]]:
    """Records of the trail files in order; unreadable lines are skipped (verify them with
    ``broker audit verify``: replay answers "what if", not "is this trail intact")."""
    for path in paths:
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise ConfigError(f"cannot read the audit trail {path}: {exc.strerror}") from exc
        with handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield record


def cmd_replay(args: argparse.Namespace) -> int:
    from broker.audit.replay import replay
    from broker.core.manifest import parse_duration

    try:
        since = time.time() - parse_duration(args.since) if args.since else None
    except ValueError as exc:
        raise ConfigError(f"--since {args.since!r}: {exc}") from exc
    try:
        candidate = resolve(args.candidate, args)
        baselines = [resolve(args.baseline, args)] if args.baseline else _published(args, candidate)
    except ManifestError as exc:
        _print_issues(exc)
        return 2
    report = replay(audit_records(args.audit), candidate, since=since, baseline=baselines)
    for line in [json.dumps(report.to_json(), indent=2)] if args.json else report.lines():
        print(line)
    return 1 if report.widening and not args.allow_widening else 0


def _published(args: argparse.Namespace, candidate: Manifest) -> list[Manifest]:
    """The default baselines: the candidate and, when Vault is configured, every version of
    the agent's manifest published there (the records name the one that decided them)."""
    from broker.settings import vault_from_env
    from broker.sidecar.watcher import validate_published
    from broker.vault.manifests import manifest_versions, read_manifest

    try:
        token = vault_from_env(addr=args.vault_addr).token
    except ConfigError:  # no Vault address: nothing published to read
        token = None
    if token is None:
        print(
            "baseline: the candidate only (no VAULT_TOKEN to read published versions)",
            file=sys.stderr if args.json else sys.stdout,
        )
        return [candidate]
    client, addr = _client(args)
    found = [candidate]
    for version in manifest_versions(client, candidate.agent, addr):
        published = read_manifest(client, candidate.agent, version, addr)
        if published is not None:
            try:
                found.append(validate_published(published, candidate.agent))
            except ManifestError:
                continue  # an invalid version decided nothing: sidecars refused it
    print(
        f"baseline: {len(found) - 1} published version(s) of {candidate.agent} in Vault",
        file=sys.stderr if args.json else sys.stdout,
    )
    return found
