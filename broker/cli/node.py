"""``broker node-agent``: the one control poll a node's sidecars share."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

from broker.core.errors import ConfigError
from broker.settings import vault_from_env


def register(
    commands: argparse._SubParsersAction[Any], bench: argparse._SubParsersAction[Any]
) -> None:
    p = commands.add_parser(
        "node-agent",
        help="poll Vault's control version once for every sidecar on this node",
        description="Serve the control version to the sidecars of this node on a unix socket "
        "(they set BROKER_NODE_AGENT_SOCKET to it). Logs in like a sidecar, from "
        "BROKER_ROLE_ID_FILE and BROKER_SECRET_ID_FILE (the broker_node_agent AppRole role, "
        "which reads control/version only), BROKER_VAULT_AUTH=jwt, or VAULT_TOKEN.",
    )
    p.add_argument("--socket", type=Path, required=True, help="the unix socket to serve")
    p.add_argument("--vault-addr", help="Vault address, or the nodes of a cluster, comma-separated")
    p.add_argument(
        "--interval", type=_interval, default=0.25, help="seconds between polls (0.05-0.5)"
    )
    p.set_defaults(func=cmd_node_agent)


def _interval(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0.05 <= seconds <= 0.5:
        # Sidecars take a confirmation younger than 0.75 s and hang up after 1 s of silence:
        # with its jitter, a slower agent would leave them reading Vault and reconnecting.
        raise argparse.ArgumentTypeError(f"--interval must be 0.05 to 0.5 seconds, got {value!r}")
    return seconds


def cmd_node_agent(args: argparse.Namespace) -> int:
    from broker.sidecar.nodeagent import NodeAgent, run

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.socket.parent.is_dir():
        raise ConfigError(
            f"--socket {args.socket}: the directory {args.socket.parent} does not exist"
        )
    agent = NodeAgent(vault_from_env(addr=args.vault_addr), args.socket, interval=args.interval)
    asyncio.run(_until_signal(run(agent)))
    return 0


async def _until_signal(work: Any) -> None:
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
