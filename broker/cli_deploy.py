"""The sidecar's deployment flags: who may use its socket, and the metrics/probe listener.

Kept apart from ``broker.cli_stack`` so the Kubernetes-facing options live in one place."""

from __future__ import annotations

import argparse

from broker.listener import SocketAccess, parse_group, parse_socket_mode


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
