"""Audit bytes per refused request under a flood (issue 13).

Sends ``--count`` requests whose inputs are ``--size`` bytes (an undeclared input, refused as
``invalid_inputs``) to a running sidecar, as fast as one connection goes, and reports how much
the sidecar's audit trail grew per request.

    broker up &   # prints the sidecar socket and the state directory
    .venv/bin/python bench/refusal_flood.py --socket /tmp/broker-up-XXXX/research-agent.sock \\
        --trail /tmp/broker-up-XXXX/audit/research-agent.jsonl --count 200 --size 60000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import aiohttp


async def flood(socket: str, count: int, size: int, fields: int) -> dict[int, int]:
    each = max(1, size // fields)
    body = {"action": "llm.complete", "inputs": {f"j{i}": "x" * each for i in range(fields)}}
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket)) as session:
        for _ in range(count):
            async with session.post("http://sidecar/v1/credentials", json=body) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--trail", type=Path, required=True)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", type=int, default=60_000)
    parser.add_argument("--fields", type=int, default=1, help="spread the size over N inputs")
    args = parser.parse_args()
    before = args.trail.stat().st_size
    started = time.perf_counter()
    statuses = asyncio.run(flood(args.socket, args.count, args.size, args.fields))
    elapsed = time.perf_counter() - started
    time.sleep(0.5)  # let a checkpoint land so it is counted in the growth
    grown = args.trail.stat().st_size - before
    print(
        f"{args.count} requests of {args.size} B inputs in {args.fields} fields, statuses {statuses}: trail grew "
        f"{grown} B, {grown / args.count:.0f} B per refused request, "
        f"{grown / elapsed / 1e6:.2f} MB/s over {elapsed:.1f} s"
    )


if __name__ == "__main__":
    main()
