"""The audit file on disk: open it locked, recover its chain, set a torn tail aside.

These run before the writer thread exists (``broker.auditlog``), and again when the writer
recovers from a failed write: the file is cut back to its last durable record."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from broker.audit import ChainVerifier, parse_line
from broker.errors import AuditUnavailable

log = logging.getLogger("broker.auditlog")


@dataclass(frozen=True)
class Recovered:
    count: int
    head_hash: str
    good_bytes: int
    torn: bytes
    data: int  # non-checkpoint records
    data_signed: int  # non-checkpoint records before the last checkpoint


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
                return Recovered(verifier.count, verifier.head_hash, good, line, data, data_signed)
            raise AuditUnavailable(
                f"audit trail {path} is damaged at seq {verifier.expected_seq}: {problem}; "
                "run `broker audit verify` and move the file aside before writing again"
            )
    return Recovered(verifier.count, verifier.head_hash, good, b"", data, data_signed)


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
