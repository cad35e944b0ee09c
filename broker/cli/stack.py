"""Commands that run the broker: ``up``, ``bootstrap``, ``sidecar``, ``verify``, ``bench mint``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from broker.cli.deploy import add_bootstrap_args, add_deploy_args, socket_access, workload_steps
from broker.core.errors import ConfigError
from broker.settings import DEFAULT_MAX_BODY, issuer_from_env, vault_from_env
from broker.sidecar.probe import add_probe


def register(
    commands: argparse._SubParsersAction[Any], bench: argparse._SubParsersAction[Any]
) -> None:
    p = commands.add_parser(
        "up", help="start OpenBao (or use one), bootstrap it, run a sidecar per manifest"
    )
    p.add_argument(
        "paths", nargs="*", type=Path, default=[Path("scopes")], help="manifests or directories"
    )
    p.add_argument("--vault-addr", help="use this Vault/OpenBao instead of starting a dev server")
    p.add_argument(
        "--state-dir", type=Path, help="sockets, secrets and audit trails (default: a new temp dir)"
    )
    p.add_argument(
        "--no-postgres", action="store_true", help="do not start PostgreSQL for dynamic credentials"
    )
    p.add_argument(
        "--replicas",
        type=_replicas,
        default=1,
        help="sidecars per agent (1-16); above 1 they share its limits through Vault",
    )
    p.add_argument(
        "--no-node-agent",
        action="store_true",
        help="each sidecar polls Vault itself (default: one node agent polls for them all)",
    )
    p.set_defaults(func=cmd_up)

    p = commands.add_parser(
        "bootstrap", help="create the mounts, policies and roles in an existing Vault"
    )
    p.add_argument("paths", nargs="*", type=Path, default=[Path("scopes")])
    p.add_argument("--vault-addr")
    p.add_argument(
        "--demo-policies", action="store_true", help="also create stand-ins for manifest policies"
    )
    add_bootstrap_args(p)
    p.set_defaults(func=cmd_bootstrap)

    p = commands.add_parser("sidecar", help="serve one agent's credential requests")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument(
        "--listen", default="unix:/run/broker/sidecar.sock", help="unix:PATH or 127.0.0.1:PORT"
    )
    p.add_argument("--audit", type=Path, required=True, help="the audit trail file (JSON lines)")
    p.add_argument("--vault-addr")
    p.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY)
    p.add_argument("--poll-interval", type=float, default=0.5, help="control-state poll, seconds")
    p.add_argument(
        "--webhook",
        action="append",
        default=[],
        help="notification webhook URL (repeatable; default BROKER_WEBHOOKS); a URL with a "
        "secret in its path belongs in --webhook-file, not in argv",
    )
    p.add_argument(
        "--webhook-file",
        type=Path,
        help="file of webhook URLs, one a line (default BROKER_WEBHOOKS_FILE)",
    )
    p.add_argument(
        "--webhook-secret-file",
        type=Path,
        help="file holding the HMAC secret that signs every delivery (default "
        "BROKER_WEBHOOK_SECRET_FILE); required when webhooks are configured",
    )
    add_deploy_args(p)
    p.set_defaults(func=cmd_sidecar)

    _register_verify(commands)

    add_probe(commands)
    del bench  # the benches of a stack are broker.dev.bench's: a sidecar need not import them


class Stop(BaseException):
    """SIGTERM or SIGINT: unwind through every ``finally`` so nothing started is left behind."""


def _register_verify(commands: argparse._SubParsersAction[Any]) -> None:
    p = commands.add_parser("verify", help="verify an action token as a tool or gateway would")
    p.add_argument(
        "token",
        nargs="?",
        help="the token, or - to read it from stdin (default: stdin); prefer - or "
        "--token-file: a token in argv is visible to every user in ps",
    )
    p.add_argument("--token-file", type=Path, help="read the token from this file")
    p.add_argument("--audience", required=True)
    p.add_argument("--action")
    p.add_argument("--inputs", help="the call's actual inputs, as JSON")
    p.add_argument(
        "--agent",
        action="append",
        dest="agents",
        help="accept tokens of this agent only (repeatable; default: any agent)",
    )
    p.add_argument(
        "--scopes",
        type=Path,
        help="check tokens against these manifest files or directory (default: the "
        "manifests published to Vault)",
    )
    p.add_argument(
        "--no-manifest-check",
        action="store_true",
        help="skip the check that the token's action and audience are in its agent's manifest",
    )
    p.add_argument("--vault-addr")
    p.add_argument("--no-revocation", action="store_true", help="skip the control-state check")
    p.add_argument(
        "--issuer", help="the expected iss (default BROKER_ISSUER_URL, else the broker's URN)"
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="check the token's status list at the issuer (no Vault token needed for that)",
    )
    p.add_argument(
        "--no-binding",
        action="store_true",
        help="accept the token without checking its input binding (no --inputs)",
    )
    p.add_argument(
        "--dpop-file",
        type=Path,
        help="the request's DPoP proof (RFC 9449), for a token bound to a key; with --method "
        "and --url. One run checks one presentation: replays are caught by a long-lived "
        "verifier (broker.verify), not across runs of this command",
    )
    p.add_argument("--method", help="the request's HTTP method, for --dpop-file")
    p.add_argument("--url", help="the request's full URL, for --dpop-file")
    p.set_defaults(func=cmd_verify)


def _raise_stop(signum: int, frame: Any) -> None:
    raise Stop(signum)


def cmd_up(args: argparse.Namespace) -> int:
    from broker.dev.stack import describe, example_request, up

    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    # Installed before anything starts: a signal during start-up still cleans up.
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    vault = vault_from_env(addr=args.vault_addr) if args.vault_addr else None
    try:
        stack = up(
            args.paths,
            vault=vault,
            state_dir=args.state_dir,
            with_postgres=not args.no_postgres,
            replicas=args.replicas,
            node_agent=not args.no_node_agent,
        )
    except Stop:
        return 0
    try:
        for step in stack.steps:
            print(step)
        print()
        for line in describe(stack):
            print(line)
        print("\nMint a credential:\n  " + example_request(stack))
        print("\nOperator environment for the other broker commands:")
        print(f"  export VAULT_ADDR={stack.vault_addr}")
        if stack.dev_server is not None:
            print(f"  export VAULT_TOKEN={stack.operator_token}")
        print("\nCtrl-C (or SIGTERM) stops everything.", flush=True)
        while True:
            signal.pause()
    except Stop:
        pass
    finally:
        signal.signal(
            signal.SIGTERM, signal.SIG_IGN
        )  # a second signal must not cut the cleanup short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.stop()
        print(f"stopped. Audit trails and secret files stay in {stack.state_dir}", flush=True)
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from broker.dev.stack import _load, check_reachable, grant_for
    from broker.vault.bootstrap import bootstrap
    from broker.vault.session import make_client

    vault = vault_from_env(addr=args.vault_addr)
    if vault.token is None:
        raise ConfigError("bootstrap needs an operator token in VAULT_TOKEN (or BAO_TOKEN)")
    client = make_client(vault.addr, vault.token.get_secret_value(), timeout=5.0)
    check_reachable(client, vault.addr)
    manifests = [m for _, m in _load(args.paths)]
    for step in bootstrap(
        client, [grant_for(m) for m in manifests], demo=args.demo_policies, addr=vault.addr
    ):
        print(step)
    for step in workload_steps(client, args, vault.addr):
        print(step)
    return 0


def cmd_sidecar(args: argparse.Namespace) -> int:
    import os

    from broker.sidecar.main import SidecarConfig, serve

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    webhooks, secret_file = _webhooks(args)
    config = SidecarConfig(
        manifest_path=args.manifest,
        vault=vault_from_env(addr=args.vault_addr),
        listen=args.listen,
        audit_path=args.audit,
        max_body=args.max_body,
        poll_interval=args.poll_interval,
        webhooks=webhooks,
        webhook_secret_file=secret_file,
        socket_access=socket_access(args),
        metrics_listen=args.metrics_listen,
        ledger=ledger_kind(os.environ.get("BROKER_LEDGER", "local")),
        ledger_lease_ttl=_lease_ttl(os.environ.get("BROKER_LEDGER_LEASE_TTL", "30")),
        **node_agent_settings(os.environ),
    )
    asyncio.run(serve(config))
    return 0


def node_agent_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """``BROKER_NODE_AGENT_SOCKET`` (empty: none) and ``BROKER_NODE_AGENT_UIDS``."""
    from broker.sidecar.nodewatch import extra_uids

    path = env.get("BROKER_NODE_AGENT_SOCKET", "")
    uids = extra_uids(env.get("BROKER_NODE_AGENT_UIDS", ""))
    return {"node_agent": Path(path) if path else None, "node_agent_uids": uids}


def _replicas(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 16:
        raise argparse.ArgumentTypeError(f"--replicas must be a whole number 1-16, got {value!r}")
    return int(value)


def ledger_kind(value: str) -> str:
    """``BROKER_LEDGER``: ``local`` (each sidecar its own usage) or ``vault`` (the fleet's)."""
    if value not in {"local", "vault"}:
        raise ConfigError(f"BROKER_LEDGER must be 'local' or 'vault', got {value[:40]!r}")
    return value


def _lease_ttl(value: str) -> float:
    """``BROKER_LEDGER_LEASE_TTL``: seconds a dead replica's slice stays held (1 to 3600)."""
    try:
        ttl = float(value)
    except ValueError:
        ttl = 0.0
    if not 1 <= ttl <= 3600:
        raise ConfigError(f"BROKER_LEDGER_LEASE_TTL must be 1 to 3600 seconds, got {value[:40]!r}")
    return ttl


def _webhooks(args: argparse.Namespace) -> tuple[tuple[str, ...], Path | None]:
    """Webhook URLs (flags, file, environment) and the secret file; unsigned is refused."""
    import os

    from broker.sidecar.notify import parse_webhooks, read_webhook_file

    url_file = args.webhook_file or os.environ.get("BROKER_WEBHOOKS_FILE")
    urls = parse_webhooks(args.webhook or [os.environ.get("BROKER_WEBHOOKS", "")])
    if url_file:
        urls += read_webhook_file(Path(url_file))
    secret = args.webhook_secret_file or os.environ.get("BROKER_WEBHOOK_SECRET_FILE")
    if urls and not secret:
        raise ConfigError(
            "webhooks need --webhook-secret-file (or BROKER_WEBHOOK_SECRET_FILE): "
            "deliveries are signed, never sent unsigned"
        )
    return urls, Path(secret) if secret else None


def cmd_verify(args: argparse.Namespace) -> int:
    from broker.core.errors import VerificationError
    from broker.vault.control import VaultRevocations
    from broker.vault.pki import fetch_ca_pem
    from broker.verify import Verifier

    vault = vault_from_env(addr=args.vault_addr)
    token = _read_token(args)
    inputs = _json_arg(args.inputs, "--inputs") if args.inputs else None
    revocations = None if args.no_revocation else VaultRevocations(vault)
    from broker.status_client import StatusListClient

    issuer = args.issuer or issuer_from_env()
    status = StatusListClient(issuer) if args.status else None
    verifier = Verifier(
        [fetch_ca_pem(vault.addr)],
        revocations=revocations,
        manifests=_manifest_view(args, vault),
        accept_agents=args.agents,
        issuer=issuer,
        status=status,
    )
    try:
        claims = verifier.verify(
            token, audience=args.audience, action=args.action, inputs=inputs, dpop=_dpop_arg(args)
        )
    except VerificationError as exc:
        print(f"refused: {exc.code}: {exc.detail}", file=sys.stderr)
        return 1
    if inputs is None and claims.inputs_hash and not args.no_binding:
        # A gateway that forgets --inputs must not read "valid" as "valid for this call".
        print(
            "refused: binding_unchecked: the token is bound to its call's inputs and no --inputs "
            "were given; pass the call's real --inputs, or --no-binding to accept it unchecked",
            file=sys.stderr,
        )
        return 1
    if inputs is None:
        print("warning: input binding not checked (--no-binding)", file=sys.stderr)
    print(json.dumps(dataclasses.asdict(claims), indent=2))
    return 0


def _dpop_arg(args: argparse.Namespace) -> Any:
    """The DPoP presentation from --dpop-file, --method and --url (all three, or none)."""
    from broker.verify import DPoPProof

    given = [args.dpop_file, args.method, args.url]
    if not any(given):
        return None
    if not all(given):
        raise ConfigError("--dpop-file, --method and --url go together")
    try:
        proof = args.dpop_file.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"--dpop-file {args.dpop_file}: {exc.strerror}") from exc
    return DPoPProof(proof, args.method, args.url)


