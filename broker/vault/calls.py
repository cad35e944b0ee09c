"""Vault operations written once, run over either HTTP stack.

An operation is a generator of steps (sans I/O, as h11 is): it yields each ``Call`` (method,
path, body) and is sent back the ``Answer`` (status, JSON, the address that answered), or has
the transport's failure thrown in. It shapes the requests, parses the answers and translates
Vault's statuses into the project's errors, so the sidecar (``AsyncVault.run``, aiohttp on the
event loop) and the command line (``drive``, over an hvac client's requests session) share
one description of every call and fail the same way: 403 is ``PermissionDenied``, 404
``NotFound``, anything else (sealed, standby, 5xx, no answer) ``BackendUnavailable``, with
messages that name the operation and the address and never a token or secret.

The sidecar never drives synchronously, so this module loads neither hvac nor requests
(``drive`` imports requests when it runs)."""

from __future__ import annotations

import re
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, Protocol, TypeVar, runtime_checkable

from broker.core.errors import BackendUnavailable, BrokerError, NotFound, PermissionDenied
from broker.vault.layout import KV_MOUNT

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One request. ``token``: None for the client's own, "" for none (a login), else the
    token to send instead (a fresh login's, before the session takes it)."""

    method: str
    path: str  # under /v1/
    operation: str  # for messages: "login", "read of broker-kv/..."
    body: dict[str, Any] | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)


class Answer(NamedTuple):
    status: int
    doc: Any  # may hold a token or a password: never in the repr
    addr: str

    def __repr__(self) -> str:
        return f"Answer(status={self.status}, addr={self.addr!r})"


Steps = Generator[Call, Answer, T]


class Run(Generic[T]):
    """Feeds one operation its answers (or the transport's error) and keeps its result."""

    def __init__(self, steps: Steps[T]) -> None:
        self._steps = steps
        self.result: T | None = None

    def next(self, outcome: Answer | BrokerError | None) -> Call | None:
        """The next call to make; None once the operation has returned (``result``)."""
        try:
            if isinstance(outcome, BrokerError):
                return self._steps.throw(outcome)
            return self._steps.send(outcome)  # type: ignore[arg-type]  # None starts it
        except StopIteration as stop:
            self.result = stop.value
            return None


@runtime_checkable
class StepRunner(Protocol):
    """What sync code may be given instead of an hvac client: something that runs an
    operation elsewhere (``broker.vault.asyncapi.LoopBridge``: on a sidecar's event loop)."""

    def run_steps(self, steps: Steps[T]) -> T: ...


def drive(client: Any, steps: Steps[T]) -> T:
    """Run ``steps`` over an hvac client (the command line, ``broker.ops``, tests), or hand
    them to a ``StepRunner``."""
    if isinstance(client, StepRunner):
        return client.run_steps(steps)
    run = Run(steps)
    outcome: Answer | BrokerError | None = None
    while (call := run.next(outcome)) is not None:
        try:
            outcome = _send_sync(client, call)
        except BrokerError as exc:
            outcome = exc
    return run.result  # type: ignore[return-value]  # set when the generator returned


def _send_sync(client: Any, call: Call) -> Answer:
    import requests  # only when driven synchronously: a sidecar never loads requests

    adapter = client.adapter
    headers = {"X-Vault-Request": "true"}
    token = client.token if call.token is None else call.token
    if token:
        headers["X-Vault-Token"] = token
    if adapter.namespace:
        headers["X-Vault-Namespace"] = adapter.namespace
    addr = str(client.url).rstrip("/")
    try:
        # ``_kwargs``: the client's verify, cert, timeout and proxies, as hvac sends them
        # (hvac keeps them nowhere public).
        resp = adapter.session.request(
            call.method, f"{addr}/v1/{call.path}", json=call.body, headers=headers,
            allow_redirects=adapter.allow_redirects, **adapter._kwargs,
        )  # fmt: skip
        doc = resp.json() if resp.content else {}
    except requests.exceptions.SSLError as exc:
        raise BackendUnavailable(tls_problem(str(exc), addr, call.operation)) from exc
    except (requests.exceptions.RequestException, ValueError) as exc:
        raise unreachable(addr, call.operation, exc) from exc
    return Answer(resp.status_code, doc, addr)


