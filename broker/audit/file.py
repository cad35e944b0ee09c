"""The audit file on disk: open it locked, recover its chain, set a torn tail aside, and
the segments it rotates into.

The trail is a chain of segments: the active one at ``<path>``, sealed ones beside it at
``<path>.seg-<first seq>`` (the names sort in chain order). A segment's first record
continues the chain of the one before (its ``seq`` and ``prev`` follow on), so start-up
verifies only the active segment, starting from the seq and hash its first record claims,
and ``broker audit verify`` walks every segment as one chain."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.audit.records import GENESIS, ChainVerifier, Record, parse_line, seal
from broker.core.errors import AuditUnavailable

log = logging.getLogger("broker.audit.log")


@dataclass(frozen=True)
class Recovered:
    count: int
    head_hash: str
    good_bytes: int
    torn: bytes
    data: int  # non-checkpoint records
    data_signed: int  # non-checkpoint records before the last checkpoint
    first_seq: int = 1  # the active segment's first seq


SEGMENT_START = "segment_start"


def segment_name(path: Path, first_seq: int) -> Path:
    return path.with_name(f"{path.name}.seg-{first_seq:012d}")


def sealed_segments(path: Path) -> list[Path]:
    """The sealed segments of the trail at ``path``, oldest first."""
    return sorted(p for p in path.parent.glob(f"{path.name}.seg-*") if p.name[-12:].isdigit())


def chain_files(path: Path) -> list[Path]:
    """Every file of the trail in chain order: the sealed segments, then the active one."""
    return [*sealed_segments(path), *([path] if path.exists() else [])]


def _last_line(path: Path) -> bytes:
    with path.open("rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - (1 << 20)))
        lines = fh.read().splitlines()
    return lines[-1] if lines else b""


def _chain_start(path: Path, first_line: bytes) -> tuple[int, str]:
    """(seq, hash) the active segment continues from: what its first record claims, or the
    end of the newest sealed segment when the active one is empty (a crash mid-rotation)."""
    fields = parse_line(first_line.rstrip(b"\n"))[0] if first_line else None
    if fields is not None and type(fields.get("seq")) is int and fields["seq"] > 1:
        return fields["seq"] - 1, str(fields.get("prev", ""))
    sealed = sealed_segments(path)
    if first_line or not sealed:
        return 0, GENESIS
    last = parse_line(_last_line(sealed[-1]))[0] or {}
    return int(last.get("seq", 0)), str(last.get("hash", GENESIS))


def open_locked(path: Path) -> int:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise unavailable(path, exc) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.fchmod(fd, 0o600)
    except BlockingIOError as exc:
        os.close(fd)
        raise AuditUnavailable(f"audit trail {path} is held open by another writer") from exc
    except OSError as exc:
        os.close(fd)
        raise unavailable(path, exc) from exc
    return fd


def unavailable(path: Path, exc: OSError) -> AuditUnavailable:
    name = errno.errorcode.get(exc.errno or 0, "EIO")
    return AuditUnavailable(f"audit trail {path} cannot be opened: {name} ({exc.strerror})")


def recover(path: Path, fd: int) -> Recovered:
    """Verify the chain; a bad *final* line that is torn or unparsable is returned as ``torn``."""
    verifier = ChainVerifier()
    good = data = data_signed = 0
    with os.fdopen(os.dup(fd), "rb") as reader:
        reader.seek(0)
        verifier.count, verifier.head_hash = _chain_start(path, reader.readline())
        first_seq = verifier.count + 1
        reader.seek(0)
        for line in reader:
            seen = verifier.last_checkpoint
            problem = verifier.feed(line)
            if not problem:
                good += len(line)
                if verifier.last_checkpoint is seen:
                    data += 1
                else:
                    data_signed = data
                continue
            is_last = not reader.read(1)
            if is_last and (not line.endswith(b"\n") or parse_line(line[:-1])[0] is None):
                return Recovered(
                    verifier.count, verifier.head_hash, good, line, data, data_signed, first_seq
                )
            raise AuditUnavailable(
                f"audit trail {path} is damaged at seq {verifier.expected_seq}: {problem}; "
                "run `broker audit verify` and move the file aside before writing again"
            )
    return Recovered(verifier.count, verifier.head_hash, good, b"", data, data_signed, first_seq)


def set_aside(path: Path, fd: int, found: Recovered) -> str:
    """Move the torn tail to ``<path>.torn-<n>`` (never dropped), then cut the file."""
    for n in range(1, 10_000):
        aside = path.with_name(f"{path.name}.torn-{n}")
        try:
            out = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            raise unavailable(aside, exc) from exc
        try:
            write_all(out, found.torn)
            os.fsync(out)
        finally:
            os.close(out)
        os.ftruncate(fd, found.good_bytes)
        os.fsync(fd)
        note = (
            f"set aside {len(found.torn)} torn byte(s) after seq {found.count} of {path} "
            f"to {aside}; the chain continues from seq {found.count}"
        )
        log.warning("%s", note)
        return note
    raise AuditUnavailable(f"too many torn files beside {path}; clean them up first")


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Rotated:
    fd: int
    identity: tuple[int, int]
    record: Record
    sealed: Path


def rotate(path: Path, fd: int, tip: tuple[int, str], head: dict[str, Any]) -> Rotated:
    """Seal the active segment (renamed to its ``.seg-`` name) and start a new one at
    ``path`` whose first record (``head`` plus the link to the sealed one) continues the
    chain. The old descriptor is closed only once the new segment's head is durable."""
    seq, prev = tip
    sealed = segment_name(path, _first_seq(fd, seq))
    os.rename(path, sealed)
    fsync_dir(path.parent)
    new_fd = open_locked(path)
    try:
        body = {**head, "type": SEGMENT_START, "previous_segment": sealed.name}
        body |= {"previous_seq": seq, "previous_hash": prev}
        record = seal(body, prev, seq + 1)
        write_all(new_fd, record.line)
        os.fsync(new_fd)
        fsync_dir(path.parent)
        stat = os.fstat(new_fd)
    except BaseException:
        os.close(new_fd)
        raise
    os.close(fd)
    return Rotated(new_fd, (stat.st_dev, stat.st_ino), record, sealed)


def _first_seq(fd: int, last_seq: int) -> int:
    with os.fdopen(os.dup(fd), "rb") as reader:
        reader.seek(0)
        fields = parse_line(reader.readline().rstrip(b"\n"))[0] or {}
    first = fields.get("seq")
    return first if type(first) is int else last_seq
