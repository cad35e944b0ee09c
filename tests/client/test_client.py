"""The agents' client against a scripted sidecar: every reply shape of the HTTP contract
becomes the right value or typed error, for the sync and the async client, over loopback
TCP and over a unix socket. The fake sidecar is a real aiohttp server; the sync client runs
in a worker thread (``asyncio.to_thread``) so the server keeps serving on the loop."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from broker.client import (
    AsyncBrokerClient,
    BadRequest,
    BrokerClient,
    BrokerClientError,
    BrokerUnavailable,
    Credential,
    Denied,
    PendingApproval,
    RateLimited,
)

TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhZ2VudC1hIn0.c2VjcmV0LXNpZ25hdHVyZQ"
DECISION = {"reason": "allowed", "policy_version": "v7"}
ALLOW: dict[str, Any] = {
    "outcome": "allow",
    "decision": DECISION,
    "credential": {
        "kind": "jwt",
        "credential_id": "jti-1",
        "expires_at": 1_900_000_060,
        "ttl": 60,
        "token": TOKEN,
        "token_type": "Bearer",
    },
}
DYNAMIC = {
    "outcome": "allow",
    "decision": {},
    "credential": {
        "kind": "dynamic",
        "credential_id": "database/creds/ro/abc",
        "expires_at": 1_900_000_300,
        "ttl": 300,
        "username": "v-agent-ro-xyz",
        "password": "hunter2-s3cret",
        "lease_id": "database/creds/ro/abc",
    },
}
PENDING = {
    "outcome": "pending_approval",
    "approval_id": "apr_0123",
    "reason": "amount_over_threshold",
    "detail": "refunds above $100 need a human",
}


def deny(reason: str, detail: str = "refused") -> dict[str, str]:
    return {"outcome": "deny", "reason": reason, "detail": detail}


@dataclass
class Reply:
    status: int
    body: Any  # a JSON value, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str  # raw, as it arrived on the wire
    body: Any
    content_type: str


@dataclass
class FakeSidecar:
    """Replies from a script per (method, raw path); the last reply repeats."""

    target: str = ""
    script: dict[tuple[str, str], list[Reply]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def on(self, method: str, path: str, *replies: Reply) -> None:
        self.script[(method, path)] = list(replies)

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.seen.append(Seen(request.method, request.raw_path, body, request.content_type))
        replies = self.script.get((request.method, request.raw_path))
        if not replies:
            return web.json_response({"error": "not_found", "detail": "unscripted"}, status=404)
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        if isinstance(reply.body, bytes):
            return web.Response(status=reply.status, body=reply.body, headers=reply.headers)
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)


@pytest.fixture
def short_dir(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, unless it is too long for a unix socket path (about 100 bytes)."""
    if len(str(tmp_path)) < 80:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="bc-") as short:
        yield Path(short)


@pytest.fixture(params=["tcp", "unix"])
async def sidecar(request: pytest.FixtureRequest, short_dir: Path) -> AsyncIterator[FakeSidecar]:
    fake = FakeSidecar()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        if request.param == "tcp":
            site: web.BaseSite = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            fake.target = f"http://127.0.0.1:{port}"
        else:
            path = short_dir / "broker.sock"
            site = web.UnixSite(runner, str(path))
            await site.start()
            fake.target = str(path)
        yield fake
    finally:
        await runner.cleanup()


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


