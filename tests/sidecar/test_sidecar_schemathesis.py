"""The served OpenAPI document is exact: schemathesis (every check, a bounded number of
generated examples, a fixed seed) against a live sidecar on loopback, minting through a real
OpenBao. An answer outside the documented statuses, content types, headers or schemas, a 5xx,
a 405 without ``Allow``, or a request accepted that the document says is invalid fails it."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from broker.cli import main
from broker.dev.devstack import DevServer
from tests.harness import SCOPES, approver_token, running_sidecar

pytestmark = pytest.mark.integration
REFUND = SCOPES / "support-refund-agent.yaml"
MAX_EXAMPLES = 10


async def test_the_served_openapi_document_holds_against_the_live_sidecar(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`st run --checks all` on the sidecar's /openapi.json exits 0."""
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is in the test extra"
    async with running_sidecar(openbao, REFUND, tmp_path) as h:
        # Real ids for the path parameters, so outcome and redeem are reached past their 404s.
        _, minted, _ = await h.ask("stripe.refund", {"ticket_id": "CS-1", "amount_usd": 5})
        _, pending, _ = await h.ask("stripe.refund", {"ticket_id": "CS-2", "amount_usd": 150})
        # Approved, so a redeem answers at once (200 the first time, then 403) instead of
        # holding a generated ?wait= open for up to 30 s.
        monkeypatch.setenv("VAULT_ADDR", openbao.addr)
        monkeypatch.setenv("VAULT_TOKEN", approver_token(openbao, "finance-ops@acme.example"))
        monkeypatch.delenv("BROKER_OPERATOR_AUDIT", raising=False)
        approve = [
            "approvals",
            "approve",
            pending["approval_id"],
            "--agent",
            "support-refund-agent",
        ]
        assert await asyncio.to_thread(main, approve) == 0
        (tmp_path / "schemathesis.toml").write_text(
            "[parameters]\n"
            f'"path.credential_id" = "{minted["credential"]["credential_id"]}"\n'
            f'"path.approval_id" = "{pending["approval_id"]}"\n'
            # A DPoP header is a string by the document, but it is a proof that must verify,
            # and a generated one never does: on the two minting operations a 400 (its
            # dpop_* code) is the right answer to a schema-valid request, nowhere else.
            + "".join(
                f"[[operations]]\ninclude-path-regex = '{path}'\ninclude-method = 'POST'\n"
                "checks.positive_data_acceptance.expected-statuses = "
                '["2xx", "400", "401", "403", "404"]\n'
                for path in ("^/v1/credentials$", "^/v1/approvals/.*/redeem$")
            )
        )
        proc = await asyncio.create_subprocess_exec(
            st, "--config-file", str(tmp_path / "schemathesis.toml"), "run",
            f"{h.url}/openapi.json", "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
            "--seed", "1921", "--workers", "1", "--no-color",
            "--request-timeout", "10", "--generation-database", "none",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "failed" not in text.split("Test cases:")[-1], text
    # Warnings that describe the test data, not the document, are accepted: most generated
    # mint requests carry a DPoP header that is no proof (so they are refused), and no grant
    # exists to revoke. A warning about the document itself fails the test.
    assert "Unresolvable references" not in text, text
