"""The LangChain adapter (extra ``langchain``): a broker-guarded ``StructuredTool``.

The tool's argument schema comes from the function's signature without its ``credential``
parameter. A refusal raises LangChain's ``ToolException`` with the reason code, so that
``handle_tool_error`` (on by default here) returns it to the model as the tool's answer."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from langchain_core.tools import StructuredTool, ToolException

from broker.adapters.tool import tool
from broker.client import AsyncBrokerClient, BrokerClient, BrokerClientError, PendingApproval


def _message(error: BrokerClientError) -> str:
    if isinstance(error, PendingApproval):
        return (
            f"pending approval {error.approval_id} ({error.reason}): call again with the same "
            "arguments once a listed approver has approved"
        )
    return f"refused: {error}"


def _as_tool_exceptions(func: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await func(*args, **kwargs)
            except BrokerClientError as exc:
                raise ToolException(_message(exc)) from exc

        return run_async

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BrokerClientError as exc:
            raise ToolException(_message(exc)) from exc

    return run


def broker_tool(
    func: Callable[..., Any],
    *,
    action: str,
    client: BrokerClient | AsyncBrokerClient | None = None,
    workflow: str | None = None,
    handle_tool_error: bool = True,
    **options: Any,
) -> StructuredTool:
    guarded = _as_tool_exceptions(tool(action, client=client, workflow=workflow)(func))
    if inspect.iscoroutinefunction(func):
        return StructuredTool.from_function(
            coroutine=guarded, handle_tool_error=handle_tool_error, **options
        )
    return StructuredTool.from_function(
        func=guarded, handle_tool_error=handle_tool_error, **options
    )
