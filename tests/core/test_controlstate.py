"""Control state is typed: a value of the wrong type is refused with an error naming the
document, the field and what was found, never coerced (``bool("false")`` is true)."""

from __future__ import annotations

from typing import Any

import pytest

from broker.core.controlstate import (
    FIX_HINT,
    GLOBAL_PATH,
    REVOKED_PATH,
    ControlState,
    agent_path,
)
from broker.core.credids import ID_PREFIX, prefix_of, unique_id
from broker.core.errors import ControlStateInvalid

AGENT = "support-refund-agent"

REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("global", {"killed_all": "false"}, "control/global: killed_all must be true or false"),
    ("global", {"killed_all": "true"}, "killed_all must be true or false"),
    ("global", {"killed_all": 0}, "killed_all must be true or false"),
    ("agent", {"killed": "false"}, f"control/agents/{AGENT}: killed must be true or false"),
    ("agent", {"killed": None}, "killed must be true or false"),
    ("global", {"revoked_before": "1700000000"}, "revoked_before must be a number"),
    ("agent", {"revoked_before": True}, "revoked_before must be a number"),
    (
        "agent",
        {"revoked_before_action": {"a.b": "now"}},
        "revoked_before_action: a.b must be a number",
    ),
    ("agent", {"revoked_before_action": ["a.b"]}, "revoked_before_action must be a map"),
    ("revoked", {"jtis": {"abc": "soon"}}, "control/revoked.jtis: abc must be a number"),
    ("global", {"signing_generation": "2"}, "signing_generation must be an integer"),
    ("global", {"min_generation": 1.5}, "min_generation must be an integer"),
    ("agent", {"reason": 7}, "reason must be a string"),
]


def _docs(where: str, doc: dict[str, Any]) -> tuple[Any, Any, Any]:
    return (
        doc if where == "global" else None,
        doc if where == "agent" else None,
        doc if where == "revoked" else None,
    )


@pytest.mark.parametrize(("where", "doc", "message"), REFUSED, ids=[m for _, _, m in REFUSED])
def test_a_mistyped_value_is_refused_naming_document_and_field(
    where: str, doc: dict[str, Any], message: str
) -> None:
    """The error names the document, the field and the value found, and says how to fix it."""
    with pytest.raises(ControlStateInvalid) as refused:
        ControlState.from_docs(AGENT, *_docs(where, doc))
    assert message in refused.value.detail
    assert "broker revive" in refused.value.detail
    assert refused.value.code == "control_state_invalid"


AGENT_DOC = f"control/agents/{AGENT}"
LONG = list(range(40))  # a repr of 150 characters, shown cut to its first 60
# Every field in the document it is read from, each error written out in full.
EXACT: list[tuple[str, dict[str, Any], str, str]] = [
    ("global", {"killed_all": 1}, GLOBAL_PATH, "killed_all must be true or false (a JSON boolean), found 1"),
    ("global", {"killed_all": LONG}, GLOBAL_PATH,
     f"killed_all must be true or false (a JSON boolean), found {repr(LONG)[:60]}"),
    ("global", {"killed_all": True, "reason": 7}, GLOBAL_PATH, "reason must be a string, found 7"),
    ("agent", {"reason": ["INC-1"]}, AGENT_DOC, "reason must be a string, found ['INC-1']"),
    ("global", {"revoked_before": "soon"}, GLOBAL_PATH,
     "revoked_before must be a number, found the string 'soon'"),
    ("agent", {"revoked_before": None}, AGENT_DOC, "revoked_before must be a number, found None"),
    ("agent", {"revoked_before_action": ["a.b"]}, AGENT_DOC,
     "revoked_before_action must be a map of names to numbers, found ['a.b']"),
    ("global", {"signing_generation": 2.0}, GLOBAL_PATH,
     "signing_generation must be an integer, found 2.0"),
    ("global", {"min_generation": "1"}, GLOBAL_PATH,
     "min_generation must be an integer, found the string '1'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("where", "doc", "path", "message"), EXACT, ids=[f"{w} {m}" for w, _, _, m in EXACT]
)
def test_each_field_error_in_full(where: str, doc: dict[str, Any], path: str, message: str) -> None:
    """The whole error: the document the field was read from, the field, the type expected,
    the value found (a string marked as one, anything else as its repr cut to 60 characters)
    and the commands that write control state correctly."""
    with pytest.raises(ControlStateInvalid) as refused:
        ControlState.from_docs(AGENT, *_docs(where, doc))
    assert refused.value.detail == f"control state {path}: {message} ({FIX_HINT})"


def test_the_string_false_is_never_read_as_true() -> None:
    """The case from the incident: `bao kv patch ... killed_all=false` does not keep agents killed
    nor pass silently: reading it fails."""
    with pytest.raises(ControlStateInvalid, match="found the string 'false'"):
        ControlState.from_docs(AGENT, {"killed_all": "false"}, {"killed": False})


def test_typed_values_read_as_written() -> None:
    """JSON booleans and numbers, as the commands write them, give the state they say."""
    state = ControlState.from_docs(
        AGENT,
        {"killed_all": False, "revoked_before": 5, "signing_generation": 3, "min_generation": 2},
        {"killed": True, "reason": "INC-1", "revoked_before": 7.5,
         "revoked_before_action": {"stripe.refund": 9}},
        {"jtis": {"abc": 1e10}},
    )  # fmt: skip
    assert state == ControlState(
        AGENT,
        killed=True,
        kill_reason="INC-1",
        revoked_before=7.5,
        revoked_jtis=frozenset({"abc"}),
        revoked_before_action={"stripe.refund": 9.0},
        signing_generation=3,
        min_generation=2,
    )


def test_missing_documents_mean_nothing_revoked() -> None:
    """No documents at all: not killed, nothing revoked, generation 1."""
    assert ControlState.from_docs(AGENT, None, None, None) == ControlState(AGENT)


def test_paths_are_the_documented_ones() -> None:
    """The paths named in errors are the ones the runbooks and `bao kv` use."""
    assert (GLOBAL_PATH, REVOKED_PATH, agent_path(AGENT)) == (
        "control/global",
        "control/revoked",
        f"control/agents/{AGENT}",
    )


def test_credential_ids_name_their_process() -> None:
    """An id carries its process's prefix; anything else is not a broker id."""
    cid = unique_id()
    assert prefix_of(cid) == ID_PREFIX
    assert unique_id() != cid
    for other in ("", "doesnotexist", cid.upper(), cid + "0", "database/creds/x/y"):
        assert prefix_of(other) is None
