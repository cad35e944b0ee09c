"""``broker scopes verify PATH [--json]``: is this file what Vault publishes for its agent, and
what the agent's live sidecar enforces?

The verdict is one of a fixed set, the same in text and in JSON (``verdict``):

- ``not_published`` (exit 1): Vault holds another version, or nothing;
- ``enforced`` (0): the sidecar's heartbeat reports the file's content hash;
- ``not_enforced`` (1): it still reports another after ``--wait`` seconds; ``why`` says why;
- ``no_sidecar`` (0): no live heartbeat, so nothing more to check;
- ``heartbeats_unreadable`` (0): the operator's token may not read heartbeats."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from broker.core.errors import PermissionDenied

HEARTBEAT_STALE = 30.0  # seconds: an older heartbeat is a sidecar that is not running


def run_verify(args: argparse.Namespace) -> int:
    from broker.cli.lifecycle import _client
    from broker.scopes.loader import load_manifest
    from broker.vault.manifests import read_manifest

    manifest = load_manifest(args.path)
    client, addr = _client(args)
    current = read_manifest(client, manifest.agent, addr=addr)
    found = {"version": current.version, "content_hash": current.content_hash} if current else None
    doc: dict[str, Any] = {
        "agent": manifest.agent,
        "file": str(args.path),
        "content_hash": manifest.content_hash,
        "published": found,
    }
    if current is None or current.content_hash != manifest.content_hash:
        return _say(args, 1, doc | {"verdict": "not_published"})
    return _say(args, *_sidecar(args, client, addr, doc, current.version))


def _sidecar(
    args: argparse.Namespace, client: Any, addr: str, doc: dict[str, Any], version: int
) -> tuple[int, dict[str, Any]]:
    """Poll the sidecar's heartbeat until it reports the file's hash or ``--wait`` runs out."""
    from broker.cli.lifecycle import not_enforced_reason
    from broker.vault.kv import kv_read

    agent, wanted = doc["agent"], doc["content_hash"]
    deadline = time.monotonic() + args.wait
    while True:
        try:
            beat = kv_read(client, f"heartbeat/{agent}", addr) or {}
        except PermissionDenied:
            return 0, doc | {"verdict": "heartbeats_unreadable", "sidecar_hash": None}
        if not beat or time.time() - float(beat.get("at", 0)) > HEARTBEAT_STALE:
            return 0, doc | {"verdict": "no_sidecar", "sidecar_hash": None}
        seen = beat.get("manifest_hash")
        if seen == wanted:
            return 0, doc | {"verdict": "enforced", "sidecar_hash": seen}
        if time.monotonic() >= deadline:
            why = not_enforced_reason(beat, agent, version)
            return 1, doc | {"verdict": "not_enforced", "sidecar_hash": seen, "why": why}
        time.sleep(0.5)


def _say(args: argparse.Namespace, code: int, doc: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(doc, indent=2))
        return code
    agent, verdict = doc["agent"], doc["verdict"]
    if verdict == "not_published":
        held = (doc["published"] or {}).get("content_hash", "nothing")
        print(f"NOT PUBLISHED  {agent}: Vault holds {held}, the file is {doc['content_hash']}")
        return code
    published = doc["published"]
    print(f"published  {agent}  version {published['version']}  {published['content_hash']}")
    if verdict == "heartbeats_unreadable":
        print("your token may not read sidecar heartbeats; nothing more to check")
    elif verdict == "no_sidecar":
        print(f"no live sidecar heartbeat for {agent}; nothing more to check")
    elif verdict == "enforced":
        print(f"enforced   {agent}: the sidecar reports {doc['content_hash']}")
    else:
        print(
            f"NOT ENFORCED  {agent}: the sidecar still reports {doc['sidecar_hash']} "
            f"after {args.wait:.0f}s"
        )
        print(f"  why: {doc['why']}")
    return code
