"""``broker issuer``: serve discovery metadata, the JWKS and status lists to gateways."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from typing import Any

from broker.core.errors import ConfigError
from broker.settings import issuer_from_env, vault_from_env


def register(
    commands: argparse._SubParsersAction[Any], bench: argparse._SubParsersAction[Any]
) -> None:
    p = commands.add_parser(
        "issuer", help="serve OpenID/OAuth metadata, the JWKS and token status lists"
    )
    p.add_argument("--listen", default="127.0.0.1:8400", help="127.0.0.1:PORT")
    p.add_argument(
        "--issuer-url",
        help="the URL gateways reach this issuer at, and the iss of every token "
        "(default BROKER_ISSUER_URL, else http://LISTEN)",
    )
    p.add_argument("--vault-addr")
    p.add_argument("--refresh", type=float, default=0.5, help="seconds a Vault read is reused")
    p.set_defaults(func=cmd_issuer)


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if host not in ("127.0.0.1", "localhost") or not port.isdigit():
        raise ConfigError(f"--listen {value!r}: expected 127.0.0.1:PORT (loopback only)")
    return "127.0.0.1", int(port)


def cmd_issuer(args: argparse.Namespace) -> int:
    from aiohttp import web

    from broker.issuer.app import IssuerState, build_app
    from broker.vault.asyncapi import AsyncVault
    from broker.vault.jwks import read_published, sign_status_list

    host, port = _listen(args.listen)
    vault = vault_from_env(addr=args.vault_addr)
    if vault.token is None:
        raise ConfigError(
            "broker issuer needs a Vault token (broker-verifier policy) in VAULT_TOKEN"
        )
    token = vault.token.get_secret_value()
    url = args.issuer_url or os.environ.get("BROKER_ISSUER_URL") or f"http://{host}:{port}"
    url = issuer_from_env({"BROKER_ISSUER_URL": url})  # validated as the sidecars do
    print(f"issuer {url} listening on {host}:{port}", flush=True)

    async def serve() -> None:
        reader = AsyncVault(vault.addr, lambda: token, timeout=2.0, pool=8)
        state = IssuerState(
            url,
            lambda: read_published(reader),
            sign=lambda data, version: sign_status_list(reader, data, version),
            refresh=args.refresh,
        )
        runner = web.AppRunner(build_app(state), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
            await reader.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0
