"""The agents' client for the broker sidecar, synchronous and asynchronous.

The sidecar listens on a unix socket (``/run/broker.sock`` or ``unix:///run/broker.sock``)
or on loopback HTTP (``http://127.0.0.1:8080``). One pure function, ``_interpret``, turns
every reply into a value or a typed error, so the two transports (``http.client`` and
aiohttp) only move bytes and cannot disagree about what a reply means::

    BrokerClientError                  detail       a reply that breaks the contract
    ├── Denied                         reason       403: the policy refused (reason code)
    │   └── RateLimited                retry_after  429: a rate or concurrency limit
    ├── PendingApproval                approval_id  202: a human must approve first
    ├── BrokerUnavailable              retry_after  503/5xx, or the sidecar is unreachable
    └── BadRequest                     code         any other 4xx: the request is wrong

A credential's secret fields (token, password, lease id...) live in ``Credential.secret``,
which is kept out of its repr so that logging a credential never logs the secret.

The package: ``errors`` (the tree above), ``credential``, ``contract`` (the operations and
``_interpret``, no I/O), and the two transports, ``sync`` and ``aio``. Import from
``broker.client``; it imports nothing else of ``broker``, so it can ship alone."""

from __future__ import annotations

from broker.client.aio import AsyncBrokerClient
from broker.client.contract import OUTCOME_STATUSES
from broker.client.credential import Credential
from broker.client.errors import (
    BadRequest,
    BrokerClientError,
    BrokerUnavailable,
    Denied,
    PendingApproval,
    RateLimited,
)
from broker.client.sync import BrokerClient

__all__ = [
    "OUTCOME_STATUSES",
    "AsyncBrokerClient",
    "BadRequest",
    "BrokerClient",
    "BrokerClientError",
    "BrokerUnavailable",
    "Credential",
    "Denied",
    "PendingApproval",
    "RateLimited",
]
