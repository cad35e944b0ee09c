"""The audit log's checkpoints: signed by count or interval, off the writer thread."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from broker.audit.log import AuditLog
from broker.audit.records import InMemorySigner
from broker.core.errors import BackendUnavailable
from tests.audit.test_auditlog import FakeClock, body, verify


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "trail" / "audit.jsonl"


def checkpoints(path: Path) -> list[dict[str, Any]]:
    import json

    return [r for r in map(json.loads, path.read_bytes().splitlines()) if r["type"] == "checkpoint"]


def test_checkpoint_every_n_records(path: Path) -> None:
    """checkpoint_every=10: 30 records get 3 signed checkpoints; the last head is published."""
    signer = InMemorySigner()
    log = AuditLog(path, signer=signer, agent="a1", clock=FakeClock(), checkpoint_every=10)
    for i in range(30):
        log.append_sync(body(i))
        log.wait_checkpoints()
    log.close()
    found = checkpoints(path)
    assert [c["head_seq"] for c in found] == [10, 21, 32]
    assert signer.heads["a1"][:2] == (32, found[-1]["head_hash"])
    result = verify(path, public_keys=signer.public_keys(), published_head=signer.heads["a1"][:2])
    assert result.ok
    assert result.last_checkpoint == found[-1]


def test_checkpoint_after_interval_with_injected_clock(path: Path) -> None:
    """Short of N records, a checkpoint follows once the injected clock passes the interval."""
    clock, signer = FakeClock(), InMemorySigner()
    log = AuditLog(path, signer=signer, agent="a1", clock=clock, checkpoint_interval=60)
    log.append_sync(body(1))
    log.maybe_checkpoint()
    log.wait_checkpoints()
    assert signer.signed == 0
    clock.now += 61
    log.maybe_checkpoint()
    log.wait_checkpoints()
    assert signer.heads["a1"][0] == 1
    log.close(final_checkpoint=False)
    assert len(checkpoints(path)) == 1


def test_vault_down_delays_checkpoints_not_appends(path: Path) -> None:
    """With the signer down, appends succeed, the failure is noted, and a later retry signs."""
    clock, signer = FakeClock(), InMemorySigner()
    signer.down = True
    log = AuditLog(
        path, signer=signer, agent="a1", clock=clock, checkpoint_every=2, checkpoint_retry=5
    )
    for i in range(4):
        log.append_sync(body(i))
        log.wait_checkpoints()
    assert log.stats()["checkpoint_failures"] == 1  # retried only after checkpoint_retry
    assert "down" in log.last_checkpoint_error
    signer.down = False
    clock.now += 5
    log.append_sync(body(5))
    log.wait_checkpoints()
    log.close(final_checkpoint=False)
    assert log.stats()["checkpoints"] == 1
    assert signer.heads["a1"][0] == 5


class BlockingSigner(InMemorySigner):
    """A signer that hangs like a paused Vault until released."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def sign(self, message: bytes) -> tuple[str, int]:
        self.entered.set()
        if not self.release.wait(10):
            raise BackendUnavailable("timed out")
        return super().sign(message)


def test_hung_signer_does_not_block_appends(path: Path) -> None:
    """While a checkpoint waits on Vault, appends keep completing."""
    signer = BlockingSigner()
    log = AuditLog(path, signer=signer, agent="a1", clock=FakeClock(), checkpoint_every=1)
    log.append_sync(body(0))
    assert signer.entered.wait(10)
    later = [log.append_sync(body(i)).seq for i in range(1, 20)]
    signer.release.set()
    log.close(final_checkpoint=False)
    assert later == list(range(2, 21))


def test_close_signs_the_final_head_once(path: Path) -> None:
    """close() checkpoints unsigned records; reopening and closing without new records adds none."""
    signer = InMemorySigner()
    with AuditLog(path, signer=signer, agent="a1", clock=FakeClock()) as log:
        log.append_sync(body(1))
    with AuditLog(path, signer=signer, agent="a1", clock=FakeClock()):
        pass
    assert [c["head_seq"] for c in checkpoints(path)] == [1]
    assert signer.heads["a1"][0] == 1


def test_an_idle_writer_sleeps_until_an_append_once_every_record_is_signed(path: Path) -> None:
    """No checkpoint can fall due: the writer waits without a timeout (no idle wakeups)."""
    clock, signer = FakeClock(), InMemorySigner()
    log = AuditLog(path, signer=signer, agent="a1", clock=clock, checkpoint_every=1)
    assert log._idle_timeout() is None  # nothing written yet
    log.append_sync(body(1))
    log.wait_checkpoints()
    assert signer.heads["a1"][0] == 1
    assert log._idle_timeout() is None
    log.close(final_checkpoint=False)
    unsigned = AuditLog(path.with_name("nosigner.jsonl"), clock=clock)
    unsigned.append_sync(body(2))
    assert unsigned._idle_timeout() is None  # no signer: no checkpoint will ever be due
    unsigned.close()


@pytest.mark.parametrize("state", ["unsigned records", "signer down", "trail failed"])
def test_a_writer_with_something_pending_still_wakes_each_second(path: Path, state: str) -> None:
    """Records short of the interval, a checkpoint to retry, a trail to recover: 1 s ticks."""
    clock, signer = FakeClock(), InMemorySigner()
    signer.down = state == "signer down"
    every = 1 if state == "trail failed" else 1000  # failed after every record was signed
    log = AuditLog(
        path, signer=signer, agent="a1", clock=clock, checkpoint_every=every, checkpoint_interval=60
    )
    log.append_sync(body(1))
    log.maybe_checkpoint()
    log.wait_checkpoints()
    if state == "trail failed":
        assert log._idle_timeout() is None
        log._fail(OSError(5, "disk gone"))
    assert log._idle_timeout() == 1.0
    log.close(final_checkpoint=False)
