"""``broker bench fleet --replicas N --kind jwt``: N replicas of one agent sharing a budget
through the fleet ledger (``BROKER_LEDGER=vault``) against one replica, in the same run; then
the exactness trials of a budget, a concurrency cap and a rate limit shared by N replicas.

Replicas run in this one process (one event loop), so on a small machine the ratio shows the
ledger's overhead rather than added cores; the store's writes per second per budget and the
exactness of a small budget (minted == limit, every trial) are what carry over."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

MANIFEST = """\
agent: {agent}
policy_version: fleet-bench-1
system_owner: platform@acme.example
risk_owner: risk@acme.example
{limits}
actions:
  read.thing:
    accountable: owner@acme.example
    credential: {{kind: jwt, audience: things, ttl: 60s}}
{cost}"""
BUDGET = "budgets:\n  calls: {{limit: {limit}, per: 1d, unit: calls}}"
# The exactness trials: (what, manifest lines, the limit, requests over the replicas).
TRIALS = (
    ("budget 100", BUDGET.format(limit=100), 100, 1000),
    ("concurrency cap 5", "concurrency: 5", 5, 200),
    ("rate 30 per aligned day", "rate: {limit: 30, per: 1d}", 30, 400),
)


def register(commands: Any, bench: Any) -> None:
    b = bench.add_parser(
        "fleet",
        help="--replicas N: N replicas sharing one budget through the fleet ledger; "
        "--sidecars N: N idle sidecar processes on one OpenBao (its CPU per sidecar, RSS, "
        "time-to-effect)",
    )
    b.add_argument("--replicas", type=int, default=4)
    b.add_argument("--sidecars", type=int, help="idle sidecar processes to start instead")
    b.add_argument("--window", type=float, default=10.0, help="seconds per CPU window (--sidecars)")
    b.add_argument(
        "--bursts",
        type=int,
        default=5,
        help="revocations measured one after another (--sidecars); one is noise on a busy host",
    )
    b.add_argument(
        "--no-node-agent",
        action="store_true",
        help="with --sidecars: each sidecar polls Vault itself (default: one node agent for all)",
    )
    b.add_argument("--kind", choices=["jwt"], default="jwt")
    b.add_argument(
        "--requests", type=int, default=400, help="per round and setup (after a warm-up of 1/4)"
    )
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument(
        "--trials", type=int, default=5, help="exactness trials (budget, concurrency, rate)"
    )
    b.set_defaults(func=cmd_bench_fleet)


@asynccontextmanager
async def _fleet(server: Any, base: Path, agent: str, limits: str, n: int) -> AsyncIterator[Any]:
    from broker.dev.stack import approle_files, grant_for
    from broker.scopes.loader import load_manifest
    from broker.settings import VaultSettings
    from broker.sidecar.main import Sidecar, SidecarConfig
    from broker.vault.bootstrap import bootstrap
    from broker.vault.session import make_client

    path = base / f"{agent}.yaml"
    cost = "    cost: {calls: 1}\n" if "budgets:" in limits else ""
    path.write_text(MANIFEST.format(agent=agent, limits=limits, cost=cost))
    client = make_client(server.addr, server.root_token)
    bootstrap(client, [grant_for(load_manifest(path))], addr=server.addr, demo=True)
    async with AsyncExitStack() as stack:
        sidecars = []
        for i in range(n):
            role, secret = approle_files(client, agent, base / agent / f"s{i}")
            config = SidecarConfig(
                manifest_path=path,
                vault=VaultSettings(addr=server.addr, role_id_file=role, secret_id_file=secret),
                listen="127.0.0.1:0",
                audit_path=base / agent / f"r{i}" / "audit.jsonl",
                ledger="vault",
            )
            sidecar = Sidecar(config)
            await sidecar.start()
            stack.push_async_callback(sidecar.stop)
            sidecars.append(sidecar)
        yield sidecars


async def _load(sidecars: list[Any], requests: int, concurrency: int = 32) -> tuple[int, float]:
    """``requests`` asks spread round robin, ``concurrency`` at once: (allowed, seconds)."""
    queue = iter(range(requests))
    allowed = 0
    async with aiohttp.ClientSession() as http:

        async def client() -> None:
            nonlocal allowed
            for i in queue:
                url = sidecars[i % len(sidecars)].address + "/v1/credentials"
                async with http.post(url, json={"action": "read.thing"}) as resp:
                    await resp.read()
                    allowed += resp.status == 200

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
    return allowed, time.perf_counter() - started


def _writes(sidecars: list[Any]) -> int:
    return sum(s.service.ledger.store.writes for s in sidecars)


async def _run(args: argparse.Namespace, server: Any, base: Path) -> None:
    rates: dict[int, list[float]] = {1: [], args.replicas: []}
    store_rates: list[float] = []
    for r in range(args.rounds):
        for n in (1, args.replicas):
            limits = BUDGET.format(limit=10**9)
            async with _fleet(server, base, f"fleet-{n}-{r}", limits, n) as sidecars:
                # A warm-up first: slices and the rate meters settle, then the steady state
                # is what is measured.
                await _load(sidecars, max(args.requests // 4, 1))
                before = _writes(sidecars)
                allowed, took = await _load(sidecars, args.requests)
                rates[n].append(allowed / took)
                if n == args.replicas:
                    store_rates.append((_writes(sidecars) - before) / took)
        print(
            f"round {r + 1}: 1 replica {rates[1][-1]:.0f}/s, {args.replicas} replicas "
            f"{rates[args.replicas][-1]:.0f}/s, ledger writes {store_rates[-1]:.1f}/s",
            flush=True,
        )
    one, many = statistics.median(rates[1]), statistics.median(rates[args.replicas])
    print(
        f"median mints/s: 1 replica {one:.0f}, {args.replicas} replicas {many:.0f}, "
        f"ratio {many / one:.2f}; ledger writes/s per budget {statistics.median(store_rates):.1f}"
    )
    for k, (what, limits, limit, requests) in enumerate(TRIALS):
        exact = []
        for t in range(args.trials):
            agent = f"fleet-exact-{k}-{t}"
            async with _fleet(server, base, agent, limits, args.replicas) as sidecars:
                exact.append((await _load(sidecars, requests, 64))[0])
        hits = sum(m == limit for m in exact)
        print(
            f"exactness: {what}, {args.replicas} replicas, {requests} requests: "
            f"minted {limit} in {hits} of {len(exact)} trials {exact}",
            flush=True,
        )


def cmd_bench_fleet(args: argparse.Namespace) -> int:
    from broker.dev.devstack import start_dev_server

    if args.sidecars is not None:
        from broker.dev.fleetsidecars import cmd_bench_sidecars

        return cmd_bench_sidecars(args)

    server = start_dev_server()
    try:
        with tempfile.TemporaryDirectory(prefix="broker-bench-fleet-") as tmp:
            asyncio.run(_run(args, server, Path(tmp)))
    finally:
        server.stop()
    return 0
