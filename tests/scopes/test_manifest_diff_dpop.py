"""``diff_manifests`` on the ``dpop`` field: dropping the requirement widens, adding it narrows."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from broker.core.manifest import Manifest
from broker.scopes.diff import Effect, diff_manifests
from tests.harness import SCOPES

BASE: dict[str, Any] = yaml.safe_load((SCOPES / "support-refund-agent.yaml").read_text())


def _dpop(value: str | None) -> Manifest:
    doc = copy.deepcopy(BASE)
    if value is not None:
        doc["actions"]["zendesk.get_ticket"]["credential"]["dpop"] = value
    return Manifest.model_validate(doc)


@pytest.mark.parametrize(
    ("old", "new", "effect"),
    [
        ("required", "optional", Effect.widens),
        ("required", None, Effect.widens),
        (None, "required", Effect.narrows),
    ],
)
def test_dpop_change_is_named_with_its_effect(
    old: str | None, new: str | None, effect: Effect
) -> None:
    """A token that stops needing its holder's key is usable by whoever copies it: widening."""
    changes = diff_manifests(_dpop(old), _dpop(new))
    assert [(c.where, c.effect) for c in changes] == [
        ("actions.zendesk.get_ticket.credential.dpop", effect)
    ]


def test_same_dpop_setting_is_no_change() -> None:
    """``dpop: optional`` written out is the default: nothing to report."""
    assert diff_manifests(_dpop(None), _dpop("optional")) == []
