"""``broker bench restart``: how long a sidecar takes to start with a long audit history.

It writes a trail of ``--records`` decision records for the bench agent (each a credential
with a charge, as a busy day of minting leaves behind), through ``AuditLog`` so that the
trail has the shape a running sidecar gives it (segments, checkpoints, a usage snapshot
every 5,000 records; a trail written before snapshots existed is replayed in full, once),
then starts and stops a sidecar on it ``--rounds`` times against a fresh OpenBao dev server
and reports the time from ``Sidecar.start`` to listening ready."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from broker.audit.records import InMemorySigner, iso_utc

BENCH_MANIFEST = Path(__file__).resolve().parents[2] / "bench" / "scopes" / "bench-agent.yaml"


def register_restart_bench(bench: argparse._SubParsersAction[Any]) -> None:
    p = bench.add_parser("restart", help="sidecar start-up time with a long audit history")
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", type=Path, help="where to write the trail (default: a temp dir)")
    p.set_defaults(func=cmd_bench_restart)


def _record(n: int, now: float) -> dict[str, Any]:
    at = now - 3600 + n * 0.003  # a day's records, ending about now
    return {
        "type": "decision",
        "timestamp": iso_utc(at),
        "at": round(at, 6),
        "agent_id": "bench-agent",
        "workflow": None,
        "request_id": f"req_{n:016x}",
        "inputs": {"n": n},
        "action": "bench.jwt",
        "tool_calls": [{"tool": "bench.jwt", "status": "ok"}],
        "output": "allowed",
        "policy_version": "bench-2026-11",
        "human_override": False,
        "outcome": "allow",
        "reason": None,
        "credential_id": f"{n:032x}",
        "credential_kind": "jwt",
        "ttl": 60,
        "charges": {"calls": 1.0},
    }


def write_history(path: Path, records: int) -> float:
    """``records`` decisions through the durable log (its segments and checkpoints); seconds."""
    from broker.audit.log import AuditLog
    from broker.audit.usagesnap import SNAPSHOT_EVERY, snapshot_body
    from broker.core.limits import UsageLedger
    from broker.scopes.loader import load_manifest

    started, now = time.perf_counter(), time.time()
    log = AuditLog(path, signer=InMemorySigner(), agent="bench-agent", max_batch=4096)
    # Usage snapshots as a running sidecar writes them (every SNAPSHOT_EVERY records).
    ledger = UsageLedger.for_manifest(load_manifest(BENCH_MANIFEST))
    for first in range(0, records, SNAPSHOT_EVERY):
        batch = [_record(n, now) for n in range(first, min(records, first + SNAPSHOT_EVERY))]
        for body in batch:
            ledger.charge(_Charge(), body["credential_id"], body["at"] + 60, body["at"])
        futures = [log._submit(body) for body in batch]
        futures.append(log._submit(snapshot_body("bench-agent", ledger, batch[-1]["at"])))
        for future in futures:
            future.result()
    log.close()
    return time.perf_counter() - started


class _Charge:
    action = "bench.jwt"
    charges: ClassVar[dict[str, float]] = {"calls": 1.0}


async def _start_once(config: Any) -> float:
    from broker.sidecar.main import Sidecar

    sidecar = Sidecar(config)
    started = time.perf_counter()
    await sidecar.start()
    took = time.perf_counter() - started
    await sidecar.stop()
    return took


def cmd_bench_restart(args: argparse.Namespace) -> int:
    from broker.dev.devstack import start_dev_server
    from broker.dev.stack import approle_files, grant_for
    from broker.scopes.loader import load_manifest
    from broker.settings import VaultSettings
    from broker.sidecar.main import SidecarConfig
    from broker.vault.bootstrap import bootstrap
    from broker.vault.session import make_client

    with tempfile.TemporaryDirectory(prefix="broker-bench-restart-") as tmp:
        base = args.dir or Path(tmp)
        trail = base / "audit" / "bench-agent.jsonl"
        wrote = write_history(trail, args.records)
        size = sum(p.stat().st_size for p in trail.parent.glob("bench-agent.jsonl*"))
        print(f"history: {args.records} records, {size / 1e6:.0f} MB, written in {wrote:.1f} s")
        server = start_dev_server()
        try:
            client = make_client(server.addr, server.root_token)
            bootstrap(
                client, [grant_for(load_manifest(BENCH_MANIFEST))], addr=server.addr, demo=True
            )
            role, secret = approle_files(client, "bench-agent", base / "secrets")
            config = SidecarConfig(
                manifest_path=BENCH_MANIFEST,
                vault=VaultSettings(addr=server.addr, role_id_file=role, secret_id_file=secret),
                listen=f"unix:{base / 'bench.sock'}",
                audit_path=trail,
            )
            times = []
            for n in range(max(1, args.rounds)):
                times.append(asyncio.run(_start_once(config)))
                print(f"round {n + 1}: start-up {times[-1]:.2f} s", flush=True)
        finally:
            server.stop()
    print(f"median start-up with {args.records} records: {statistics.median(times):.2f} s")
    return 0
