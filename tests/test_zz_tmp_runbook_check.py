"""Temporary: run change-a-manifest.md against the live stack (deleted after)."""
from pathlib import Path
import pytest
from tests.drills import operator_env, run_runbook
from tests.harness import unique_agent
from tests.manifests_live import cli, platform_editor, prepare_agent, scope_dir, vault_sidecar

pytestmark = pytest.mark.integration

async def test_runbook(openbao, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Temporary check."""
    agent = unique_agent("rb")
    v1 = scope_dir(tmp_path, agent, "v1", pay=True)
    prepare_agent(openbao, v1)
    token = platform_editor(openbao)
    assert await cli(monkeypatch, token, "scopes", "publish", str(v1), "--vault-addr", openbao.addr) == 0
    v2 = scope_dir(tmp_path, agent, "v2", pay=False)
    async with vault_sidecar(openbao, agent, tmp_path) as h:
        await h.ask("pay.out")
        await h.ask("read.thing", {"id": "T-1"})
        env = operator_env(openbao.addr, token, tmp_path / "op.jsonl", AGENT=agent, MANIFEST=str(v2), AUDIT=str(h.audit_path))
        out = await run_runbook("change-a-manifest.md", env)
        print(out)
