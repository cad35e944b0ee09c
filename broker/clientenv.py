"""Where the agent's sidecar is, from the environment, so one line of code finds it:
``BROKER_URL`` (``unix:///run/broker/sidecar.sock`` or ``http://127.0.0.1:8080``) or
``BROKER_SOCKET`` (a socket path). Neither set, or both set differently, is an error that
says so: guessing a sidecar would send an agent's requests to the wrong place."""

from __future__ import annotations

import os
from collections.abc import Mapping

from broker.client import AsyncBrokerClient, BrokerClient

ENV_URL = "BROKER_URL"
ENV_SOCKET = "BROKER_SOCKET"


class BrokerNotConfigured(ValueError):
    """The environment does not say where the sidecar is."""


def broker_target(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    url, sock = env.get(ENV_URL, "").strip(), env.get(ENV_SOCKET, "").strip()
    if url and sock and url not in (sock, f"unix://{sock}"):
        raise BrokerNotConfigured(f"{ENV_URL} and {ENV_SOCKET} name different sidecars")
    if not (url or sock):
        raise BrokerNotConfigured(f"set {ENV_URL} or {ENV_SOCKET} to the agent's sidecar")
    return url or sock


def client_from_env(environ: Mapping[str, str] | None = None) -> BrokerClient:
    return BrokerClient(broker_target(environ))


def async_client_from_env(environ: Mapping[str, str] | None = None) -> AsyncBrokerClient:
    return AsyncBrokerClient(broker_target(environ))
