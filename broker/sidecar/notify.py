"""Webhook notifications: approval requested/approved/denied/expired, kill switch,
revocation, a budget crossing 80% and 100%.

Invariants:
- ``publish`` never waits: it puts the notification on a bounded queue and returns, so a slow
  or absent receiver can never delay a decision. A full queue drops (and logs) the newest.
- Each (notification, webhook) delivery is tried ``attempts`` times with exponential backoff
  (``backoff`` * 2**n, capped at ``max_backoff``); its delivery, or its final failure, is
  appended to the audit trail through the ``audit`` callback.
- Audit records name a webhook by scheme, host and a hash of its URL, never the URL itself:
  webhook URLs often carry their secret in the path.
- With a secret (read from a file, never from argv), every delivery is signed:
  ``X-Broker-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``, so a
  receiver can tell our notifications from forgeries and refuse old ones replayed
  (``verify_signature``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

from broker.audit.records import iso_utc
from broker.core.errors import BrokerError, ConfigError

log = logging.getLogger("broker.sidecar.notify")

AuditCallback = Callable[[Mapping[str, Any]], Awaitable[Any]]
Sleep = Callable[[float], Awaitable[None]]

EVENTS = (
    "approval.requested",
    "approval.approved",
    "approval.denied",
    "approval.expired",
    "agent.killed",
    "agent.revived",
    "credentials.revoked",
    "budget.warning",  # 80% of a budget's window used
    "budget.exhausted",  # 100%
)


@dataclass(frozen=True)
class Notification:
    """One event for the humans in ``recipients``; ``data`` says what happened."""

    event: str
    agent: str
    recipients: tuple[str, ...]
    at: float
    data: Mapping[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: "ntf_" + uuid.uuid4().hex[:16])

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event": self.event,
            "agent_id": self.agent,
            "recipients": list(self.recipients),
            "timestamp": iso_utc(self.at),
            "at": self.at,
            "data": dict(self.data),
        }


class Notifier(Protocol):
    def publish(self, notification: Notification) -> bool: ...


class NullNotifier:
    """No webhooks configured: notifications go nowhere."""

    def publish(self, notification: Notification) -> bool:
        return False


def webhook_label(url: str) -> str:
    """How audit records name a webhook without its secret-bearing path or query."""
    parts = urlsplit(url)
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return f"{parts.scheme}://{parts.hostname}:{parts.port or ''}#{digest}"


def parse_webhooks(values: Iterable[str]) -> tuple[str, ...]:
    """Webhook URLs from flags or ``BROKER_WEBHOOKS`` (comma or space separated)."""
    urls = tuple(u for v in values for u in v.replace(",", " ").split() if u)
    for url in urls:
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ConfigError(f"webhook {webhook_label(url)} must be an http(s) URL")
    return urls


SIGNATURE_HEADER = "X-Broker-Signature"
SIGNATURE_TOLERANCE = 300  # seconds a receiver accepts a signature's timestamp off its clock


def sign_body(secret: bytes, body: bytes, at: int) -> str:
    """The ``X-Broker-Signature`` value for ``body`` sent at unix time ``at``."""
    mac = hmac.new(secret, str(at).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def verify_signature(
    secret: bytes, body: bytes, header: str, now: float, tolerance: int = SIGNATURE_TOLERANCE
) -> bool:
    """For receivers: True when ``header`` signs exactly ``body`` and is at most
    ``tolerance`` seconds from ``now`` (compared in constant time)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        at = int(fields.get("t", ""))
    except ValueError:
        return False
    if abs(now - at) > tolerance:
        return False
    return hmac.compare_digest(sign_body(secret, body, at), f"t={at},v1={fields.get('v1', '')}")


def read_secret_file(path: Path) -> bytes:
    """A webhook secret from a file (surrounding whitespace dropped); never from argv."""
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"webhook secret file {path}: {exc.strerror}") from exc
    if len(secret) < 16:
        raise ConfigError(f"webhook secret file {path}: the secret is shorter than 16 bytes")
    return secret


