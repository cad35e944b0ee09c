"""``broker bench control``: the kill switch's time to effect and revocation propagation,
measured live against a fresh stack (OpenBao and a sidecar for the bench agent).

Each figure is read from outside the sidecar: its /readyz for what it enforces, Vault's token
lookup for what is still alive after the command reported success."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from broker.dev.bench import BENCH_MANIFEST


def register_control_bench(bench: argparse._SubParsersAction[Any]) -> None:
    p = bench.add_parser(
        "control", help="kill-switch time-to-effect and revocation propagation, measured live"
    )
    p.add_argument("--outstanding", type=int, default=1000, help="vault tokens held at the kill")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--revokes", type=int, default=20, help="revoke --jti right after a mint")
    p.set_defaults(func=cmd_bench_control)


async def _mint_many(url: str, n: int, concurrency: int) -> int:
    """``n`` vault_token mints through the sidecar socket; returns how many succeeded."""
    connector = aiohttp.UnixConnector(path=url[5:], limit=concurrency)
    body = {"action": "bench.vault_token", "inputs": {"n": 1}}
    ok = 0
    errors: list[str] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = list(range(n))

        async def worker() -> None:
            nonlocal ok
            while queue:
                queue.pop()
                async with session.post("http://sidecar/v1/credentials", json=body) as resp:
                    answer = await resp.read()
                    ok += resp.status == 200
                    if resp.status != 200 and not errors:
                        errors.append(answer.decode()[:300])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    if errors:
        print(f"first refusal while minting: {errors[0]}")
    return ok


def _seen_after(
    socket_path: str, field: str, changed: Callable[[Any], bool], start: float
) -> float:
    """Poll the sidecar's /readyz every 5 ms until ``field`` satisfies ``changed``."""
    import json
    import socket

    while time.perf_counter() - start < 10:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(socket_path)
            sock.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        if changed(json.loads(raw.split(b"\r\n\r\n", 1)[1]).get(field)):
            return time.perf_counter() - start
        time.sleep(0.005)
    return float("nan")


def _bench_revoke_right_after_mint(control: Any, url: str, rounds: int) -> None:
    """`revoke --jti` on a vault token just minted: how long the command takes, and whether
    any token is still alive in Vault once it reported success."""
    from broker.client import BrokerClient
    from broker.vault.revoke import token_info

    took, alive, failed = [], 0, 0
    with BrokerClient(url) as client:
        for _ in range(rounds):
            cred = client.credential("bench.vault_token", {"n": 1})
            start = time.perf_counter()
            report = control.revoke_id(cred.credential_id, "bench")
            took.append(time.perf_counter() - start)
            failed += bool(report.failures)
            vault_id = str(cred.secret.get("vault_id", ""))
            alive += token_info(control.client, vault_id, control.addr) is not None
    print(
        f"revoke --jti right after the mint, {rounds} times: median {statistics.median(took) * 1000:.0f} ms, "
        f"max {max(took) * 1000:.0f} ms; failures {failed}; alive in Vault after success {alive}"
    )


def cmd_bench_control(args: argparse.Namespace) -> int:
    from broker.dev.stack import up
    from broker.ops.control import Control
    from broker.vault.session import make_client

    stack = up([BENCH_MANIFEST], vault=None, with_postgres=False)
    try:
        sock = str(stack.sidecars[0].socket)
        control = Control(make_client(stack.vault_addr, stack.operator_token), stack.vault_addr)
        start = time.perf_counter()
        control.revoke_all("bench: propagation")
        seen = _seen_after(sock, "revoked_before", bool, start)
        print(f"revocation seen by the sidecar: {seen * 1000:.0f} ms after the command started")
        _bench_revoke_right_after_mint(control, f"unix://{sock}", args.revokes)
        minted = asyncio.run(_mint_many(f"unix:{sock}", args.outstanding, args.concurrency))
        time.sleep(1.5)  # the heartbeat that lists them goes out within a second
        held = len(control.outstanding("bench-agent"))
        start = time.perf_counter()
        watch: list[float] = []
        watcher = threading.Thread(
            target=lambda: watch.append(_seen_after(sock, "agent_disabled", bool, start))
        )
        watcher.start()  # watches the sidecar while the command is still revoking
        report = control.kill("bench-agent", "bench", wait=30)
        took = time.perf_counter() - start
        watcher.join()
        disabled = watch[0]
        print(f"outstanding vault tokens at the kill: {held} (minted {minted})")
        print(
            f"kill switch: sidecar refusing after {disabled:.2f}s; command done in {took:.2f}s "
            f"({report.revoked} revoked now, {len(report.lines)} lines of verified effect, "
            f"confirmed={report.confirmed}; failures={len(report.failures)})"
        )
    finally:
        stack.stop(remove_state=True)
    return 0
