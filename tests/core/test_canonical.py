"""The input binding: RFC 8785 canonical JSON, one encoder for tokens, approvals and verifiers."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from broker.core.canonical import UnbindableInputs, inputs_digest, jcs
from broker.core.decision import inputs_hash


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"b": 1, "a": 2}, b'{"a":2,"b":1}'),
        ({"n": 100.0}, b'{"n":100}'),
        ({"n": 12.0, "m": 1}, b'{"m":1,"n":12}'),
        ({"n": 1.5e-7}, b'{"n":1.5e-7}'),
        ({"n": 1e21}, b'{"n":1e+21}'),
        ({"t": "Zoë 東京"}, '{"t":"Zoë 東京"}'.encode()),
        ({"t": "a\nb\u2028"}, '{"t":"a\\nb\u2028"}'.encode()),
        # UTF-16 code-unit order, not code-point order: U+E000 sorts after U+1F600.
        ({"\ue000": 1, "\U0001f600": 2}, '{"\U0001f600":2,"\ue000":1}'.encode()),
    ],
)
def test_jcs_vectors(value: Any, expected: bytes) -> None:
    """Canonical bytes match RFC 8785: sorted keys, shortest numbers, raw UTF-8 text."""
    assert jcs(value) == expected


def test_equal_numbers_bind_equally() -> None:
    """100, 100.0 and 1e2 (as any JSON parser reads them) give one digest."""
    digests = {
        inputs_digest("a", "x.y", json.loads(f'{{"amount": {text}}}'))
        for text in ("100", "100.0", "1e2", "1E+2")
    }
    assert len(digests) == 1


def test_digest_is_sha256_of_the_documented_object() -> None:
    """The digest is sha256 over JCS({agent, action, inputs}), as the README says."""
    inputs = {"ticket_id": "CS-1", "note": "Zoë"}
    blob = '{"action":"x.y","agent":"a","inputs":{"note":"Zoë","ticket_id":"CS-1"}}'.encode()
    assert inputs_digest("a", "x.y", inputs) == "sha256:" + hashlib.sha256(blob).hexdigest()


@pytest.mark.parametrize(
    "inputs", [{"t": "Zoë"}, {"n": 100.0}, {"t": "東京", "n": 1e2}, {"e": "\u2028"}]
)
def test_decision_and_verifier_encoders_agree(inputs: dict[str, Any]) -> None:
    """The decision core's binding and the verifier's are one function (they once differed)."""
    assert inputs_hash("a", "x.y", inputs) == inputs_digest("a", "x.y", inputs)


@pytest.mark.parametrize("value", [2**53, -(2**60), "\ud800", float("nan"), float("inf")])
def test_unbindable_values_are_refused(value: Any) -> None:
    """Values without a JCS form raise UnbindableInputs rather than hash something else."""
    with pytest.raises(UnbindableInputs):
        inputs_digest("a", "x.y", {"v": value})
