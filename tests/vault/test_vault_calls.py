"""Vault operations written once as steps: the pure part (answers fed by hand, as h11's tests
feed bytes), and the same operation run over hvac and over aiohttp against the real OpenBao,
failing the same way."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker.core.errors import BackendUnavailable, BrokerError, NotFound, PermissionDenied
from broker.dev.devstack import DevServer
from broker.dev.stack import approle_files
from broker.settings import VaultSettings
from broker.vault import calls
from broker.vault.asyncapi import AsyncVault, LoopBridge
from broker.vault.bootstrap import AgentGrant, bootstrap
from broker.vault.calls import Answer, Call, Run, Steps, drive, error_for, expect
from broker.vault.session import VaultSession, make_client
from tests.harness import root_client, unique_agent

ADDR = "http://127.0.0.1:8200"


def _feed(steps: Steps[Any], *outcomes: Answer | BrokerError) -> tuple[list[Call], Any]:
    """Run ``steps`` on the given answers; the calls it made and its result."""
    feed = iter(outcomes)
    made: list[Call] = []
    return made, _serve(steps, lambda _: next(feed), made)


def _serve(
    steps: Steps[Any], reply: Callable[[Call], Answer | BrokerError], made: list[Call]
) -> Any:
    """Run ``steps``, answering each call with ``reply(call)``; ``made`` lists the calls."""
    run = Run(steps)
    outcome: Answer | BrokerError | None = None
    while (call := run.next(outcome)) is not None:
        made.append(call)
        outcome = reply(call)
    return run.result


@pytest.mark.parametrize(
    ("status", "doc", "error", "message"),
    [
        (403, {"errors": ["permission denied"]}, PermissionDenied, "refused op: permission denied"),
        (404, {"errors": []}, NotFound, "has nothing at the path for op"),
        (503, {"errors": ["Vault is sealed"]}, BackendUnavailable, "is sealed or down (op)"),
        (307, None, BackendUnavailable, "is a standby without an active node (op)"),
        (429, {}, BackendUnavailable, "is a standby without an active node (op)"),
        (500, {"errors": ["internal error"]}, BackendUnavailable, "failed op: internal error"),
        (400, {"errors": ["x" * 300]}, BackendUnavailable, "failed op: " + "x" * 200),
        (502, "<html>", BackendUnavailable, "failed op: HTTP 502"),
    ],
)
def test_error_for_maps_each_status(
    status: int, doc: Any, error: type[BrokerError], message: str
) -> None:
    """Each status becomes the project's error, naming the address and the operation."""
    found = error_for(Answer(status, doc, ADDR), "op")
    assert type(found) is error
    assert found.detail == f"Vault at {ADDR} {message}"


def test_expect_returns_the_json_and_raises_the_translated_error() -> None:
    """A 2xx answer is the operation's result; a 403 is raised as PermissionDenied."""
    call = Call("GET", "a/b", "read of a/b")
    assert _feed(expect(call), Answer(200, {"data": 1}, ADDR)) == ([call], {"data": 1})
    assert _feed(expect(call), Answer(204, None, ADDR))[1] == {}
    with pytest.raises(PermissionDenied, match="refused read of a/b"):
        _feed(expect(call), Answer(403, {"errors": ["permission denied"]}, ADDR))


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            Answer(200, {"data": {"data": {"k": 1}, "metadata": {"version": 3}}}, ADDR),
            ({"k": 1}, 3),
        ),
        (Answer(404, {"errors": []}, ADDR), (None, 0)),
        # A deleted version: 404 with its metadata, so a CAS write can name the version.
        (Answer(404, {"data": {"data": None, "metadata": {"version": 4}}}, ADDR), (None, 4)),
    ],
)
def test_kv_read_versioned_reads_documents_absent_and_deleted(
    answer: Answer, expected: tuple[Any, int]
) -> None:
    """Present, absent and deleted documents read as (document, version)."""
    made, result = _feed(calls.kv_read_versioned("x/y"), answer)
    assert [(c.method, c.path) for c in made] == [("GET", "broker-kv/data/x/y")]
    assert result == expected