def _read_token(args: argparse.Namespace) -> str:
    """From --token-file, argv, or stdin (``-`` or nothing); read at most one byte past the
    verifier's limit, so a huge input is refused without being held in memory."""
    from broker.verify import MAX_TOKEN_BYTES

    if args.token_file is not None and args.token not in (None, "-"):
        raise ConfigError("give the token once: as an argument or with --token-file, not both")
    if args.token_file is not None:
        try:
            with args.token_file.open("rb") as f:
                raw = f.read(MAX_TOKEN_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"--token-file {args.token_file}: {exc.strerror}") from exc
    elif args.token not in (None, "-"):
        return str(args.token)
    else:
        raw = sys.stdin.buffer.read(MAX_TOKEN_BYTES + 1)
    text: str = raw.decode("ascii", "replace").strip()
    if not text:
        raise ConfigError("no token given: pass it on stdin, with --token-file, or as an argument")
    return text


def _manifest_view(args: argparse.Namespace, vault: Any) -> Any:
    """The manifests tokens are checked against: files, Vault's published ones, or none."""
    from broker.verifyscope import ManifestScopes, PublishedScopes, vault_fetch

    if args.no_manifest_check:
        return None
    if args.scopes is not None:
        from broker.scopes.loader import load_manifests

        return ManifestScopes(load_manifests([args.scopes]))
    from broker.vault.session import make_client

    token = vault.token.get_secret_value() if vault.token else None
    return PublishedScopes(vault_fetch(make_client(vault.addr, token, timeout=2.0), vault.addr))


def _json_arg(text: str, flag: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag} is not valid JSON: {exc.msg} at column {exc.colno}") from exc
