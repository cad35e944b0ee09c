"""The agents' client for the broker sidecar, synchronous and asynchronous.

The sidecar listens on a unix socket (``/run/broker.sock`` or ``unix:///run/broker.sock``)
or on loopback HTTP (``http://127.0.0.1:8080``). One pure function, ``_interpret``, turns
every reply into a value or a typed error, so the two transports (``http.client`` and
aiohttp) only move bytes and cannot disagree about what a reply means::

    BrokerClientError                  detail       a reply that breaks the contract
    ├── Denied                         reason       403: the policy refused (reason code)
    │   └── RateLimited                retry_after  429: a rate or concurrency limit
    ├── PendingApproval                approval_id  202: a human must approve first
    ├── BrokerUnavailable              retry_after  503/5xx, or the sidecar is unreachable
    └── BadRequest                     code         any other 4xx: the request is wrong

A credential's secret fields (token, password, lease id...) live in ``Credential.secret``,
which is kept out of its repr so that logging a credential never logs the secret.

Given a ``dpop`` key (``broker.dpop.DPoPKey``), every mint and redeem carries a DPoP proof,
so jwt credentials come bound to that key (RFC 9449, ``token_type`` DPoP)."""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import os
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Generic, TypeGuard, TypeVar

import aiohttp

from broker.dpop import DPoPKey

__all__ = [
    "OUTCOME_STATUSES",
    "AsyncBrokerClient",
    "BadRequest",
    "BrokerClient",
    "BrokerClientError",
    "BrokerUnavailable",
    "Credential",
    "Denied",
    "PendingApproval",
    "RateLimited",
]

OUTCOME_STATUSES = frozenset({"ok", "error", "rolled_back"})
DEFAULT_TIMEOUT = 10.0
T = TypeVar("T")


class BrokerClientError(Exception):
    """Root of every error this client raises."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Denied(BrokerClientError):
    """The broker refused the action; ``reason`` is a stable reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class RateLimited(Denied):
    """A rate or concurrency limit refused the action; try again after ``retry_after`` s."""

    def __init__(self, reason: str, detail: str, retry_after: float | None) -> None:
        super().__init__(reason, detail)
        self.retry_after = retry_after


