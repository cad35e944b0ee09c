"""The durable audit log: recovery on open, group-committed appends, signed checkpoints.

Invariants:

- An append returns only after its line is written *and* fsync'ed. One writer thread owns the
  file; it drains every append queued while the previous fsync ran and commits them with one
  write and one fsync (group commit), assigning ``seq`` in write order.
- Any write, fsync or "the file is no longer at its path" failure puts the log in a failed
  state: the pending and every later append raise ``AuditUnavailable``. Fail closed: the
  broker must not act on a decision it could not record. A transient failure (a full disk,
  an I/O error) is retried by the writer every ``recover_every`` seconds: the file is cut
  back to its last durable record and an ``audit_recovered`` record is written; once that is
  durable, appends are accepted again. A file removed or replaced needs a reopen.
- On open, a torn final line (a crash mid-write) is moved aside to ``<path>.torn-<n>`` and the
  chain continues from the last good record; damage anywhere else refuses to open. Only the
  active segment is read (``broker.audit.file``): past ``segment_bytes`` or ``segment_age``
  the writer seals it and starts the next, whose first record continues the chain.
- Checkpoints are signed off the writer thread, so a slow or absent Vault delays checkpoints,
  never appends. A failed checkpoint is noted and retried after ``checkpoint_retry`` seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import json
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from broker.audit.checkpoints import TICK, Checkpoints, Superseded, Tick, signs_sealed_segment
from broker.audit.file import (
    fsync_dir,
    open_locked,
    recover,
    rotate,
    set_aside,
    unavailable,
    write_all,
)
from broker.audit.pending import Pending, fail_all, wake
from broker.audit.records import (
    CHECKPOINT,
    RESERVED,
    CheckpointSigner,
    Record,
    canonical,
    iso_utc,
    seal,
)
from broker.core.errors import AuditUnavailable

__all__ = ["AuditLog"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]


_STOP = object()
_TRANSIENT = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})


class AuditLog(Checkpoints):
    """An append-only, hash-chained, fsync'ed audit file. Open it once per process."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        signer: CheckpointSigner | None = None,
        agent: str = "",
        clock: Clock = time.time,
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 60.0,
        checkpoint_retry: float = 5.0,
        max_batch: int = 1024,
        latency_window: int = 10_000,
        recover_every: float = 1.0,
        segment_bytes: int = 4 << 20,
        segment_age: float = 3600.0,
    ) -> None:
        self.path = Path(path)
        self.notes: list[str] = []
        self._signer, self._agent, self._clock = signer, agent, clock
        self._every, self._interval, self._retry = (
            checkpoint_every,
            checkpoint_interval,
            checkpoint_retry,
        )
        self._max_batch = max_batch
        # Rotation: a segment is sealed past either bound; ``on_rotate`` (called on the
        # writer thread) lets the owner write a usage snapshot into the new segment.
        self._segment_bytes, self._segment_age = segment_bytes, segment_age
        self.on_rotate: Callable[[], None] | None = None
        # ``on_head`` is called (on the writer thread, once) when the head reaches
        # ``wake_at``: an owner waiting for N more records sleeps instead of polling the head.
        self.on_head: Callable[[], None] | None = None
        self.wake_at: int | None = None
        self._fd = open_locked(self.path)
        try:
            found = recover(self.path, self._fd)
            if found.torn:
                self.notes.append(set_aside(self.path, self._fd, found))
            fsync_dir(self.path.parent)
            stat = os.fstat(self._fd)
        except OSError as exc:
            os.close(self._fd)
            raise unavailable(self.path, exc) from exc
        except BaseException:
            os.close(self._fd)
            raise
        self._identity = (stat.st_dev, stat.st_ino)
        self._good_bytes = stat.st_size  # the file's length after the last durable record
        self._recoverable = False
        self._recover_every, self._recover_at = recover_every, 0.0
        # (seq, hash) of the last durable record, one attribute so readers never see a mix.
        self._tip = (found.count, found.head_hash)
        self.segment_first = found.first_seq
        self._segment_started = clock()
        self._failed = ""
        self._closed = self._stopped = False
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Pending | object] = queue.SimpleQueue()
        self._latencies: deque[float] = deque(maxlen=latency_window)
        self._counters = {"appends": 0, "records": 0, "fsyncs": 0, "batches": 0}
        self._ckpt = {"ok": 0, "failed": 0}
        self.last_checkpoint_error = ""
        # Non-checkpoint records written, and how many of them the last checkpoint covers.
        self._data, self._data_signed = found.data, found.data_signed
        self._signed_at = clock()
        self._not_before = 0.0
        self._inflight: concurrent.futures.Future[None] | None = None
        self._signing = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="audit-ckpt")
        self._writer = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._writer.start()

    # --- appending ------------------------------------------------------------------------

    async def append(self, body: Mapping[str, Any], *, owned: bool = False) -> Record:
        """Seal and durably write ``body``; returns once it is on disk. ``owned``: the caller
        hands the body over and never touches it again, so no defensive copy is taken."""
        started = time.perf_counter()
        waiter: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        self._submit(body, waiter=waiter, owned=owned)
        record = await waiter
        self._latencies.append(time.perf_counter() - started)
        return record

    def append_sync(self, body: Mapping[str, Any]) -> Record:
        started = time.perf_counter()
        record = self._submit(body).result()
        self._latencies.append(time.perf_counter() - started)
        return record

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last durable record."""
        return self._tip

    @property
    def failed(self) -> str:
        return self._failed

    def _submit(
        self,
        body: Mapping[str, Any],
        *,
        internal: bool = False,
        waiter: asyncio.Future[Record] | None = None,
        owned: bool = False,
    ) -> concurrent.futures.Future[Record]:
        clash = RESERVED.intersection(body)
        if clash:
            raise ValueError(f"record body may not set {sorted(clash)}: the chain owns them")
        if body.get("type") == CHECKPOINT and not internal:
            raise ValueError("only the log itself writes checkpoint records")
        # A snapshot, so a caller mutating its dict after append cannot change the record.
        snapshot: dict[str, Any] = dict(body) if owned else _json_copy(body)
        pending = Pending(snapshot, concurrent.futures.Future(), waiter)
        with self._lock:
            if self._failed:
                raise AuditUnavailable(self._failed)
            if self._stopped or (self._closed and not internal):
                raise AuditUnavailable(f"audit trail {self.path} is closed")
            self._counters["appends"] += 1
            self._queue.put(pending)
        return pending.future

    # --- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            items = self._take()
            if self._failed:
                self._try_recover()
            batch = [
                i
                for i in items
                if isinstance(i, Pending) and i.future.set_running_or_notify_cancel()
            ]
            everyone = list(batch)  # _commit drops records it refuses from ``batch``
            try:
                written = self._commit(batch) if batch else []
            except Exception as exc:  # a bug must fail closed, not leave appenders hanging
                log.exception("audit writer failed")
                self._fail(OSError(errno.EIO, f"internal error: {type(exc).__name__}"))
                fail_all(batch, self._failed)
                written = []
            # Scheduled before the appenders wake, so a caller's wait_checkpoints() sees it.
            self._maybe_checkpoint()
            for pending, record in zip(batch, written, strict=False):
                pending.succeed(record)
            wake(everyone)
            for tick in items:
                if isinstance(tick, Tick):
                    tick.done.set()
            if _STOP in items:
                self._drain_after_stop()
                return

    def _take(self) -> list[Pending | object]:
        """Everything queued (up to max_batch), waiting for at least one item, or a second
        while something may fall due without one (see ``_idle_timeout``)."""
        try:
            items = [self._queue.get(timeout=self._idle_timeout())]
        except queue.Empty:
            return [TICK]  # an idle log still considers its interval checkpoint
        while len(items) < self._max_batch:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _idle_timeout(self) -> float | None:
        """None (sleep until an item comes) when every record is signed and nothing is in
        flight or failed: an idle sidecar's writer then never wakes. Otherwise a second, for
        the interval checkpoint, its retry, or the recovery of a failed trail."""
        settled = self._inflight is None or self._inflight.done()
        if (
            not self._failed
            and settled
            and (self._signer is None or self._data == self._data_signed)
        ):
            return None
        return 1.0

    def _drain_after_stop(self) -> None:
        with self._lock:
            self._stopped = True
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Pending) and item.future.set_running_or_notify_cancel():
                fail_all([item], f"audit trail {self.path} is closed")
                wake([item])

    def _commit(self, batch: list[Pending]) -> list[Record]:
        """Write and fsync the batch; the caller resolves the futures with what is returned."""
        if self._failed:
            fail_all(batch, self._failed)
            return []
        records, (seq, prev) = [], self._tip
        sealed: list[Pending] = []
        for item in batch:
            if signs_sealed_segment(item.body, self.segment_first):
                item.fail(Superseded("the checkpoint signs a head in a sealed segment"))
                continue
            try:
                record = seal(item.body, prev, seq + 1)
            except (TypeError, ValueError) as exc:
                # An owned body that is not strict JSON: refuse that record alone; the chain
                # and the other appenders carry on.
                item.fail(AuditUnavailable(f"record refused: {exc}"))
                continue
            seq, prev = seq + 1, record.hash
            records.append(record)
            sealed.append(item)
        batch[:] = sealed
        try:
            write_all(self._fd, b"".join(r.line for r in records))
            os.fsync(self._fd)
            self._counters["fsyncs"] += 1
            self._check_identity()
        except OSError as exc:
            self._fail(exc)
            fail_all(batch, self._failed)
            return []
        self._tip = (seq, prev)
        if self.wake_at is not None and seq >= self.wake_at and self.on_head is not None:
            self.wake_at = None
            self.on_head()
        self._good_bytes += sum(len(r.line) for r in records)
        self._data += sum(1 for item in batch if item.body.get("type") != CHECKPOINT)
        self._counters["records"] += len(batch)
        self._counters["batches"] += 1
        if self._good_bytes >= self._segment_bytes or (
            self._clock() - self._segment_started >= self._segment_age
        ):
            self._rotate()
        return records

    def _rotate(self) -> None:
        """Seal the active segment and start the next (its head anchored by the next
        checkpoint, which is due at once). A failure fails the log like a failed write."""
        head = {"timestamp": iso_utc(self._clock()), "agent_id": self._agent}
        try:
            done = rotate(self.path, self._fd, self._tip, head)
        except OSError as exc:
            self._fail(exc)
            return
        self._fd, self._identity = done.fd, done.identity
        self._tip = (done.record.seq, done.record.hash)
        self.segment_first, self._segment_started = done.record.seq, self._clock()
        self._good_bytes = len(done.record.line)
        self._data += 1
        self._signed_at = -float("inf")  # anchor the new segment's head now
        self._not_before = 0.0
        log.info("audit trail %s: sealed %s", self.path, done.sealed.name)
        if self.on_rotate is not None:
            self.on_rotate()

    def _check_identity(self) -> None:
        """The file must still be the one we opened: writes to an unlinked or replaced file
        would succeed and be lost."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError as exc:
            raise OSError(errno.ENOENT, "the file was removed") from exc
        if (stat.st_dev, stat.st_ino) != self._identity:
            raise OSError(errno.ESTALE, "the file was replaced")

    def _fail(self, exc: OSError) -> None:
        name = errno.errorcode.get(exc.errno or 0, "EIO")
        reason = exc.strerror or str(exc)
        # A full disk or a failing write may pass; a file removed or replaced under the
        # sidecar is someone else's doing and needs an operator.
        self._recoverable = exc.errno in _TRANSIENT
        until = "it is writable again" if self._recoverable else "it is reopened"
        with self._lock:
            self._failed = (
                f"audit trail {self.path} cannot be written: {name} ({reason}); "
                f"appends are refused until {until}"
            )
        log.error("%s", self._failed)

    def _try_recover(self) -> None:
        """On the writer thread, at most every ``recover_every`` s while failed: cut the file
        back to its last durable record and write an ``audit_recovered`` record. Once that
        record is durable the trail is writable again, and appends are accepted."""
        now = time.monotonic()
        if not self._recoverable or self._closed or now < self._recover_at:
            return
        self._recover_at = now + self._recover_every
        seq, prev = self._tip
        body = {
            "type": "audit_recovered",
            "timestamp": iso_utc(self._clock()),
            "agent_id": self._agent,
            "failure": self._failed,
        }
        record = seal(body, prev, seq + 1)
        try:
            os.ftruncate(self._fd, self._good_bytes)  # a torn partial batch goes
            write_all(self._fd, record.line)
            os.fsync(self._fd)
            self._check_identity()
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._good_bytes)
            return
        self._tip, self._good_bytes = (seq + 1, record.hash), self._good_bytes + len(record.line)
        self._data += 1
        with self._lock:
            failure, self._failed = self._failed, ""
        log.warning("audit trail %s is writable again (was: %s)", self.path, failure)

    # --- closing and stats ----------------------------------------------------------------

    def close(self, *, final_checkpoint: bool = True) -> None:
        """Stop the writer; with a signer, first sign the final head so a cut is detectable."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.wait_checkpoints()
        if (
            final_checkpoint
            and self._signer
            and not self._failed
            and self._data > self._data_signed
        ):
            # Through the signing executor: serialised after any checkpoint still in flight.
            self._signing.submit(self._checkpoint, self._tip, self._data).result()
        self._queue.put(_STOP)
        self._writer.join()
        self._signing.shutdown(wait=True)
        os.close(self._fd)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stats(self) -> dict[str, float]:
        """Counters and append latency (ms) over the last ``latency_window`` appends."""
        ordered = sorted(self._latencies)

        def pct(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 if ordered else 0.0

        return {
            **self._counters,
            "checkpoints": self._ckpt["ok"],
            "checkpoint_failures": self._ckpt["failed"],
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
        }


def _json_copy(body: Mapping[str, Any]) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(canonical(dict(body)))
    return copy
