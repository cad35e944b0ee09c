"""An authenticated connection to Vault/OpenBao for one identity.

A sidecar logs in with AppRole (role id and secret id read from files, as Vault Agent
does), with its pod's service-account token (Vault's jwt or kubernetes auth method, the
token file re-read at every login), or, in development, with a token. Each AppRole login is handed to ``on_login`` before
its token is used, so that it can be recorded where runbook commands find it. ``ensure_fresh`` renews the token when half its
TTL is gone and logs in again when renewal is refused, so a long-running sidecar never
holds an expired identity. The clock is injected."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.core.errors import BackendUnavailable, BrokerError, ConfigError
from broker.settings import VaultSettings, VaultTLS, tls_from_env
from broker.vault.calls import Call, Steps, drive, error_for, expect
from broker.vault.endpoints import VaultEndpoints, requests_verify
from broker.vault.layout import APPROLE_MOUNT

if TYPE_CHECKING:
    import hvac

    from broker.vault.asyncapi import AsyncVault
    from broker.vault.registry import LoginRecorder

    # The client type other layers may name; only broker.vault imports hvac itself.
    VaultClient = hvac.Client

Clock = Callable[[], float]
# How long closing waits for a login in flight to be recorded (or revoked).
LOGIN_SETTLE = 10.0
NO_CREDENTIALS = (
    "no Vault credentials: set VAULT_TOKEN, or BROKER_ROLE_ID_FILE and "
    "BROKER_SECRET_ID_FILE for AppRole"
)


def __getattr__(name: str) -> Any:
    # ``VaultClient`` for the command line, without loading hvac for whoever imports this.
    if name == "VaultClient":
        import hvac

        return hvac.Client
    raise AttributeError(name)


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
    import hvac  # the command line's client: a sidecar runs on ``AsyncVault`` alone
    import requests

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
    """One identity's token, renewed and replaced as it runs out. A sidecar drives it on its
    event loop (``alogin``, ``aensure_fresh``, ``alogout``: ``AsyncVault``, no hvac); the
    command line and tests call the same operations synchronously (``login``...), over hvac."""

    def __init__(self, settings: VaultSettings, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self.tls = settings.tls or tls_from_env(addr=settings.addr)
        # Every client of this identity takes its address from here (one HA cluster's nodes).
        self.endpoints = VaultEndpoints(settings.addrs or (settings.addr,), self.tls)
        self._token = ""
        self._client: hvac.Client | None = None
        self._aio: AsyncVault | None = None
        # Renewal is scheduled from the TTL Vault gives: a duration, so a monotonic clock (a
        # wall clock stepped back would renew late, and Vault would revoke the login token and
        # every credential minted under it when it ran out).
        self._clock = clock
        self._lock = threading.Lock()
        self._alock: asyncio.Lock | None = None
        self._inflight: set[asyncio.Future[Any]] = set()  # logins and renewals under way
        self._renew_at = 0.0
        self._expires_at = 0.0
        self.accessor = ""
        self.policies: list[str] = []
        # Run with a new login's ``auth`` (its token), before the sidecar uses it
        # (``broker.sidecar.runtime`` records the login in Vault: ``broker.vault.registry``).
        self.on_login: LoginRecorder | None = None
        self._refused = b""  # digest of the last secret id Vault refused

    def __repr__(self) -> str:
        return f"VaultSession(addr={self.addr!r}, accessor={self.accessor!r})"

    @property
    def addr(self) -> str:
        """The node in use now (the active one of a cluster, once found)."""
        return self.endpoints.current

    @property
    def client(self) -> hvac.Client:
        """An hvac client holding this session's token (built on first use: a sidecar never
        asks for it, and so never loads hvac)."""
        if self._client is None:
            self._client = self.new_client(self._token or None)
        return self._client

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

    @property
    def aio(self) -> AsyncVault:
        """The session's own aiohttp client: its logins and renewals, and the sidecar's
        occasional calls (certificates, key publication, revocations)."""
        if self._aio is None:
            self._aio = self.async_client(timeout=5.0, pool=8)
        return self._aio

    async def aclose(self) -> None:
        """Close the client, after a login or renewal in flight has ended (recorded or
        revoked): a stopping sidecar cancels its loop, not its logins."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=LOGIN_SETTLE)
        if self._aio is not None:
            await self._aio.close()

    def check_credentials(self) -> None:
        """ConfigError now if no Vault credentials are configured at all (no network call):
        a settings mistake fails at start-up, while an absent Vault is waited for."""
        s = self.settings
        if s.auth != "approle":
            return  # settings.vault_from_env made sure the role and the token file are named
        if not (s.role_id_file and s.secret_id_file) and s.token is None:
            raise ConfigError(NO_CREDENTIALS)

    def _drive(self, steps: Steps[Any]) -> Any:
        with self._lock:
            return drive(self.client, steps)

    async def _arun(self, steps: Steps[Any]) -> Any:
        if self._alock is None:
            self._alock = asyncio.Lock()
        async with self._alock:
            return await self.aio.run(steps)

    def login(self) -> None:
        """Authenticate from the settings: AppRole when configured, else the token."""
        self._drive(self._login())

    async def alogin(self) -> None:
        await self._shielded(self._login())

    async def _shielded(self, steps: Steps[Any]) -> Any:
        """Runs to its end even when the caller is cancelled: a login cut off between Vault's
        answer and its recording would leave a live token no runbook can find (in a thread,
        as before, it could not be cut off)."""
        task = asyncio.ensure_future(self._arun(steps))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    def ensure_fresh(self) -> None:
        """Renew at half-life; log in again if renewal is refused or the token is gone."""
        self._drive(self._fresh())

    async def aensure_fresh(self) -> None:
        await self._shielded(self._fresh())

    def logout(self) -> bool:
        """Revoke the token this session logged in for (AppRole or jwt), as a process that
        stops should; a token it was given (``VAULT_TOKEN``) is not its to revoke. True when
        Vault revoked one."""
        return bool(self._drive(self._logout()))

    async def alogout(self) -> bool:
        return bool(await self._arun(self._logout()))

    def _login(self) -> Steps[None]:
        s = self.settings
        if s.auth != "approle":
            auth = yield from self._jwt_login()
        elif s.role_id_file and s.secret_id_file:
            role_id = _read_secret_file(s.role_id_file, "role id")
            secret_id = _read_secret_file(s.secret_id_file, "secret id")
            auth = yield from self._approle_login(role_id, secret_id)
        elif s.token is not None:
            token = s.token.get_secret_value()
            found = yield from expect(Call("GET", "auth/token/lookup-self", "login", token=token))
            self._take(token, found["data"])
            return
        else:
            raise ConfigError(NO_CREDENTIALS)
        yield from self._record(auth)
        self._take(str(auth["client_token"]), auth)

    def _approle_login(self, role_id: str, secret_id: str) -> Steps[dict[str, Any]]:
        digest = hashlib.sha256(secret_id.encode()).digest()
        if digest == self._refused:
            # Vault locks a role out after a few failed logins (OpenBao's user lockout), which
            # would outlast the fix: a refused secret id is not sent again until the file changes.
            raise BackendUnavailable(
                f"the secret id in {self.settings.secret_id_file} was refused by Vault (destroyed "
                "by a kill or a rotation?); waiting for a new one (`broker revive`)"
            )
        body = {"role_id": role_id, "secret_id": secret_id}
        # No token: nothing stale in the header of the login request.
        answer = yield Call("POST", f"auth/{APPROLE_MOUNT}/login", "login", body, token="")
        if answer.status == 400:
            self._refused = digest
        if answer.status >= 300:
            raise error_for(answer, "login")
        return dict(answer.doc["auth"])

    def _jwt_login(self) -> Steps[dict[str, Any]]:
        """Workload identity: the projected service-account token, read afresh at every login
        (the kubelet rotates the file), exchanged at Vault's jwt or kubernetes auth method
        (both take ``role`` and ``jwt`` at ``auth/<mount>/login``)."""
        s = self.settings
        assert s.jwt_file is not None
        assert s.jwt_role is not None
        body = {"role": s.jwt_role, "jwt": _read_secret_file(s.jwt_file, "service-account token")}
        found = yield from expect(Call("POST", f"auth/{s.jwt_mount}/login", "login", body, ""))
        return dict(found["auth"])

    def _record(self, auth: dict[str, Any]) -> Steps[None]:
        """Hand a fresh login to ``on_login`` before the token is put to use; a login that
        cannot be recorded is revoked and fails (nothing may mint with an unrecorded token)."""
        if self.on_login is None:
            return
        try:
            yield from self.on_login(auth)
        except Exception:
            token = str(auth["client_token"])
            revoke = Call("POST", "auth/token/revoke-self", "logout", token=token)
            with contextlib.suppress(BrokerError):
                yield from expect(revoke)
            raise

    def _take(self, token: str, auth: dict[str, Any]) -> None:
        self._token = token
        if self._client is not None:
            self._client.token = token
        self._note_auth(auth)

    def _note_auth(self, auth: dict[str, Any]) -> None:
        ttl = int(auth.get("lease_duration") or auth.get("ttl") or 0)
        now = self._clock()
        self.accessor = str(auth.get("accessor", ""))
        self.policies = list(auth.get("policies") or auth.get("token_policies") or [])
        # ttl 0 is a root/periodic-less token that never expires.
        self._expires_at = now + ttl if ttl else float("inf")
        self._renew_at = now + ttl / 2 if ttl else float("inf")

    def _logout(self) -> Steps[bool]:
        if self.settings.auth == "approle" and not self.settings.role_id_file:
            return False
        if not self.accessor:
            return False
        yield from expect(Call("POST", "auth/token/revoke-self", "logout"))
        self.accessor = ""
        return True

    def renewal_due(self) -> bool:
        return self._clock() >= self._renew_at

    def _fresh(self) -> Steps[None]:
        if self._clock() < self._renew_at:
            return
        try:
            found = yield from expect(Call("POST", "auth/token/renew-self", "token renewal", {}))
            self._note_auth(found["auth"])
        except BackendUnavailable:
            yield from self._login()

    @property
    def token(self) -> str:
        return self._token

    def healthy(self) -> bool:
        """Reachable, initialised and unsealed."""
        try:
            with self._lock:
                return bool(drive(self.client, _health()))
        except BackendUnavailable:
            return False


def _health() -> Steps[bool]:
    answer = yield Call("GET", "sys/health", "health check", token="")
    return isinstance(answer.doc, dict) and not answer.doc.get("sealed", True)
