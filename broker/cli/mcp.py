"""``broker mcp``: the MCP gateway for one agent, and ``broker bench mcp``."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from broker.core.errors import ConfigError


def register(
    commands: argparse._SubParsersAction[Any], bench: argparse._SubParsersAction[Any]
) -> None:
    p = commands.add_parser(
        "mcp", help="MCP gateway: tools behind the sidecar's decisions and credentials"
    )
    p.add_argument("--config", type=Path, required=True, help="the gateway config (YAML)")
    p.add_argument(
        "--broker",
        help="the sidecar: unix:///path or http://127.0.0.1:PORT "
        "(default: BROKER_URL or BROKER_SOCKET)",
    )
    p.add_argument("--listen", help="serve streamable HTTP on 127.0.0.1:PORT instead of stdio")
    p.set_defaults(func=cmd_mcp)

    b = bench.add_parser("mcp", help="the gateway's added latency per tool call")
    b.add_argument("--calls", type=int, default=200, help="tool calls per round and path")
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument("--warmup", type=int, default=20, help="uncounted calls before each round")
    b.set_defaults(func=cmd_bench_mcp)


def _target(args: argparse.Namespace) -> str:
    from broker.clientenv import BrokerNotConfigured, broker_target

    if args.broker:
        return str(args.broker)
    try:
        return broker_target()
    except BrokerNotConfigured as exc:
        raise ConfigError(f"{exc} (or pass --broker)") from exc


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT, like 127.0.0.1:8931")
    return host.strip("[]"), int(port)


def cmd_mcp(args: argparse.Namespace) -> int:
    try:
        from broker.mcpgw.config import load_gateway_config
        from broker.mcpgw.serve import LOOPBACK, serve_http_forever, serve_stdio
    except ImportError as exc:
        raise ConfigError(
            "broker mcp needs the mcp extra: pip install 'agent-credential-broker[mcp]'"
        ) from exc
    config = load_gateway_config(args.config)
    target = _target(args)
    if args.listen is None:
        asyncio.run(serve_stdio(config, target))
        return 0
    host, port = _listen(args.listen)
    if host not in LOOPBACK:
        raise ConfigError(f"--listen {args.listen!r}: the gateway listens on loopback only")
    asyncio.run(serve_http_forever(config, target, host, port))
    return 0


def cmd_bench_mcp(args: argparse.Namespace) -> int:
    from broker.mcpgw.bench import run_bench

    return run_bench(calls=args.calls, rounds=args.rounds, warmup=args.warmup)