@dataclass
class Driver:
    """Calls one client operation with the async client, or the sync one in a thread."""

    flavour: str
    time: FakeTime = field(default_factory=FakeTime)

    async def __call__(self, target: str, op: str, *args: Any, **kwargs: Any) -> Any:
        if self.flavour == "async":
            async with AsyncBrokerClient(
                target, clock=self.time.clock, sleep=self.time.asleep
            ) as c:
                return await getattr(c, op)(*args, **kwargs)
        return await asyncio.to_thread(self._sync, target, op, args, kwargs)

    def _sync(self, target: str, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with BrokerClient(target, clock=self.time.clock, sleep=self.time.sleep) as c:
            return getattr(c, op)(*args, **kwargs)


@pytest.fixture(params=["async", "sync"])
def call(request: pytest.FixtureRequest) -> Driver:
    return Driver(request.param)


async def raised(call: Driver, target: str, op: str, *args: Any, **kwargs: Any) -> BaseException:
    with pytest.raises(BrokerClientError) as info:
        await call(target, op, *args, **kwargs)
    return info.value


# --- 200: a credential ----------------------------------------------------------------


async def test_allow_returns_the_credential(sidecar: FakeSidecar, call: Driver) -> None:
    """200 allow becomes a Credential; the request carries action, inputs, workflow, request id."""
    sidecar.on("POST", "/v1/credentials", Reply(200, ALLOW))
    cred = await call(
        sidecar.target,
        "credential",
        "orders.refund",
        {"order_id": "o-1"},
        workflow="wf-9",
        request_id="r-1",
    )
    assert (cred.kind, cred.credential_id, cred.expires_at, cred.ttl) == (
        "jwt",
        "jti-1",
        1_900_000_060,
        60,
    )
    assert cred.token == TOKEN
    assert dict(cred.secret) == {"token": TOKEN, "token_type": "Bearer"}
    assert dict(cred.decision) == DECISION
    (seen,) = sidecar.seen
    assert (seen.method, seen.path, seen.content_type) == (
        "POST",
        "/v1/credentials",
        "application/json",
    )
    assert seen.body == {
        "action": "orders.refund",
        "inputs": {"order_id": "o-1"},
        "workflow": "wf-9",
        "request_id": "r-1",
    }


async def test_unset_optional_fields_are_not_sent(sidecar: FakeSidecar, call: Driver) -> None:
    """Without workflow or request id the body holds only action and inputs."""
    sidecar.on("POST", "/v1/credentials", Reply(200, ALLOW))
    await call(sidecar.target, "credential", "ping", {})
    assert sidecar.seen[0].body == {"action": "ping", "inputs": {}}


async def test_dynamic_credential_keeps_its_secrets_out_of_repr(
    sidecar: FakeSidecar, call: Driver
) -> None:
    """username/password/lease_id are reachable but never in repr or str."""
    sidecar.on("POST", "/v1/credentials", Reply(200, DYNAMIC))
    cred = await call(sidecar.target, "credential", "orders.read", {})
    assert (cred.username, cred.password, cred.lease_id, cred.token) == (
        "v-agent-ro-xyz",
        "hunter2-s3cret",
        "database/creds/ro/abc",
        None,
    )
    shown = repr(cred) + str(cred)
    assert "hunter2" not in shown
    assert "v-agent-ro-xyz" not in shown
    assert "database/creds/ro/abc" in shown  # the credential id is not a secret


def test_credential_is_immutable_and_its_token_not_in_repr() -> None:
    """A Credential is frozen, its secret mapping read-only, its token absent from repr."""
    cred = Credential.from_json(ALLOW["credential"], DECISION)
    assert TOKEN not in repr(cred)
    assert TOKEN.split(".")[2] not in repr(cred)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cred.ttl = 3600  # type: ignore[misc]
    with pytest.raises(TypeError):
        cred.secret["token"] = "other"  # type: ignore[index]
    assert hash(cred) == hash(Credential.from_json(ALLOW["credential"]))


# --- refusals and failures --------------------------------------------------------------


async def test_deny_raises_denied(sidecar: FakeSidecar, call: Driver) -> None:
    """403 deny raises Denied with the reason code and detail."""
    sidecar.on(
        "POST", "/v1/credentials", Reply(403, deny("constraint_violation", "amount_usd above 100"))
    )
    err = await raised(call, sidecar.target, "credential", "orders.refund", {"amount_usd": 900})
    assert type(err) is Denied
    assert (err.reason, err.detail) == ("constraint_violation", "amount_usd above 100")


async def test_rate_limit_raises_rate_limited_with_retry_after(
    sidecar: FakeSidecar, call: Driver
) -> None:
    """429 raises RateLimited (a Denied) with Retry-After in seconds."""
    sidecar.on("POST", "/v1/credentials", Reply(429, deny("rate_limited"), {"Retry-After": "7"}))
    err = await raised(call, sidecar.target, "credential", "ping", {})
    assert isinstance(err, RateLimited)
    assert isinstance(err, Denied)
    assert (err.reason, err.retry_after) == ("rate_limited", 7.0)


async def test_pending_approval_raises_with_the_approval_id(
    sidecar: FakeSidecar, call: Driver
) -> None:
    """202 pending_approval raises PendingApproval with the id to redeem later."""
    sidecar.on("POST", "/v1/credentials", Reply(202, PENDING))
    err = await raised(call, sidecar.target, "credential", "orders.refund", {"amount_usd": 900})
    assert isinstance(err, PendingApproval)
    assert (err.approval_id, err.reason, err.detail) == (
        "apr_0123",
        "amount_over_threshold",
        "refunds above $100 need a human",
    )


async def test_backend_unavailable_raises_with_retry_after(
    sidecar: FakeSidecar, call: Driver
) -> None:
    """503 backend_unavailable raises BrokerUnavailable with Retry-After."""
    body = deny("backend_unavailable", "Vault is sealed")
    sidecar.on("POST", "/v1/credentials", Reply(503, body, {"Retry-After": "2"}))
    err = await raised(call, sidecar.target, "credential", "ping", {})
    assert isinstance(err, BrokerUnavailable)
    assert (err.detail, err.retry_after) == ("Vault is sealed", 2.0)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "malformed_json"),
        (400, "unknown_field"),
        (404, "not_found"),
        (405, "method_not_allowed"),
        (413, "payload_too_large"),
    ],
)
async def test_request_errors_raise_bad_request(
    sidecar: FakeSidecar, call: Driver, status: int, code: str
) -> None:
    """A 4xx error body raises BadRequest with its stable code and detail."""
    sidecar.on("POST", "/v1/credentials", Reply(status, {"error": code, "detail": f"about {code}"}))
    err = await raised(call, sidecar.target, "credential", "ping", {})
    assert isinstance(err, BadRequest)
    assert (err.code, err.detail) == (code, f"about {code}")


