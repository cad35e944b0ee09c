"""``broker bench fleet --sidecars N``: what an idle fleet of sidecars costs one OpenBao.

Starts N real sidecar processes (one agent each, AppRole logins, the manifest published in
Vault and watched there, as deployed) against one OpenBao (a fresh dev server), with one
node agent polling for them all as ``broker up`` runs it (or,
with ``--no-node-agent``, each sidecar polling Vault itself), lets them idle, and measures
OpenBao's CPU from ``/proc`` in three windows: everything running; the sidecars paused
(SIGSTOP) with the node agent still polling; everything paused (the baseline). The cost of
one idle sidecar is (running - baseline) / N, the node agent's poll included; its share
and the sidecars' own part are given apart. Then it revokes (``revoked_before`` of every
agent) and kills one agent, and reports time-to-effect at every sidecar: from just before
the command's write to when the sidecar took the change in (``control_changed_at`` in its
``/readyz``; one host, one wall clock). Everything started is stopped by process id."""

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
from dataclasses import dataclass, field
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
    vault_busy_pct: float  # of one core, everything running
    vault_agent_pct: float  # of one core, sidecars paused, the node agent running
    vault_paused_pct: float  # of one core, everything paused
    sidecar_cpu_pct: float  # per sidecar, of one core, mean
    rss_mb: list[float]
    pss_mb: list[float]
    revoke_s: list[float]
    kill_s: float
    node_agent: bool = True
    agent_cpu_pct: float = 0.0  # the node agent's own CPU, of one core
    agent_rss_mb: float = 0.0
    # CPU a revocation took, per sidecar, net of the idle rates: (sidecar ms, OpenBao ms),
    # the median over the bursts.
    burst_ms: tuple[float, float] = (0.0, 0.0)
    burst_p99: list[float] = field(default_factory=list)  # each burst's own p99

    @property
    def per_sidecar_pct(self) -> float:
        return (self.vault_busy_pct - self.vault_paused_pct) / self.sidecars

    def lines(self) -> Iterator[str]:
        rss = sorted(self.rss_mb)
        how = "one node agent polling for them" if self.node_agent else "each polling Vault"
        yield f"sidecars: {self.sidecars} idle, {how}; windows of {self.window:g} s"
        yield (
            f"OpenBao CPU: {self.vault_busy_pct:.2f}% of a core with everything running, "
            f"{self.vault_paused_pct:.2f}% with everything paused"
        )
        yield f"OpenBao CPU per idle sidecar: {self.per_sidecar_pct:.3f}% of a core"
        if self.node_agent:
            agent = self.vault_agent_pct - self.vault_paused_pct
            own = (self.vault_busy_pct - self.vault_agent_pct) / self.sidecars
            yield (
                f"  of which the node agent's poll: {agent:.3f}% for the node "
                f"({agent / self.sidecars:.4f}% per sidecar); each sidecar's own reads and "
                f"heartbeats: {own:.3f}%"
            )
            yield (
                f"node agent: {self.agent_cpu_pct:.3f}% of a core, RSS {self.agent_rss_mb:.1f} MB"
            )
        yield f"sidecar CPU (idle, mean): {self.sidecar_cpu_pct:.3f}% of a core"
        yield (f"sidecar RSS: median {statistics.median(rss):.1f} MB, max {rss[-1]:.1f} MB")
        pss = statistics.median(self.pss_mb)
        yield f"sidecar PSS (shared pages split among the fleet): median {pss:.1f} MB"
        bursts = max(1, len(self.burst_p99))
        yield (
            f"revocation time-to-effect over {len(self.revoke_s) // bursts} sidecars"
            f"{f' x {bursts} revocations' if bursts > 1 else ''}: "
            f"p50 {_q(self.revoke_s, 0.5):.3f} s, p99 {_q(self.revoke_s, 0.99):.3f} s, "
            f"max {max(self.revoke_s):.3f} s"
        )
        if bursts > 1:
            each = ", ".join(f"{p:.3f}" for p in self.burst_p99)
            yield (
                f"  p99 of each revocation: {each} s (median "
                f"{statistics.median(self.burst_p99):.3f} s)"
            )
        yield (
            f"CPU to take the revocation in, per sidecar: {self.burst_ms[0]:.1f} ms in the "
            f"sidecar, {self.burst_ms[1]:.1f} ms in OpenBao"
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
    socks: Sequence[Path], done: Callable[[dict[str, Any]], bool], limit: float, settle: float
) -> list[dict[str, Any]]:
    """Each sidecar's /readyz once it satisfies ``done`` ({} for one that never did). Nobody
    is asked before ``settle`` seconds: each sidecar says itself when it took the change in
    (``control_changed_at``), and asking a hundred sidecars every 50 ms during the burst
    cost them as much CPU as the change did, and so delayed what it measured."""
    seen: dict[Path, dict[str, Any]] = {}
    deadline = time.monotonic() + limit
    time.sleep(settle)
    with ThreadPoolExecutor(8) as pool:
        while len(seen) < len(socks) and time.monotonic() < deadline:
            left = [s for s in socks if s not in seen]
            for sock, doc in zip(left, pool.map(readyz, left), strict=True):
                if done(doc):
                    seen[sock] = {**doc, "observed_at": time.time()}
            time.sleep(0.05)
    return [seen.get(s, {}) for s in socks]


