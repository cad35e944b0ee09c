"""How a durable append reaches its caller: the writer thread settles each pending append, then
wakes the awaiting coroutines with one call per event loop for the whole batch.

The writer thread owns the file; appenders wait on a future. A batch of a group commit is
settled here, off the event loop, so a loop is woken once per batch rather than once per record.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from broker.audit.records import Record
from broker.core.errors import AuditUnavailable

__all__ = ["Pending", "fail_all", "wake"]


@dataclass
class Pending:
    body: dict[str, Any]
    future: concurrent.futures.Future[Record]
    # For ``append``: the awaiting coroutine's future, settled once per batch per event loop
    # (one wake-up of the loop for a whole group commit, not one per record).
    waiter: asyncio.Future[Record] | None = None
    # What the writer settled ``future`` with, kept here too: the event loop reads it
    # without taking the future's lock (three locks per record showed in the mint profile).
    outcome: tuple[Record | None, BaseException | None] | None = None

    def succeed(self, record: Record) -> None:
        self.outcome = (record, None)
        self.future.set_result(record)

    def fail(self, exc: BaseException) -> None:
        self.outcome = (None, exc)
        self.future.set_exception(exc)


Settled = tuple[asyncio.Future[Record], Record | None, BaseException | None]


def _settle(settled: list[Settled]) -> None:
    for waiter, record, exc in settled:
        if waiter.done():
            continue
        if exc is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(record)  # type: ignore[arg-type]  # set whenever exc is None


def _follow(waiter: asyncio.Future[Record], done: concurrent.futures.Future[Record]) -> None:
    if waiter.done():
        return
    if done.cancelled():
        waiter.cancel()
    elif (exc := done.exception()) is not None:
        waiter.set_exception(exc)
    else:
        waiter.set_result(done.result())


def _settle_later(
    waiter: asyncio.Future[Record],
) -> Callable[[concurrent.futures.Future[Record]], None]:
    def callback(done: concurrent.futures.Future[Record]) -> None:
        waiter.get_loop().call_soon_threadsafe(_follow, waiter, done)

    return callback


def wake(batch: list[Pending]) -> None:
    """Settle the awaiting coroutines of a finished batch: one call per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Settled]] = {}
    for item in batch:
        if item.waiter is None:
            continue
        if item.outcome is None:  # not settled by the writer (cancelled): follow the future
            item.future.add_done_callback(_settle_later(item.waiter))
            continue
        by_loop.setdefault(item.waiter.get_loop(), []).append((item.waiter, *item.outcome))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            loop.call_soon_threadsafe(_settle, settled)


def fail_all(batch: list[Pending], reason: str) -> None:
    for item in batch:
        item.fail(AuditUnavailable(reason))
