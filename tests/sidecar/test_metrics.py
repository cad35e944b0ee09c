"""Sidecar metrics: exact exposition after known calls, bounded labels, the Grafana dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.sidecar.metrics import FREE_LABEL_CAP, METRIC_NAMES, OTHER, SidecarMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "grafana-broker.json"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(metrics: SidecarMetrics) -> Samples:
    """(sample name, labels) -> value, parsed back from the rendered exposition."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


AGENT = "refund-bot"


def new() -> SidecarMetrics:
    return SidecarMetrics(
        actions=["stripe.refund", "db.read"], budgets={"usd": object()}, agent=AGENT
    )


def exercised() -> SidecarMetrics:
    """Every method called a known number of times."""
    m = new()
    for _ in range(3):
        m.decision("stripe.refund", "allow", None)
    m.decision("stripe.refund", "deny", "budget_exhausted")
    m.decision("db.read", "deny", "rate_limited")
    m.decision("db.read", "deny", "rate_limited")
    m.decision("stripe.refund", "pending_approval", None)
    m.credentials_issued("jwt", action="stripe.refund", credential_id="c1")
    m.credentials_issued("jwt", action="stripe.refund", credential_id="c2")
    m.credentials_issued("dynamic", action="db.read", credential_id="c3")
    m.outcome("c1", "ok")
    m.outcome("c2", "ok")
    m.outcome("c3", "rolled_back")
    for seconds in (0.0002, 0.0008, 0.003, 0.7):
        m.mint_latency("jwt", seconds)
    m.mint_latency("dynamic", 0.02)
    m.budget("usd", 40.0, 100.0)
    m.budget("usd", 42.5, 100.0)
    m.budget_leased("usd", 12.0)
    m.approvals_pending(4)
    m.approvals_pending(2)
    m.approval_wait(42.0)
    m.revocation("credential")
    m.revocation("agent")
    m.revocation("credential")
    m.vault_error("mint_dynamic")
    m.audit_append(0.004)
    m.audit_append(0.0015)
    m.control_lag(7.5)
    for _ in range(5):
        m.control_read("node_agent")
    m.control_read("vault")
    return m


def test_counters_have_exact_counts() -> None:
    """Decisions, outcomes, issues, revocations and Vault errors count exactly what was called."""
    s = samples(exercised())
    decisions = "broker_decisions_total"
    assert (
        value(s, decisions, agent=AGENT, action="stripe.refund", outcome="allow", reason="none")
        == 3
    )
    assert (
        value(
            s,
            decisions,
            agent=AGENT,
            action="stripe.refund",
            outcome="deny",
            reason="budget_exhausted",
        )
        == 1
    )
    assert (
        value(s, decisions, agent=AGENT, action="db.read", outcome="deny", reason="rate_limited")
        == 2
    )
    assert (
        value(
            s,
            decisions,
            agent=AGENT,
            action="stripe.refund",
            outcome="pending_approval",
            reason="none",
        )
        == 1
    )
    assert sum(v for (name, _), v in s.items() if name == decisions) == 7
    outcomes, issued = "broker_outcomes_total", "broker_credentials_issued_total"
    assert value(s, outcomes, agent=AGENT, action="stripe.refund", status="ok") == 2
    assert value(s, outcomes, agent=AGENT, action="db.read", status="rolled_back") == 1
    assert value(s, issued, agent=AGENT, action="stripe.refund", kind="jwt") == 2
    assert value(s, issued, agent=AGENT, action="db.read", kind="dynamic") == 1
    assert value(s, "broker_revocations_total", kind="credential") == 2
    assert value(s, "broker_revocations_total", kind="agent") == 1
    assert value(s, "broker_vault_errors_total", operation="mint_dynamic") == 1