def _took(docs: Sequence[dict[str, Any]], written: float) -> list[float]:
    """Seconds from the write to each sidecar's taking it in (inf: never, within the limit);
    a sidecar that does not report when (older code) counts when the bench saw it."""
    return [
        (doc.get("control_changed_at") or doc["observed_at"]) - written if doc else float("inf")
        for doc in docs
    ]


def run_fleet(n: int, window: float, *, node_agent: bool = True, bursts: int = 5) -> FleetResult:
    from broker.dev.devstack import start_dev_server
    from broker.dev.nodeproc import start_node_agent
    from broker.dev.stack import (
        Stack,
        approle_files,
        grant_for,
        node_agent_files,
        publish_example,
        start_sidecar,
        wait_ready,
    )
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
        if node_agent:
            files = node_agent_files(client, state)
            stack.node_agent = start_node_agent(stack.vault_addr, state, files)
        settings = VaultSettings(addr=stack.vault_addr)
        for path, m in zip(paths, manifests, strict=True):
            # As deployed: the manifest published in Vault and watched there.
            publish_example(client, path, m, stack.vault_addr)
            files = approle_files(client, m.agent, state / "secrets")
            start_sidecar(stack, Path(f"vault:{m.agent}"), m.agent, settings, role_files=files)
        for sc in stack.sidecars:
            wait_ready(sc, timeout=120.0)
        return _measure(stack, client, dev.pid, window, bursts)
    finally:
        stack.stop(remove_state=True)


def _pause(pids: Sequence[int], sig: signal.Signals) -> None:
    for p in pids:
        os.kill(p, sig)


