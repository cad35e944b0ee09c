"""What every operator command shares: the Vault options, the operator's own client, and the
operator audit trail (``--audit-log`` or ``BROKER_OPERATOR_AUDIT``).

Operator commands act with the operator's own Vault token, never a broker credential, so
Vault's policies decide who may run them."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from broker.core.errors import ConfigError
from broker.settings import vault_from_env
from broker.vault.session import VaultClient


def add_operator_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vault-addr", help="Vault/OpenBao address (default VAULT_ADDR or BAO_ADDR)")
    p.add_argument(
        "--audit-log", type=Path, help="operator audit trail (default $BROKER_OPERATOR_AUDIT)"
    )


def agent_id(value: str) -> str:
    """An ``--agent`` value: an agent id exactly as manifests spell them (lower case), so a
    command never acts on a spelling that no sidecar, kill flag or heartbeat uses."""
    from broker.core.manifesttypes import AGENT_ID_PATTERN

    if not value.strip():
        raise argparse.ArgumentTypeError(
            "empty_target: an empty agent id names no agent (is the variable unset?); "
            "name the agent, or use --all for every agent"
        )
    if not re.fullmatch(AGENT_ID_PATTERN, value):
        raise argparse.ArgumentTypeError(
            f"unknown_agent: {value[:64]!r} is not an agent id "
            "(lower-case letters, digits and '-', spelled as in its manifest)"
        )
    return value


def operator_client(args: argparse.Namespace) -> tuple[VaultClient, str]:
    """An hvac client with the operator's own token, and Vault's address."""
    from broker.vault.session import make_client

    vault = vault_from_env(addr=args.vault_addr)
    if vault.token is None:
        raise ConfigError(
            "this command acts with your own Vault token: set VAULT_TOKEN (or BAO_TOKEN)"
        )
    token = vault.token.get_secret_value()
    if len(vault.addrs) < 2:
        return make_client(vault.addr, token), vault.addr
    # Several nodes of one cluster: the runbook acts on the active one (found by sys/health;
    # during an election, the first), and its requests carry the headers that make a standby
    # forward or fail rather than answer from a lagging copy, as a sidecar's do.
    from broker.settings import tls_from_env
    from broker.vault.endpoints import VaultEndpoints

    tls = vault.tls or tls_from_env(addr=vault.addr)
    endpoints = VaultEndpoints(vault.addrs, tls)
    endpoints.find_active()
    return make_client(endpoints.current, token, tls=tls, endpoints=endpoints), endpoints.current


def operator_audit(args: argparse.Namespace, body: dict[str, Any]) -> None:
    """Append ``body`` to the operator audit trail, if one is configured."""
    path = args.audit_log or os.environ.get("BROKER_OPERATOR_AUDIT")
    if not path:
        return
    from broker.audit.log import AuditLog
    from broker.audit.records import iso_utc

    if "timestamp" not in body and isinstance(body.get("at"), int | float):
        body = {"timestamp": iso_utc(float(body["at"])), **body}
    with AuditLog(path) as log:
        log.append_sync(body)