def read_webhook_file(path: Path) -> tuple[str, ...]:
    """Webhook URLs, one a line (``#`` comments), from a file: URLs with a secret path stay
    out of argv and ``ps``."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"webhook file {path}: {exc.strerror}") from exc
    return parse_webhooks(line for line in lines if not line.lstrip().startswith("#"))


class WebhookNotifier:
    """Delivers notifications to every configured webhook from one background task."""

    def __init__(
        self,
        urls: Iterable[str],
        audit: AuditCallback,
        *,
        attempts: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 5.0,
        queue_size: int = 1000,
        max_parallel: int = 16,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        secret: bytes | None = None,
    ) -> None:
        self.urls = tuple(urls)
        self._secret = secret
        self._audit = audit
        self.attempts, self.backoff, self.max_backoff = max(1, attempts), backoff, max_backoff
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._queue: asyncio.Queue[Notification] = asyncio.Queue(queue_size)
        self._parallel = asyncio.Semaphore(max_parallel)
        self._sleep, self._clock = sleep, clock
        self._task: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        self.stats = {"published": 0, "delivered": 0, "failed": 0, "retries": 0, "dropped": 0}

    def publish(self, notification: Notification) -> bool:
        """Queue for delivery; never waits. False when there is no webhook or no room."""
        if not self.urls:
            return False
        try:
            self._queue.put_nowait(notification)
        except asyncio.QueueFull:
            self.stats["dropped"] += 1
            log.warning("notification queue full: %s dropped", notification.event)
            return False
        self.stats["published"] += 1
        return True

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=self._timeout)
        self._task = asyncio.create_task(self._run(), name="webhook-notifier")

    async def drain(self, timeout: float) -> bool:
        """Wait until everything queued has been delivered or has finally failed."""
        deadline = self._clock() + timeout
        while (not self._queue.empty() or self._deliveries) and self._clock() < deadline:
            await asyncio.sleep(0.01)
        return self._queue.empty() and not self._deliveries

    async def stop(self, timeout: float = 1.0) -> None:
        """Give pending deliveries ``timeout`` seconds, then cancel what is left."""
        await self.drain(timeout)
        tasks = [t for t in (self._task, *self._deliveries) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None:
            await self._http.close()

    async def _run(self) -> None:
        while True:
            notification = await self._queue.get()
            for url in self.urls:
                task = asyncio.create_task(self._deliver(url, notification))
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)
            self._queue.task_done()

    async def _deliver(self, url: str, notification: Notification) -> None:
        problem = ""
        for attempt in range(1, self.attempts + 1):
            async with self._parallel:
                problem = await self._post(url, notification)
            if not problem:
                self.stats["delivered"] += 1
                await self._record(url, notification, "delivered", attempt, "")
                return
            if attempt < self.attempts:
                self.stats["retries"] += 1
                await self._sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
        self.stats["failed"] += 1
        log.warning("webhook %s: %s undelivered: %s", webhook_label(url), notification.id, problem)
        await self._record(url, notification, "failed", self.attempts, problem)

    async def _post(self, url: str, notification: Notification) -> str:
        """'' when the receiver took it (2xx), else what went wrong."""
        assert self._http is not None
        body = json.dumps(notification.payload(), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Broker-Event": notification.event,
            "X-Broker-Delivery": notification.id,
        }
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign_body(self._secret, body, int(self._clock()))
        try:
            async with self._http.post(url, data=body, headers=headers) as resp:
                return "" if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__}"

    async def _record(
        self, url: str, notification: Notification, status: str, attempts: int, problem: str
    ) -> None:
        now = self._clock()
        body = {
            "type": "notification",
            "timestamp": iso_utc(now),
            "at": round(now, 6),
            "agent_id": notification.agent,
            "notification_id": notification.id,
            "event": notification.event,
            "recipients": list(notification.recipients),
            "webhook": webhook_label(url),
            "status": status,
            "attempts": attempts,
            "error": problem or None,
        }
        try:
            await self._audit(body)
        except BrokerError as exc:
            log.error("notification %s not audited: %s", notification.id, exc.detail)


# -- budget alarms -------------------------------------------------------------------------

BUDGET_THRESHOLDS = ((1.0, "budget.exhausted"), (0.8, "budget.warning"))


class BudgetAlarms:
    """Which budget thresholds a window has crossed, so each crossing is announced once."""

    def __init__(self) -> None:
        self._fired: set[tuple[str, int, str]] = set()

    def crossings(self, name: str, window: int, used: float, limit: float) -> list[str]:
        """Events newly due for budget ``name`` in the window starting at ``window``."""
        due = []
        for share, event in BUDGET_THRESHOLDS:
            key = (name, window, event)
            if limit > 0 and used >= share * limit and key not in self._fired:
                self._fired.add(key)
                due.append(event)
        self._fired = {k for k in self._fired if k[1] >= window or k[0] != name}
        return due