class PendingApproval(BrokerClientError):
    """A human must approve first; redeem ``approval_id`` later (``wait_for_approval``)."""

    def __init__(self, approval_id: str, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.approval_id = approval_id
        self.reason = reason

    def __str__(self) -> str:
        return f"approval {self.approval_id} pending ({self.reason}): {self.detail}"


class BrokerUnavailable(BrokerClientError):
    """The sidecar or its backend cannot serve now; worth retrying after ``retry_after``."""

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class BadRequest(BrokerClientError):
    """The request itself is wrong (unknown field, bad id...); retrying will not help."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


_PUBLIC_FIELDS = ("kind", "credential_id", "expires_at", "ttl")


@dataclass(frozen=True)
class Credential:
    """A credential as the agent receives it. ``secret`` holds every other field the broker
    sent (``token``, ``username``/``password``, ``lease_id``...) and is never in the repr."""

    kind: str
    credential_id: str
    expires_at: int
    ttl: int
    secret: Mapping[str, Any] = field(repr=False, hash=False)
    decision: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, hash=False, compare=False
    )

    @classmethod
    def from_json(cls, doc: Any, decision: Any = None) -> Credential:
        if not isinstance(doc, dict):
            raise BrokerClientError("the broker allowed the action but sent no credential")
        kind, cid, expires_at, ttl = (doc.get(name) for name in _PUBLIC_FIELDS)
        if not (
            isinstance(kind, str) and isinstance(cid, str) and _number(expires_at) and _number(ttl)
        ):
            raise BrokerClientError("the broker sent a credential without kind, id, expiry or ttl")
        secret = {k: v for k, v in doc.items() if k not in _PUBLIC_FIELDS}
        return cls(
            kind=kind,
            credential_id=cid,
            expires_at=int(expires_at),
            ttl=int(ttl),
            secret=MappingProxyType(secret),
            decision=MappingProxyType(dict(decision) if isinstance(decision, dict) else {}),
        )

    def _secret_str(self, name: str) -> str | None:
        value = self.secret.get(name)
        return value if isinstance(value, str) else None

    @property
    def token(self) -> str | None:
        return self._secret_str("token")

    @property
    def username(self) -> str | None:
        return self._secret_str("username")

    @property
    def password(self) -> str | None:
        return self._secret_str("password")

    @property
    def lease_id(self) -> str | None:
        return self._secret_str("lease_id")


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --- the contract, without I/O -----------------------------------------------------


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(body) if body.strip() else {}
    except (UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _retry_after(header: str | None, doc: Mapping[str, Any]) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not used by the sidecar)."""
    raw = header if header is not None else doc.get("retry_after")
    try:
        seconds = float(raw) if raw is not None else math.nan
    except (TypeError, ValueError):
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _interpret(status: int, retry_after: str | None, body: bytes) -> dict[str, Any]:
    """A 2xx reply's JSON object, or the typed error the reply stands for."""
    doc = _json_object(body)
    detail = str((doc or {}).get("detail") or f"the broker answered HTTP {status}")
    if status >= 500:
        raise BrokerUnavailable(detail, _retry_after(retry_after, doc or {}))
    if doc is None:
        raise BrokerClientError(
            f"the broker answered HTTP {status} with a body that is not a JSON object"
        )
    reason = str(doc.get("reason") or doc.get("error") or f"http_{status}")
    if status == 429:
        raise RateLimited(reason, detail, _retry_after(retry_after, doc))
    if status == 202 and doc.get("outcome") == "pending_approval":
        raise PendingApproval(str(doc.get("approval_id", "")), reason, detail)
    if 400 <= status < 500 and doc.get("outcome") == "deny":
        raise Denied(reason, detail)
    if 400 <= status < 500:
        raise BadRequest(str(doc.get("error") or f"http_{status}"), detail)
    if 200 <= status < 300:
        return doc
    raise BrokerClientError(f"the broker answered with unexpected HTTP {status}")


def _credential(doc: Mapping[str, Any]) -> Credential:
    if doc.get("outcome") != "allow":
        raise BrokerClientError(
            f"the broker answered outcome {doc.get('outcome')!r} with a 2xx status"
        )
    return Credential.from_json(doc.get("credential"), doc.get("decision"))


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One operation of the contract: what to send and how to read a 2xx reply."""

    method: str
    path: str
    body: Mapping[str, Any] | None
    parse: Callable[[dict[str, Any]], T]
    mints: bool = False  # carries a DPoP proof when the client holds a key


def _credential_call(
    action: str, inputs: Mapping[str, Any], workflow: str | None, request_id: str | None
) -> _Call[Credential]:
    body: dict[str, Any] = {"action": action, "inputs": dict(inputs)}
    if workflow is not None:
        body["workflow"] = workflow
    if request_id is not None:
        body["request_id"] = request_id
    return _Call("POST", "/v1/credentials", body, _credential, mints=True)


def _redeem_call(approval_id: str, inputs: Mapping[str, Any] | None) -> _Call[Credential]:
    body = {} if inputs is None else {"inputs": dict(inputs)}  # refused unless the approved ones
    return _Call(
        "POST", f"/v1/approvals/{_segment(approval_id)}/redeem", body, _credential, mints=True
    )


def _scope_call() -> _Call[dict[str, Any]]:
    return _Call("GET", "/v1/scope", None, lambda doc: doc)


def _outcome_call(credential_id: str, status: str, cost: float | None) -> _Call[None]:
    if status not in OUTCOME_STATUSES:
        raise ValueError(f"status must be one of {sorted(OUTCOME_STATUSES)}, not {status!r}")
    body: dict[str, Any] = {"status": status} if cost is None else {"status": status, "cost": cost}
    return _Call("POST", f"/v1/credentials/{_segment(credential_id)}/outcome", body, lambda _: None)


def _segment(value: str) -> str:
    """An id as one path segment: ``../x`` cannot climb out of its route, nor can ``..``."""
    if value in ("", ".", ".."):
        raise ValueError(f"{value!r} is not an id")
    return urllib.parse.quote(value, safe="")


def _check_wait(timeout: float, poll: float) -> None:
    if timeout < 0 or poll <= 0:
        raise ValueError("timeout must be >= 0 and poll > 0")


@dataclass(frozen=True)
class _Target:
    socket_path: str | None
    host: str = "localhost"
    port: int = 80
    prefix: str = ""

    @classmethod
    def parse(cls, target: str | os.PathLike[str]) -> _Target:
        text = os.fspath(target)
        if text.startswith("unix://"):
            text = text.removeprefix("unix://")
        elif text.startswith("http://"):
            url = urllib.parse.urlsplit(text)
            if not url.hostname:
                raise ValueError(f"no host in broker URL {text!r}")
            return cls(None, url.hostname, url.port or 80, url.path.rstrip("/"))
        elif "://" in text:
            raise ValueError(f"the broker is reached over http:// or a unix socket, not {text!r}")
        if not text:
            raise ValueError("empty broker socket path")
        return cls(socket_path=text)

    @property
    def where(self) -> str:
        return f"unix:{self.socket_path}" if self.socket_path else f"http://{self._netloc}"

    @property
    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self._netloc}{self.prefix}{path}"


def _proof_header(key: DPoPKey | None, target: _Target, call: _Call[Any]) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    if key is not None and call.mints:
        headers["DPoP"] = key.proof(call.method, target.url(call.path))
    return headers


# --- synchronous ----------------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class BrokerClient:
    """Synchronous client; the same operations as ``AsyncBrokerClient``. One connection per
    call, so one client may serve many threads."""

    def __init__(
        self,
        target: str | os.PathLike[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        dpop: DPoPKey | None = None,
    ) -> None:
        self._target = _Target.parse(target)
        self._dpop = dpop
        self._timeout = timeout
        self._clock = clock
        self._sleep = sleep
        self._closed = False

    def __repr__(self) -> str:
        return f"BrokerClient({self._target.where!r})"

    def credential(
        self,
        action: str,
        inputs: Mapping[str, Any],
        *,
        workflow: str | None = None,
        request_id: str | None = None,
    ) -> Credential:
        return self._run(_credential_call(action, inputs, workflow, request_id))

    def redeem(self, approval_id: str, inputs: Mapping[str, Any] | None = None) -> Credential:
        return self._run(_redeem_call(approval_id, inputs))

    def wait_for_approval(
        self, approval_id: str, *, timeout: float, poll: float = 1.0
    ) -> Credential:
        _check_wait(timeout, poll)
        deadline = self._clock() + timeout
        while True:
            try:
                return self.redeem(approval_id)
            except PendingApproval:
                left = deadline - self._clock()
                if left <= 0:
                    raise
                self._sleep(min(poll, left))

    def scope(self) -> dict[str, Any]:
        return self._run(_scope_call())

    def report_outcome(self, credential_id: str, status: str, cost: float | None = None) -> None:
        self._run(_outcome_call(credential_id, status, cost))

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self) -> http.client.HTTPConnection:
        t = self._target
        if t.socket_path is not None:
            return _UnixHTTPConnection(t.socket_path, self._timeout)
        return http.client.HTTPConnection(t.host, t.port, timeout=self._timeout)

    def _run(self, call: _Call[T]) -> T:
        if self._closed:
            raise BrokerClientError("the client is closed")
        headers = _proof_header(self._dpop, self._target, call)
        payload = None
        if call.body is not None:
            payload = json.dumps(call.body).encode()
            headers["Content-Type"] = "application/json"
        conn = self._connection()
        try:
            conn.request(
                call.method, self._target.prefix + call.path, body=payload, headers=headers
            )
            resp = conn.getresponse()
            status, retry_after, data = resp.status, resp.getheader("Retry-After"), resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise BrokerUnavailable(
                f"cannot reach the broker at {self._target.where}: {exc!r}"
            ) from exc
        finally:
            conn.close()
        return call.parse(_interpret(status, retry_after, data))


# --- asynchronous ---------------------------------------------------------------------


class AsyncBrokerClient:
    """Asynchronous client on aiohttp; one pooled session, opened on first use."""

    def __init__(
        self,
        target: str | os.PathLike[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        dpop: DPoPKey | None = None,
    ) -> None:
        self._target = _Target.parse(target)
        self._dpop = dpop
        self._timeout = timeout
        self._clock = clock
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"AsyncBrokerClient({self._target.where!r})"

    async def credential(
        self,
        action: str,
        inputs: Mapping[str, Any],
        *,
        workflow: str | None = None,
        request_id: str | None = None,
    ) -> Credential:
        """A credential for ``action`` on ``inputs``; Denied, RateLimited, PendingApproval,
        BrokerUnavailable or BadRequest otherwise."""
        return await self._run(_credential_call(action, inputs, workflow, request_id))

    async def redeem(self, approval_id: str, inputs: Mapping[str, Any] | None = None) -> Credential:
        """One attempt to turn an approval into a credential (PendingApproval while pending);
        with ``inputs``, refused unless they are exactly the approved ones."""
        return await self._run(_redeem_call(approval_id, inputs))

    async def wait_for_approval(
        self, approval_id: str, *, timeout: float, poll: float = 1.0
    ) -> Credential:
        """Redeem every ``poll`` s until approved. A refusal (Denied) is raised as it comes;
        once ``timeout`` has passed, the last PendingApproval is raised."""
        _check_wait(timeout, poll)
        deadline = self._clock() + timeout
        while True:
            try:
                return await self.redeem(approval_id)
            except PendingApproval:
                left = deadline - self._clock()
                if left <= 0:
                    raise
                await self._sleep(min(poll, left))

    async def scope(self) -> dict[str, Any]:
        """What this agent may do: actions, inputs, limits, approval gates."""
        return await self._run(_scope_call())

    async def report_outcome(
        self, credential_id: str, status: str, cost: float | None = None
    ) -> None:
        """How the action went (ok, error or rolled_back); frees the credential's slot."""
        await self._run(_outcome_call(credential_id, status, cost))

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncBrokerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise BrokerClientError("the client is closed")
        if self._session is None:
            path = self._target.socket_path
            connector = aiohttp.UnixConnector(path=path) if path else aiohttp.TCPConnector()
            timeout = aiohttp.ClientTimeout(total=self._timeout)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    async def _run(self, call: _Call[T]) -> T:
        session = self._open()
        url = self._target.url(call.path)
        try:
            async with session.request(
                call.method,
                url,
                json=call.body,
                headers=_proof_header(self._dpop, self._target, call),
            ) as resp:
                status, retry_after = resp.status, resp.headers.get("Retry-After")
                data = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise BrokerUnavailable(
                f"cannot reach the broker at {self._target.where}: {exc!r}"
            ) from exc
        return call.parse(_interpret(status, retry_after, data))
