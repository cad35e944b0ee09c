"""The gateway's two MCP operations, on the agent's side of the sidecar.

``tools/list`` shows only tools whose action the manifest allows (read from the sidecar's
``/v1/scope`` on every listing, so a manifest reload shows at once), with the manifest's
input constraints as the input schema. ``tools/call`` asks the sidecar through
``broker.client`` (which decides, records and mints: nothing reaches the upstream that the
sidecar has not first recorded), hands the credential to the upstream, and reports the
outcome, which frees the concurrency slot. Refusals are tool errors (``isError``) whose
structured content is ``{"error": code, "detail": ...}``; the credential never appears in
anything returned to the agent. A pending approval is remembered by tool and exact
arguments, so the same call made again after approval redeems it."""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from broker.client import (
    AsyncBrokerClient,
    BadRequest,
    BrokerClientError,
    BrokerUnavailable,
    Credential,
    Denied,
    PendingApproval,
    RateLimited,
)
from broker.core.manifest import canonical_json
from broker.mcpgw.config import GatewayConfig, ToolRoute
from broker.mcpgw.schema import tool_description, tool_input_schema
from broker.mcpgw.upstream import UpstreamFailed, Upstreams

log = logging.getLogger("broker.mcp")

META_REQUEST_ID = "broker/request_id"
META_WORKFLOW = "broker/workflow"
META_APPROVAL_ID = "broker/approval_id"
MAX_PENDING = 1000
LISTING_TTL = 60.0


def tool_error(code: str, detail: str, **extra: Any) -> types.CallToolResult:
    """A refusal or failure as the agent sees it: a stable code in ``structuredContent``."""
    body = {"error": code, "detail": detail, **{k: v for k, v in extra.items() if v is not None}}
    text = f"{code}: {detail}"
    if "approval_id" in body:
        text += (
            f" Approval {body['approval_id']} must be approved by an approver the manifest"
            " names (broker approvals approve ID); then call this tool again with the same"
            f' arguments (from another session, add _meta {{"{META_APPROVAL_ID}": ID}}).'
        )
    return types.CallToolResult(
        content=[types.TextContent(text=text)], structured_content=body, is_error=True
    )


def _meta_str(meta: Mapping[str, Any] | None, key: str) -> str | None:
    value = (meta or {}).get(key)
    return value if isinstance(value, str) else None


def _code(exc: BrokerClientError) -> str:
    if isinstance(exc, Denied):  # also RateLimited: the sidecar's reason code
        return exc.reason
    if isinstance(exc, BadRequest):
        return exc.code
    return "broker_unavailable" if isinstance(exc, BrokerUnavailable) else "broker_error"


