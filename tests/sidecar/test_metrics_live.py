"""A known mix of requests through a live sidecar shows up with exact counts in /metrics and
in `broker report`, terminal, JSON and HTML forms alike."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.cli import main
from broker.dev.devstack import DevServer
from tests.harness import running_sidecar, unique_agent, write_manifest

pytestmark = pytest.mark.integration

MANIFEST = """\
agent: {agent}
policy_version: metrics-1
system_owner: platform@acme.example
risk_owner: risk@acme.example
budgets:
  usd: {{limit: 100, per: 1d, unit: usd}}
actions:
  read.thing:
    accountable: owner@acme.example
    credential: {{kind: jwt, audience: things, ttl: 60s}}
    inputs:
      id: {{type: string, pattern: '^T-[0-9]+$'}}
  pay.out:
    accountable: finance@acme.example
    credential: {{kind: jwt, audience: payments, ttl: 60s}}
    inputs:
      usd: {{type: number, min: 0, max: 80}}
    cost: {{usd: inputs.usd}}
"""


AGENT_LABELLED = frozenset(
    {"broker_decisions_total", "broker_outcomes_total", "broker_credentials_issued_total"}
)


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_known_mix_gives_exact_metrics_and_report(
    openbao: DevServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """4 allows (2 outcomes ok, 1 error), 2 constraint refusals, 1 unknown action, 1 over budget."""
    manifest = write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("metrics")))
    async with running_sidecar(openbao, manifest, tmp_path) as h:
        ids = []
        for i in range(3):
            ids.append(
                (await h.ask("read.thing", {"id": f"T-{i}"}))[1]["credential"]["credential_id"]
            )
        ids.append((await h.ask("pay.out", {"usd": 70}))[1]["credential"]["credential_id"])
        assert (await h.ask("read.thing", {"id": "X"}))[0] == 403
        assert (await h.ask("read.thing", {"id": "Y"}))[0] == 403
        assert (await h.ask("deploy.prod", {}))[0] == 403
        assert (await h.ask("pay.out", {"usd": 40}))[0] == 403
        for cid, status in ((ids[0], "ok"), (ids[3], "ok"), (ids[1], "error")):
            assert (await h.raw("POST", f"/v1/credentials/{cid}/outcome", json={"status": status}))[
                0
            ] == 200
        await asyncio.sleep(0.3)  # budget and approval gauges are set by the watch loop
        async with h.http.get(f"{h.url}/metrics") as resp:
            assert resp.status == 200
            metrics = _samples(await resp.text())
        agent = h.sidecar.manifest.agent

    def count(name: str, **labels: str) -> float:
        if name in AGENT_LABELLED:
            labels = {"agent": agent, **labels}
        return metrics.get((name, frozenset(labels.items())), 0.0)

    assert count("broker_decisions_total", action="read.thing", outcome="allow", reason="none") == 3
    assert count("broker_decisions_total", action="pay.out", outcome="allow", reason="none") == 1
    assert (
        count(
            "broker_decisions_total",
            action="read.thing",
            outcome="deny",
            reason="constraint_violation",
        )
        == 2
    )
    assert (
        count("broker_decisions_total", action="pay.out", outcome="deny", reason="budget_exhausted")
        == 1
    )
    assert (
        sum(
            v
            for (n, labels), v in metrics.items()
            if n == "broker_decisions_total" and ("reason", "unknown_action") in labels
        )
        == 1
    )
    assert count("broker_credentials_issued_total", action="read.thing", kind="jwt") == 3
    assert count("broker_credentials_issued_total", action="pay.out", kind="jwt") == 1
    assert count("broker_mint_seconds_count", kind="jwt") == 4
    # JWT outcomes are counted under their action (they were all "other" before).
    assert count("broker_outcomes_total", action="read.thing", status="ok") == 1
    assert count("broker_outcomes_total", action="pay.out", status="ok") == 1
    assert count("broker_outcomes_total", action="read.thing", status="error") == 1
    assert count("broker_outcomes_total", action="other", status="ok") == 0
    assert count("process_resident_memory_bytes") > 0
    assert count("broker_budget_used", budget="usd") == 70
    assert count("broker_budget_limit", budget="usd") == 100
    assert count("broker_approvals_pending") == 0

    # The report, from the same trail.
    trail = h.audit_path
    assert main(["report", "--json", str(trail)]) == 0
    doc = json.loads(capsys.readouterr().out)
    text_rc = main(["report", str(trail)])
    terminal = capsys.readouterr().out
    html_path = tmp_path / "report.html"
    assert main(["report", "--html", str(html_path), str(trail)]) == 0
    capsys.readouterr()
    assert text_rc == 0
    assert agent in terminal
    assert agent in html_path.read_text()
    mine = next(a for a in doc["agents"] if a["agent"] == agent)
    total = mine["total"]
    assert total["throughput"]["decisions"] == 8
    assert total["throughput"]["credentials_issued"] == 4
    assert total["throughput"]["ok_outcomes"] == 2
    assert total["integrity"]["refusals_by_reason"] == {
        "constraint_violation": 2,
        "unknown_action": 1,
        "budget_exhausted": 1,
    }
    assert total["integrity"]["errors"] == 1
    assert total["trust"]["auto_share"] == 1.0
    assert total["trust"]["audit_complete"] == 3
    assert total["trust"]["missing_outcome"] == [ids[2]]