@pytest.mark.parametrize(
    "body", [{"error": "internal_error", "detail": "logged"}, b"<html>Bad Gateway</html>"]
)
async def test_server_errors_raise_unavailable(
    sidecar: FakeSidecar, call: Driver, body: Any
) -> None:
    """A 5xx, JSON or not, raises BrokerUnavailable without a retry hint."""
    sidecar.on("POST", "/v1/credentials", Reply(502 if isinstance(body, bytes) else 500, body))
    err = await raised(call, sidecar.target, "credential", "ping", {})
    assert isinstance(err, BrokerUnavailable)
    assert err.retry_after is None


BROKEN_REPLIES = [
    pytest.param(Reply(200, b"not json"), id="200 not JSON"),
    pytest.param(Reply(200, [1, 2]), id="200 JSON array"),
    pytest.param(Reply(200, deny("unknown_action")), id="200 with outcome deny"),
    pytest.param(Reply(200, {"outcome": "allow"}), id="allow without credential"),
    pytest.param(
        Reply(200, {**ALLOW, "credential": {"kind": "jwt", "credential_id": "x"}}),
        id="credential without ttl",
    ),
    pytest.param(
        Reply(200, {**ALLOW, "credential": {**ALLOW["credential"], "ttl": True}}),
        id="ttl a boolean",
    ),
    pytest.param(Reply(403, b"Forbidden"), id="403 not JSON"),
    pytest.param(Reply(302, {}), id="a redirect"),
]


@pytest.mark.parametrize("reply", BROKEN_REPLIES)
async def test_replies_outside_the_contract_raise_the_root_error(
    sidecar: FakeSidecar, call: Driver, reply: Reply
) -> None:
    """A reply that breaks the contract raises BrokerClientError itself, never a credential."""
    sidecar.on("POST", "/v1/credentials", reply)
    err = await raised(call, sidecar.target, "credential", "ping", {})
    assert type(err) is BrokerClientError


@pytest.mark.parametrize("flavour", ["async", "sync"])
@pytest.mark.parametrize("where", ["tcp", "unix"])
async def test_unreachable_sidecar_raises_unavailable(
    flavour: str, where: str, tmp_path: Path
) -> None:
    """Nothing listening (closed port, missing socket) raises BrokerUnavailable."""
    if where == "tcp":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            target = f"http://127.0.0.1:{s.getsockname()[1]}"
    else:
        target = str(tmp_path / "absent.sock")
    err = await raised(Driver(flavour), target, "scope")
    assert isinstance(err, BrokerUnavailable)
    assert err.retry_after is None


