"""``broker bench mcp``: the gateway's added latency per tool call.

One run starts its own stack (OpenBao and a sidecar for the bench manifest), the bench
upstream (``broker.mcpgw.benchserver``) and a ``broker mcp`` gateway process, then times
sequential ``tools/call``s from the SDK's client: straight to the upstream, and through the
gateway (decision, audit record, JWT mint, upstream call with the token, outcome report),
alternating round by round so that both paths see the same machine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from mcp import Client

from broker.client import AsyncBrokerClient
from broker.dev.bench import BENCH_MANIFEST

Round = dict[str, list[float]]
LABELS = {
    "direct": "tools/call straight to the upstream",
    "gateway": "tools/call through broker mcp",
    "sidecar": "of which the sidecar: credential + outcome report",
}


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def _timed_calls(url: str, calls: int, warmup: int) -> list[float]:
    """Per-call latency in ms, on one client session, after uncounted warm-up calls."""
    latencies = []
    async with Client(url, cache=None) as client:
        for i in range(warmup + calls):
            started = time.perf_counter()
            result = await client.call_tool("echo", {"n": i})
            elapsed = (time.perf_counter() - started) * 1000
            if result.is_error:
                raise RuntimeError(f"bench call failed: {result.content}")
            if i >= warmup:
                latencies.append(elapsed)
    return latencies


async def _timed_mints(socket: str, calls: int, warmup: int) -> list[float]:
    """The sidecar's share: credential + outcome report through broker.client, per call."""
    latencies = []
    async with AsyncBrokerClient(socket) as broker:
        for i in range(warmup + calls):
            started = time.perf_counter()
            cred = await broker.credential("bench.jwt", {"n": i})
            await broker.report_outcome(cred.credential_id, "ok")
            if i >= warmup:
                latencies.append((time.perf_counter() - started) * 1000)
    return latencies


@contextlib.contextmanager
def _process(args: list[str], marker: str) -> Iterator[str]:
    """A child process; yields the rest of its first stdout line that starts with marker."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(marker):
                yield line[len(marker) :].strip()
                break
        else:
            raise RuntimeError(f"{args[2]} exited before it was ready")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _gateway_config(upstream_url: str, path: Path) -> None:
    path.write_text(
        json.dumps(
            {
                "upstreams": {"bench": {"transport": "http", "url": upstream_url}},
                "tools": {"echo": {"upstream": "bench", "action": "bench.jwt"}},
            }
        )
    )


def run_bench(*, calls: int, rounds: int, warmup: int) -> int:
    from broker.dev.stack import up

    stack = up([BENCH_MANIFEST], vault=None, with_postgres=False)
    try:
        with tempfile.TemporaryDirectory(prefix="broker-bench-mcp-") as tmp:
            config = Path(tmp) / "gateway.json"
            with _process([sys.executable, "-m", "broker.mcpgw.benchserver"], "PORT ") as port:
                upstream = f"http://127.0.0.1:{port}/mcp"
                _gateway_config(upstream, config)
                sock = str(stack.sidecars[0].socket)
                gateway_cmd = [sys.executable, "-m", "broker.cli", "mcp", "--config",
                               str(config), "--broker", sock,
                               "--listen", "127.0.0.1:0"]  # fmt: skip
                with _process(gateway_cmd, "broker mcp: serving ") as gateway:
                    paths = {"direct": upstream, "gateway": gateway, "sidecar": sock}
                    _report(_rounds(paths, calls, rounds, warmup))
    finally:
        stack.stop(remove_state=True)
    return 0


def _rounds(paths: dict[str, str], calls: int, rounds: int, warmup: int) -> list[Round]:
    print(f"bench mcp: {rounds} rounds of {calls} sequential calls per path")
    out = []
    for n in range(max(1, rounds)):
        latencies = {
            "direct": asyncio.run(_timed_calls(paths["direct"], calls, warmup)),
            "gateway": asyncio.run(_timed_calls(paths["gateway"], calls, warmup)),
            "sidecar": asyncio.run(_timed_mints(paths["sidecar"], calls, warmup)),
        }
        out.append(latencies)
        cells = " | ".join(
            f"{name} p50 {_pct(v, 50):6.2f} p99 {_pct(v, 99):6.2f} ms"
            for name, v in latencies.items()
        )
        print(f"round {n + 1}: {cells}", flush=True)
    return out


def _report(results: list[Round]) -> None:
    def med(path: str, p: float) -> float:
        return statistics.median(_pct(r[path], p) for r in results)

    for path, what in LABELS.items():
        print(f"median of rounds, {what}: p50 {med(path, 50):.2f} ms, p99 {med(path, 99):.2f} ms")
    print(
        f"added by the gateway: p50 {med('gateway', 50) - med('direct', 50):+.2f} ms, "
        f"p99 {med('gateway', 99) - med('direct', 99):+.2f} ms"
    )
