"""A listed tool's input schema, built from the manifest's declared inputs (pure).

The manifest is the authority: the sidecar refuses any argument it does not declare, so the
schema the model plans with says exactly that (``additionalProperties: false``) and carries
every constraint JSON Schema can express. Descriptions come from the upstream's own schema.
A manifest pattern matches the whole value (``re.fullmatch``); JSON Schema's ``pattern``
searches, so it is anchored here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_JSON_TYPE = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}


def input_property(spec: Mapping[str, Any]) -> dict[str, Any]:
    """One declared input (as ``/v1/scope`` renders it) as a JSON Schema property."""
    prop: dict[str, Any] = {"type": _JSON_TYPE[spec["type"]]}
    if spec.get("min") is not None:
        prop["minimum"] = spec["min"]
    if spec.get("max") is not None:
        prop["maximum"] = spec["max"]
    if spec.get("pattern") is not None:
        prop["pattern"] = f"^(?:{spec['pattern']})$"
    if spec.get("one_of") is not None:
        prop["enum"] = list(spec["one_of"])
    if spec.get("max_length") is not None:
        prop["maxLength"] = spec["max_length"]
    if spec.get("domain_in") is not None:
        prop["description"] = "host or email domain within: " + ", ".join(spec["domain_in"])
    return prop


def tool_input_schema(
    inputs: Mapping[str, Mapping[str, Any]], upstream_schema: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The schema the agent sees: the manifest's inputs, with the upstream's descriptions."""
    upstream_props = (upstream_schema or {}).get("properties") or {}
    props: dict[str, Any] = {}
    for name, spec in inputs.items():
        prop = input_property(spec)
        described = upstream_props.get(name, {}).get("description")
        if described and "description" not in prop:
            prop["description"] = described
        props[name] = prop
    return {
        "type": "object",
        "properties": props,
        "required": sorted(n for n, s in inputs.items() if s.get("required", True)),
        "additionalProperties": False,
    }


def tool_description(upstream_description: str | None, action: str, needs_approval: bool) -> str:
    """The upstream's description, plus what the broker adds: the action and any approval gate."""
    text = (upstream_description or "").strip()
    note = f"[broker: action {action}"
    note += "; some calls wait for a human approval]" if needs_approval else "]"
    return f"{text}\n\n{note}" if text else note
