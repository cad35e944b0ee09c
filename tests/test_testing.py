"""The shipped test doubles behave as the adapters they stand in for."""

from __future__ import annotations

import pytest

from broker.core.errors import AuditUnavailable
from broker.testing import FakeClock, InMemoryAuditSink


def test_fake_clock_moves_only_when_told() -> None:
    """Reading the clock never moves it; advance does, by exactly the amount."""
    clock = FakeClock(100.0)
    assert clock() == clock() == 100.0
    clock.advance(2.5)
    assert clock() == 102.5


async def test_in_memory_audit_sink_keeps_order_and_fails_closed() -> None:
    """Records keep their order and sequence; a failing sink raises like the real trail."""
    sink = InMemoryAuditSink()
    await sink.append({"type": "decision", "n": 1})
    await sink.append({"type": "decision", "n": 2})
    assert [(r["seq"], r["n"]) for r in sink.records] == [(1, 1), (2, 2)]
    sink.fail = AuditUnavailable("disk full")
    with pytest.raises(AuditUnavailable):
        await sink.append({"type": "decision", "n": 3})
    assert len(sink.records) == 2
