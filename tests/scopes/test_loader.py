"""Loading manifests from YAML: every problem is reported with file, path and line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from broker.core.errors import ManifestError
from broker.scopes.loader import load_manifest, load_manifests

SCOPES = Path(__file__).resolve().parents[2] / "scopes"

GOOD = """\
agent: tiny-agent
policy_version: v1
system_owner: platform@acme.example
risk_owner: risk@acme.example
actions:
  notes.read:
    accountable: owner@acme.example
    credential: {kind: jwt, audience: notes, ttl: 60s}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def issues_of(*paths: Path) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifests(paths)
    return info.value.issues


def test_example_scopes_all_load() -> None:
    """The committed example manifests load, one per agent."""
    agents = {m.agent for m in load_manifests([SCOPES])}
    assert agents == {"support-refund-agent", "outreach-agent", "coding-agent", "research-agent"}


def test_single_file_loads(tmp_path: Path) -> None:
    """load_manifest reads one file into a Manifest."""
    assert load_manifest(write(tmp_path, "a.yaml", GOOD)).agent == "tiny-agent"


BAD = [
    (
        "missing accountable",
        GOOD.replace("    accountable: owner@acme.example\n", ""),
        ":6: actions.notes.read.accountable: required field missing; every action needs an "
        "accountable human",
    ),
    (
        "wrong type",
        GOOD.replace("ttl: 60s", "ttl: [60]"),
        ":8: actions.notes.read.credential.ttl: expected a duration like 30s",
    ),
    (
        "unknown key",
        GOOD + "    colour: red\n",
        ":9: actions.notes.read.colour: unknown key (found 'red')",
    ),
    ("malformed yaml", GOOD.replace("  notes.read:", "  notes.read: [\n"), ": malformed YAML"),
    (
        "ttl over cap",
        GOOD.replace("ttl: 60s", "ttl: 2h"),
        ":8: actions.notes.read.credential.ttl: ttl of 7200s exceeds the broker-wide maximum "
        "of 3600s",
    ),
    ("top level not a mapping", "- a\n- b\n", ":1: (document): Input should be a valid dict"),
    ("duplicate key", GOOD + "agent: again\n", ":9: agent: duplicate key (first at line 1)"),
    (
        "bool for a number",
        GOOD + "concurrency: yes\n",
        ":9: concurrency: Input should be a valid integer (found True)",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_manifest_issue_names_file_line_path_and_problem(
    tmp_path: Path, text: str, expected: str
) -> None:
    """A broken manifest fails with an issue line naming file, line, path and problem."""
    path = write(tmp_path, "bad.yaml", text)
    issues = issues_of(path)
    assert any(issue.startswith(str(path) + expected.split(":", 2)[0] + ":") for issue in issues)
    assert any(expected in issue for issue in issues), issues


def test_all_errors_in_all_files_are_collected(tmp_path: Path) -> None:
    """Several problems in several files are all reported, not just the first."""
    write(tmp_path, "one.yaml", GOOD.replace("owner@acme.example", "nobody").replace("v1", ""))
    write(tmp_path, "two.yml", GOOD.replace("kind: jwt", "kind: password"))
    issues = issues_of(tmp_path)
    assert any("one.yaml:2: policy_version" in i for i in issues)
    assert any("one.yaml:7: actions.notes.read.accountable" in i for i in issues)
    assert any("two.yml:8: actions.notes.read.credential" in i for i in issues)


def test_cross_reference_errors_name_the_exact_path(tmp_path: Path) -> None:
    """A cost naming an undeclared budget is reported at that cost entry's line."""
    text = GOOD + "    cost: {refunds: 1}\n"
    issues = issues_of(write(tmp_path, "x.yaml", text))
    assert any(":9: actions.notes.read.cost.refunds: 'refunds' is not a declared budget" in i
               for i in issues)  # fmt: skip


def test_two_manifests_for_one_agent_is_an_error(tmp_path: Path) -> None:
    """The same agent defined twice in one set does not load."""
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "b.yaml", GOOD)
    assert any("agent: 'tiny-agent' is already defined in" in i for i in issues_of(tmp_path))


def test_subdirectories_and_other_files_are_ignored(tmp_path: Path) -> None:
    """Only *.yaml/*.yml directly in a directory are manifests; tests/ is not."""
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "README.md", "not yaml: [")
    (tmp_path / "tests").mkdir()
    write(tmp_path / "tests", "cases.yaml", "cases: []\n")
    assert [m.agent for m in load_manifests([tmp_path])] == ["tiny-agent"]


def test_missing_path_and_empty_directory_are_errors(tmp_path: Path) -> None:
    """A path that does not exist, or holds no manifests, is reported."""
    assert any("no such file" in i for i in issues_of(tmp_path / "nope"))
    assert any("no scope manifests" in i for i in issues_of(tmp_path))


def test_yaml_aliases_are_refused_quickly(tmp_path: Path) -> None:
    """YAML aliases (and so alias bombs) are refused before any expansion is validated."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    path = write(tmp_path, "bomb.yaml", "\n".join(lines) + "\n")
    start = time.perf_counter()
    assert any("aliases" in issue for issue in issues_of(path))
    assert time.perf_counter() - start < 1
