"""``broker bench startup``: a sidecar process from exec to ready, and its idle footprint.

Against a fresh OpenBao dev server (already answering, so Vault's own start-up is not counted)
it publishes the bench agent's manifest and starts ``broker sidecar --manifest
vault:bench-agent`` (as ``broker up`` and production do; ``--file-manifest`` reads the file
instead) ``--rounds`` times, each a new process with a new audit trail, and reports medians
of: the time from spawning the process to its first ``/readyz`` 200; the part of it that is
the interpreter and the imports alone (``python -c 'import ...'``, measured beside it); its
resident and proportional memory (RSS, PSS from /proc/PID/smaps_rollup) once ready; and, with
``--idle S``, its CPU over S idle seconds, the control poll included (the scheduler's
nanoseconds on a CPU, from /proc/PID/task/*/schedstat: at 0.3% of a core over 30 s, one of
/proc/PID/stat's 10 ms ticks is a tenth of the figure). ``--baseline DIR`` alternates each
round with the same sidecar run from another checkout (``PYTHONPATH=DIR``, e.g. ``git
worktree add /tmp/before main``): before and after from one run."""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMPORTS = "import broker.cli, broker.cli.stack, broker.sidecar.main"
SETTLE = 1.0  # seconds after ready before memory is read: first heartbeat, key publication


def register_startup_bench(bench: argparse._SubParsersAction[Any]) -> None:
    p = bench.add_parser(
        "startup", help="sidecar process start to ready, its imports, idle RSS, PSS and CPU"
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--idle", type=float, default=0.0, help="seconds of idle CPU per round")
    p.add_argument("--file-manifest", action="store_true", help="no manifest watcher: a file")
    p.add_argument(
        "--node-agent",
        action="store_true",
        help="with a node agent confirming the control version, as broker up runs sidecars",
    )
    p.add_argument(
        "--baseline", type=Path, help="a checkout whose sidecar alternates with this one's"
    )
    p.set_defaults(func=cmd_bench_startup)


@dataclass(frozen=True)
class Round:
    ready: float  # seconds from spawn to the first /readyz 200
    imports: float  # seconds for the interpreter and the sidecar's imports alone
    rss: float
    pss: float
    cpu: float | None  # percent of one core while idle, when measured

    def line(self) -> str:
        cpu = "" if self.cpu is None else f", idle CPU {self.cpu:.3f} %"
        return (
            f"ready {self.ready:.3f} s, imports {self.imports:.3f} s, "
            f"RSS {self.rss:.1f} MB, PSS {self.pss:.1f} MB{cpu}"
        )


def spawn_to_ready(
    cmd: list[str], env: dict[str, str], sock: Path, timeout: float = 60.0
) -> tuple[subprocess.Popen[bytes], float]:
    """Start ``cmd`` and poll its socket every 5 ms: the process and seconds to ready."""
    from broker.sidecar.probe import probe

    started = time.perf_counter()
    # cwd: not the source tree, which ``-m`` would put ahead of PYTHONPATH (see --baseline).
    proc = subprocess.Popen(
        cmd, env=env, cwd=sock.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while not probe(str(sock)):
        if proc.poll() is not None or time.perf_counter() - started > timeout:
            proc.kill()
            raise RuntimeError(f"the sidecar did not get ready (exit {proc.poll()})")
        time.sleep(0.005)
    return proc, time.perf_counter() - started


def import_seconds(env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], env=env, check=True, cwd=tempfile.gettempdir())
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far, to the nanosecond."""
    tasks = Path(f"/proc/{pid}/task").glob("*/schedstat")
    return sum(int(t.read_text().split()[0]) for t in tasks) / 1e9


def one_round(base: Path, n: int, env: dict[str, str], idle: float, manifest: str) -> Round:
    from broker.dev.fleetsidecars import rss_mb

    sock = base / f"startup-{n}.sock"
    cmd = [sys.executable, "-m", "broker.cli", "sidecar", "--manifest", manifest]
    cmd += ["--listen", f"unix:{sock}", "--audit", str(base / f"audit-{n}" / "bench.jsonl")]
    proc, ready = spawn_to_ready(cmd, env, sock)
    try:
        time.sleep(SETTLE)
        rss, pss = rss_mb(proc.pid), rss_mb(proc.pid, "Pss")
        cpu = None
        if idle > 0:
            before, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(idle)
            cpu = 100 * (cpu_seconds(proc.pid) - before) / (time.monotonic() - t0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return Round(ready, import_seconds(env), rss, pss, cpu)


def report(rounds: list[Round]) -> list[str]:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    lines = [
        f"start-up to ready  median {med([r.ready for r in rounds]):.3f} s "
        f"(min {min(r.ready for r in rounds):.3f}, max {max(r.ready for r in rounds):.3f})",
        f"of which imports   median {med([r.imports for r in rounds]):.3f} s (interpreter and "
        "modules alone)",
        f"idle memory        RSS median {med([r.rss for r in rounds]):.1f} MB, "
        f"PSS median {med([r.pss for r in rounds]):.1f} MB",
    ]
    cpus = [r.cpu for r in rounds if r.cpu is not None]
    if cpus:
        lines.append(
            f"idle CPU           median {med(cpus):.3f} % of a core (control poll included)"
        )
    return lines


def cmd_bench_startup(args: argparse.Namespace) -> int:
    from broker.dev.devstack import start_dev_server
    from broker.dev.nodeproc import start_node_agent
    from broker.dev.restartbench import BENCH_MANIFEST
    from broker.dev.stack import approle_files, grant_for, node_agent_files, publish_example
    from broker.scopes.loader import load_manifest
    from broker.vault.bootstrap import bootstrap
    from broker.vault.session import make_client

    trees: dict[str, Path | None] = {"this": None}
    if args.baseline is not None:
        trees["baseline"] = args.baseline.resolve()
    rounds: dict[str, list[Round]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="broker-bench-startup-") as tmp:
        base = Path(tmp)
        server = start_dev_server()
        agent = None
        try:
            client = make_client(server.addr, server.root_token)
            manifest = load_manifest(BENCH_MANIFEST)
            bootstrap(client, [grant_for(manifest)], addr=server.addr, demo=True)
            source = str(BENCH_MANIFEST)
            if not args.file_manifest:
                publish_example(client, BENCH_MANIFEST, manifest, server.addr)
                source = f"vault:{manifest.agent}"
            role, secret = approle_files(client, manifest.agent, base / "secrets")
            if args.node_agent:
                agent = start_node_agent(server.addr, base, node_agent_files(client, base))
            env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
            env.update(
                VAULT_ADDR=server.addr,
                BROKER_ROLE_ID_FILE=str(role),
                BROKER_SECRET_ID_FILE=str(secret),
            )
            if agent is not None:
                env["BROKER_NODE_AGENT_SOCKET"] = str(agent.socket)
            runs = [(n, name) for n in range(max(1, args.rounds)) for name in trees]
            for index, (n, name) in enumerate(runs):  # alternated: drift hits both alike
                tree = trees[name]
                here = env if tree is None else {**env, "PYTHONPATH": str(tree)}
                rounds[name].append(one_round(base, index, here, args.idle, source))
                print(f"round {n + 1} {name}: {rounds[name][-1].line()}", flush=True)
        finally:
            if agent is not None:
                agent.process.terminate()
                agent.process.wait(10)
            server.stop()
    for name, found in rounds.items():
        print(f"-- {name}" + (f" ({trees[name]})" if trees[name] else ""))
        print("\n".join(report(found)))
    return 0
