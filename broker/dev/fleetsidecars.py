"""``broker bench fleet --sidecars N``: what an idle fleet of sidecars costs one OpenBao.

Starts N real sidecar processes (one agent each, AppRole logins) against one OpenBao (a
fresh dev server), lets them idle,
and measures from ``/proc``: OpenBao's CPU while they run, then again with every sidecar
paused (SIGSTOP) as the baseline; the difference divided by N is the cost of one idle
sidecar, in percent of one core. Then it revokes (``revoked_before`` of every agent) and
kills one agent, and reports how long each sidecar took to show the change in ``/readyz``.
Everything started is stopped by process id."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")
MANIFEST = """agent: {agent}
policy_version: fleet-2026-11
system_owner: platform-team@acme.example
risk_owner: risk@acme.example
budgets:
  calls: {{limit: 1000000, per: 1d, unit: calls}}
actions:
  fleet.jwt:
    accountable: platform-team@acme.example
    credential: {{kind: jwt, audience: fleet-gateway, ttl: 60s}}
    cost: {{calls: 1}}
"""


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far (fields 14 and 15 of /proc/pid/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int, field: str = "Rss") -> float:
    """Resident MB of ``pid`` (``Rss``), or its proportional share (``Pss``: pages shared
    with other processes, such as the libraries every sidecar maps, counted once per node)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def readyz(sock: Path) -> dict[str, Any]:
    """The sidecar's /readyz document ({} when it does not answer)."""
    with contextlib.suppress(OSError, ValueError), socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2.0)
        s.connect(str(sock))
        s.sendall(b"GET /readyz HTTP/1.0\r\nHost: sidecar\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        body: dict[str, Any] = json.loads(data.split(b"\r\n\r\n", 1)[1])
        return body
    return {}


@dataclass
class FleetResult:
    sidecars: int
    window: float
    vault_busy_pct: float  # of one core, sidecars running
    vault_paused_pct: float  # of one core, sidecars paused
    sidecar_cpu_pct: float  # per sidecar, of one core, mean
    rss_mb: list[float]
    pss_mb: list[float]
    revoke_s: list[float]
    kill_s: float

    @property
    def per_sidecar_pct(self) -> float:
        return (self.vault_busy_pct - self.vault_paused_pct) / self.sidecars

    def lines(self) -> Iterator[str]:
        rss = sorted(self.rss_mb)
        yield f"sidecars: {self.sidecars} idle, windows of {self.window:g} s"
        yield (
            f"OpenBao CPU: {self.vault_busy_pct:.2f}% of a core with the sidecars running, "
            f"{self.vault_paused_pct:.2f}% with them paused"
        )
        yield f"OpenBao CPU per idle sidecar: {self.per_sidecar_pct:.3f}% of a core"
        yield f"sidecar CPU (idle, mean): {self.sidecar_cpu_pct:.3f}% of a core"
        yield (f"sidecar RSS: median {statistics.median(rss):.1f} MB, max {rss[-1]:.1f} MB")
        pss = statistics.median(self.pss_mb)
        yield f"sidecar PSS (shared pages split among the fleet): median {pss:.1f} MB"
        yield (
            f"revocation time-to-effect over {len(self.revoke_s)} sidecars: "
            f"p50 {_q(self.revoke_s, 0.5):.3f} s, p99 {_q(self.revoke_s, 0.99):.3f} s, "
            f"max {max(self.revoke_s):.3f} s"
        )
        yield f"kill time-to-effect (one agent): {self.kill_s:.3f} s"


def _q(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _cpu_pct(pids: Sequence[int], window: float, sleep: Callable[[float], None]) -> float:
    before = sum(cpu_seconds(p) for p in pids)
    start = time.monotonic()
    sleep(window)
    return 100 * (sum(cpu_seconds(p) for p in pids) - before) / (time.monotonic() - start)


def _wait_all(
    socks: Sequence[Path], done: Callable[[dict[str, Any]], bool], start: float, limit: float
) -> list[float]:
    """Seconds from ``start`` until each sidecar's /readyz satisfies ``done``."""
    took: dict[Path, float] = {}
    with ThreadPoolExecutor(8) as pool:
        while len(took) < len(socks) and time.monotonic() - start < limit:
            left = [s for s in socks if s not in took]
            for sock, doc in zip(left, pool.map(readyz, left), strict=True):
                if done(doc):
                    took[sock] = time.monotonic() - start
            time.sleep(0.01)
    return [took.get(s, float("inf")) for s in socks]


def run_fleet(n: int, window: float) -> FleetResult:
    from broker.dev.devstack import start_dev_server
    from broker.dev.stack import Stack, approle_files, grant_for, start_sidecar, wait_ready
    from broker.settings import VaultSettings
    from broker.vault.bootstrap import bootstrap
    from broker.vault.session import make_client

    state = Path(tempfile.mkdtemp(prefix="broker-bench-fleet-"))
    stack = Stack(state_dir=state, vault_addr="", operator_token="")
    try:
        stack.dev_server = dev = start_dev_server()
        stack.vault_addr, stack.operator_token = dev.addr, dev.root_token
        client = make_client(stack.vault_addr, stack.operator_token)
        from broker.scopes.loader import load_manifest

        paths = []
        for i in range(n):
            path = state / f"fleet-{i:04d}.yaml"
            path.write_text(MANIFEST.format(agent=f"fleet-{i:04d}"))
            paths.append(path)
        manifests = [load_manifest(p) for p in paths]
        bootstrap(client, [grant_for(m) for m in manifests], demo=True, addr=stack.vault_addr)
        settings = VaultSettings(addr=stack.vault_addr)
        for path, m in zip(paths, manifests, strict=True):
            files = approle_files(client, m.agent, state / "secrets")
            start_sidecar(stack, path, m.agent, settings, role_files=files)
        for sc in stack.sidecars:
            wait_ready(sc, timeout=120.0)
        return _measure(stack, client, dev.pid, window)
    finally:
        stack.stop(remove_state=True)


def _measure(stack: Any, client: Any, vault_pid: int, window: float) -> FleetResult:
    from broker.core.controlstate import GLOBAL_PATH, agent_path
    from broker.vault.control import control_written
    from broker.vault.kv import kv_update

    pids = [sc.process.pid for sc in stack.sidecars]
    time.sleep(2.0)  # past start-up's first heartbeats and key publication
    side_before = sum(cpu_seconds(p) for p in pids)
    t0 = time.monotonic()
    busy = _cpu_pct([vault_pid], window, time.sleep)
    side = 100 * (sum(cpu_seconds(p) for p in pids) - side_before) / (time.monotonic() - t0)
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    try:
        time.sleep(0.5)
        paused = _cpu_pct([vault_pid], window, time.sleep)
    finally:
        for p in pids:
            os.kill(p, signal.SIGCONT)
    rss = [rss_mb(p) for p in pids]
    pss = [rss_mb(p, "Pss") for p in pids]
    time.sleep(2.0)  # the sidecars catch up after the pause
    socks = [sc.socket for sc in stack.sidecars]
    cutoff = time.time()
    kv_update(client, GLOBAL_PATH, lambda d: {**d, "revoked_before": cutoff}, stack.vault_addr)
    control_written(client, stack.vault_addr)
    start = time.monotonic()
    revoke = _wait_all(socks, lambda d: d.get("revoked_before", 0) >= cutoff, start, 10.0)
    victim = stack.sidecars[0]
    kv_update(client, agent_path(victim.agent), lambda d: {**d, "killed": True}, stack.vault_addr)
    control_written(client, stack.vault_addr)
    start = time.monotonic()
    kill = _wait_all([victim.socket], lambda d: d.get("agent_disabled") is True, start, 10.0)
    return FleetResult(len(pids), window, busy, paused, side / len(pids), rss, pss, revoke, kill[0])


def cmd_bench_sidecars(args: Any) -> int:
    from broker.ops.controlbase import usage

    if args.sidecars < 1:
        raise usage("--sidecars must be at least 1", "invalid_sidecars")
    if not args.window > 0:
        raise usage("--window must be a positive number of seconds", "invalid_window")
    for line in run_fleet(args.sidecars, args.window).lines():
        print(line)
    return 0
