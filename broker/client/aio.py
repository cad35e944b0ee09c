"""The asynchronous client, on aiohttp: one pooled session, opened on first use."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

import aiohttp

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

__all__ = ["AsyncBrokerClient"]


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
