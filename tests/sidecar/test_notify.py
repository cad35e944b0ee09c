"""The webhook notifier against a real aiohttp receiver on 127.0.0.1: delivery, retries with
backoff, final failure audited, and publishing that never waits."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from broker.core.errors import ConfigError
from broker.sidecar.notify import (
    SIGNATURE_HEADER,
    BudgetAlarms,
    Notification,
    WebhookNotifier,
    parse_webhooks,
    read_secret_file,
    read_webhook_file,
    sign_body,
    verify_signature,
    webhook_label,
)


class Receiver:
    """Answers ``fail_first`` requests with 500, then 200; keeps what it got."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.got: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []
        self.headers: list[Mapping[str, str]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        self.got.append(await request.json())
        self.headers.append(dict(request.headers))
        return web.Response(status=500 if len(self.got) <= self.fail_first else 200)


async def serve(receiver: Receiver) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/hook/secret-token", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.url = f"http://127.0.0.1:{port}/hook/secret-token"
    return runner


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(fail_first=2)
    runner = await serve(r)
    yield r
    await runner.cleanup()


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook/secret-token"


class Trail:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def append(self, body: Mapping[str, Any]) -> None:
        self.records.append(dict(body))


def event(name: str = "approval.requested") -> Notification:
    return Notification(name, "agent-1", ("a@acme.example", "i@acme.example"), 1000.0, {"x": 1})


async def test_delivers_with_retries_and_audits(receiver: Receiver) -> None:
    """Two 500s then a 200: the third attempt delivers, backoff doubles, one record says so."""
    trail, pauses = Trail(), []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    notifier = WebhookNotifier([receiver.url], trail.append, backoff=0.1, sleep=sleep)
    await notifier.start()
    assert notifier.publish(event())
    assert await notifier.drain(5)
    await notifier.stop()
    assert pauses == [0.1, 0.2]
    assert len(receiver.got) == 3
    assert receiver.got[-1]["recipients"] == ["a@acme.example", "i@acme.example"]
    assert receiver.got[-1]["event"] == "approval.requested"
    assert receiver.headers[-1]["X-Broker-Event"] == "approval.requested"
    [record] = trail.records
    assert (record["status"], record["attempts"], record["type"]) == (
        "delivered",
        3,
        "notification",
    )
    assert "secret-token" not in str(record)


async def test_receiver_down_fails_finally_and_is_audited() -> None:
    """A closed port: every attempt fails, the backoff is bounded, one failure is recorded."""
    trail, pauses = Trail(), []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    url = closed_port()
    notifier = WebhookNotifier(
        [url], trail.append, attempts=6, backoff=1.0, max_backoff=4.0, sleep=sleep
    )
    await notifier.start()
    notifier.publish(event("agent.killed"))
    assert await notifier.drain(5)
    await notifier.stop()
    assert pauses == [1.0, 2.0, 4.0, 4.0, 4.0]
    [record] = trail.records
    assert (record["status"], record["attempts"], record["event"]) == ("failed", 6, "agent.killed")
    assert record["error"] == "ClientConnectorError"
    assert record["webhook"] == webhook_label(url)
    assert notifier.stats["failed"] == 1
    assert notifier.stats["retries"] == 5


async def test_publish_never_waits_and_drops_when_full() -> None:
    """publish returns at once; past the queue's size it drops instead of blocking."""
    notifier = WebhookNotifier([closed_port()], Trail().append, queue_size=2)
    # Not started: nothing drains the queue, so the third notification finds it full.
    assert [notifier.publish(event()) for _ in range(3)] == [True, True, False]
    assert notifier.stats["dropped"] == 1


async def test_no_webhooks_means_nothing_queued() -> None:
    """Without URLs, publish is a no-op that says so."""
    notifier = WebhookNotifier([], Trail().append)
    assert notifier.publish(event()) is False


def test_parse_webhooks_from_flags_and_env() -> None:
    """Repeated flags and a comma/space separated BROKER_WEBHOOKS both work; bad URLs fail."""
    assert parse_webhooks(["http://a/1, https://b/2", "http://c/3"]) == (
        "http://a/1",
        "https://b/2",
        "http://c/3",
    )
    assert parse_webhooks([""]) == ()
    with pytest.raises(ConfigError):
        parse_webhooks(["ftp://x/y"])


def test_budget_alarms_fire_once_per_threshold_and_window() -> None:
    """80% and 100% crossings are announced once each per window, again in the next window."""
    alarms = BudgetAlarms()
    assert alarms.crossings("usd", 0, 70, 100) == []
    assert alarms.crossings("usd", 0, 80, 100) == ["budget.warning"]
    assert alarms.crossings("usd", 0, 90, 100) == []
    assert alarms.crossings("usd", 0, 100, 100) == ["budget.exhausted"]
    assert alarms.crossings("usd", 86400, 100, 100) == ["budget.exhausted", "budget.warning"]


# --- signed deliveries ---------------------------------------------------------------------

SECRET = b"s3cret-webhook-key-0123456789"


async def test_deliveries_are_signed_over_the_exact_body() -> None:
    """With a secret, each delivery carries an HMAC over its timestamp and exact body that
    the receiver verifies; another secret, another body or an old timestamp fails."""
    receiver = Receiver()
    runner = await serve(receiver)
    try:
        notifier = WebhookNotifier(
            [receiver.url], Trail().append, secret=SECRET, clock=lambda: 1_800_000_000.0
        )
        await notifier.start()
        assert notifier.publish(event())
        assert await notifier.drain(5)
        await notifier.stop()
    finally:
        await runner.cleanup()
    body, header = receiver.bodies[0], receiver.headers[0][SIGNATURE_HEADER]
    assert header.startswith("t=1800000000,v1=")
    assert verify_signature(SECRET, body, header, now=1_800_000_010)
    assert not verify_signature(b"another-secret-of-some-length", body, header, 1_800_000_010)
    assert not verify_signature(SECRET, body.replace(b"agent-1", b"agent-2"), header, 1_800_000_010)
    assert not verify_signature(SECRET, body, header, now=1_800_000_000 + 301)


SIGNATURES = [
    ("no timestamp", "v1=00"),
    ("a timestamp that is not a number", "t=soon,v1=00"),
    ("no mac", "t=1800000000"),
    (
        "a mac for another time",
        sign_body(SECRET, b"{}", 1_799_999_999).replace("1799999999", "1800000000", 1),
    ),
    ("empty", ""),
]


@pytest.mark.parametrize(("name", "header"), SIGNATURES, ids=[s[0] for s in SIGNATURES])
def test_malformed_or_forged_signatures_are_refused(name: str, header: str) -> None:
    """Every malformed or forged signature header fails verification, none raises."""
    assert not verify_signature(SECRET, b"{}", header, now=1_800_000_000)


async def test_without_a_secret_nothing_is_signed(receiver: Receiver) -> None:
    """No secret configured (the Python API's default): no signature header is sent."""
    receiver.fail_first = 0
    notifier = WebhookNotifier([receiver.url], Trail().append)
    await notifier.start()
    assert notifier.publish(event())
    assert await notifier.drain(5)
    await notifier.stop()
    assert SIGNATURE_HEADER not in receiver.headers[0]


def test_secret_and_webhook_files(tmp_path: Path) -> None:
    """URLs come from a file (comments skipped) and the secret from a file; a missing file
    or a short secret is a ConfigError naming the file."""
    urls = tmp_path / "hooks"
    urls.write_text("# receivers\nhttp://127.0.0.1:9/hook/secret-path\n\n")
    assert read_webhook_file(urls) == ("http://127.0.0.1:9/hook/secret-path",)
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    assert read_secret_file(secret) == SECRET
    secret.write_bytes(b"short")
    with pytest.raises(ConfigError, match="shorter than 16"):
        read_secret_file(secret)
    with pytest.raises(ConfigError, match="absent"):
        read_secret_file(tmp_path / "absent")


def test_sidecar_command_refuses_unsigned_webhooks(tmp_path: Path) -> None:
    """``broker sidecar`` with a webhook and no secret file stops before starting anything."""
    from broker.cli import main

    code = main(
        [
            "sidecar",
            "--manifest",
            "scopes/research-agent.yaml",
            "--audit",
            str(tmp_path / "a.jsonl"),
            "--vault-addr",
            "http://127.0.0.1:9",
            "--webhook",
            "http://127.0.0.1:9/hook",
        ]
    )
    assert code == 2
    assert not (tmp_path / "a.jsonl").exists()