def _measure(
    stack: Any, client: Any, vault_pid: int, window: float, bursts: int = 5
) -> FleetResult:
    pids = [sc.process.pid for sc in stack.sidecars]
    agent = [stack.node_agent.process.pid] if stack.node_agent is not None else []
    time.sleep(2.0)  # past start-up's first heartbeats and key publication
    before = [sum(cpu_seconds(p) for p in pids), sum(cpu_seconds(p) for p in agent)]
    t0 = time.monotonic()
    busy = _cpu_pct([vault_pid], window, time.sleep)
    took = time.monotonic() - t0
    side = 100 * (sum(cpu_seconds(p) for p in pids) - before[0]) / took
    agent_cpu = 100 * (sum(cpu_seconds(p) for p in agent) - before[1]) / took
    _pause(pids, signal.SIGSTOP)
    try:
        time.sleep(0.5)
        agent_only = _cpu_pct([vault_pid], window, time.sleep) if agent else 0.0
        _pause(agent, signal.SIGSTOP)
        try:
            time.sleep(0.5)
            paused = _cpu_pct([vault_pid], window, time.sleep)
        finally:
            _pause(agent, signal.SIGCONT)
    finally:
        _pause(pids, signal.SIGCONT)
    rss = [rss_mb(p) for p in pids]
    pss = [rss_mb(p, "Pss") for p in pids]
    time.sleep(3.0)  # the sidecars catch up after the pause
    revoke, burst = _revocations(stack, client, pids, vault_pid, (side, busy), bursts=bursts)
    kill = _kill_one(stack, client)
    return FleetResult(
        len(pids),
        window,
        busy,
        agent_only if agent else paused,
        paused,
        side / len(pids),
        rss,
        pss,
        [t for each in revoke for t in each],
        kill,
        node_agent=bool(agent),
        agent_cpu_pct=agent_cpu,
        agent_rss_mb=rss_mb(agent[0]) if agent else 0.0,
        burst_ms=burst,
        burst_p99=[_q(each, 0.99) for each in revoke],
    )


def _revocations(
    stack: Any, client: Any, pids: Sequence[int], vault_pid: int, idle: tuple[float, float],
    *, bursts: int,
) -> tuple[list[list[float]], tuple[float, float]]:  # fmt: skip
    """``bursts`` revocations of everything before now, a second apart: each one's
    time-to-effect at every sidecar, and the median CPU one cost per sidecar (sidecars' and
    OpenBao's until every sidecar was seen to have taken it in, less their idle rates)."""
    times, costs = [], []
    for _ in range(bursts):
        cpu = (sum(cpu_seconds(p) for p in pids), cpu_seconds(vault_pid))
        start = time.monotonic()
        times.append(_revoke_all(stack, client))
        took = time.monotonic() - start
        net = (
            sum(cpu_seconds(p) for p in pids) - cpu[0] - idle[0] / 100 * took,
            cpu_seconds(vault_pid) - cpu[1] - idle[1] / 100 * took,
        )
        costs.append((1000 * net[0] / len(pids), 1000 * net[1] / len(pids)))
        time.sleep(1.0)
    return times, (
        statistics.median(c[0] for c in costs),
        statistics.median(c[1] for c in costs),
    )


def _revoke_all(stack: Any, client: Any) -> list[float]:
    from broker.core.controlstate import GLOBAL_PATH
    from broker.vault.control import control_written
    from broker.vault.kv import kv_update

    socks = [sc.socket for sc in stack.sidecars]
    written = cutoff = time.time()
    kv_update(client, GLOBAL_PATH, lambda d: {**d, "revoked_before": cutoff}, stack.vault_addr)
    control_written(client, stack.vault_addr)
    docs = _wait_all(socks, lambda d: d.get("revoked_before", 0) >= cutoff, 15.0, settle=2.0)
    return _took(docs, written)


def _kill_one(stack: Any, client: Any) -> float:
    from broker.core.controlstate import agent_path
    from broker.vault.control import control_written
    from broker.vault.kv import kv_update

    victim = stack.sidecars[0]
    written = time.time()
    kv_update(client, agent_path(victim.agent), lambda d: {**d, "killed": True}, stack.vault_addr)
    control_written(client, stack.vault_addr)
    docs = _wait_all([victim.socket], lambda d: d.get("agent_disabled") is True, 15.0, settle=1.0)
    return _took(docs, written)[0]


def cmd_bench_sidecars(args: Any) -> int:
    from broker.ops.controlbase import usage

    if args.sidecars < 1:
        raise usage("--sidecars must be at least 1", "invalid_sidecars")
    if not args.window > 0:
        raise usage("--window must be a positive number of seconds", "invalid_window")
    if args.bursts < 1:
        raise usage("--bursts must be at least 1", "invalid_bursts")
    result = run_fleet(
        args.sidecars, args.window, node_agent=not args.no_node_agent, bursts=args.bursts
    )
    for line in result.lines():
        print(line)
    return 0
