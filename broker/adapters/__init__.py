"""Thin adapters that put the broker in front of an agent's tools: ``tool`` for plain
functions (``@broker.tool("stripe.refund")``), and, as optional extras, the OpenAI Agents
SDK (``broker.adapters.openai_agents``) and LangChain (``broker.adapters.langchain``)."""

from broker.adapters.tool import CREDENTIAL_PARAM, tool

__all__ = ["CREDENTIAL_PARAM", "tool"]
