"""``broker audit verify`` and ``broker audit trace``, run in-process (offline: no Vault)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.audit.log import AuditLog
from broker.audit.records import InMemorySigner
from broker.cli import main


@pytest.fixture(autouse=True)
def no_vault_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VAULT_ADDR", "BAO_ADDR", "VAULT_TOKEN", "BAO_TOKEN", "BROKER_AUDIT_LOG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, signer=InMemorySigner(), agent="a1", checkpoint_every=3) as log:
        for i in range(6):
            log.append_sync(
                {
                    "type": "decision",
                    "agent_id": "a1",
                    "request_id": f"req_{i % 3}",
                    "timestamp": f"2026-03-18T14:02:1{i}Z",
                    "tool_calls": [{"tool": "stripe.refund", "status": "ok"}],
                    "outcome": "allow",
                    "credential_id": f"jti-{i}",
                }
            )
            log.wait_checkpoints()
    return path


def test_verify_intact_trail(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Offline, an intact chain exits 3 (not 0), says the anchors were not checked, and
    prints its count and last checkpoint: never a plain "intact"."""
    assert main(["audit", "verify", str(trail)]) == 3
    out = capsys.readouterr().out
    assert "chain intact, anchors NOT checked" in out
    assert not out.startswith("intact")
    assert "8 records" in out
    assert "last checkpoint at seq 8 signs seq 7" in out
    assert "NOT checked" in out


def test_verify_names_the_first_bad_seq(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Deleting a line exits 1 naming the first bad seq and what is wrong."""
    lines = trail.read_bytes().splitlines(keepends=True)
    trail.write_bytes(b"".join(lines[:2] + lines[3:]))
    assert main(["audit", "verify", str(trail)]) == 1
    out = capsys.readouterr().out
    assert "first bad seq 3" in out
    assert "deleted" in out


def test_verify_flipped_byte(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A changed character inside record 5 is reported at seq 5."""
    lines = trail.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b'"allow"', b'"alloW"')
    trail.write_bytes(b"".join(lines))
    assert main(["audit", "verify", str(trail)]) == 1
    assert "first bad seq 5" in capsys.readouterr().out


def test_verify_missing_file_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that cannot be read is a usage error (2), not a verdict."""
    assert main(["audit", "verify", str(tmp_path / "absent.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_verify_with_unreachable_vault_fails_rather_than_half_checks(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a Vault address configured but unreachable, verify exits 3 (backend unavailable)."""
    code = main(["audit", "verify", str(trail), "--vault-addr", "http://127.0.0.1:9"])
    assert code == 3
    assert "backend_unavailable" in capsys.readouterr().err


def test_trace_prints_every_record_of_a_request(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """trace prints the request's records as JSON lines, in order."""
    assert main(["audit", "trace", "req_1", "--file", str(trail)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["credential_id"] for r in records] == ["jti-1", "jti-4"]


def test_trace_text_format(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--format text prints one readable line per record."""
    assert main(["audit", "trace", "req_2", "--file", str(trail), "--format", "text"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert "stripe.refund=ok" in out[0]
    assert "outcome=allow" in out[0]


def test_trace_reads_broker_audit_log(
    trail: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --file, trace reads the trail named by BROKER_AUDIT_LOG."""
    monkeypatch.setenv("BROKER_AUDIT_LOG", str(trail))
    assert main(["audit", "trace", "req_0"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_trace_unknown_request_exits_1(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No record of the request exits 1 and says so."""
    assert main(["audit", "trace", "req_nope", "--file", str(trail)]) == 1
    assert "no record" in capsys.readouterr().err


def test_bench_audit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`broker bench audit` prints the bench's JSON result."""
    args = ["bench", "audit", "--records", "200", "--concurrency", "8"]
    assert main([*args, "--path", str(tmp_path / "b.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 200


def test_offline_verify_of_a_tail_cut_behind_a_checkpoint_is_not_intact(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The attack offline verify cannot see (the tail cut right after a checkpoint) still
    exits 3 with "NOT checked", not 0 "intact"."""
    lines = trail.read_bytes().splitlines(keepends=True)
    cut = max(i for i, line in enumerate(lines) if b'"checkpoint"' in line)
    trail.write_bytes(b"".join(lines[: cut + 1]))
    assert main(["audit", "verify", str(trail)]) == 3
    assert "NOT checked" in capsys.readouterr().out


def test_verify_walks_sealed_segments_as_one_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trail rotated into segments verifies as one chain; a line deleted from a sealed
    segment is found, named by its seq."""
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, signer=InMemorySigner(), agent="a1", segment_bytes=1500) as log:
        for i in range(20):
            log.append_sync({"type": "decision", "agent_id": "a1", "request_id": f"r{i}"})
    sealed = sorted(tmp_path.glob("audit.jsonl.seg-*"))
    assert len(sealed) >= 3
    assert main(["audit", "verify", str(path)]) == 3
    assert f"in {len(sealed) + 1} segments" in capsys.readouterr().out
    lines = sealed[1].read_bytes().splitlines(keepends=True)
    sealed[1].write_bytes(b"".join(lines[:1] + lines[2:]))
    assert main(["audit", "verify", str(path)]) == 1
    assert "first bad seq" in capsys.readouterr().out


def test_trace_finds_records_in_sealed_segments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`audit trace --file <trail>` reads the sealed segments too: the first request, long
    rotated out of the active file, is still found."""
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, agent="a1", segment_bytes=1500) as log:
        for i in range(20):
            log.append_sync({"type": "decision", "agent_id": "a1", "request_id": f"r{i}"})
    assert "r0" not in path.read_text()
    assert main(["audit", "trace", "r0", "--file", str(path)]) == 0
    assert '"request_id": "r0"' in capsys.readouterr().out


def test_trace_follows_the_credential_and_the_approval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """trace shows the approval steps with the approver and the outcome the agent reported,
    which name only the approval or credential id; another request's records stay out."""
    path = tmp_path / "audit.jsonl"
    rows = [
        {"type": "decision", "request_id": "r1", "outcome": "pending_approval", "approval_id": "a1"},
        {"type": "approval", "event": "approved", "approval_id": "a1", "by": "finance-ops@x.example"},
        {"type": "decision", "request_id": "r1", "outcome": "allow", "approval_id": "a1",
         "credential_id": "c1"},
        {"type": "decision", "request_id": "r2", "outcome": "allow", "credential_id": "c2"},
        {"type": "outcome", "credential_id": "c1", "status": "ok"},
        {"type": "outcome", "credential_id": "c2", "status": "ok"},
    ]  # fmt: skip
    with AuditLog(path, signer=InMemorySigner(), agent="a1", checkpoint_every=100) as log:
        for row in rows:
            log.append_sync({"agent_id": "a1", "timestamp": "2026-03-18T14:02:10Z", **row})
    assert main(["audit", "trace", "r1", "--file", str(path), "--format", "text"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4
    assert "event=approved" in out[1]
    assert "by=finance-ops@x.example" in out[1]
    assert "  outcome  a1  " in out[3]
    assert "status=ok" in out[3]
    assert "credential_id=c1" in out[3]
    assert "c2" not in "\n".join(out)
