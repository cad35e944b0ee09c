"""Usage snapshots in the audit trail, so that a restart reads a bounded tail, not the history.

Budgets survive restarts because the ledger is rebuilt from the trail itself: every credential
handed out has a durable record with its charges and time. Replaying the whole history made
start-up grow with it (20 s at 180,000 records), so the sidecar writes the ledger into the
trail as a ``usage_snapshot`` record every ``SNAPSHOT_EVERY`` records, after each segment
rotation and at start-up. A restart loads the newest snapshot and replays only what follows.

Replaying after a snapshot: a credential charged before the snapshot was taken may have its
record written just after it (a Vault mint awaits Vault between the two); the snapshot names
it (``unrecorded``) and it is not charged twice. The snapshot lists the credentials in flight
only when a concurrency cap reads them: otherwise a busy minute's worth of credential ids made
each snapshot megabytes long and stalled the writer behind it. A charge refunded after the snapshot stays
counted until its window ends: the error is on the safe side (more spent, never less)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.audit.file import chain_files
from broker.audit.records import iso_utc
from broker.audit.replay import record_action, record_time
from broker.core.limits import UsageLedger
from broker.core.manifest import Manifest

SNAPSHOT = "usage_snapshot"
SNAPSHOT_EVERY = 5000  # records between snapshots
_MARK = b'"type":"usage_snapshot"'  # as canonical JSON writes it


def snapshot_body(agent: str, ledger: UsageLedger, now: float) -> dict[str, Any]:
    return {
        "type": SNAPSHOT,
        "timestamp": iso_utc(now),
        "at": round(now, 6),
        "agent_id": agent,
        "ledger": ledger.to_json(),
    }


@dataclass(frozen=True)
class _Charged:
    action: str
    charges: dict[str, float]


def _parse(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                yield record


def _newest_snapshot(data: bytes, agent: str) -> tuple[dict[str, Any], int] | None:
    """The last snapshot record of ``agent`` in ``data`` and the offset after its line.
    The mark may also appear nested inside a record's inputs: only a top-level one counts."""
    end = len(data)
    while (pos := data.rfind(_MARK, 0, end)) >= 0:
        start, stop = data.rfind(b"\n", 0, pos) + 1, data.find(b"\n", pos)
        stop = len(data) if stop < 0 else stop
        found = next(_parse([data[start:stop]]), None)
        if found and found.get("type") == SNAPSHOT and found.get("agent_id") == agent:
            return found, stop + 1
        end = start
    return None


def restore_ledger(manifest: Manifest, audit_path: Path) -> UsageLedger:
    """The newest snapshot, searched from the active segment back, plus every record after
    it; the whole history only when the trail holds no snapshot (a trail from before them)."""
    files = chain_files(audit_path)
    tail: list[bytes] = []
    for path in reversed(files):
        data = path.read_bytes()
        found = _newest_snapshot(data, manifest.agent)
        if found is None:
            tail.insert(0, data)
            continue
        snapshot, after = found
        ledger = UsageLedger.from_json(snapshot["ledger"])
        ledger.configure(manifest)
        held = set(snapshot["ledger"].get("in_flight", {}))
        held.update(snapshot["ledger"].get("unrecorded", ()))
        return _replay(ledger, manifest.agent, [data[after:], *tail], held)
    return _replay(UsageLedger.for_manifest(manifest), manifest.agent, tail, set())


def _replay(ledger: UsageLedger, agent: str, chunks: list[bytes], held: set[str]) -> UsageLedger:
    for chunk in chunks:
        for record in _parse(chunk.splitlines()):
            if record.get("agent_id") != agent:
                continue
            credential = record.get("credential_id")
            kind = record.get("type")
            if kind == "decision" and credential and record.get("outcome") == "allow":
                if str(credential) in held:
                    continue  # charged in the snapshot already
                at = record_time(record)
                charged = _Charged(record_action(record), dict(record.get("charges") or {}))
                ledger.charge(charged, str(credential), at + float(record.get("ttl") or 0), at)
            elif kind == "outcome" and credential:
                ledger.release(str(credential))
    return ledger
