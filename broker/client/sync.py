"""The synchronous client, on ``http.client``: one keep-alive connection per client."""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from broker.client.contract import (
    DEFAULT_TIMEOUT,
    T,
    _Call,
    _check_wait,
    _credential_call,
    _interpret,
    _outcome_call,
    _proof_header,
    _redeem_call,
    _scope_call,
    _Target,
)
from broker.client.credential import Credential
from broker.client.errors import BrokerClientError, BrokerUnavailable, PendingApproval
from broker.dpop import DPoPKey

__all__ = ["BrokerClient"]


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