# --- scope, outcomes, approvals --------------------------------------------------------


async def test_scope_returns_the_document(sidecar: FakeSidecar, call: Driver) -> None:
    """GET /v1/scope returns its JSON object as a dict."""
    scope = {"agent": "agent-a", "actions": {"orders.refund": {"needs_approval": True}}}
    sidecar.on("GET", "/v1/scope", Reply(200, scope))
    assert await call(sidecar.target, "scope") == scope
    assert sidecar.seen[0].method == "GET"


@pytest.mark.parametrize(
    ("cost", "body"), [(None, {"status": "ok"}), (0.42, {"status": "ok", "cost": 0.42})]
)
async def test_report_outcome_posts_status_and_cost(
    sidecar: FakeSidecar, call: Driver, cost: float | None, body: dict[str, Any]
) -> None:
    """The outcome goes to the credential's path, with a cost only when one is given."""
    sidecar.on("POST", "/v1/credentials/jti-1/outcome", Reply(200, {"recorded": True}))
    assert await call(sidecar.target, "report_outcome", "jti-1", "ok", cost) is None
    assert sidecar.seen[0].body == body


async def test_report_outcome_refuses_an_unknown_status(sidecar: FakeSidecar, call: Driver) -> None:
    """A status other than ok/error/rolled_back is a ValueError, and nothing is sent."""
    with pytest.raises(ValueError, match="status"):
        await call(sidecar.target, "report_outcome", "jti-1", "success")
    assert sidecar.seen == []


async def test_outcome_for_an_unknown_credential_is_bad_request(
    sidecar: FakeSidecar, call: Driver
) -> None:
    """The sidecar's 404 for an unknown credential id raises BadRequest not_found."""
    err = await raised(call, sidecar.target, "report_outcome", "nope", "error")
    assert isinstance(err, BadRequest)
    assert err.code == "not_found"


@pytest.mark.parametrize(
    ("ident", "wire"),
    [
        ("apr_0123", "apr_0123"),
        ("../../v1/credentials", "..%2F..%2Fv1%2Fcredentials"),
        ("a b?c#d", "a%20b%3Fc%23d"),
    ],
)
async def test_ids_stay_one_path_segment(
    sidecar: FakeSidecar, call: Driver, ident: str, wire: str
) -> None:
    """Approval and credential ids are percent-encoded: an id cannot reach another route."""
    sidecar.on("POST", f"/v1/approvals/{wire}/redeem", Reply(200, ALLOW))
    sidecar.on("POST", f"/v1/credentials/{wire}/outcome", Reply(200, {"recorded": True}))
    await call(sidecar.target, "redeem", ident)
    await call(sidecar.target, "report_outcome", ident, "rolled_back")
    assert [s.path for s in sidecar.seen] == [
        f"/v1/approvals/{wire}/redeem",
        f"/v1/credentials/{wire}/outcome",
    ]


async def test_wait_for_approval_polls_until_approved(sidecar: FakeSidecar, call: Driver) -> None:
    """Pending twice, then allowed: the credential comes back after two polls, no real sleep."""
    sidecar.on(
        "POST",
        "/v1/approvals/apr_0123/redeem",
        Reply(202, PENDING),
        Reply(202, PENDING),
        Reply(200, ALLOW),
    )
    cred = await call(sidecar.target, "wait_for_approval", "apr_0123", timeout=60, poll=5)
    assert cred.credential_id == "jti-1"
    assert call.time.slept == [5, 5]
    assert all(s.body == {} for s in sidecar.seen)


async def test_wait_for_approval_times_out_still_pending(
    sidecar: FakeSidecar, call: Driver
) -> None:
    """Still pending at the deadline: PendingApproval is raised, never sleeping past it."""
    sidecar.on("POST", "/v1/approvals/apr_0123/redeem", Reply(202, PENDING))
    err = await raised(call, sidecar.target, "wait_for_approval", "apr_0123", timeout=12, poll=5)
    assert isinstance(err, PendingApproval)
    assert call.time.slept == [5, 5, 2]
    assert len(sidecar.seen) == 4


