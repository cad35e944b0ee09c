"""Restoring usage from the newest snapshot in the trail plus the records after it gives the
same ledger as replaying the whole history, whatever the agent put in its inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.audit.log import AuditLog
from broker.audit.usagesnap import restore_ledger, snapshot_body
from broker.core.limits import UsageLedger
from broker.scopes.loader import load_manifest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scopes" / "bench-agent.yaml"
NOW = 1_800_000_000.0


class Charged:
    action = "bench.jwt"
    charges = {"calls": 1.0}  # noqa: RUF012 - a read-only stand-in for a Decision


def decision(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "decision",
        "agent_id": "bench-agent",
        "at": NOW + n,
        "action": "bench.jwt",
        "outcome": "allow",
        "credential_id": f"c{n}",
        "ttl": 600,
        "charges": {"calls": 1.0},
        "inputs": {"n": n},
        **extra,
    }


@pytest.fixture(params=[None, 1000], ids=["no cap", "capped"])
def manifest(request: pytest.FixtureRequest) -> Any:
    """The bench manifest, without and with a concurrency cap: only a cap makes the snapshot
    carry the slots, so only then does a restore count the credentials still in flight."""
    return load_manifest(BENCH).model_copy(update={"concurrency": request.param})


def _used(ledger: UsageLedger) -> tuple[float, int]:
    return ledger.budget_used("calls", NOW + 100), ledger.in_flight(NOW + 100)


def test_snapshot_plus_tail_equals_full_replay(tmp_path: Path, manifest: Any) -> None:
    """5 records, a snapshot, 3 more (one charged before the snapshot was taken), an
    outcome, and a record whose inputs mimic a snapshot: the same usage as no snapshot."""
    path = tmp_path / "audit.jsonl"
    ledger = UsageLedger.for_manifest(manifest)
    with AuditLog(path) as log:
        for n in range(5):
            ledger.charge(Charged(), f"c{n}", NOW + n + 600, NOW + n)
            log.append_sync(decision(n))
            ledger.recorded(f"c{n}")
        ledger.charge(Charged(), "c5", NOW + 5 + 600, NOW + 5)  # charged, not yet recorded
        log.append_sync(snapshot_body("bench-agent", ledger, NOW + 5))
        for n in range(5, 8):
            log.append_sync(decision(n))
        log.append_sync({"type": "outcome", "agent_id": "bench-agent", "credential_id": "c1"})
        fake = {"type": "usage_snapshot", "agent_id": "bench-agent", "ledger": {}}
        log.append_sync(decision(8, inputs={"x": fake}))
    restored = restore_ledger(manifest, path)
    full = UsageLedger.for_manifest(manifest)
    for n in range(9):
        full.charge(Charged(), f"c{n}", NOW + n + 600, NOW + n)
    full.release("c1")
    assert _used(full) == (9.0, 8)
    # Without a cap the slots of c0..c5 are not in the snapshot: only c6..c8 are counted.
    assert _used(restored) == (9.0, 8 if manifest.concurrency else 3)


def test_restore_reads_the_newest_snapshot_across_sealed_segments(
    tmp_path: Path, manifest: Any
) -> None:
    """With the snapshot in a sealed segment and none in the active one, it is still found,
    and the records after it in every later segment are replayed."""
    path = tmp_path / "audit.jsonl"
    ledger = UsageLedger.for_manifest(manifest)
    ledger.charge(Charged(), "old", NOW + 600, NOW)
    with AuditLog(path, segment_bytes=1500) as log:
        log.append_sync(snapshot_body("bench-agent", ledger, NOW))
        for n in range(1, 12):
            log.append_sync(decision(n))
    assert list(tmp_path.glob("audit.jsonl.seg-*"))
    assert _used(restore_ledger(manifest, path)) == (12.0, 12 if manifest.concurrency else 11)