def _listed(name: str, action: str, scope: Mapping[str, Any], upstream: types.Tool) -> types.Tool:
    """A tool as the agent sees it: the upstream's, with the manifest's inputs as its schema."""
    return types.Tool(
        name=name,
        description=tool_description(
            upstream.description, action, bool(scope.get("needs_approval"))
        ),
        output_schema=upstream.output_schema,
        input_schema=tool_input_schema(scope.get("inputs") or {}, upstream.input_schema),
    )


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        broker: AsyncBrokerClient,
        *,
        errlog: TextIO = sys.stderr,
        listing_ttl: float = LISTING_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._broker = broker
        self.upstreams = Upstreams(config.upstreams, errlog=errlog)
        self._pending: OrderedDict[tuple[str, bytes], str] = OrderedDict()
        self._listed: dict[str, tuple[float, list[types.Tool]]] = {}
        self._listing_ttl = listing_ttl
        self._clock = clock

    async def list_tools(self) -> list[types.Tool]:
        try:
            scope = await self._broker.scope()
        except BrokerClientError as exc:
            raise MCPError(
                types.INTERNAL_ERROR,
                f"broker_unavailable: {exc.detail}",
                {"error": "broker_unavailable"},
            ) from exc
        if scope.get("disabled"):
            return []
        actions: Mapping[str, Any] = scope.get("actions") or {}
        # A dynamic (username/password) credential has no one token to hand an MCP upstream.
        routes = {
            n: r
            for n, r in self._config.tools.items()
            if r.action in actions and actions[r.action].get("credential") != "dynamic"
        }
        offered = await self._upstream_tools({r.upstream for r in routes.values()})
        return [
            _listed(name, route.action, actions[route.action], found)
            for name, route in routes.items()
            # a tool the upstream does not offer (or an upstream that is down) is not listed
            if (found := offered.get((route.upstream, self._config.upstream_tool(name))))
        ]

    async def _upstream_tools(self, names: set[str]) -> dict[tuple[str, str], types.Tool]:
        """Each upstream's tools, listed concurrently and kept ``listing_ttl`` seconds: a
        stdio upstream is a process start per listing, and tool definitions rarely change.
        What the agent may see is still decided on every listing, from the scope."""
        now = self._clock()
        stale = sorted(n for n in names if self._listed.get(n, (-math.inf, []))[0] <= now)
        fresh = await asyncio.gather(*(self._list_one(n) for n in stale))
        for name, tools in zip(stale, fresh, strict=True):
            if tools is not None:
                self._listed[name] = (now + self._listing_ttl, tools)
        return {(n, t.name): t for n in names if n in self._listed for t in self._listed[n][1]}

    async def _list_one(self, upstream: str) -> list[types.Tool] | None:
        try:
            return await self.upstreams.list_tools(upstream)
        except UpstreamFailed as exc:
            log.warning("upstream %s not listed: %s", upstream, exc.detail)
            return None

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any] | None, meta: Mapping[str, Any] | None
    ) -> types.CallToolResult:
        route = self._config.tools.get(name)
        if route is None:
            raise MCPError(
                types.INVALID_PARAMS,
                f"unknown_tool: no tool named {name!r}",
                {"error": "unknown_tool"},
            )
        args = dict(arguments or {})
        got = await self._credential(name, route, args, meta)
        if isinstance(got, types.CallToolResult):
            return got
        return await self._forward(name, route, args, got)

    async def _forward(
        self, name: str, route: ToolRoute, args: dict[str, Any], cred: Credential
    ) -> types.CallToolResult:
        secret = cred.token
        if secret is None:  # a dynamic (username/password) credential has no one token to pass
            await self._report(cred, "error")
            return tool_error(
                "credential_unsupported",
                f"a {cred.kind} credential cannot be passed to an MCP upstream",
            )
        try:
            result = await self.upstreams.call_tool(
                route.upstream, self._config.upstream_tool(name), args, secret
            )
        except UpstreamFailed as exc:
            await self._report(cred, "error")
            return tool_error(exc.code, exc.detail, credential_id=cred.credential_id)
        await self._report(cred, "error" if result.is_error else "ok")
        return result

    async def _report(self, cred: Credential, status: str) -> None:
        try:
            await self._broker.report_outcome(cred.credential_id, status)
        except BrokerClientError as exc:  # the slot frees itself at expiry; say so, go on
            log.warning("outcome of %s not reported: %s", cred.credential_id, exc.detail)

    async def _credential(
        self, name: str, route: ToolRoute, args: dict[str, Any], meta: Mapping[str, Any] | None
    ) -> Credential | types.CallToolResult:
        try:
            key = (name, canonical_json(args))
        except ValueError as exc:  # NaN or Infinity: not JSON, so not a valid input either
            return tool_error("invalid_inputs", f"an argument is not valid JSON: {exc}")
        try:
            cred = await self._ask(key, route, args, meta)
        except BrokerClientError as exc:
            return self._refusal(key, exc)
        self._pending.pop(key, None)
        return cred

    async def _ask(
        self,
        key: tuple[str, bytes],
        route: ToolRoute,
        args: dict[str, Any],
        meta: Mapping[str, Any] | None,
    ) -> Credential:
        approval_id = _meta_str(meta, META_APPROVAL_ID) or self._pending.get(key)
        if approval_id is not None:  # only ever for exactly these arguments
            return await self._broker.redeem(approval_id, args)
        return await self._broker.credential(
            route.action,
            args,
            workflow=_meta_str(meta, META_WORKFLOW) or self._config.workflow,
            request_id=_meta_str(meta, META_REQUEST_ID),
        )

    def _refusal(self, key: tuple[str, bytes], exc: BrokerClientError) -> types.CallToolResult:
        if isinstance(exc, PendingApproval):
            self._remember(key, exc.approval_id)
            return tool_error(
                "approval_pending", exc.detail, approval_id=exc.approval_id, reason=exc.reason
            )
        if not isinstance(exc, RateLimited | BrokerUnavailable):
            self._pending.pop(key, None)  # a final answer: a remembered approval is spent
        return tool_error(_code(exc), exc.detail, retry_after=getattr(exc, "retry_after", None))

    def _remember(self, key: tuple[str, bytes], approval_id: str) -> None:
        self._pending[key] = approval_id
        self._pending.move_to_end(key)
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)

    def server(self) -> Server[Any]:
        """The MCP server (SDK low-level) that serves this gateway on any transport."""

        async def on_list_tools(
            ctx: Any, params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            return types.ListToolsResult(tools=await self.list_tools())

        async def on_call_tool(
            ctx: Any, params: types.CallToolRequestParams
        ) -> types.CallToolResult:
            meta = params.meta if isinstance(params.meta, Mapping) else None
            return await self.call_tool(params.name, params.arguments, meta)

        return Server(
            "broker-mcp-gateway",
            version="1",
            instructions="Tools behind an agent credential broker: each call is decided, "
            "audited and given a short-lived credential by the agent's sidecar.",
            on_list_tools=on_list_tools,
            on_call_tool=on_call_tool,
        )
