"""Configuration, read once into a frozen object.

Environment: ``BROKER_*`` for the broker's own settings, and Vault's conventions
(``VAULT_ADDR``/``VAULT_TOKEN``, or OpenBao's ``BAO_ADDR``/``BAO_TOKEN``) for the server.
Secrets are ``SecretStr`` so they never appear in a repr or a log line."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr

from broker.core.errors import ConfigError

DEFAULT_MAX_BODY = 64 * 1024


class VaultSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    addr: str
    token: SecretStr | None = None
    role_id_file: Path | None = None
    secret_id_file: Path | None = None


def vault_from_env(
    env: Mapping[str, str] | None = None,
    *,
    addr: str | None = None,
    token: str | None = None,
) -> VaultSettings:
    """Vault address and credentials as Vault users expect: flags, then VAULT_*, then BAO_*."""
    env = os.environ if env is None else env
    addr = addr or env.get("VAULT_ADDR") or env.get("BAO_ADDR")
    if not addr:
        raise ConfigError("no Vault address: pass --vault-addr or set VAULT_ADDR (or BAO_ADDR)")
    if not addr.startswith(("http://", "https://")):
        raise ConfigError(f"Vault address {addr!r} must start with http:// or https://")
    token = token or env.get("VAULT_TOKEN") or env.get("BAO_TOKEN")
    role_id = env.get("BROKER_ROLE_ID_FILE")
    secret_id = env.get("BROKER_SECRET_ID_FILE")
    return VaultSettings(
        addr=addr.rstrip("/"),
        token=SecretStr(token) if token else None,
        role_id_file=Path(role_id) if role_id else None,
        secret_id_file=Path(secret_id) if secret_id else None,
    )


def issuer_from_env(env: Mapping[str, str] | None = None) -> str:
    """The ``iss`` of action tokens: ``BROKER_ISSUER_URL`` (the URL ``broker issuer`` serves
    its metadata under), else a URN that names the broker but offers no discovery."""
    env = os.environ if env is None else env
    url = env.get("BROKER_ISSUER_URL", "").rstrip("/")
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError(f"BROKER_ISSUER_URL {url!r} must start with http:// or https://")
    return url or "urn:agent-credential-broker"