def test_histograms_bucket_exactly() -> None:
    """Mint, approval-wait and audit-append histograms hold the observed counts, sums, buckets."""
    s = samples(exercised())
    assert value(s, "broker_mint_seconds_count", kind="jwt") == 4
    assert value(s, "broker_mint_seconds_sum", kind="jwt") == pytest.approx(0.704)
    assert value(s, "broker_mint_seconds_bucket", kind="jwt", le="0.00025") == 1
    assert value(s, "broker_mint_seconds_bucket", kind="jwt", le="0.001") == 2
    assert value(s, "broker_mint_seconds_bucket", kind="jwt", le="0.005") == 3
    assert value(s, "broker_mint_seconds_bucket", kind="jwt", le="0.5") == 3
    assert value(s, "broker_mint_seconds_bucket", kind="jwt", le="1.0") == 4
    assert value(s, "broker_mint_seconds_count", kind="dynamic") == 1
    assert value(s, "broker_approval_wait_seconds_count") == 1
    assert value(s, "broker_approval_wait_seconds_bucket", le="60.0") == 1
    assert value(s, "broker_approval_wait_seconds_bucket", le="30.0") == 0
    assert value(s, "broker_audit_append_seconds_count") == 2
    assert value(s, "broker_audit_append_seconds_bucket", le="0.0025") == 1


def test_gauges_hold_the_last_value() -> None:
    """Budget, pending approvals and control lag are set, not summed."""
    s = samples(exercised())
    assert value(s, "broker_budget_used", budget="usd") == 42.5
    assert value(s, "broker_budget_limit", budget="usd") == 100.0
    assert value(s, "broker_budget_leased", budget="usd") == 12.0
    assert value(s, "broker_approvals_pending") == 2
    assert value(s, "broker_control_lag_seconds") == 7.5


def test_control_reads_are_counted_by_source() -> None:
    """Confirmations from the node agent and the sidecar's own reads count apart."""
    s = samples(exercised())
    assert value(s, "broker_control_reads_total", source="node_agent") == 5
    assert value(s, "broker_control_reads_total", source="vault") == 1


def test_every_documented_family_is_exported() -> None:
    """METRIC_NAMES is exactly what the exposition carries (histograms through their suffixes)."""
    exported = {n for n, _ in samples(exercised()) if not n.endswith("_created")}
    names = {re.sub(r"_(bucket|count|sum)$", "", n) for n in exported}
    assert {n for n in names if n.startswith("broker_")} == METRIC_NAMES
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= names


def test_registries_are_per_sidecar() -> None:
    """Two sidecars in one process count separately and never touch the default registry."""
    from prometheus_client import REGISTRY

    a, b = new(), new()
    a.decision("db.read", "allow", None)
    assert value(samples(a), "broker_decisions_total", agent=AGENT, action="db.read", outcome="allow", reason="none") == 1  # fmt: skip
    assert not any(name == "broker_decisions_total" for name, _ in samples(b))
    assert REGISTRY.get_sample_value("broker_decisions_total") is None


def test_labels_stay_bounded() -> None:
    """Undeclared actions, unknown reasons and budgets fold into `other`; free labels are capped."""
    m = new()
    for n in range(50):
        m.decision(f"made.up.{n}", "deny", "unknown_action")
        m.decision("db.read", "weird", f"reason-{n}")
        m.revocation(f"kind-{n}")
        m.vault_error(f"op-{n}")
    m.budget("eur", 1.0, 2.0)
    s = samples(m)
    decisions = "broker_decisions_total"
    assert (
        value(s, decisions, agent=AGENT, action=OTHER, outcome="deny", reason="unknown_action")
        == 50
    )
    assert value(s, decisions, agent=AGENT, action="db.read", outcome=OTHER, reason=OTHER) == 50
    revocation_kinds = {dict(labels)["kind"] for n, labels in s if n == "broker_revocations_total"}
    assert len(revocation_kinds) == FREE_LABEL_CAP + 1
    assert value(s, "broker_revocations_total", kind=OTHER) == 50 - FREE_LABEL_CAP
    assert value(s, "broker_budget_used", budget=OTHER) == 1.0


