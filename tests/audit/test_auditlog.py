"""The durable log: fsync'ed group commit, crash recovery, failing closed, rotation."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from broker.audit.log import AuditLog
from broker.audit.records import InMemorySigner, verify_lines
from broker.core.errors import AuditUnavailable
from broker.dev.auditbench import bench_append

SECRET_INPUT = "4111-1111-1111-1111"


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def body(n: int = 0, **extra: Any) -> dict[str, Any]:
    return {"type": "decision", "request_id": f"req_{n}", "inputs": {"card": SECRET_INPUT}, **extra}


def verify(path: Path, **kwargs: Any) -> Any:
    with path.open("rb") as lines:
        return verify_lines(lines, **kwargs)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "trail" / "audit.jsonl"


async def test_append_is_durable_and_chained(path: Path) -> None:
    """append returns the sealed record after it is in a 0600 file whose chain verifies."""
    log = AuditLog(path)
    first = await log.append(body(1))
    second = await log.append(body(2))
    await log.aclose()
    assert (first.seq, second.seq, second.prev) == (1, 2, first.hash)
    assert path.read_bytes() == first.line + second.line
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert verify(path).count == 2


def test_reopen_continues_the_chain(path: Path) -> None:
    """A reopened log carries on from the last record's seq and hash."""
    with AuditLog(path) as log:
        last = log.append_sync(body(1))
    with AuditLog(path) as log:
        assert log.head == (1, last.hash)
        assert log.append_sync(body(2)).prev == last.hash
    assert verify(path).ok


def test_caller_mutation_after_append_does_not_change_the_record(path: Path) -> None:
    """The log snapshots the body: a dict changed after append leaves the record as it was."""
    mine = body(1)
    with AuditLog(path) as log:
        record = log.append_sync(mine)
        mine["inputs"]["card"] = "changed"
    assert record.fields["inputs"]["card"] == SECRET_INPUT


@pytest.mark.parametrize("bad", [{"seq": 9}, {"hash": "x"}, {"type": "checkpoint"}])
def test_callers_cannot_write_chain_fields_or_checkpoints(path: Path, bad: dict[str, Any]) -> None:
    """seq/prev/hash belong to the chain and checkpoint records to the log itself."""
    with AuditLog(path) as log, pytest.raises(ValueError, match=r"chain|checkpoint"):
        log.append_sync(bad)


