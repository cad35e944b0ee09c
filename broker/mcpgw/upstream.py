"""Calls to the upstream MCP servers, with the credential where each one expects it.

A call whose credential travels with the connection opens its own MCP connection: the
credential is minted for exactly one call, so it belongs to that connection (an HTTP header,
or the environment of a stdio process started for the call) and never to a long-lived
session that a later call could reuse. A stdio upstream that takes the credential as an
argument keeps one long-lived session, since each call carries its own credential. What can be
shared without sharing a credential is shared: the HTTP connection pool and TLS context per
upstream, and the protocol version it negotiated the first time (so later calls skip the
discovery round trip). Upstream failures become ``UpstreamFailed``, whose detail never
holds the secret."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TextIO

import anyio
import httpx2
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from broker.mcpgw.config import HttpUpstream, StdioUpstream

Upstream = HttpUpstream | StdioUpstream
log = logging.getLogger("broker.mcp")


class UpstreamFailed(Exception):
    """The upstream could not be reached, died mid-call, or broke the protocol."""

    code = "upstream_failed"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "[credential]") if secret else text


class _Session:
    """A long-lived MCP session, entered and exited by one background task of its own
    (anyio's scopes must be left by the task that entered them); calls use ``client``."""

    def __init__(self, transport: Any, timeout: float) -> None:
        self.client: Client | None = None
        self._ready, self._stop = asyncio.Event(), asyncio.Event()
        self._task = asyncio.create_task(self._own(transport, timeout))

    async def _own(self, transport: Any, timeout: float) -> None:
        try:
            async with Client(transport, cache=None, read_timeout_seconds=timeout) as client:
                self.client = client
                self._ready.set()
                await self._stop.wait()
        except Exception as exc:  # the process would not start, or died: callers see it
            log.warning("stdio upstream session ended: %s", _describe(exc))
        finally:
            self.client = None
            self._ready.set()

    async def connected(self) -> Client:
        await self._ready.wait()
        if self.client is None:
            raise UpstreamFailed("the upstream process did not start or has exited")
        return self.client

    async def aclose(self) -> None:
        self._stop.set()
        await self._task


class Upstreams:
    """The gateway's upstreams by name; ``aclose`` releases their HTTP pools and sessions.

    A stdio upstream that takes the credential as an argument keeps one long-lived process
    and session: no credential is part of the session, each call carries its own. If that
    process dies, the call fails and the next call starts a new one."""

    def __init__(self, upstreams: Mapping[str, Upstream], *, errlog: TextIO = sys.stderr):
        self._upstreams = dict(upstreams)
        self._errlog = errlog
        self._pools: dict[str, httpx2.AsyncHTTPTransport] = {}
        self._modes: dict[str, tuple[str, types.DiscoverResult | None]] = {}
        self._sessions: dict[str, _Session] = {}
        self._opening = asyncio.Lock()

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()
        for session in self._sessions.values():
            await session.aclose()
        self._sessions.clear()

    async def _session(self, name: str, upstream: StdioUpstream) -> _Session:
        async with self._opening:
            session = self._sessions.get(name)
            if session is None:
                transport = self._transport(name, upstream, None)
                session = self._sessions[name] = _Session(transport, upstream.timeout)
            return session

    async def _drop(self, name: str, session: _Session) -> None:
        if self._sessions.get(name) is session:
            del self._sessions[name]
        await session.aclose()

    async def list_tools(self, name: str) -> list[types.Tool]:
        """The upstream's tools (listing needs no credential)."""
        try:
            with anyio.fail_after(self._upstreams[name].timeout):
                async with self._connect(name, None) as client:
                    return list((await client.list_tools()).tools)
        except Exception as exc:  # every transport, protocol and process failure alike
            raise UpstreamFailed(f"listing the upstream's tools failed: {_describe(exc)}") from exc

    async def call_tool(
        self, name: str, tool: str, arguments: Mapping[str, Any], secret: str
    ) -> types.CallToolResult:
        """Call ``tool`` with the credential; the result comes back with the secret scrubbed.
        The upstream's result is passed on as it is: the agent's client validates it against
        the output schema the gateway listed, so the gateway does not list tools per call."""
        upstream = self._upstreams[name]
        args = dict(arguments)
        if isinstance(upstream, StdioUpstream) and upstream.argument is not None:
            args[upstream.argument] = secret
        request = types.CallToolRequest(
            params=types.CallToolRequestParams(name=tool, arguments=args)
        )
        try:
            with anyio.fail_after(upstream.timeout):
                async with self._connect(name, secret) as client:
                    result = await client.session.send_request(request, types.CallToolResult)
        except Exception as exc:
            raise UpstreamFailed(
                _scrub(f"the upstream call failed: {_describe(exc)}", secret)
            ) from exc
        return scrub_result(result, secret)

    @asynccontextmanager
    async def _connect(self, name: str, secret: str | None) -> AsyncIterator[Client]:
        upstream = self._upstreams[name]
        if isinstance(upstream, StdioUpstream) and upstream.argument is not None:
            session = await self._session(name, upstream)
            try:
                yield await session.connected()
            except Exception:
                await self._drop(name, session)  # a dead or broken process: start anew next time
                raise
            return
        mode, discovered = self._modes.get(name, ("auto", None))
        async with Client(
            self._transport(name, upstream, secret),
            cache=None,
            read_timeout_seconds=upstream.timeout,
            mode=mode,  # a version string this upstream negotiated before
            prior_discover=discovered,
        ) as client:
            if name not in self._modes:
                self._remember_mode(name, client)
            yield client

    def _remember_mode(self, name: str, client: Client) -> None:
        version = client.protocol_version
        if version in MODERN_PROTOCOL_VERSIONS:
            self._modes[name] = (version, client.session.discover_result)
        else:
            self._modes[name] = ("legacy", None)

    def _transport(self, name: str, upstream: Upstream, secret: str | None) -> Any:
        if isinstance(upstream, HttpUpstream):
            headers = {}
            if secret is not None:
                value = f"{upstream.scheme} {secret}" if upstream.scheme else secret
                headers[upstream.header] = value
            pool = self._pools.get(name) or self._pools.setdefault(
                name, httpx2.AsyncHTTPTransport()
            )
            # Not closed per call: closing a client closes its transport, the shared pool.
            http = httpx2.AsyncClient(headers=headers, timeout=upstream.timeout, transport=pool)
            return streamable_http_client(upstream.url, http_client=http)
        # The SDK starts the process with a minimal environment (PATH, HOME...) plus these.
        env = {n: os.environ[n] for n in upstream.pass_env if n in os.environ}
        env.update(upstream.environment)
        if upstream.env and secret is not None:
            env[upstream.env] = secret
        params = StdioServerParameters(
            command=upstream.command[0], args=list(upstream.command[1:]), env=env, cwd=upstream.cwd
        )
        return stdio_client(params, errlog=self._errlog)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _scrub_value(value: Any, secret: str) -> Any:
    if isinstance(value, str):
        return _scrub(value, secret)
    if isinstance(value, list):
        return [_scrub_value(v, secret) for v in value]
    if isinstance(value, dict):
        return {k: _scrub_value(v, secret) for k, v in value.items()}
    return value


def scrub_result(result: types.CallToolResult, secret: str) -> types.CallToolResult:
    """The result with every occurrence of the secret replaced: an upstream that echoes its
    credential must not put it into the model's context."""
    doc = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    return types.CallToolResult.model_validate(_scrub_value(doc, secret))
