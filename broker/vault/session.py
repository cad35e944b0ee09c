"""An authenticated connection to Vault/OpenBao for one identity.

A sidecar logs in with AppRole (role id and secret id read from files, as Vault Agent
does), with its pod's service-account token (Vault's jwt or kubernetes auth method, the
token file re-read at every login), or, in development, with a token. Each AppRole login is handed to ``on_login`` before
its token is used, so that it can be recorded where runbook commands find it. ``ensure_fresh`` renews the token when half its
TTL is gone and logs in again when renewal is refused, so a long-running sidecar never
holds an expired identity. The clock is injected."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hvac
import requests

from broker.core.errors import BackendUnavailable, ConfigError
from broker.settings import VaultSettings, VaultTLS, tls_from_env
from broker.vault._errors import translate_errors
from broker.vault.endpoints import VaultEndpoints, requests_verify
from broker.vault.layout import APPROLE_MOUNT

if TYPE_CHECKING:
    from broker.vault.asyncapi import AsyncVault

Clock = Callable[[], float]


# The client type other layers may name; only broker.vault imports hvac itself.
VaultClient = hvac.Client


def _read_secret_file(path: Path, what: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror}") from exc
    if not value:
        raise ConfigError(f"the {what} file {path} is empty")
    return value


def make_client(
    addr: str,
    token: str | None = None,
    timeout: float = 5.0,
    tls: VaultTLS | None = None,
    endpoints: VaultEndpoints | None = None,
) -> hvac.Client:
    """Every hvac client is built here, with TLS and namespace from ``tls`` (default: the
    environment, as Vault's CLI reads it), so no command can forget ``VAULT_CACERT``. With
    ``endpoints`` it follows a cluster's active node (``addr`` is then ignored)."""
    tls = tls or tls_from_env(addr=addr)
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    cert = (str(tls.client_cert), str(tls.client_key)) if tls.client_cert else None
    # On the session too: hvac takes a given session's own ``verify`` (True by default) over
    # its ``verify`` argument, which is how VAULT_CACERT used to be ignored.
    session.verify, session.cert = requests_verify(tls), cert
    client = hvac.Client(
        url=addr,
        token=token,
        timeout=timeout,
        session=session,
        verify=requests_verify(tls),
        cert=cert,
        namespace=tls.namespace,
    )
    if endpoints is not None:
        endpoints.attach(client)
    return client


class VaultSession:
    """One identity's client. Thread-safe for renewal; hvac calls may run in threads."""

    def __init__(self, settings: VaultSettings, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self.tls = settings.tls or tls_from_env(addr=settings.addr)
        # Every client of this identity takes its address from here (one HA cluster's nodes).
        self.endpoints = VaultEndpoints(settings.addrs or (settings.addr,), self.tls)
        self.client = self.new_client()
        # Renewal is scheduled from the TTL Vault gives: a duration, so a monotonic clock (a
        # wall clock stepped back would renew late, and Vault would revoke the login token and
        # every credential minted under it when it ran out).
        self._clock = clock
        self._lock = threading.Lock()
        self._renew_at = 0.0
        self._expires_at = 0.0
        self.accessor = ""
        self.policies: list[str] = []
        # Called with a client holding a new AppRole login's token, before the sidecar uses it
        # (``broker.sidecar.runtime`` records the login in Vault: ``broker.vault.registry``).
        self.on_login: Callable[[hvac.Client, dict[str, Any]], None] | None = None
        self._refused = b""  # digest of the last secret id Vault refused

    def __repr__(self) -> str:
        return f"VaultSession(addr={self.addr!r}, accessor={self.accessor!r})"

    @property
    def addr(self) -> str:
        """The node in use now (the active one of a cluster, once found)."""
        return self.endpoints.current

    def new_client(self, token: str | None = None, timeout: float = 5.0) -> hvac.Client:
        """A long-lived client that follows the active node with this session's clients."""
        return make_client(self.addr, token, timeout, tls=self.tls, endpoints=self.endpoints)

    def async_client(self, *, timeout: float, pool: int) -> AsyncVault:
        """A pooled aiohttp client of this identity: its token as it is renewed, its TLS,
        the cluster's active node (``broker.vault.asyncapi``)."""
        from broker.vault.asyncapi import AsyncVault

        return AsyncVault(
            self.addr,
            lambda: self.token,
            timeout=timeout,
            pool=pool,
            tls=self.tls,
            endpoints=self.endpoints,
        )

    def _once(self, token: str) -> hvac.Client:
        """A client for one call (a login), on the node in use, with its headers."""
        client = make_client(self.addr, token, tls=self.tls)
        client.session.headers.update(self.endpoints.headers())
        return client

    def check_credentials(self) -> None:
        """ConfigError now if no Vault credentials are configured at all (no network call):
        a settings mistake fails at start-up, while an absent Vault is waited for."""
        s = self.settings
        if s.auth != "approle":
            return  # settings.vault_from_env made sure the role and the token file are named
        if not (s.role_id_file and s.secret_id_file) and s.token is None:
            raise ConfigError(
                "no Vault credentials: set VAULT_TOKEN, or BROKER_ROLE_ID_FILE and "
                "BROKER_SECRET_ID_FILE for AppRole"
            )

    def login(self) -> None:
        """Authenticate from the settings: AppRole when configured, else the token."""
        with self._lock, translate_errors("login", self.addr):
            s = self.settings
            if s.auth != "approle":
                self._jwt_login()
            elif s.role_id_file and s.secret_id_file:
                role_id = _read_secret_file(s.role_id_file, "role id")
                secret_id = _read_secret_file(s.secret_id_file, "secret id")
                self._approle_login(role_id, secret_id)
            elif s.token is not None:
                self.client.token = s.token.get_secret_value()
                self._note_auth(self.client.auth.token.lookup_self()["data"])
            else:
                raise ConfigError(
                    "no Vault credentials: set VAULT_TOKEN, or BROKER_ROLE_ID_FILE and "
                    "BROKER_SECRET_ID_FILE for AppRole"
                )

    def _approle_login(self, role_id: str, secret_id: str) -> None:
        digest = hashlib.sha256(secret_id.encode()).digest()
        if digest == self._refused:
            # Vault locks a role out after a few failed logins (OpenBao's user lockout), which
            # would outlast the fix: a refused secret id is not sent again until the file changes.
            raise BackendUnavailable(
                f"the secret id in {self.settings.secret_id_file} was refused by Vault (destroyed "
                "by a kill or a rotation?); waiting for a new one (`broker revive`)"
            )
        try:
            # A clean client: no stale token in the header of the login request.
            result = self._once("").auth.approle.login(
                role_id=role_id, secret_id=secret_id, mount_point=APPROLE_MOUNT, use_token=False
            )
        except hvac.exceptions.InvalidRequest:
            self._refused = digest
            raise
        self._record(result["auth"])
        self.client.token = result["auth"]["client_token"]
        self._note_auth(result["auth"])

    def _jwt_login(self) -> None:
        """Workload identity: the projected service-account token, read afresh at every login
        (the kubelet rotates the file), exchanged at Vault's jwt or kubernetes auth method."""
        s = self.settings
        assert s.jwt_file is not None
        assert s.jwt_role is not None
        jwt = _read_secret_file(s.jwt_file, "service-account token")
        client = self._once("")
        if s.auth == "kubernetes":
            result = client.auth.kubernetes.login(
                s.jwt_role, jwt, use_token=False, mount_point=s.jwt_mount
            )
        else:
            result = client.auth.jwt.jwt_login(s.jwt_role, jwt, use_token=False, path=s.jwt_mount)
        self._record(result["auth"])
        self.client.token = result["auth"]["client_token"]
        self._note_auth(result["auth"])

    def _record(self, auth: dict[str, Any]) -> None:
        """Hand a fresh login to ``on_login`` before the token is put to use; a login that
        cannot be recorded is revoked and fails (nothing may mint with an unrecorded token)."""
        if self.on_login is None:
            return
        fresh = self._once(str(auth["client_token"]))
        try:
            self.on_login(fresh, auth)
        except BaseException:
            with contextlib.suppress(Exception):
                fresh.auth.token.revoke_self()
            raise

    def _note_auth(self, auth: dict[str, Any]) -> None:
        ttl = int(auth.get("lease_duration") or auth.get("ttl") or 0)
        now = self._clock()
        self.accessor = str(auth.get("accessor", ""))
        self.policies = list(auth.get("policies") or auth.get("token_policies") or [])
        # ttl 0 is a root/periodic-less token that never expires.
        self._expires_at = now + ttl if ttl else float("inf")
        self._renew_at = now + ttl / 2 if ttl else float("inf")

    def logout(self) -> bool:
        """Revoke the token this session logged in for (AppRole or jwt), as a process that
        stops should; a token it was given (``VAULT_TOKEN``) is not its to revoke. True when
        Vault revoked one."""
        if self.settings.auth == "approle" and not self.settings.role_id_file:
            return False
        if not self.accessor:
            return False
        with self._lock, translate_errors("logout", self.addr):
            self.client.auth.token.revoke_self()
        self.accessor = ""
        return True

    def renewal_due(self) -> bool:
        return self._clock() >= self._renew_at

    def ensure_fresh(self) -> None:
        """Renew at half-life; log in again if renewal is refused or the token is gone."""
        if self._clock() < self._renew_at:
            return
        try:
            with self._lock, translate_errors("token renewal", self.addr):
                self._note_auth(self.client.auth.token.renew_self()["auth"])
        except BackendUnavailable:
            self.login()

    @property
    def token(self) -> str:
        return str(self.client.token)

    def healthy(self) -> bool:
        """Reachable, initialised and unsealed."""
        try:
            with translate_errors("health check", self.addr):
                status = self.client.sys.read_health_status(method="GET")
        except BackendUnavailable:
            return False
        return isinstance(status, dict) and not status.get("sealed", True)