def test_kv_write_cas_names_the_version_and_reports_a_lost_race() -> None:
    """The write carries cas; Vault's check-and-set refusal is None, other 400s are errors."""
    made, result = _feed(
        calls.kv_write_cas("p", {"a": 1}, 2), Answer(200, {"data": {"version": 3}}, ADDR)
    )
    assert made[0].body == {"data": {"a": 1}, "options": {"cas": 2}}
    assert result == 3
    lost = Answer(
        400, {"errors": ["check-and-set parameter did not match the current version"]}, ADDR
    )
    assert _feed(calls.kv_write_cas("p", {}, 2), lost)[1] is None
    with pytest.raises(BackendUnavailable, match="failed write of broker-kv/p: bad"):
        _feed(calls.kv_write_cas("p", {}, 2), Answer(400, {"errors": ["bad"]}, ADDR))


def test_a_transport_failure_is_thrown_into_the_operation() -> None:
    """A failure of the transport reaches the operation, which may clean up: a login that
    could not be recorded is revoked with its own token, and the failure still surfaces."""
    session = VaultSession(VaultSettings(addr=ADDR, token="t"))  # type: ignore[arg-type]

    def recorder(auth: dict[str, Any]) -> Steps[None]:
        yield from expect(Call("POST", "broker-kv/data/r", "record", {}, auth["client_token"]))

    session.on_login = recorder
    down = BackendUnavailable("Vault is unreachable")
    made: list[Call] = []

    def reply(call: Call) -> Answer | BrokerError:
        return down if call.path.startswith("broker-kv") else Answer(204, None, ADDR)

    with pytest.raises(BackendUnavailable, match="unreachable"):
        _serve(session._record({"client_token": "fresh", "accessor": "a"}), reply, made)
    seen = [(c.path, c.token) for c in made]
    assert seen == [("broker-kv/data/r", "fresh"), ("auth/token/revoke-self", "fresh")]


def test_calls_never_show_a_token_or_a_body() -> None:
    """A call's repr names the request, not the token or the secret id it carries."""
    call = Call("POST", "auth/approle/login", "login", {"secret_id": "s3cr3t"}, token="hvs.tok")
    assert "s3cr3t" not in repr(call)
    assert "hvs.tok" not in repr(call)


async def test_a_loop_bridge_refuses_to_wait_for_its_own_loop() -> None:
    """Called on its own event loop it would wait for itself forever: it refuses instead."""
    vault = AsyncVault(ADDR, lambda: "")
    bridge = LoopBridge(vault, asyncio.get_running_loop())
    with pytest.raises(RuntimeError, match="its own event loop"):
        bridge.run_steps(expect(Call("GET", "sys/health", "health")))
    await vault.close()


@pytest.mark.integration
async def test_hvac_and_aiohttp_run_an_operation_alike(openbao: DevServer, tmp_path: Path) -> None:
    """One operation, three ways against the real OpenBao (hvac's session, aiohttp on the
    loop, a worker thread through the loop bridge): the same answer, and the same refusal
    when the sidecar's token may not write the path."""
    agent = unique_agent("calls")
    client = root_client(openbao)
    bootstrap(client, [AgentGrant(agent)], addr=openbao.addr)
    role_file, secret_file = approle_files(client, agent, tmp_path)
    session = VaultSession(
        VaultSettings(addr=openbao.addr, role_id_file=role_file, secret_id_file=secret_file)
    )
    await session.alogin()
    hvac_client = make_client(openbao.addr, session.token)
    bridge = LoopBridge(session.aio, asyncio.get_running_loop())
    read = calls.kv_read_versioned(f"control/agents/{agent}")
    assert drive(hvac_client, read) == await session.aio.run(
        calls.kv_read_versioned(f"control/agents/{agent}")
    )
    forbidden = f"control/agents/{agent}"
    errors = []
    for run in (
        lambda: asyncio.to_thread(drive, hvac_client, calls.kv_write_cas(forbidden, {}, 0)),
        lambda: session.aio.run(calls.kv_write_cas(forbidden, {}, 0)),
        lambda: asyncio.to_thread(drive, bridge, calls.kv_write_cas(forbidden, {}, 0)),
    ):
        with pytest.raises(PermissionDenied) as caught:
            await run()
        errors.append(caught.value.detail)
    assert len(set(errors)) == 1
    assert session.token not in errors[0]
    assert await session.alogout()
    await session.aclose()
