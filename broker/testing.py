"""Test doubles for unit tests of the pure core, shipped in the package (as structlog does).

Integration tests never use these: they run against the real OpenBao and PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.audit.records import InMemorySigner

__all__ = ["FakeClock", "InMemoryAuditSink", "InMemorySigner"]


@dataclass
class FakeClock:
    """A clock that moves only when told: ``clock()`` reads it, ``advance`` moves it."""

    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class InMemoryAuditSink:
    """Keeps appended audit bodies in order; ``fail`` makes the next appends raise."""

    records: list[dict[str, Any]] = field(default_factory=list)
    fail: Exception | None = None

    async def append(self, body: Mapping[str, Any], *, owned: bool = False) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        record = {"seq": len(self.records) + 1, **body}
        self.records.append(record)
        return record
