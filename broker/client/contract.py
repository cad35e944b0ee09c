"""The client's half of the sidecar's HTTP contract, without I/O: each operation as a
``_Call`` (what to send, how to read a 2xx reply), and ``_interpret``, the one function that
turns every reply into a value or a typed error. Both transports use it, so they cannot
disagree about what a reply means."""

from __future__ import annotations

import json
import math
import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from broker.client.credential import Credential
from broker.client.errors import (
    BadRequest,
    BrokerClientError,
    BrokerUnavailable,
    Denied,
    PendingApproval,
    RateLimited,
)
from broker.dpop import DPoPKey

OUTCOME_STATUSES = frozenset({"ok", "error", "rolled_back"})
DEFAULT_TIMEOUT = 10.0
T = TypeVar("T")


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