async def test_concurrent_appends_are_consecutive_with_few_fsyncs(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 concurrent appends get seqs 1..200 in write order, committed with far fewer fsyncs."""
    real, calls, gate = os.fsync, [], threading.Event()

    def gated(fd: int) -> None:
        calls.append(fd)
        gate.wait(10)  # hold the first commit until every append is queued: no timing luck
        real(fd)

    log = AuditLog(path)
    monkeypatch.setattr(os, "fsync", gated)
    tasks = [asyncio.create_task(log.append(body(i))) for i in range(200)]
    await asyncio.sleep(0)  # one loop turn: every task has queued its record
    gate.set()
    records = await asyncio.gather(*tasks)
    await log.aclose()
    assert sorted(r.seq for r in records) == list(range(1, 201))
    assert len(calls) <= 3
    assert log.stats()["fsyncs"] == len(calls)
    assert verify(path).count == 200


def test_torn_tail_is_set_aside_and_the_chain_continues(path: Path) -> None:
    """A half-written last line moves to <path>.torn-1; the chain continues after it."""
    with AuditLog(path) as log:
        good = [log.append_sync(body(i)) for i in range(3)]
    torn = b'{"inputs":{"card":"41'
    with path.open("ab") as f:
        f.write(torn)
    with AuditLog(path) as log:
        assert any("torn-1" in note for note in log.notes)
        assert log.head == (3, good[-1].hash)
        assert log.append_sync(body(4)).seq == 4
    assert path.with_name("audit.jsonl.torn-1").read_bytes() == torn
    assert verify(path).count == 4


def test_unparsable_complete_last_line_is_set_aside_too(path: Path) -> None:
    """Zeros ending in a newline (a crash on some filesystems) are set aside, never dropped."""
    with AuditLog(path) as log:
        log.append_sync(body(1))
    with path.open("ab") as f:
        f.write(b"\x00" * 40 + b"\n")
    with AuditLog(path) as log:
        assert len(log.notes) == 1
    path.write_bytes(path.read_bytes() + b"garbage")
    with AuditLog(path) as log:
        assert len(log.notes) == 1
    assert path.with_name("audit.jsonl.torn-1").read_bytes() == b"\x00" * 40 + b"\n"
    assert path.with_name("audit.jsonl.torn-2").read_bytes() == b"garbage"
    assert verify(path).ok


def test_damage_before_the_end_refuses_to_open(path: Path) -> None:
    """A bad line with good lines after it is tampering, not a crash: the log will not open."""
    with AuditLog(path) as log:
        for i in range(3):
            log.append_sync(body(i))
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b"oops\n" + lines[2])
    with pytest.raises(AuditUnavailable, match="damaged at seq 2"):
        AuditLog(path)


def test_path_that_is_a_directory_is_unavailable(path: Path) -> None:
    """Opening a directory as the trail fails with AuditUnavailable naming EISDIR."""
    path.mkdir(parents=True)
    with pytest.raises(AuditUnavailable, match="EISDIR"):
        AuditLog(path)


def test_second_writer_is_refused(path: Path) -> None:
    """Two logs on one file would interleave chains; the second open is refused."""
    with AuditLog(path), pytest.raises(AuditUnavailable, match="another writer"):
        AuditLog(path)


@pytest.mark.parametrize("call", ["write", "fsync"])
def test_disk_full_fails_closed(path: Path, monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    """ENOSPC raises AuditUnavailable (path, errno, no contents), then refuses more."""
    log = AuditLog(path)
    log.append_sync(body(1))

    def full(*args: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, call, full)
    with pytest.raises(AuditUnavailable) as caught:
        log.append_sync(body(2))
    message = caught.value.detail
    assert "ENOSPC" in message
    assert str(path) in message
    assert SECRET_INPUT not in message
    assert "req_2" not in message
    monkeypatch.undo()
    with pytest.raises(AuditUnavailable, match="refused until it is writable again"):
        log.append_sync(body(3))
    assert log.failed
    log.close()
    with AuditLog(path) as reopened:
        assert reopened.append_sync(body(4)).seq == reopened.head[0]
    assert verify(path).ok


@pytest.mark.parametrize("call", ["write", "fsync"])
def test_disk_full_recovers_by_itself_once_writable(
    path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """After ENOSPC passes, the writer cuts the file back, records the outage and accepts
    appends again without a reopen; the chain verifies across it."""
    log = AuditLog(path, recover_every=0.0)
    log.append_sync(body(1))

    def full(*args: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, call, full)
    with pytest.raises(AuditUnavailable):
        log.append_sync(body(2))
    log.maybe_checkpoint()  # a writer turn while the disk is still full: still failed
    assert log.failed
    monkeypatch.undo()
    log.maybe_checkpoint()  # the next writer turn recovers
    assert log.failed == ""
    assert log.append_sync(body(3)).seq == 3
    log.close()
    assert verify(path).ok
    types = [json.loads(line)["type"] for line in path.read_text().splitlines()]
    assert types == ["decision", "audit_recovered", "decision"]


def test_file_replaced_is_not_recovered_automatically(path: Path) -> None:
    """A trail removed underneath is someone else's doing: it stays refused until reopened."""
    log = AuditLog(path, recover_every=0.0)
    log.append_sync(body(1))
    path.unlink()
    with pytest.raises(AuditUnavailable, match="removed"):
        log.append_sync(body(2))
    log.maybe_checkpoint()
    assert "until it is reopened" in log.failed
    log.close()


async def test_async_append_fails_closed_too(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The async path raises the same AuditUnavailable."""
    log = AuditLog(path)

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(AuditUnavailable, match="EIO"):
        await log.append(body(1))
    monkeypatch.undo()
    await log.aclose()


def test_file_removed_underneath_fails_closed(path: Path) -> None:
    """Writing to an unlinked file would vanish silently; the log notices and refuses."""
    log = AuditLog(path)
    log.append_sync(body(1))
    path.unlink()
    with pytest.raises(AuditUnavailable, match="removed"):
        log.append_sync(body(2))
    log.close()


def test_file_replaced_underneath_fails_closed(path: Path) -> None:
    """A different file moved onto the path is noticed as well."""
    log = AuditLog(path)
    path.rename(path.with_name("moved"))
    path.write_bytes(b"")
    with pytest.raises(AuditUnavailable, match="replaced"):
        log.append_sync(body(1))
    log.close()


def test_appends_after_close_are_refused(path: Path) -> None:
    """A closed log is unavailable, not silently dropping records."""
    log = AuditLog(path)
    log.close()
    with pytest.raises(AuditUnavailable, match="closed"):
        log.append_sync(body(1))


def test_stats_report_latency(path: Path) -> None:
    """stats() exposes counts and p50/p99 append latency in milliseconds."""
    with AuditLog(path) as log:
        for i in range(5):
            log.append_sync(body(i))
        stats = log.stats()
    assert stats["records"] == 5
    assert 0 < stats["p50_ms"] <= stats["p99_ms"]


def test_bench_append_reports_group_commit(tmp_path: Path) -> None:
    """The bench writes n records and reports throughput, latency and fsyncs per record."""
    result = bench_append(tmp_path / "bench.jsonl", 400, 16)
    assert result["records"] == 400
    assert 0 < result["fsyncs"] <= 400
    assert {"appends_per_s", "p50_ms", "p99_ms", "fsyncs_per_record"} <= result.keys()
    assert verify(tmp_path / "bench.jsonl").count == 400


def _chain(path: Path) -> Any:
    from broker.audit.file import chain_files

    lines = [line for f in chain_files(path) for line in f.read_bytes().splitlines(True)]
    return verify_lines(lines), lines


def test_rotation_seals_segments_and_reopen_continues_the_chain(path: Path) -> None:
    """Past the size bound the log seals the segment; the next one's head continues the
    chain, its head is anchored by a checkpoint, and a reopen reads only the active one."""
    signer = InMemorySigner()
    with AuditLog(path, signer=signer, agent="a1", segment_bytes=1200) as log:
        for i in range(12):
            log.append_sync(body(i))
            log.wait_checkpoints()
    first = json.loads(path.read_text().splitlines()[0])["seq"]
    sealed = sorted(path.parent.glob(f"{path.name}.seg-*"))
    assert len(sealed) >= 2
    result, lines = _chain(path)
    assert result.ok, result.problem
    heads = [json.loads(line) for line in lines if b'"segment_start"' in line]
    assert len(heads) == len(sealed)
    assert all(h["previous_segment"].startswith(path.name + ".seg-") for h in heads)
    checkpoints = [json.loads(line)["head_seq"] for line in lines if b'"checkpoint"' in line]
    assert any(seq in checkpoints for seq in (h["seq"] for h in heads))  # anchored heads
    with AuditLog(path, segment_bytes=1 << 20) as reopened:
        assert reopened.segment_first == first
        assert reopened.append_sync(body(99)).seq == result.count + 1
    assert _chain(path)[0].ok


def test_rotation_by_age_with_injected_clock(path: Path) -> None:
    """A segment older than segment_age is sealed at the next append."""
    clock = FakeClock()
    with AuditLog(path, clock=clock, segment_age=60.0) as log:
        log.append_sync(body(1))
        clock.now += 61
        log.append_sync(body(2))
        assert log.segment_first == 3
    assert len(list(path.parent.glob(f"{path.name}.seg-*"))) == 1
    assert _chain(path)[0].ok


def test_crash_between_seal_and_new_segment_continues_from_the_sealed_one(path: Path) -> None:
    """The active file missing after a rename (a crash mid-rotation): the chain continues
    from the newest sealed segment's last record."""
    with AuditLog(path) as log:
        for i in range(3):
            log.append_sync(body(i))
    path.rename(path.with_name(f"{path.name}.seg-{1:012d}"))
    with AuditLog(path) as log:
        assert log.append_sync(body(4)).seq == 4
    assert _chain(path)[0].ok


def test_on_head_is_called_once_when_the_head_reaches_wake_at(tmp_path: Path) -> None:
    """The owner waiting for N more records is told once, on the commit that reaches it."""
    log = AuditLog(tmp_path / "audit.jsonl", clock=FakeClock())
    heads: list[int] = []
    log.on_head = lambda: heads.append(log.head[0])
    log.wake_at = 3
    for i in range(5):
        log.append_sync(body(i))
    assert heads == [3]
    assert log.wake_at is None
    log.close()
