"""``broker bench``: mint throughput and latency through a real sidecar socket, side by side
with the raw Vault operation each kind rests on, measured in the same run.

Without ``--socket`` it starts its own stack (OpenBao, PostgreSQL for ``dynamic``, and a
sidecar for ``bench/scopes/bench-agent.yaml``) and stops it afterwards."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_MANIFEST = Path(__file__).resolve().parents[2] / "bench" / "scopes" / "bench-agent.yaml"


@dataclass(frozen=True)
class Result:
    label: str
    count: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def line(self) -> str:
        return (
            f"{self.label:<28} {self.rate:>9.0f}/s  p50 {self.pct(50):6.2f} ms  "
            f"p99 {self.pct(99):6.2f} ms  ({self.count} ok, {self.errors} errors, {self.seconds:.1f}s)"
        )


def register(
    commands: argparse._SubParsersAction[Any], bench: argparse._SubParsersAction[Any]
) -> None:
    """``broker bench mint|restart|control|startup``: a stack measured live."""
    from broker.dev.controlbench import register_control_bench
    from broker.dev.startbench import register_startup_bench

    del commands
    register_bench(bench)
    register_control_bench(bench)
    register_startup_bench(bench)


def register_bench(bench: argparse._SubParsersAction[Any]) -> None:
    p = bench.add_parser("mint", help="mints per second and latency through a sidecar socket")
    p.add_argument("--kind", choices=["jwt", "vault_token", "dynamic"], default="jwt")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument(
        "--rate",
        type=float,
        help="open loop: the clients together offer this many requests per second, and "
        "latency counts from each request's scheduled send time (default: closed loop)",
    )
    p.add_argument("--socket", help="unix:PATH or http://127.0.0.1:PORT of a running sidecar")
    p.add_argument("--action", help="action to request (default: bench.<kind>)")
    p.add_argument("--inputs", default='{"n": 1}')
    p.add_argument("--baseline", action="store_true", help="also measure the raw Vault operation")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before the rounds")
    p.add_argument(
        "--rounds", type=int, default=1, help="alternate sidecar and baseline this many times"
    )
    p.add_argument(
        "--idle",
        type=int,
        default=0,
        help="hold this many idle connections open meanwhile, half with unfinished headers "
        "(reopened as the sidecar closes them)",
    )
    p.set_defaults(func=cmd_bench_mint)
    from broker.dev.restartbench import register_restart_bench

    register_restart_bench(bench)


async def _open(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if url.startswith("unix:"):
        return await asyncio.open_unix_connection(url[5:])
    host, _, port = url.removeprefix("http://").partition(":")
    return await asyncio.open_connection(host, int(port))


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    """One keep-alive HTTP/1.1 round trip; enough HTTP for our own server's answers."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def drive(
    url: str,
    body: dict[str, Any],
    concurrency: int,
    duration: float,
    rate: float | None = None,
) -> Result:
    """``concurrency`` clients on keep-alive connections. A lean client: the load generator
    shares the machine's two cores with the sidecar and Vault, so it must spend as little
    CPU per request as it can.

    Closed loop (``rate`` None): each client sends its next request when the last one
    answered, so the sidecar is saturated and, by Little's law, the mean latency is just
    ``concurrency / throughput``: it measures the queue the clients themselves build.

    Open loop (``rate`` given): the clients together send ``rate`` requests per second on a
    fixed schedule, each client every ``concurrency / rate`` seconds, and a request's latency
    runs from the time the schedule said to send it. A sidecar that falls behind therefore
    shows its whole backlog in the figures instead of slowing the clients down (the
    "coordinated omission" that would otherwise hide it)."""
    import json

    payload = json.dumps(body).encode()
    request = (
        b"POST /v1/credentials HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    deadline = start + duration
    schedule = Schedule(start, concurrency, rate)

    async def worker(index: int) -> None:
        nonlocal errors
        reader, writer = await _open(url)
        try:
            for at in schedule.times(index, deadline):
                if (wait := at - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
                t0 = at if rate else time.perf_counter()
                status, answer = await _exchange(reader, writer, request)
                if status == 200:
                    latencies.append((time.perf_counter() - t0) * 1000)
                else:
                    errors += 1
                    if errors == 1:
                        print(f"first refusal: {status} {answer[:200].decode()}")
        finally:
            writer.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    label = f"sidecar, {rate:.0f}/s offered" if rate else "sidecar"
    return Result(label, len(latencies), errors, time.perf_counter() - start, latencies)


@dataclass(frozen=True)
class Schedule:
    """When each client sends. Without a rate, "now" (closed loop, the caller reads the
    clock); with one, client ``i`` of ``n`` sends at ``start + (i + k * n) / rate``."""

    start: float
    clients: int
    rate: float | None

    def times(self, index: int, deadline: float) -> Iterator[float]:
        if not self.rate:
            while time.perf_counter() < deadline:
                yield 0.0  # already past: the worker sends at once
            return
        for k in itertools.count():
            # Computed afresh, not accumulated, so rounding never adds a request at the end.
            at = self.start + (index + k * self.clients) / self.rate
            if at >= deadline:
                return
            yield at


def threaded(label: str, op: Callable[[], object], concurrency: int, duration: float) -> Result:
    """The raw operation from ``concurrency`` threads, as a Vault client library would."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + duration

    def worker() -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                op()
            except Exception:
                with lock:
                    errors[0] += 1
                continue
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Result(label, len(latencies), errors[0], time.perf_counter() - start, latencies)


def baseline_op(kind: str, addr: str, token: str) -> tuple[str, Callable[[], object]]:
    from broker.vault.session import make_client

    client = make_client(addr, token)
    if kind == "vault_token":
        from broker.vault.tokens import create_token_raw

        return "raw Vault token create", lambda: create_token_raw(
            client, "bench-agent", "bench.vault_token", ["bench-read"], addr
        )
    if kind == "dynamic":
        from broker.vault.database import issue_credential

        return "raw Vault database creds", lambda: issue_credential(
            client, mount="database", role="bench-readonly"
        )
    client.write_data("broker-transit/keys/bench-sign", data={"type": "ed25519"})
    return "raw Vault transit sign", lambda: client.write_data(
        "broker-transit/sign/bench-sign", data={"input": "YmVuY2g="}
    )


def cmd_bench_mint(args: argparse.Namespace) -> int:
    import json
    import os

    body = {"action": args.action or f"bench.{args.kind}", "inputs": json.loads(args.inputs)}
    stack = None
    url, addr, token = (
        args.socket,
        os.environ.get("VAULT_ADDR", ""),
        os.environ.get("VAULT_TOKEN", ""),
    )
    if url is None:
        from broker.dev.stack import up

        stack = up([BENCH_MANIFEST], vault=None, with_postgres=args.kind == "dynamic")
        url, addr, token = (
            f"unix:{stack.sidecars[0].socket}",
            stack.vault_addr,
            stack.operator_token,
        )
    try:
        paced = f" --rate {args.rate:g}" if args.rate else " (closed loop)"
        print(
            f"bench mint --kind {args.kind} --concurrency {args.concurrency} "
            f"--duration {args.duration}{paced} --idle {args.idle}"
        )
        results = _rounds(args, url, body, addr, token)
    finally:
        if stack is not None:
            stack.stop(remove_state=True)
    _summarise(results)
    return 0


async def _hold_one(url: str, half_sent: bool, reopened: list[int]) -> None:
    """Keep one idle connection open, reopening it whenever the sidecar closes it."""
    while True:
        try:
            reader, writer = await _open(url)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        try:
            if half_sent:
                writer.write(b"GET /v1/scope HTTP/1.1\r\nHost: sidecar\r\n")
            while await reader.read(1024):
                pass  # closed by the sidecar (idle timeout or eviction) when this ends
        except OSError:
            pass
        finally:
            writer.close()
        reopened[0] += 1


def hold_idle(url: str, n: int, stop: threading.Event) -> threading.Thread:
    """A thread holding ``n`` idle connections to the sidecar until ``stop`` is set."""

    async def main() -> None:
        reopened = [0]
        tasks = [asyncio.create_task(_hold_one(url, i % 2 == 1, reopened)) for i in range(n)]
        await asyncio.to_thread(stop.wait)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        print(f"idle connections: {n} held, closed by the sidecar {reopened[0]} times")

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    return thread


def _rounds(
    args: argparse.Namespace, url: str, body: dict[str, Any], addr: str, token: str
) -> list[Result]:
    stop = threading.Event()
    idle = hold_idle(url, args.idle, stop) if getattr(args, "idle", 0) else None
    try:
        return _measure(args, url, body, addr, token)
    finally:
        stop.set()
        if idle is not None:
            idle.join()


def _measure(
    args: argparse.Namespace, url: str, body: dict[str, Any], addr: str, token: str
) -> list[Result]:
    results: list[Result] = []
    baseline = baseline_op(args.kind, addr, token) if args.baseline else None
    if args.warmup > 0:
        # Not counted: a fresh sidecar's first seconds (first checkpoints, cold caches and
        # connection pools) are start-up, not the steady state the rounds measure.
        asyncio.run(drive(url, body, args.concurrency, args.warmup, rate=args.rate))
        print(f"warm-up: {args.warmup:g}s, not counted", flush=True)
    for _ in range(max(1, args.rounds)):
        results.append(
            asyncio.run(drive(url, body, args.concurrency, args.duration, rate=args.rate))
        )
        print(results[-1].line(), flush=True)
        if baseline is not None:
            results.append(threaded(baseline[0], baseline[1], args.concurrency, args.duration))
            print(results[-1].line(), flush=True)
    return results


def _summarise(results: list[Result]) -> None:
    ours = [r for r in results if r.label.startswith("sidecar")]
    sidecar = [r.rate for r in ours]
    raw = [r.rate for r in results if not r.label.startswith("sidecar")]
    print(
        f"median sidecar: {statistics.median(sidecar):.0f}/s  "
        f"p50 {statistics.median(r.pct(50) for r in ours):.2f} ms  "
        f"p99 {statistics.median(r.pct(99) for r in ours):.2f} ms"
    )
    if raw:
        print(
            f"median raw Vault: {statistics.median(raw):.0f}/s  ratio sidecar/raw: {statistics.median(sidecar) / statistics.median(raw):.2f}"
        )
