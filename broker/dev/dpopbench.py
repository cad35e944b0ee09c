"""``broker bench dpop``: what proof of possession (RFC 9449) costs, per mint and per verify,
against the same work without it, measured in the same run.

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


async def _mints(url: str, n: int, concurrency: int, key: DPoPKey | None) -> tuple[float, str]:
    """Seconds for ``n`` mints (with a proof each when ``key``), and the last token."""
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

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started, tokens[-1]


def _timed(op: Callable[[int], object], n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        op(i)
    return time.perf_counter() - started


def _verify_round(ca: str, plain: str, bound: str, key: DPoPKey, n: int) -> tuple[float, float]:
    """Seconds per verify, plain and bound (each with its own fresh proof)."""
    proofs = [DPoPProof(key.proof("GET", TOOL, bound), "GET", TOOL) for _ in range(n)]
    verifier = Verifier([ca])  # a fresh replay cache each round
    without = _timed(lambda i: verifier.verify(plain, audience="things"), n)
    with_dpop = _timed(lambda i: verifier.verify(bound, audience="things", dpop=proofs[i]), n)
    return without / n, with_dpop / n


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} us"


async def _run(args: argparse.Namespace, server: Any, base: Path) -> None:
    from broker.vault.pki import fetch_ca_pem

    key = DPoPKey.generate(args.alg)
    per_mint: dict[str, list[float]] = {"plain": [], "dpop": []}
    per_verify: dict[str, list[float]] = {"plain": [], "dpop": []}
    async with _sidecar(server, base) as sidecar:
        url = sidecar.address + "/v1/credentials"
        ca = fetch_ca_pem(server.addr)
        await _mints(url, args.concurrency, args.concurrency, None)  # warm up
        for r in range(args.rounds):
            order = ("plain", "dpop") if r % 2 == 0 else ("dpop", "plain")
            tokens = {}
            for setting in order:
                took, tokens[setting] = await _mints(
                    url, args.mints, args.concurrency, key if setting == "dpop" else None
                )
                per_mint[setting].append(took / args.mints)
            plain, bound = _verify_round(ca, tokens["plain"], tokens["dpop"], key, args.verifies)
            per_verify["plain"].append(plain)
            per_verify["dpop"].append(bound)
            print(
                f"round {r + 1}: mint {_us(per_mint['plain'][-1])} plain, "
                f"{_us(per_mint['dpop'][-1])} with DPoP; verify {_us(plain)} plain, "
                f"{_us(bound)} with DPoP",
                flush=True,
            )
    proof_cost = _timed(lambda i: key.proof("GET", TOOL, "t"), args.verifies) / args.verifies
    _summary(args, per_mint, per_verify, proof_cost)


def _summary(
    args: argparse.Namespace,
    mint: dict[str, list[float]],
    verify: dict[str, list[float]],
    proof_cost: float,
) -> None:
    for what, rounds in (("mint", mint), ("verify", verify)):
        plain, dpop = statistics.median(rounds["plain"]), statistics.median(rounds["dpop"])
        print(
            f"median per {what} over {args.rounds} rounds: plain {_us(plain)}, with DPoP "
            f"{_us(dpop)} (+{_us(dpop - plain)}, ratio {dpop / plain:.2f})"
        )
    print(f"making one {args.alg} proof (the agent's side): {_us(proof_cost)}")


def cmd_bench_dpop(args: argparse.Namespace) -> int:
    from broker.dev.devstack import start_dev_server

    server = start_dev_server()
    try:
        with tempfile.TemporaryDirectory(prefix="broker-bench-dpop-") as tmp:
            asyncio.run(_run(args, server, Path(tmp)))
    finally:
        server.stop()
    return 0
