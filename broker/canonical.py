"""Canonical JSON and the input binding digest shared by tokens, approvals and verifiers.

Canonical means sorted keys, no insignificant whitespace and ASCII only, so the same value
always hashes the same on every machine and a string can never smuggle a raw newline."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def inputs_digest(agent: str, action: str, inputs: Mapping[str, Any]) -> str:
    """Binds a credential or an approval to exactly these inputs for this agent and action."""
    blob = canonical_json({"agent": agent, "action": action, "inputs": dict(inputs)})
    return "sha256:" + hashlib.sha256(blob).hexdigest()
