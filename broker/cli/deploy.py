"""The sidecar's deployment flags: who may use its socket, and the metrics/probe listener.

Kept apart from ``broker.cli.stack`` so the Kubernetes-facing options live in one place."""

from __future__ import annotations

import argparse
from typing import Any

from broker.sidecar.listener import SocketAccess, parse_group, parse_socket_mode


def add_deploy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--socket-group",
        help="group (name or gid) given the unix socket, e.g. the pod's fsGroup",
    )
    p.add_argument(
        "--socket-mode", default="0600", help="0600 (default) or 0660 (the group may connect)"
    )
    p.add_argument(
        "--allow-peer-uid",
        type=int,
        action="append",
        default=[],
        help="only this uid may connect (SO_PEERCRED; repeatable, with --allow-peer-gid: either)",
    )
    p.add_argument(
        "--allow-peer-gid", type=int, action="append", default=[], help="as --allow-peer-uid"
    )
    p.add_argument(
        "--metrics-listen",
        help="HOST:PORT of a separate listener serving only /metrics, /healthz and /readyz "
        "(e.g. 0.0.0.0:9102 for Prometheus and the kubelet); never the credential API",
    )


def socket_access(args: argparse.Namespace) -> SocketAccess:
    return SocketAccess(
        group=parse_group(args.socket_group) if args.socket_group else None,
        mode=parse_socket_mode(args.socket_mode),
        allow_uids=frozenset(args.allow_peer_uid),
        allow_gids=frozenset(args.allow_peer_gid),
    )


def add_bootstrap_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--service-account",
        action="append",
        default=[],
        metavar="AGENT=NAMESPACE/NAME",
        help="let AGENT's sidecar log in with this Kubernetes service account (jwt auth; "
        "repeatable); needs --jwks-url or --jwt-public-key",
    )
    p.add_argument(
        "--node-agent-service-account",
        metavar="NAMESPACE/NAME",
        help="let the node agents' DaemonSet (broker node-agent) log in with this service "
        "account (jwt auth); it reads control/version and nothing else",
    )
    p.add_argument("--jwks-url", help="the cluster's JWKS, e.g. https://API/openid/v1/jwks")
    p.add_argument(
        "--jwt-public-key", action="append", default=[], help="PEM file of a cluster signing key"
    )
    p.add_argument("--jwt-issuer", help="the tokens' iss (the cluster's service-account issuer)")
    p.add_argument("--jwt-audience", default="vault", help="the projected token's audience")
    p.add_argument("--jwt-mount", default="jwt", help="where the jwt auth method is mounted")


def workload_steps(client: Any, args: argparse.Namespace, addr: str) -> list[Any]:
    """Configure the service-account login when ``--service-account`` or
    ``--node-agent-service-account`` is given, else nothing."""
    node = getattr(args, "node_agent_service_account", None)
    if not args.service_account and not node:
        return []
    from pathlib import Path

    from broker.vault.workload import WorkloadBinding, configure_workload_login

    bindings = [WorkloadBinding.parse(text) for text in args.service_account]
    return configure_workload_login(
        client,
        bindings + ([WorkloadBinding.node_agent(node)] if node else []),
        mount=args.jwt_mount,
        jwks_url=args.jwks_url,
        public_keys=[Path(p).read_text() for p in args.jwt_public_key],
        issuer=args.jwt_issuer,
        audience=args.jwt_audience,
        addr=addr,
    )
