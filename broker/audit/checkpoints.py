"""The audit log's checkpoints: the head is signed off the writer thread, so a slow or absent
Vault delays checkpoints, never appends.

A checkpoint is due after ``checkpoint_every`` records or ``checkpoint_interval`` seconds; it is
signed on its own thread, written through the log like any record and its head published. A
failure is noted and retried after ``checkpoint_retry`` seconds. A rotation overtakes a
checkpoint still in flight: the new segment's head is signed next.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.audit.pending import Pending
from broker.audit.records import (
    CHECKPOINT,
    CHECKPOINT_WINDOW,
    CheckpointSigner,
    Record,
    checkpoint_body,
    checkpoint_message,
    iso_utc,
)
from broker.core.errors import AuditUnavailable, BrokerError

__all__ = ["TICK", "Checkpoints", "Superseded", "Tick", "signs_sealed_segment"]

log = logging.getLogger("broker.audit.log")

TICK = object()  # wakes the writer to consider a checkpoint


@dataclass
class Tick:
    """A tick whose sender waits until the writer has considered a checkpoint."""

    done: threading.Event


class Checkpoints:
    """The checkpoint half of ``AuditLog``: the state it keeps and the methods that sign."""

    _signer: CheckpointSigner | None
    _agent: str
    _clock: Callable[[], float]
    _every: int
    _interval: float
    _retry: float
    _closed: bool
    _stopped: bool
    _failed: str
    _tip: tuple[int, str]
    _data: int
    _data_signed: int
    _signed_at: float
    _not_before: float
    _inflight: concurrent.futures.Future[None] | None
    _signing: concurrent.futures.ThreadPoolExecutor
    _ckpt: dict[str, int]
    _queue: queue.SimpleQueue[Pending | object]
    last_checkpoint_error: str

    if TYPE_CHECKING:

        def _submit(
            self, body: Mapping[str, Any], *, internal: bool = False
        ) -> concurrent.futures.Future[Record]: ...

    def maybe_checkpoint(self, timeout: float = 10.0) -> None:
        """Have the writer consider a checkpoint now (the writer also does so after each batch
        and about once a second when idle); returns once it has, not when it is signed."""
        if self._stopped:
            return
        tick = Tick(threading.Event())
        self._queue.put(tick)
        tick.done.wait(timeout)

    def wait_checkpoints(self, timeout: float | None = None) -> None:
        """Block until the checkpoint being signed, if any, is written and published."""
        inflight = self._inflight
        if inflight is not None:
            concurrent.futures.wait([inflight], timeout=timeout)

    def _maybe_checkpoint(self) -> None:
        if self._signer is None or self._closed or self._failed or self._data == self._data_signed:
            return
        if self._inflight is not None and not self._inflight.done():
            return
        now = self._clock()
        if now < self._not_before:
            return
        if self._data - self._data_signed >= self._every or now - self._signed_at >= self._interval:
            head, data = self._tip, self._data
            self._inflight = self._signing.submit(self._checkpoint, head, data)

    def _checkpoint(self, head: tuple[int, str], data: int) -> None:
        """Runs on the signing thread: sign, write the checkpoint record, publish the head."""
        assert self._signer is not None
        head_seq, head_hash = head
        try:
            message = checkpoint_message(head_seq, head_hash, self._agent)
            signature, version = self._signer.sign(message)
            when = iso_utc(self._clock())
            body = checkpoint_body(head_seq, head_hash, signature, version, when, agent=self._agent)
            if self._tip[0] - head_seq >= CHECKPOINT_WINDOW:
                raise AuditUnavailable("the signed head fell too far behind; signing again later")
            self._submit(body, internal=True).result()
            self._signer.publish_head(self._agent, head_seq, head_hash, signature)
        except Superseded:
            return  # a rotation overtook it; the new segment's head is signed next
        except Exception as exc:  # whatever Vault did, appends go on and we retry later
            detail = exc.detail if isinstance(exc, BrokerError) else type(exc).__name__
            self._ckpt["failed"] += 1
            self.last_checkpoint_error = detail
            self._not_before = self._clock() + self._retry
            log.warning("audit checkpoint at seq %d failed, will retry: %s", head_seq, detail)
            return
        self._ckpt["ok"] += 1
        self._data_signed, self._signed_at = data, self._clock()


class Superseded(AuditUnavailable):
    """A checkpoint overtaken by a rotation: not a failure, nothing to retry later."""


def signs_sealed_segment(body: Mapping[str, Any], segment_first: int) -> bool:
    # A checkpoint signed before a rotation would land in the new segment, signing a head
    # the segment does not hold: refused, and the next checkpoint signs the new head.
    return body.get("type") == CHECKPOINT and int(body.get("head_seq") or 0) < segment_first
