"""The ``broker`` command as scripts and CI meet it: version, completion, exit codes, JSON,
and a reader that closes the pipe early."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from broker.cli import build_parser, main, package_version
from broker.cli.exit import EXIT_TABLE, exit_code
from broker.core.errors import (
    AuditUnavailable,
    BackendUnavailable,
    BrokerError,
    ConfigError,
    ControlStateInvalid,
    ManifestError,
    PermissionDenied,
    RequestError,
    VerificationError,
)

ROOT = Path(__file__).resolve().parents[2]
SCOPES = ROOT / "scopes"
BROKER = [sys.executable, "-m", "broker.cli"]


def test_version_names_the_installed_package(capsys: pytest.CaptureFixture[str]) -> None:
    """``broker --version`` prints the package version and exits 0."""
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"broker {package_version()}"
    assert package_version() != "unknown"


def test_help_documents_every_exit_code() -> None:
    """``broker --help`` ends with the exit-code table, every code in it."""
    text = build_parser().format_help()
    assert "exit codes:" in text
    for code, meaning in EXIT_TABLE:
        assert f"{code:>3}  {meaning[:30]}" in text


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("bad flag"), 2),
        (RequestError("bad input"), 2),
        (BackendUnavailable("vault down"), 3),
        (AuditUnavailable("disk full"), 3),
        (PermissionDenied("vault said no"), 1),
        (ManifestError("does not load"), 1),
        (VerificationError("expired"), 1),
        (ControlStateInvalid("mistyped"), 1),
        (BrokerError("anything else"), 1),
    ],
)
def test_each_failure_maps_to_one_exit_code(error: BrokerError, code: int) -> None:
    """The one table maps every BrokerError subclass to its documented exit code."""
    assert exit_code(error) == code


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown option is a usage error: argparse's exit 2, the usage line on stderr."""
    with pytest.raises(SystemExit) as stop:
        main(["scopes", "test", "--no-such-option"])
    assert stop.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_unreachable_vault_exits_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command that needs Vault and cannot reach it exits 3, naming backend_unavailable."""
    monkeypatch.setenv("VAULT_TOKEN", "not-a-real-token")
    code = main(["scopes", "published", "research-agent", "--vault-addr", "http://127.0.0.1:9"])
    assert code == 3
    assert "backend_unavailable" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("shell", "words"),
    [
        ("bash", ("scopes", "audit", "revoke", "--junit", "--fail-on-widening")),
        ("zsh", ("scopes", "audit", "revoke", "--junit", "--fail-on-widening")),
        ("tcsh", ("scopes", "audit", "revoke", "approvals")),  # shtab's tcsh: commands only
    ],
)
def test_completion_script_knows_the_commands(
    shell: str, words: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    """``broker completion SHELL`` prints a script naming the commands (and options)."""
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    for word in words:
        assert word in script


def test_bash_completion_script_is_valid_bash(tmp_path: Path) -> None:
    """The bash script parses (``bash -n``), so sourcing it cannot break a shell."""
    script = tmp_path / "broker.bash"
    out = subprocess.run([*BROKER, "completion", "bash"], capture_output=True, check=True)
    script.write_bytes(out.stdout)
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_closed_pipe_exits_quietly() -> None:
    """A reader already gone (``| true``; what ``| head -1`` does to a long output) ends the
    command with exit 141 (SIGPIPE) and no traceback; before, a BrokenPipeError was printed."""
    pipeline = f"{' '.join(BROKER)} scopes schema | true; echo rc=${{PIPESTATUS[0]}}"
    done = subprocess.run(
        ["bash", "-c", pipeline], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stderr == ""
    assert done.stdout == "rc=141\n"


def test_piped_to_head_prints_the_first_line() -> None:
    """``broker scopes test --json | head -1`` prints one line and nothing on stderr."""
    pipeline = f"{' '.join(BROKER)} scopes test scopes --json | head -1"
    done = subprocess.run(
        ["bash", "-c", pipeline], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stderr == ""
    assert done.stdout == "{\n"


def test_help_piped_to_a_closed_reader_is_quiet() -> None:
    """Even ``broker --help`` (printed by argparse itself) into a closed pipe leaves stderr
    empty."""
    pipeline = f"{' '.join(BROKER)} --help | true"
    done = subprocess.run(
        ["bash", "-c", pipeline], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stderr == ""


# -- JSON shapes ---------------------------------------------------------------------------


def test_validate_json(capsys: pytest.CaptureFixture[str]) -> None:
    """``scopes validate --json`` lists each manifest with agent, version and hash."""
    assert main(["scopes", "validate", str(SCOPES), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True
    agents = {m["agent"]: m for m in doc["manifests"]}
    assert agents["support-refund-agent"]["content_hash"].startswith("sha256:")


def test_validate_json_on_a_bad_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest that does not load gives ok=false with its issues, and exit 1."""
    (tmp_path / "bad.yaml").write_text("agent: x\ncolour: red\n")
    assert main(["scopes", "validate", str(tmp_path), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert any("colour" in issue for issue in doc["issues"])


def test_diff_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``scopes diff --json`` gives each change with its effect and the widening count."""
    old = SCOPES / "support-refund-agent.yaml"
    new = tmp_path / "new.yaml"
    new.write_text(old.read_text().replace("max: 500}", "max: 5000}"))
    code = main(["scopes", "diff", str(old), str(new), "--json", "--fail-on-widening"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["widening"] >= 1
    assert code == 1
    assert all(set(c) == {"where", "what", "effect"} for c in doc["changes"])


def test_audit_verify_json_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``audit verify --json --offline`` reports the verdict and exit code 3 (not anchored)."""
    trail = tmp_path / "empty.jsonl"
    trail.write_text("")
    code = main(["audit", "verify", str(trail), "--offline", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 3
    assert doc["verdict"] == "chain_intact_anchors_not_checked"
    assert doc["exit_code"] == 3


# -- scopes test: file or directory, no case is a failure, JUnit, coverage --------------------


def test_scopes_test_json_and_coverage(capsys: pytest.CaptureFixture[str]) -> None:
    """``scopes test --json`` lists cases and which actions and reasons they covered."""
    assert main(["scopes", "test", str(SCOPES), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["failed"] == 0
    assert doc["passed"] == len(doc["cases"]) > 0
    refunds = doc["coverage"]["agents"]["support-refund-agent"]
    assert "stripe.refund" in refunds["actions_covered"]
    assert doc["coverage"]["reasons_covered"]


def test_scopes_test_one_case_file(capsys: pytest.CaptureFixture[str]) -> None:
    """A case file (not a directory) runs its cases against the manifests beside tests/."""
    case_file = sorted((SCOPES / "tests").glob("*.yaml"))[0]
    assert main(["scopes", "test", str(case_file)]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out
    assert " 0 failed" in out


def test_scopes_test_one_manifest_file(capsys: pytest.CaptureFixture[str]) -> None:
    """A manifest file runs the cases naming its agent."""
    assert main(["scopes", "test", str(SCOPES / "support-refund-agent.yaml")]) == 0
    assert "support-refund-agent" in capsys.readouterr().out


def test_scopes_test_with_no_case_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A manifest with no case anywhere is exit 1 with a message, never "0 passed" and 0."""
    shutil.copy(SCOPES / "support-refund-agent.yaml", tmp_path)
    assert main(["scopes", "test", str(tmp_path / "support-refund-agent.yaml")]) == 1
    assert "no test case ran" in capsys.readouterr().err


def test_scopes_test_missing_path_is_usage(tmp_path: Path) -> None:
    """A path that does not exist is a usage error (2), not an empty run."""
    assert main(["scopes", "test", str(tmp_path / "absent.yaml")]) == 2


def test_scopes_test_junit(tmp_path: Path) -> None:
    """``--junit FILE`` writes JUnit XML: one testcase per case, a failure element per failure."""
    shutil.copy(SCOPES / "support-refund-agent.yaml", tmp_path)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "wrong.yaml").write_text(
        "agent: support-refund-agent\ncases:\n  - name: big refund auto-approved\n"
        "    request: {action: stripe.refund, inputs: {ticket_id: CS-1, amount_usd: 400}}\n"
        "    expect: {outcome: allow}\n"
        "  - name: small refund allowed\n"
        "    request: {action: stripe.refund, inputs: {ticket_id: CS-1, amount_usd: 5}}\n"
        "    expect: {outcome: allow}\n"
    )
    report = tmp_path / "junit.xml"
    assert main(["scopes", "test", str(tmp_path), "--junit", str(report)]) == 1
    root = ET.parse(report).getroot()  # noqa: S314 (our own output, written just now)
    cases = root.findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == ["big refund auto-approved", "small refund allowed"]
    failures = root.findall("./testsuite/testcase/failure")
    assert len(failures) == 1
    assert root.find("./testsuite").get("failures") == "1"


@pytest.mark.parametrize(
    ("beat", "expected"),
    [
        ({"manifest_source": "file"}, "reads its manifest from a file"),
        ({}, "reads its manifest from a file"),  # a sidecar older than the field
        (
            {"manifest_source": "vault:a", "manifest_refused": '{"version": 4, "reason": "bad"}'},
            "refused version 4: bad",
        ),
        (
            {"manifest_source": "vault:a", "manifest_refused": {"version": 3, "reason": "old"}},
            "has not loaded version 4 yet",
        ),
        ({"manifest_source": "vault:a", "manifest_refused": None}, "has not loaded version 4"),
    ],
)
def test_not_enforced_says_why(beat: dict[str, object], expected: str) -> None:
    """``scopes verify`` names the cause of NOT ENFORCED from the sidecar's heartbeat."""
    from broker.cli.lifecycle import not_enforced_reason

    assert expected in not_enforced_reason(beat, "a", 4)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "none"), (-0.04, "now"), (0.0, "now"), (3.25, "3.2s ago"), (61.0, "61.0s ago")],
)
def test_heartbeat_age_never_reads_minus_zero(seconds: float | None, shown: str) -> None:
    """``broker status`` prints "now" for a heartbeat from a clock slightly ahead, not -0.0s."""
    from broker.cli.control import heartbeat_age

    assert heartbeat_age(seconds) == shown


@pytest.mark.parametrize(("value", "shown"), [(None, "-"), ("", "-"), ("wf-1", "wf-1")])
def test_absent_values_print_as_a_dash(value: str | None, shown: str) -> None:
    """``approvals show`` prints an absent workflow as "-", never "None"."""
    from broker.cli.approvals import shown as show

    assert show(value) == shown
