"""``@broker.tool("stripe.refund")``: ask the sidecar before each call, hand the function its
credential, report the outcome. The glue a user otherwise writes around every tool.

The call's arguments (by name, defaults applied, ``None`` left out as "not given") are the
action's inputs, so the credential is bound to exactly what the function runs with. The
function receives the credential through a keyword-only ``credential`` parameter, which is
hidden from the wrapper's signature, so frameworks that build a schema from the signature
never show it to the model. A refusal raises the client's typed error (``Denied``,
``RateLimited``, ``PendingApproval``, ``BrokerUnavailable``) and the function does not
run. The outcome is ``ok`` when the function returns and ``error`` when it raises; either
way the credential's concurrency slot is freed at once. Sync functions use the sync client,
coroutine functions the async one; without ``client=``, it comes from ``BROKER_URL`` or
``BROKER_SOCKET`` at call time."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ParamSpec, TypeVar, cast

from broker.client import AsyncBrokerClient, BrokerClient, Credential
from broker.clientenv import async_client_from_env, client_from_env

CREDENTIAL_PARAM = "credential"
P = ParamSpec("P")
R = TypeVar("R")


def public_signature(func: Callable[..., Any]) -> inspect.Signature:
    """The function's signature without the credential parameter (what a model may fill)."""
    sig = inspect.signature(func)
    params = [p for n, p in sig.parameters.items() if n != CREDENTIAL_PARAM]
    return sig.replace(parameters=params)


def inputs_of(
    sig: inspect.Signature, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if v is not None}


def tool(
    action: str,
    *,
    client: BrokerClient | AsyncBrokerClient | None = None,
    workflow: str | None = None,
) -> Callable[[Callable[P, R]], Callable[..., R]]:
    """Decorate a tool function so each call is decided, credentialed and reported."""

    def decorate(func: Callable[P, R]) -> Callable[..., R]:
        sig = public_signature(func)
        wants = CREDENTIAL_PARAM in inspect.signature(func).parameters
        if inspect.iscoroutinefunction(func):
            wrapper: Callable[..., Any] = _async_wrapper(
                func, action, sig=sig, wants=wants, client=client, workflow=workflow
            )
        else:
            wrapper = _sync_wrapper(
                func, action, sig=sig, wants=wants, client=client, workflow=workflow
            )
        functools.update_wrapper(wrapper, func)
        wrapper.__signature__ = sig  # type: ignore[attr-defined]
        wrapper.broker_action = action  # type: ignore[attr-defined]
        return cast(Callable[..., R], wrapper)

    return decorate


def _sync_wrapper(
    func: Callable[..., Any],
    action: str,
    *,
    sig: inspect.Signature,
    wants: bool,
    client: BrokerClient | AsyncBrokerClient | None,
    workflow: str | None,
) -> Callable[..., Any]:
    if isinstance(client, AsyncBrokerClient):
        raise TypeError(f"{func.__name__} is synchronous: pass a BrokerClient, not an async one")

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        broker = client or client_from_env()
        cred = broker.credential(action, inputs_of(sig, args, kwargs), workflow=workflow)
        try:
            result = func(*args, **_with(kwargs, wants, cred))
        except BaseException:
            broker.report_outcome(cred.credential_id, "error")
            raise
        broker.report_outcome(cred.credential_id, "ok")
        return result

    return wrapper


def _async_wrapper(
    func: Callable[..., Awaitable[Any]],
    action: str,
    *,
    sig: inspect.Signature,
    wants: bool,
    client: BrokerClient | AsyncBrokerClient | None,
    workflow: str | None,
) -> Callable[..., Awaitable[Any]]:
    if isinstance(client, BrokerClient):
        raise TypeError(f"{func.__name__} is a coroutine: pass an AsyncBrokerClient")

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        broker = client or async_client_from_env()
        try:
            cred = await broker.credential(action, inputs_of(sig, args, kwargs), workflow=workflow)
            try:
                result = await func(*args, **_with(kwargs, wants, cred))
            except BaseException:
                await broker.report_outcome(cred.credential_id, "error")
                raise
            await broker.report_outcome(cred.credential_id, "ok")
            return result
        finally:
            if client is None:  # ours, opened for this call
                await broker.close()

    return wrapper


def _with(kwargs: Mapping[str, Any], wants: bool, cred: Credential) -> dict[str, Any]:
    return {**kwargs, CREDENTIAL_PARAM: cred} if wants else dict(kwargs)
