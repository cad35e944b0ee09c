"""The sidecar's bridge from worker threads to the event loop's Vault client, and what a
stopping sidecar leaves behind: found by review, each shown failing before its fix."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from broker.core.errors import BackendUnavailable
from broker.dev.devstack import DevServer
from broker.settings import VaultSettings, VaultTLS
from broker.vault.asyncapi import AsyncVault, LoopBridge, off_loop
from broker.vault.calls import Answer, Call, Steps, expect
from broker.vault.session import VaultSession


@pytest.mark.integration
async def test_threads_waiting_on_the_loop_leave_it_the_threads_it_resolves_names_with(
    openbao: DevServer,
) -> None:
    """Vault named by host name (as in Kubernetes): aiohttp resolves it on the loop's default
    executor. Bridged callers run on their own pool, so even with one default thread a call
    from a worker answers instead of timing out with Vault up."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    addr = openbao.addr.replace("127.0.0.1", "localhost")
    vault = AsyncVault(addr, lambda: "", timeout=2.0, tls=VaultTLS())
    bridge = LoopBridge(vault, loop)
    try:
        health = expect(Call("GET", "sys/health", "health check", token=""))
        doc = await asyncio.wait_for(off_loop(bridge.run_steps, health), 10.0)
    finally:
        await vault.close()
    assert doc["sealed"] is False


def test_an_answer_never_shows_what_vault_sent() -> None:
    """Answers carry login tokens, child tokens and database passwords: not in the repr."""
    answer = Answer(200, {"auth": {"client_token": "hvs.SECRET"}}, "http://vault:8200")
    assert "hvs.SECRET" not in repr(answer)
    assert repr(answer) == "Answer(status=200, addr='http://vault:8200')"


async def test_a_closed_client_stays_closed() -> None:
    """A call after shutdown fails as Vault unavailable; it opens no session nobody closes."""
    vault = AsyncVault("http://127.0.0.1:9", lambda: "", tls=VaultTLS())
    await vault.close()
    with pytest.raises(BackendUnavailable, match="closed"):
        await vault.get("sys/health", "health check")
    assert vault._session is None


async def test_a_login_cancelled_while_it_is_recorded_still_ends_recorded_or_revoked(
    tmp_path: Path,
) -> None:
    """A stopping sidecar cancels its loop while a login's recording is on the wire: the
    login still ends (here the recording fails and the token is revoked), and closing the
    session waits for it. (An HTTP stand-in that can hold one write: the point is the
    cancellation, not Vault.)"""
    seen: list[str] = []
    release = asyncio.Event()

    async def login(_: web.Request) -> web.Response:
        seen.append("login")
        auth = {"client_token": "hvs.fresh", "accessor": "acc", "lease_duration": 60}
        return web.json_response({"auth": auth})

    async def record(_: web.Request) -> web.Response:
        seen.append("record")
        await release.wait()
        return web.json_response({"errors": ["storage full"]}, status=500)

    async def revoke(_: web.Request) -> web.Response:
        seen.append("revoke-self")
        return web.Response(status=204)

    runner, port = await _stand_in(
        {"/v1/auth/approle/login": login, "/v1/broker-kv/data/{tail:.*}": record,
         "/v1/auth/token/revoke-self": revoke}
    )  # fmt: skip
    (tmp_path / "r").write_text("role")
    (tmp_path / "s").write_text("secret")
    settings = VaultSettings(
        addr=f"http://127.0.0.1:{port}", role_id_file=tmp_path / "r",
        secret_id_file=tmp_path / "s", tls=VaultTLS(),
    )  # fmt: skip
    session = VaultSession(settings)

    def recorder(auth: dict[str, Any]) -> Steps[None]:
        call = Call("POST", "broker-kv/data/sidecars/x", "record", {}, auth["client_token"])
        yield from expect(call)

    session.on_login = recorder
    task = asyncio.create_task(session.alogin())
    try:
        while "record" not in seen:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        await session.aclose()
    finally:
        await runner.cleanup()
    assert seen == ["login", "record", "revoke-self"]


async def _stand_in(routes: dict[str, Any]) -> tuple[web.AppRunner, int]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    return runner, int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
