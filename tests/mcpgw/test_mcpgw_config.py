"""The gateway config: what loads, and bad configs refused with the file and the path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.core.errors import ConfigError
from broker.mcpgw.config import GatewayConfig, StdioUpstream, load_gateway_config

GOOD: dict[str, Any] = {
    "upstreams": {
        "zendesk": {"transport": "http", "url": "http://127.0.0.1:8931/mcp"},
        "stripe": {"transport": "stdio", "command": ["python", "s.py"], "env": "STRIPE_TOKEN"},
    },
    "tools": {
        "get_ticket": {"upstream": "zendesk", "action": "zendesk.get_ticket"},
        "refund": {"upstream": "stripe", "action": "stripe.refund", "tool": "create_refund"},
    },
}


def write(tmp_path: Path, doc: Any) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_good_config_loads_with_defaults(tmp_path: Path) -> None:
    """HTTP upstreams default to an Authorization Bearer header; a tool's upstream name
    defaults to its own name."""
    config = load_gateway_config(write(tmp_path, GOOD))
    http = config.upstreams["zendesk"]
    assert (http.header, http.scheme) == ("Authorization", "Bearer")  # type: ignore[union-attr]
    assert config.upstream_tool("get_ticket") == "get_ticket"
    assert config.upstream_tool("refund") == "create_refund"
    assert isinstance(config.upstreams["stripe"], StdioUpstream)


def _with(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    doc = yaml.safe_load(yaml.safe_dump(GOOD))
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


BAD = [
    (("tools", "get_ticket", "upstream"), "nowhere", "undeclared upstreams: nowhere"),
    (("tools", "get_ticket", "action"), "nodot", "tools.get_ticket.action"),
    (("upstreams", "stripe", "env"), None, "exactly one of env or argument"),
    (("upstreams", "stripe", "argument"), "credential", "exactly one of env or argument"),
    (("upstreams", "zendesk", "url"), "ftp://x", "upstreams.zendesk.http.url"),
    (("upstreams", "zendesk", "headers"), {"a": "b"}, "Extra inputs"),
    (("upstreams", "stripe", "env"), "lower_case", "upstreams.stripe.stdio.env"),
    (("tools",), {}, "tools"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD)
def test_bad_configs_name_the_file_and_the_path(
    tmp_path: Path, path: tuple[str, ...], value: Any, message: str
) -> None:
    """An undeclared upstream, a bad action name, no or two ways to pass the credential, a
    non-HTTP URL, an unknown field, a bad variable name, no tools: a ConfigError naming the
    file and what is wrong."""
    with pytest.raises(ConfigError) as err:
        load_gateway_config(write(tmp_path, _with(path, value)))
    assert str(tmp_path / "gateway.yaml") in err.value.detail
    assert message in err.value.detail


def test_unreadable_yaml_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not YAML is refused with its name, not a traceback."""
    path = tmp_path / "gateway.yaml"
    path.write_text("upstreams: [unclosed")
    with pytest.raises(ConfigError, match=r"gateway\.yaml"):
        load_gateway_config(path)


def test_models_are_frozen() -> None:
    """A loaded config cannot be changed under the running gateway."""
    config = GatewayConfig.model_validate(GOOD)
    with pytest.raises(ValueError, match="frozen"):
        config.workflow = "x"  # type: ignore[misc]
