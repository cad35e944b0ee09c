"""The committed JSON Schema is the one the models generate."""

from __future__ import annotations

from pathlib import Path

from broker.cli.scopes import schema_text

SCHEMA = Path(__file__).resolve().parents[2] / "scopes" / "manifest.schema.json"


def test_committed_schema_matches_the_models() -> None:
    """scopes/manifest.schema.json is current; regenerate with `broker scopes schema`."""
    assert SCHEMA.read_text() == schema_text()
