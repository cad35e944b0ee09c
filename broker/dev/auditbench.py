"""``broker bench audit``: durable appends per second, latency and fsyncs per record."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from broker.audit.log import AuditLog


def bench_append(
    path: str | os.PathLike[str], n: int = 20_000, concurrency: int = 32
) -> dict[str, float]:
    """Append ``n`` decision-sized records from ``concurrency`` concurrent tasks to a fresh
    log at ``path``; returns throughput, latency percentiles and fsyncs per record."""
    return asyncio.run(_bench(Path(path), n, concurrency))


async def _bench(path: Path, n: int, concurrency: int) -> dict[str, float]:
    log = AuditLog(path, latency_window=n)
    body = {
        "type": "decision",
        "agent_id": "bench-agent",
        "workflow": "bench",
        "inputs": {"ticket_id": "CS-19422", "amount_usd": 120},
        "tool_calls": [{"tool": "stripe.refund", "status": "ok"}],
        "policy_version": "bench",
        "outcome": "allow",
        "credential_id": "jti-0123456789abcdef",
        "timestamp": "2026-03-18T14:02:11Z",
    }

    async def worker(w: int) -> None:
        for i in range(w, n, concurrency):
            await log.append({**body, "request_id": f"req_{i}"})

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await log.aclose()
    stats = log.stats()
    return {
        "records": n,
        "concurrency": concurrency,
        "seconds": elapsed,
        "appends_per_s": n / elapsed,
        "p50_ms": stats["p50_ms"],
        "p99_ms": stats["p99_ms"],
        "fsyncs": stats["fsyncs"],
        "fsyncs_per_record": stats["fsyncs"] / n,
    }
