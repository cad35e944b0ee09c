"""The input binding shared by tokens, approvals and verifiers, over RFC 8785 canonical JSON.

The binding is ``"sha256:" + hex(sha256(JCS({"agent": ..., "action": ..., "inputs": {...}})))``
where JCS is the JSON Canonicalization Scheme (RFC 8785): keys sorted by UTF-16 code units,
no whitespace, strings as UTF-8 with only the mandatory escapes, numbers in ECMAScript's
shortest form (so ``100``, ``100.0`` and ``1e2`` are all ``100``). Any language with a JCS
library computes the same digest from the same inputs; the README shows how.

The encoding is the ``rfc8785`` library's, not ours: a hand-written ``json.dumps`` with
sorted keys is not JCS (it escapes or keeps non-ASCII text by option, writes ``100.0`` and
sorts by code point), and two such encoders in this project once disagreed."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import rfc8785


class UnbindableInputs(ValueError):
    """The inputs hold a value JCS cannot encode (an integer beyond 2**53 - 1, a lone surrogate)."""


def jcs(value: Any) -> bytes:
    """RFC 8785 canonical JSON of ``value``; raises ``UnbindableInputs`` if it has none."""
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, UnicodeEncodeError) as exc:
        raise UnbindableInputs(f"no canonical JSON for this value: {exc}") from exc


def inputs_digest(agent: str, action: str, inputs: Mapping[str, Any]) -> str:
    """Binds a credential or an approval to exactly these inputs for this agent and action."""
    blob = jcs({"agent": agent, "action": action, "inputs": dict(inputs)})
    return "sha256:" + hashlib.sha256(blob).hexdigest()
