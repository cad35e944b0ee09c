"""``broker bench dpop``: what proof of possession (RFC 9449) costs, per mint and per verify,
against the same work without it, measured in the same run: each round alternates the two
settings in chunks, and both wall time and this process's CPU time are reported (on a
shared machine the CPU figure is the steadier one).

Mint: one sidecar on a throwaway OpenBao dev server, jwt mints through its HTTP socket,
alternating rounds of plain mints and mints that carry a fresh DPoP proof (made by the
client inside the timed loop: the agent pays for it too). Verify: ``broker.verify`` on a
token the sidecar minted, trusting only Vault's CA, plain against bound-with-a-proof (the
proofs are made before the timed loop, so this is the gateway's cost alone; making one is
reported on its own line). Client, sidecar and verifier share this process, so read the
ratios, not the absolute rates, as what carries over to another machine."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from broker.dpop import DPoPKey
from broker.verify import DPoPProof, Verifier

MANIFEST = """\
agent: {agent}
policy_version: dpop-bench-1
system_owner: platform@acme.example
risk_owner: risk@acme.example
actions:
  read.thing:
    accountable: owner@acme.example
    credential: {{kind: jwt, audience: things, ttl: 300s}}
"""
TOOL = "https://things.example/v1/things"


def register(commands: Any, bench: Any) -> None:
    del commands
    b = bench.add_parser("dpop", help="the cost of DPoP per mint and per verify, with a baseline")
    b.add_argument("--rounds", type=int, default=5)
    b.add_argument("--mints", type=int, default=300, help="mints per round and setting")
    b.add_argument("--verifies", type=int, default=2000, help="verifies per round and setting")
    b.add_argument("--chunks", type=int, default=4, help="alternations of the settings per round")
    b.add_argument("--concurrency", type=int, default=16)
    b.add_argument("--alg", choices=["ES256", "EdDSA"], default="ES256", help="the agent's key")
    b.set_defaults(func=cmd_bench_dpop)


@asynccontextmanager
async def _sidecar(server: Any, base: Path) -> AsyncIterator[Any]:
    from broker.dev.stack import approle_files, grant_for
    from broker.scopes.loader import load_manifest
    from broker.settings import VaultSettings
    from broker.sidecar.main import Sidecar, SidecarConfig
    from broker.vault.bootstrap import bootstrap
    from broker.vault.session import make_client

    path = base / "dpop-bench.yaml"
    path.write_text(MANIFEST.format(agent="dpop-bench"))
    client = make_client(server.addr, server.root_token)
    bootstrap(client, [grant_for(load_manifest(path))], addr=server.addr, demo=True)
    role, secret = approle_files(client, "dpop-bench", base / "secrets")
    config = SidecarConfig(
        manifest_path=path,
        vault=VaultSettings(addr=server.addr, role_id_file=role, secret_id_file=secret),
        listen="127.0.0.1:0",
        audit_path=base / "audit.jsonl",
    )
    sidecar = Sidecar(config)
    await sidecar.start()
    try:
        yield sidecar
    finally:
        await sidecar.stop()


Cost = tuple[float, float]  # (wall seconds, CPU seconds of this whole process)


def _clocks() -> Cost:
    return time.perf_counter(), time.process_time()


def _since(started: Cost) -> Cost:
    now = _clocks()
    return now[0] - started[0], now[1] - started[1]


async def _mints(url: str, n: int, concurrency: int, key: DPoPKey | None) -> tuple[Cost, str]:
    """Wall and CPU time for ``n`` mints (with a proof each when ``key``), and the last token."""
    queue, tokens = iter(range(n)), []
    body = {"action": "read.thing"}
    async with aiohttp.ClientSession() as http:

        async def client() -> None:
            for _ in queue:
                headers = {"DPoP": key.proof("POST", url)} if key else {}
                async with http.post(url, json=body, headers=headers) as resp:
                    doc = await resp.json()
                    if resp.status != 200:
                        raise RuntimeError(f"mint refused: {resp.status} {doc}")
                    tokens.append(doc["credential"]["token"])

        started = _clocks()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        took = _since(started)
    return took, tokens[-1]


def _timed(op: Callable[[int], object], n: int) -> Cost:
    started = _clocks()
    for i in range(n):
        op(i)
    return _since(started)


class Tally:
    """Per-operation cost of each setting in one round, summed over alternating chunks so that
    both settings meet the same machine (this one is shared, and its speed drifts)."""

    def __init__(self) -> None:
        self.cost = {"plain": [0.0, 0.0], "dpop": [0.0, 0.0]}
        self.count = {"plain": 0, "dpop": 0}

    def add(self, setting: str, cost: Cost, n: int) -> None:
        self.cost[setting][0] += cost[0]
        self.cost[setting][1] += cost[1]
        self.count[setting] += n

    def per_op(self, setting: str) -> Cost:
        wall, cpu = self.cost[setting]
        return wall / self.count[setting], cpu / self.count[setting]


def _order(i: int) -> tuple[str, str]:
    return ("plain", "dpop") if i % 2 == 0 else ("dpop", "plain")


async def _mint_round(
    args: argparse.Namespace, url: str, key: DPoPKey
) -> tuple[Tally, dict[str, str]]:
    tally, tokens = Tally(), {}
    for chunk in range(args.chunks):
        for setting in _order(chunk):
            n = args.mints // args.chunks
            cost, tokens[setting] = await _mints(
                url, n, args.concurrency, key if setting == "dpop" else None
            )
            tally.add(setting, cost, n)
    return tally, tokens


def _verify_round(args: argparse.Namespace, ca: str, tokens: dict[str, str], key: DPoPKey) -> Tally:
    """Plain verifies of the plain token against verifies of the bound one, each with its own
    proof (made before the clock starts)."""
    tally, n = Tally(), args.verifies // args.chunks
    verifier = Verifier([ca])  # one replay cache for the round, as a gateway has
    plain, bound = tokens["plain"], tokens["dpop"]
    for chunk in range(args.chunks):
        proofs = [DPoPProof(key.proof("GET", TOOL, bound), "GET", TOOL) for _ in range(n)]
        for setting in _order(chunk):
            if setting == "plain":
                cost = _timed(lambda i: verifier.verify(plain, audience="things"), n)
            else:
                cost = _timed(_presented(verifier, bound, proofs), n)
            tally.add(setting, cost, n)
    return tally


def _presented(verifier: Verifier, token: str, proofs: list[DPoPProof]) -> Callable[[int], object]:
    return lambda i: verifier.verify(token, audience="things", dpop=proofs[i])


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} us"


async def _run(args: argparse.Namespace, server: Any, base: Path) -> None:
    from broker.vault.pki import fetch_ca_pem

    key = DPoPKey.generate(args.alg)
    rounds: dict[str, list[Tally]] = {"mint": [], "verify": []}
    async with _sidecar(server, base) as sidecar:
        url = sidecar.address + "/v1/credentials"
        ca = fetch_ca_pem(server.addr)
        await _mints(url, args.concurrency, args.concurrency, key)  # warm up both paths
        await _mints(url, args.concurrency, args.concurrency, None)
        for r in range(args.rounds):
            mint, tokens = await _mint_round(args, url, key)
            rounds["mint"].append(mint)
            rounds["verify"].append(_verify_round(args, ca, tokens, key))
            line = "; ".join(f"{what} {_pair(rounds[what][-1])}" for what in ("mint", "verify"))
            print(f"round {r + 1}: {line}", flush=True)
    proof_cost = _timed(lambda i: key.proof("GET", TOOL, "t"), args.verifies)
    _summary(args, rounds, proof_cost[1] / args.verifies)


def _pair(tally: Tally) -> str:
    (pw, pc), (dw, dc) = tally.per_op("plain"), tally.per_op("dpop")
    return f"plain {_us(pw)} ({_us(pc)} CPU), DPoP {_us(dw)} ({_us(dc)} CPU)"


def _summary(args: argparse.Namespace, rounds: dict[str, list[Tally]], proof_cpu: float) -> None:
    for what, tallies in rounds.items():
        for index, label in ((0, "wall"), (1, "CPU")):
            plain = statistics.median(t.per_op("plain")[index] for t in tallies)
            dpop = statistics.median(t.per_op("dpop")[index] for t in tallies)
            print(
                f"median {label} per {what} over {args.rounds} rounds: plain {_us(plain)}, "
                f"with DPoP {_us(dpop)} (+{_us(dpop - plain)}, ratio {dpop / plain:.2f})"
            )
    print(f"making one {args.alg} proof (the agent's side): {_us(proof_cpu)} CPU")


def cmd_bench_dpop(args: argparse.Namespace) -> int:
    from broker.dev.devstack import start_dev_server

    server = start_dev_server()
    try:
        with tempfile.TemporaryDirectory(prefix="broker-bench-dpop-") as tmp:
            asyncio.run(_run(args, server, Path(tmp)))
    finally:
        server.stop()
    return 0
