"""The OpenAI Agents SDK adapter (extra ``openai-agents``): a broker-guarded function tool.

``function_tool(fn, action="stripe.refund")`` is the SDK's own ``function_tool`` over the
function wrapped by ``broker.tool``: the schema the model sees is built from the function's
signature without its ``credential`` parameter, and a refusal comes back to the model as the
tool's answer, ``refused: <reason>: <detail>`` (or the approval id to wait for), instead of
ending the run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agents import FunctionTool, RunContextWrapper
from agents import function_tool as _sdk_function_tool

from broker.adapters.tool import tool
from broker.client import AsyncBrokerClient, BrokerClient, BrokerClientError, PendingApproval


def refusal_message(ctx: RunContextWrapper[Any] | None, error: Exception) -> str:
    """What the model reads when the broker says no (or not yet)."""
    if isinstance(error, PendingApproval):
        return (
            f"pending approval {error.approval_id} ({error.reason}): a listed approver must "
            "approve it; call the tool again with the same arguments afterwards"
        )
    if isinstance(error, BrokerClientError):
        return f"refused: {error}"
    return f"the tool failed: {type(error).__name__}"


def function_tool(
    func: Callable[..., Any],
    *,
    action: str,
    client: BrokerClient | AsyncBrokerClient | None = None,
    workflow: str | None = None,
    **sdk_options: Any,
) -> FunctionTool:
    guarded = tool(action, client=client, workflow=workflow)(func)
    sdk_options.setdefault("failure_error_function", refusal_message)
    return _sdk_function_tool(guarded, **sdk_options)