# --- the dashboard -----------------------------------------------------------------------


def dashboard_panels() -> list[dict[str, object]]:
    model = json.loads(DASHBOARD.read_text())
    assert 36 <= model["schemaVersion"] <= 41
    panels: list[dict[str, object]] = []
    for panel in model["panels"]:
        panels += [panel, *panel.get("panels", [])]
    return [p for p in panels if p.get("type") != "row"]


def test_dashboard_datasource_is_a_variable() -> None:
    """The dashboard is valid JSON whose panels all use the ${DS_PROMETHEUS} variable."""
    model = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for panel in dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids))


def test_dashboard_queries_only_exported_metrics() -> None:
    """Every panel query names metrics SidecarMetrics really exports, and every topic has one."""
    exported = {n for n, _ in samples(exercised())}
    used: set[str] = set()
    for panel in dashboard_panels():
        targets = panel["targets"]
        assert isinstance(targets, list), panel["title"]
        assert targets, panel["title"]
        for target in targets:
            names = set(re.findall(r"\bbroker_[a-z_]+", target["expr"]))
            assert names, f"{panel['title']}: no broker metric in {target['expr']}"
            assert names <= exported, f"{panel['title']}: {names - exported} not exported"
            used |= names
    wanted = {
        "broker_decisions_total",
        "broker_mint_seconds_bucket",
        "broker_budget_used",
        "broker_budget_limit",
        "broker_approvals_pending",
        "broker_revocations_total",
        "broker_vault_errors_total",
        "broker_audit_append_seconds_bucket",
        "broker_control_lag_seconds",
    }
    assert wanted <= used


def test_actions_of_a_reloaded_manifest_get_their_own_series() -> None:
    """After ``manifest_changed`` a newly declared action is counted under its name, not
    folded into ``other``; the old actions keep counting."""
    m = new()
    m.decision("crm.lookup", "allow", None)
    m.manifest_changed(["stripe.refund", "db.read", "crm.lookup"], ["usd"])
    m.decision("crm.lookup", "allow", None)
    m.decision("db.read", "allow", None)
    s = samples(m)
    decisions = "broker_decisions_total"
    assert value(s, decisions, agent=AGENT, action=OTHER, outcome="allow", reason="none") == 1
    assert (
        value(s, decisions, agent=AGENT, action="crm.lookup", outcome="allow", reason="none") == 1
    )
    assert value(s, decisions, agent=AGENT, action="db.read", outcome="allow", reason="none") == 1


def test_outcome_counts_under_the_credentials_action() -> None:
    """An outcome is labelled with the action its credential was issued for, whatever the
    kind; an unknown credential id is ``other``."""
    m = new()
    m.credentials_issued("jwt", action="db.read", credential_id="j1")
    m.outcome("j1", "ok")
    m.outcome("never-issued", "ok")
    m.outcome("j1", "ok")  # reported twice: the second is not attributed again
    s = samples(m)
    assert value(s, "broker_outcomes_total", agent=AGENT, action="db.read", status="ok") == 1
    assert value(s, "broker_outcomes_total", agent=AGENT, action=OTHER, status="ok") == 2


def test_remembered_credentials_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials whose outcome never comes are forgotten oldest first past the cap."""
    import broker.sidecar.metrics

    monkeypatch.setattr(broker.sidecar.metrics, "HELD_CAP", 3)
    m = new()
    for n in range(5):
        m.credentials_issued("jwt", action="db.read", credential_id=f"c{n}")
    m.outcome("c0", "ok")  # forgotten
    m.outcome("c4", "ok")
    s = samples(m)
    assert value(s, "broker_outcomes_total", agent=AGENT, action=OTHER, status="ok") == 1
    assert value(s, "broker_outcomes_total", agent=AGENT, action="db.read", status="ok") == 1
