"""A sidecar reading its manifest from the real OpenBao: a newly published stricter version
refuses the next request; an invalid version is refused while the last good one stays in
force, reported in /readyz and in the watcher's counters; both events are audited."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.core.errors import ManifestError
from broker.dev.devstack import DevServer
from broker.dev.stack import approle_files
from broker.settings import VaultSettings
from broker.sidecar.main import Sidecar, SidecarConfig
from broker.vault.manifests import raw_write, read_manifest
from tests.harness import Harness, forward, free_port, root_client, unique_agent
from tests.manifests_live import (
    cli,
    platform_editor,
    prepare_agent,
    scope_dir,
    vault_sidecar,
    wait_for,
)

pytestmark = pytest.mark.integration


def _records(h: Harness, kind: str) -> list[dict[str, Any]]:
    lines = h.audit_path.read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("type") == kind]


async def _readyz_manifest(h: Harness) -> dict[str, Any]:
    _, body, _ = await h.raw("GET", "/readyz")
    return dict(body["manifest"])


async def _published(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, pay: bool
) -> tuple[str, str]:
    """Publish a version; (agent, editor token). The agent is fixed per test via tmp_path."""
    agent = (tmp_path / "agent").read_text()
    path = scope_dir(tmp_path, agent, version, pay=pay)
    token = platform_editor(openbao)
    assert await cli(monkeypatch, token, "scopes", "publish", str(path),
                     "--vault-addr", openbao.addr) == 0  # fmt: skip
    return agent, token


@pytest.fixture
def agent(openbao: DevServer, tmp_path: Path) -> str:
    name = unique_agent("live")
    (tmp_path / "agent").write_text(name)
    prepare_agent(openbao, scope_dir(tmp_path, name, "bootstrap", pay=True))
    return name


async def test_stricter_version_refuses_the_next_request(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agent: str
) -> None:
    """Publishing a version without pay.out makes the very next pay.out request a refusal,
    within a few seconds, and the switch is audited before that refusal."""
    await _published(openbao, tmp_path, monkeypatch, "v1", pay=True)
    async with vault_sidecar(openbao, agent, tmp_path) as h:
        assert (await h.ask("pay.out"))[0] == 200
        await _published(openbao, tmp_path, monkeypatch, "v2", pay=False)
        took = await wait_for(lambda: h.sidecar.watcher and h.sidecar.watcher.version == 2)
        assert took < 3.0
        status, body, _ = await h.ask("pay.out")
        assert (status, body["reason"], body["policy_version"]) == (403, "unknown_action", "v2")
        assert (await h.ask("read.thing", {"id": "T-1"}))[0] == 200
        ready = await _readyz_manifest(h)
        assert (ready["version"], ready["degraded"], ready["reloads"]) == (2, False, 1)
    (switch,) = _records(h, "manifest")
    assert (switch["event"], switch["from_version"], switch["to_version"]) == ("switch", 1, 2)
    assert switch["published_by"] == "alice@acme.example"
    lines = h.audit_path.read_text().splitlines()
    order = [json.loads(line).get("type") for line in lines]
    assert order.index("manifest") < max(i for i, t in enumerate(order) if t == "decision")


async def test_a_publish_reaches_the_sidecar_through_the_control_version_bump(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agent: str
) -> None:
    """With the watcher's own timer at a minute, a published version is still enforced within
    seconds: the publish bumps control/version, and the sidecar's read of the control
    documents pokes the watcher (an idle sidecar no longer reads its manifest every second)."""
    await _published(openbao, tmp_path, monkeypatch, "v1", pay=True)
    async with vault_sidecar(openbao, agent, tmp_path, manifest_poll_interval=60.0) as h:
        await asyncio.sleep(0.5)  # past the watcher's start
        polled = h.sidecar.watcher.last_poll_at if h.sidecar.watcher else None
        await _published(openbao, tmp_path, monkeypatch, "v2", pay=False)
        took = await wait_for(lambda: h.sidecar.watcher and h.sidecar.watcher.version == 2)
        status, body, _ = await h.ask("pay.out")
    assert polled is not None
    assert took < 3.0
    assert (status, body["reason"]) == (403, "unknown_action")


async def test_invalid_version_is_refused_and_the_last_good_one_kept(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agent: str
) -> None:
    """A raw KV write of a broken manifest (bypassing publish) is refused: the sidecar keeps
    enforcing version 1, says so in /readyz, counts it, audits it once; a good version after
    it is taken up and clears the report."""
    await _published(openbao, tmp_path, monkeypatch, "v1", pay=True)
    async with vault_sidecar(openbao, agent, tmp_path) as h:
        good = read_manifest(root_client(openbao), agent)
        assert good is not None
        bad = {**good.to_doc(), "yaml": good.yaml.replace("accountable: finance@", "owner: x@")}
        raw_write(root_client(openbao), agent, bad)
        await wait_for(lambda: h.sidecar.watcher and h.sidecar.watcher.refusals == 1)
        ready = await _readyz_manifest(h)
        assert (ready["version"], ready["degraded"], ready["refused"]["version"]) == (1, True, 2)
        assert "accountable" in ready["refused"]["reason"]
        assert ready["hash"] == good.content_hash
        assert (await h.ask("pay.out"))[0] == 200  # still the last good manifest
        await _published(openbao, tmp_path, monkeypatch, "v3", pay=False)
        await wait_for(lambda: h.sidecar.watcher and h.sidecar.watcher.version == 3)
        ready = await _readyz_manifest(h)
        assert (ready["degraded"], ready["refusals"]) == (False, 1)
    events = [(r["event"], r.get("version", r.get("to_version"))) for r in _records(h, "manifest")]
    assert events == [("refused", 2), ("switch", 3)]


async def test_a_sidecar_without_a_published_manifest_does_not_start(
    openbao: DevServer, tmp_path: Path, agent: str
) -> None:
    """Fail closed: with nothing published there is no last good manifest to enforce."""
    with pytest.raises(ManifestError, match="no manifest is published"):
        async with vault_sidecar(openbao, agent, tmp_path):
            pass


async def test_vault_manifest_sidecar_started_with_vault_down_answers_503_then_serves(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agent: str
) -> None:
    """With --manifest vault:<agent> and nothing answering at its Vault address, the sidecar
    listens anyway: /healthz 200, /readyz 503 naming Vault, requests 503. Once Vault answers
    there it loads the manifest and serves on the same address, without a restart."""
    await _published(openbao, tmp_path, monkeypatch, "v1", pay=True)
    vault_port, port = free_port(), free_port()
    role, secret = approle_files(root_client(openbao), agent, tmp_path / "secrets")
    config = SidecarConfig(
        manifest_path=Path(f"vault:{agent}"),
        vault=VaultSettings(
            addr=f"http://127.0.0.1:{vault_port}", role_id_file=role, secret_id_file=secret
        ),
        listen=f"127.0.0.1:{port}",
        audit_path=tmp_path / "audit.jsonl",
        poll_interval=0.1,
    )
    sidecar = Sidecar(config)
    starting = asyncio.create_task(sidecar.start())
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def status(path: str) -> int:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{url}{path}") as resp:
                        return resp.status
                return 0

            await wait_for(lambda: status("/healthz"), timeout=10.0)
            waiting = (await status("/readyz"), await status("/v1/scope"))
            assert not starting.done()
            async with forward(vault_port, openbao.addr):
                assert await asyncio.wait_for(starting, 20.0) == url
                async with http.post(
                    f"{url}/v1/credentials", json={"action": "read.thing", "inputs": {"id": "T-1"}}
                ) as resp:
                    minted = resp.status
    finally:
        if not starting.done():
            starting.cancel()
        await sidecar.stop()
    assert waiting == (503, 503)
    assert minted == 200


async def test_metrics_name_the_actions_of_a_reloaded_manifest(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agent: str
) -> None:
    """An action added by a hot-reloaded version is counted under its own name in /metrics
    (decision, credential issued, JWT outcome), labelled with the agent, not as ``other``."""
    from prometheus_client.parser import text_string_to_metric_families

    await _published(openbao, tmp_path, monkeypatch, "v1", pay=False)
    async with vault_sidecar(openbao, agent, tmp_path) as h:
        assert (await h.ask("pay.out"))[0] == 403  # not declared yet: folded into other
        wider = scope_dir(tmp_path, agent, "v2", pay=True)
        assert await cli(monkeypatch, platform_editor(openbao), "scopes", "publish", str(wider),
                         "--vault-addr", openbao.addr, "--approve-widening", "test") == 0  # fmt: skip
        await wait_for(lambda: h.sidecar.watcher and h.sidecar.watcher.version == 2)
        status, body, _ = await h.ask("pay.out")
        assert status == 200
        cid = body["credential"]["credential_id"]
        assert (await h.raw("POST", f"/v1/credentials/{cid}/outcome", json={"status": "ok"}))[
            0
        ] == 200
        async with h.http.get(f"{h.url}/metrics") as resp:
            text = await resp.text()
    found = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def count(name: str, **labels: str) -> float:
        return found.get((name, frozenset({"agent": agent, **labels}.items())), 0.0)

    decisions = "broker_decisions_total"
    assert count(decisions, action="other", outcome="deny", reason="unknown_action") == 1
    assert count(decisions, action="pay.out", outcome="allow", reason="none") == 1
    assert count("broker_credentials_issued_total", action="pay.out", kind="jwt") == 1
    assert count("broker_outcomes_total", action="pay.out", status="ok") == 1