async def test_wait_for_approval_stops_at_a_refusal(sidecar: FakeSidecar, call: Driver) -> None:
    """A rejected or expired approval raises Denied at once."""
    rejected = deny("approval_rejected", "declined by bob")
    sidecar.on("POST", "/v1/approvals/apr_0123/redeem", Reply(202, PENDING), Reply(403, rejected))
    err = await raised(call, sidecar.target, "wait_for_approval", "apr_0123", timeout=60)
    assert isinstance(err, Denied)
    assert err.reason == "approval_rejected"
    assert call.time.slept == [1.0]


@pytest.mark.parametrize("ident", ["", ".", ".."])
async def test_dot_and_empty_ids_are_refused(
    sidecar: FakeSidecar, call: Driver, ident: str
) -> None:
    """Ids that would collapse the path ("..", ".", "") are a ValueError, and nothing is sent."""
    with pytest.raises(ValueError, match="not an id"):
        await call(sidecar.target, "redeem", ident)
    with pytest.raises(ValueError, match="not an id"):
        await call(sidecar.target, "report_outcome", ident, "ok")
    assert sidecar.seen == []


@pytest.mark.parametrize(("timeout", "poll"), [(-1, 1.0), (10, 0), (10, -1)])
async def test_wait_for_approval_checks_its_arguments(
    call: Driver, timeout: float, poll: float
) -> None:
    """A negative timeout or a non-positive poll interval is a ValueError."""
    with pytest.raises(ValueError, match="poll"):
        await call("http://127.0.0.1:9", "wait_for_approval", "apr", timeout=timeout, poll=poll)


# --- construction and lifecycle ---------------------------------------------------------


@pytest.mark.parametrize("target", ["https://127.0.0.1:8443", "ftp://x", "", "http://", "unix://"])
def test_unsupported_targets_are_refused(target: str) -> None:
    """Only http:// URLs and unix socket paths name a sidecar."""
    with pytest.raises(ValueError, match=r"."):
        BrokerClient(target)
    with pytest.raises(ValueError, match=r"."):
        AsyncBrokerClient(target)


async def test_target_forms(sidecar: FakeSidecar) -> None:
    """A socket is reached as a path, a Path or a unix:// URL; a URL may carry a path prefix."""
    sidecar.on("GET", "/v1/scope", Reply(200, {"ok": True}))
    sidecar.on("GET", "/broker/v1/scope", Reply(200, {"ok": "prefixed"}))
    if sidecar.target.startswith("http://"):
        with BrokerClient(sidecar.target + "/broker/") as c:
            assert await asyncio.to_thread(c.scope) == {"ok": "prefixed"}
        async with AsyncBrokerClient(sidecar.target + "/broker") as ac:
            assert await ac.scope() == {"ok": "prefixed"}
        return
    for target in (Path(sidecar.target), "unix://" + sidecar.target):
        async with AsyncBrokerClient(target) as ac:
            assert await ac.scope() == {"ok": True}
        with BrokerClient(target) as c:
            assert await asyncio.to_thread(c.scope) == {"ok": True}


async def test_async_client_reuses_its_session_and_refuses_after_close(
    sidecar: FakeSidecar,
) -> None:
    """Several calls share one client; after close every call raises BrokerClientError."""
    sidecar.on("GET", "/v1/scope", Reply(200, {}))
    client = AsyncBrokerClient(sidecar.target)
    for _ in range(3):
        assert await client.scope() == {}
    await client.close()
    await client.close()
    with pytest.raises(BrokerClientError, match="closed"):
        await client.scope()


def test_sync_client_refuses_after_close() -> None:
    """A closed sync client raises BrokerClientError instead of connecting."""
    client = BrokerClient("http://127.0.0.1:9")
    client.close()
    with pytest.raises(BrokerClientError, match="closed"):
        client.scope()


def test_errors_render_their_codes() -> None:
    """str() of each error names its code, so a log line says what happened."""
    assert (
        str(Denied("budget_exhausted", "daily budget used"))
        == "budget_exhausted: daily budget used"
    )
    assert str(BadRequest("unknown_field", "field 'x'")) == "unknown_field: field 'x'"
    assert "apr_1" in str(PendingApproval("apr_1", "over_threshold", "needs a human"))
    assert repr(BrokerClient("/run/broker.sock")) == "BrokerClient('unix:/run/broker.sock')"
