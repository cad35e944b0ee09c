"""scratch"""
import pytest
from tests.test_approvals_live import test_wait_returns_when_approved, manifest_path, operator_trail  # noqa

@pytest.mark.parametrize("n", range(25))
async def test_many(n, openbao, tmp_path, monkeypatch):
    """x"""
    from tests.harness import write_manifest, unique_agent
    from tests.test_approvals_live import MANIFEST
    import os
    p = write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("apr")))
    monkeypatch.setenv("VAULT_ADDR", openbao.addr)
    monkeypatch.setenv("BROKER_OPERATOR_AUDIT", str(tmp_path / "op.jsonl"))
    await test_wait_returns_when_approved(openbao, p, tmp_path, tmp_path / "op.jsonl", monkeypatch)
