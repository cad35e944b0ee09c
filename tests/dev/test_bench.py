"""``broker bench mint``: the client schedule (pure) and runs through a live sidecar."""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import pytest

from broker.dev.bench import BENCH_MANIFEST, Result, Schedule, drive
from broker.dev.devstack import DevServer
from tests.harness import running_sidecar

BODY = {"action": "bench.jwt", "inputs": {"n": 1}}


def test_an_open_loop_schedule_staggers_the_clients_and_keeps_the_rate() -> None:
    """Client i of n first sends at start + i/rate, then every n/rate seconds, until the
    deadline: together exactly rate x duration requests, evenly spread."""
    schedule = Schedule(start=100.0, clients=4, rate=200.0)
    times = {i: list(schedule.times(i, deadline=101.0)) for i in range(4)}
    assert [t[0] for t in times.values()] == pytest.approx([100.0, 100.005, 100.01, 100.015])
    assert all(
        b - a == pytest.approx(0.02) for t in times.values() for a, b in itertools.pairwise(t)
    )
    assert sum(len(t) for t in times.values()) == 200
    merged = sorted(x for t in times.values() for x in t)
    assert all(b - a == pytest.approx(0.005) for a, b in itertools.pairwise(merged))


def test_a_closed_loop_schedule_ends_at_the_deadline() -> None:
    """Without a rate the worker sends at once, again and again, until the deadline passes."""
    schedule = Schedule(start=time.perf_counter(), clients=1, rate=None)
    assert list(schedule.times(0, deadline=time.perf_counter() - 1)) == []
    assert next(schedule.times(0, deadline=time.perf_counter() + 60)) == 0.0


def test_percentiles_come_from_the_sorted_latencies() -> None:
    """p50 and p99 index the sorted sample; an empty sample has none."""
    result = Result("sidecar", 100, 0, 1.0, [float(x) for x in range(100, 0, -1)])
    assert (result.pct(50), result.pct(99), result.rate) == (51.0, 100.0, 100.0)
    assert math.isnan(Result("sidecar", 0, 0, 1.0, []).pct(99))


@pytest.mark.integration
async def test_an_open_loop_run_mints_exactly_the_scheduled_requests(
    openbao: DevServer, tmp_path: Path
) -> None:
    """At 100/s from 4 clients for a second, the sidecar is asked exactly 100 times, answers
    every one with a token, and each latency counts from its scheduled send time."""
    async with running_sidecar(openbao, BENCH_MANIFEST, tmp_path) as h:
        result = await drive(h.url, BODY, concurrency=4, duration=1.0, rate=100.0)
        lines = h.audit_path.read_text().splitlines()
    assert (result.count, result.errors) == (100, 0)
    assert result.label == "sidecar, 100/s offered"
    assert sum('"credential_kind":"jwt"' in line for line in lines) == 100
    assert min(result.latencies_ms) > 0


@pytest.mark.integration
async def test_a_closed_loop_run_counts_what_the_sidecar_minted(
    openbao: DevServer, tmp_path: Path
) -> None:
    """Closed loop: every answered request is a mint the audit trail holds, none refused."""
    async with running_sidecar(openbao, BENCH_MANIFEST, tmp_path) as h:
        result = await drive(h.url, BODY, concurrency=4, duration=0.5)
        lines = h.audit_path.read_text().splitlines()
    assert result.errors == 0
    assert result.count > 0
    assert sum('"credential_kind":"jwt"' in line for line in lines) == result.count
