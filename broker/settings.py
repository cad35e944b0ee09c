"""Configuration, read once into a frozen object.

Environment: ``BROKER_*`` for the broker's own settings, and Vault's conventions
(``VAULT_ADDR``/``VAULT_TOKEN``, or OpenBao's ``BAO_ADDR``/``BAO_TOKEN``) for the server.
TLS and namespace as Vault's own CLI reads them: ``VAULT_CACERT``/``VAULT_CAPATH``,
``VAULT_CLIENT_CERT``/``VAULT_CLIENT_KEY``, ``VAULT_SKIP_VERIFY``, ``VAULT_NAMESPACE`` (and
the ``BAO_*`` forms); ``broker.vault.session.make_client`` and ``broker.vault.asyncapi`` build
every Vault client from ``VaultTLS``. Secrets are ``SecretStr`` so they never appear in a repr
or a log line."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, SecretStr

from broker.core.errors import ConfigError

DEFAULT_MAX_BODY = 64 * 1024
log = logging.getLogger("broker.settings")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class VaultTLS(BaseModel):
    """How to trust Vault's certificate, present ours, and which namespace to address."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cacert: Path | None = None
    capath: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    skip_verify: bool = False
    namespace: str | None = None


class VaultSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    addr: str  # the first of ``addrs``: where a sidecar starts
    # Every node of an HA cluster (``broker.vault.endpoints``); just ``addr`` when one was given.
    addrs: tuple[str, ...] = ()
    token: SecretStr | None = None
    role_id_file: Path | None = None
    secret_id_file: Path | None = None
    tls: VaultTLS | None = None  # None: read from the environment when a client is built
    # Workload identity (``BROKER_VAULT_AUTH=jwt``): a projected service-account token file.
    auth: str = "approle"
    jwt_role: str | None = None
    jwt_file: Path | None = None
    jwt_mount: str = "jwt"


def _env(env: Mapping[str, str], name: str) -> str:
    """VAULT_<name>, else BAO_<name> (OpenBao's spelling), else ''."""
    return env.get(f"VAULT_{name}") or env.get(f"BAO_{name}") or ""


def _existing(env: Mapping[str, str], name: str) -> Path | None:
    value = _env(env, name)
    if not value:
        return None
    if not Path(value).exists():
        raise ConfigError(f"VAULT_{name} (or BAO_{name}) names {value!r}, which does not exist")
    return Path(value)


def tls_from_env(env: Mapping[str, str] | None = None, addr: str = "") -> VaultTLS:
    """TLS settings from the environment. ``VAULT_SKIP_VERIFY`` is refused unless Vault is on
    loopback (a dev server), and even then warned about: it turns TLS into encryption to
    whoever answers."""
    env = os.environ if env is None else env
    skip = _env(env, "SKIP_VERIFY").lower() in ("1", "true", "yes")
    host = urlsplit(addr).hostname or ""
    if skip and host not in _LOOPBACK:
        raise ConfigError(
            f"VAULT_SKIP_VERIFY is set for Vault at {addr}: refused outside a loopback dev "
            "server; set VAULT_CACERT (or BAO_CACERT) to the CA that signed Vault's certificate"
        )
    if skip:
        log.warning("VAULT_SKIP_VERIFY: Vault's TLS certificate is NOT verified (dev only)")
    cert, key = _existing(env, "CLIENT_CERT"), _existing(env, "CLIENT_KEY")
    if (cert is None) != (key is None):
        raise ConfigError("VAULT_CLIENT_CERT and VAULT_CLIENT_KEY go together: set both or none")
    return VaultTLS(
        cacert=_existing(env, "CACERT"),
        capath=_existing(env, "CAPATH"),
        client_cert=cert,
        client_key=key,
        skip_verify=skip,
        namespace=_env(env, "NAMESPACE").strip("/") or None,
    )


def vault_addrs(given: str | None) -> tuple[str, ...]:
    """One address, or the nodes of an HA cluster separated by commas (the sidecar follows
    the active one). Each must be an http(s) URL; an empty entry is an error, not skipped."""
    if not given:
        raise ConfigError("no Vault address: pass --vault-addr or set VAULT_ADDR (or BAO_ADDR)")
    addrs = tuple(a.strip().rstrip("/") for a in given.split(","))
    for a in addrs:
        if not a.startswith(("http://", "https://")):
            raise ConfigError(
                f"Vault address {a!r} in {given!r} must start with http:// or https://"
            )
    if len(set(addrs)) != len(addrs):
        raise ConfigError(f"Vault addresses {given!r}: the same address is given twice")
    return addrs


def vault_from_env(
    env: Mapping[str, str] | None = None,
    *,
    addr: str | None = None,
    token: str | None = None,
) -> VaultSettings:
    """Vault address and credentials as Vault users expect: flags, then VAULT_*, then BAO_*."""
    env = os.environ if env is None else env
    addrs = vault_addrs(
        addr or env.get("BROKER_VAULT_ADDRS") or env.get("VAULT_ADDR") or env.get("BAO_ADDR")
    )
    addr = addrs[0]
    token = token or env.get("VAULT_TOKEN") or env.get("BAO_TOKEN")
    role_id = env.get("BROKER_ROLE_ID_FILE")
    secret_id = env.get("BROKER_SECRET_ID_FILE")
    return VaultSettings(
        addr=addr,
        addrs=addrs,
        token=SecretStr(token) if token else None,
        role_id_file=Path(role_id) if role_id else None,
        secret_id_file=Path(secret_id) if secret_id else None,
        tls=tls_from_env(env, addr),
        **_workload_identity(env),
    )


def _workload_identity(env: Mapping[str, str]) -> dict[str, Any]:
    """``BROKER_VAULT_AUTH=jwt`` (or ``kubernetes``, the same login with a service-account
    token): the role, the token file (default the projected token's path) and the mount."""
    auth = env.get("BROKER_VAULT_AUTH", "approle")
    if auth == "approle":
        return {}
    if auth not in ("jwt", "kubernetes"):
        raise ConfigError(f"BROKER_VAULT_AUTH {auth!r}: expected approle, jwt or kubernetes")
    role = env.get("BROKER_VAULT_ROLE")
    if not role:
        raise ConfigError(f"BROKER_VAULT_AUTH={auth} needs BROKER_VAULT_ROLE (the Vault role)")
    default_file = "/var/run/secrets/tokens/vault-token" if auth == "jwt" else _SA_JWT_PATH
    return {
        "auth": auth,
        "jwt_role": role,
        "jwt_file": Path(env.get("BROKER_VAULT_JWT_FILE", default_file)),
        "jwt_mount": env.get("BROKER_VAULT_AUTH_MOUNT", auth),
    }


_SA_JWT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def issuer_from_env(env: Mapping[str, str] | None = None) -> str:
    """The ``iss`` of action tokens: ``BROKER_ISSUER_URL`` (the URL ``broker issuer`` serves
    its metadata under), else a URN that names the broker but offers no discovery."""
    env = os.environ if env is None else env
    url = env.get("BROKER_ISSUER_URL", "").rstrip("/")
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError(f"BROKER_ISSUER_URL {url!r} must start with http:// or https://")
    return url or "urn:agent-credential-broker"
