"""The manifest's ``dpop`` field: a jwt action may require proof of possession (RFC 9449)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from broker.core.manifest import JwtCredential, Manifest
from tests.harness import SCOPES

BASE: dict[str, Any] = yaml.safe_load((SCOPES / "support-refund-agent.yaml").read_text())


def _with(action: str, **credential: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc["actions"][action]["credential"].update(credential)
    return doc


def test_jwt_action_may_require_dpop() -> None:
    """``dpop: required`` loads on a jwt credential; without the field it is optional."""
    required = Manifest.model_validate(_with("zendesk.get_ticket", dpop="required"))
    plain = Manifest.model_validate(BASE)
    got = required.actions["zendesk.get_ticket"].credential
    assert isinstance(got, JwtCredential)
    assert got.dpop == "required"
    assert plain.actions["zendesk.get_ticket"].credential.dpop == "optional"  # type: ignore[union-attr]
    assert required.content_hash != plain.content_hash


@pytest.mark.parametrize(
    ("action", "value", "fragment"),
    [
        ("zendesk.get_ticket", "always", "'optional' or 'required'"),
        ("zendesk.get_ticket", True, "'optional' or 'required'"),
        # A Vault token cannot be bound to a key: asking for it is an error, not a no-op.
        ("stripe.refund", "required", "Extra inputs are not permitted"),
    ],
)
def test_bad_dpop_field_does_not_load(action: str, value: Any, fragment: str) -> None:
    """An unknown value, or dpop on a credential that cannot be bound, is refused by name."""
    with pytest.raises(ValidationError) as info:
        Manifest.model_validate(_with(action, dpop=value))
    assert fragment in str(info.value)
    assert "dpop" in str(info.value)
