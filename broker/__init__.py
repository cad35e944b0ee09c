"""Agent credential broker: a sidecar that mints short-lived, narrowly scoped credentials
for one AI agent through Vault/OpenBao, after checking the agent's scope manifest."""

__version__ = "0.1.0"

from typing import Any


def __getattr__(name: str) -> Any:
    # ``@broker.tool("stripe.refund")`` without importing the client (and aiohttp) for
    # every ``import broker``: the CLI and the decision core stay fast to import.
    if name == "tool":
        from broker.adapters.tool import tool

        return tool
    raise AttributeError(f"module 'broker' has no attribute {name!r}")