def unreachable(addr: str, operation: str, exc: Exception) -> BackendUnavailable:
    return BackendUnavailable(f"Vault is unreachable at {addr} ({operation}): {type(exc).__name__}")


def expect(call: Call) -> Steps[dict[str, Any]]:
    """Make ``call``; its JSON on success, else the translated error."""
    answer = yield call
    if answer.status >= 300:
        raise error_for(answer, call.operation)
    return answer.doc if isinstance(answer.doc, dict) else {}


def error_for(answer: Answer, operation: str) -> BrokerError:
    status, doc, addr = answer
    errors = doc.get("errors") if isinstance(doc, dict) else None
    reason = "; ".join(str(e) for e in errors or [])[:200] or f"HTTP {status}"
    if status == 403:
        return PermissionDenied(f"Vault at {addr} refused {operation}: permission denied")
    if status == 404:
        return NotFound(f"Vault at {addr} has nothing at the path for {operation}")
    if status == 503:
        return BackendUnavailable(f"Vault at {addr} is sealed or down ({operation})")
    if 300 <= status < 400 or status == 429:
        return BackendUnavailable(
            f"Vault at {addr} is a standby without an active node ({operation})"
        )
    return BackendUnavailable(f"Vault at {addr} failed {operation}: {reason}")


def kv_read_versioned(
    path: str, token: str | None = None
) -> Steps[tuple[dict[str, Any] | None, int]]:
    """A document on the broker's KV v2 mount and its version ((None, 0) when absent; a
    deleted version reads as None with its number)."""
    call = Call("GET", f"{KV_MOUNT}/data/{path}", f"read of {KV_MOUNT}/{path}", token=token)
    answer = yield call
    if answer.status >= 300 and answer.status != 404:
        raise error_for(answer, call.operation)
    # 404 is no document, or a deleted version (then with its metadata).
    data = (answer.doc if isinstance(answer.doc, dict) else {}).get("data") or {}
    found = data.get("data")
    version = int((data.get("metadata") or {}).get("version") or 0)
    return (dict(found) if isinstance(found, dict) else None), version


def kv_write_cas(
    path: str, doc: dict[str, Any], cas: int, token: str | None = None
) -> Steps[int | None]:
    """Write ``doc`` only if the current version is ``cas`` (0: only if absent): the new
    version, or None when another writer got there first."""
    body = {"data": doc, "options": {"cas": cas}}
    call = Call("POST", f"{KV_MOUNT}/data/{path}", f"write of {KV_MOUNT}/{path}", body, token)
    answer = yield call
    if answer.status == 400 and "check-and-set" in str(answer.doc):
        return None
    if answer.status >= 300:
        raise error_for(answer, call.operation)
    return int(((answer.doc or {}).get("data") or {}).get("version") or 0)


def kv_list(path: str) -> Steps[list[str]]:
    try:
        found = yield from expect(
            Call("GET", f"{KV_MOUNT}/metadata/{path}?list=true", f"list of {KV_MOUNT}/{path}")
        )
    except NotFound:
        return []
    return [str(k) for k in (found.get("data") or {}).get("keys") or []]


_CERT_REASON = re.compile(r"certificate verify failed: ([^()'\"]+)|(hostname [^()'\"]+)")


# The server wanted a client certificate and got none (TLS 1.3 and 1.2 alerts).
_CLIENT_CERT_WANTED = re.compile(r"alert certificate required|alert bad certificate", re.I)


def tls_problem(text: str, addr: str, operation: str) -> str:
    """A certificate failure said plainly, with the variable that fixes it."""
    if _CLIENT_CERT_WANTED.search(text):
        return (
            f"Vault at {addr} requires a client certificate and refused ours ({operation}); set "
            "VAULT_CLIENT_CERT and VAULT_CLIENT_KEY (or BAO_CLIENT_CERT/BAO_CLIENT_KEY) to a "
            "certificate its listener trusts and its key"
        )
    found = _CERT_REASON.search(text)
    reason = next((g for g in found.groups() if g), "").strip() if found else "TLS handshake failed"
    return (
        f"Vault's TLS certificate at {addr} was not accepted ({operation}): {reason}; set "
        "VAULT_CACERT (or BAO_CACERT) to the CA certificate that signed it"
    )
