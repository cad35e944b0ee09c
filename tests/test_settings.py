"""Vault addresses from the environment: one, or the nodes of an HA cluster."""

from __future__ import annotations

import pytest

from broker.core.errors import ConfigError
from broker.settings import vault_from_env


@pytest.mark.parametrize(
    ("env", "addrs"),
    [
        ({"VAULT_ADDR": "http://127.0.0.1:8200/"}, ("http://127.0.0.1:8200",)),
        (
            {"VAULT_ADDR": "http://a:8200, http://b:8200,http://c:8200"},
            ("http://a:8200", "http://b:8200", "http://c:8200"),
        ),
        ({"BAO_ADDR": "https://a:8200,https://b:8200"}, ("https://a:8200", "https://b:8200")),
        (
            {"BROKER_VAULT_ADDRS": "http://a:1,http://b:2", "VAULT_ADDR": "http://lb:8200"},
            ("http://a:1", "http://b:2"),
        ),
    ],
)
def test_vault_addresses_are_read_in_order(env: dict[str, str], addrs: tuple[str, ...]) -> None:
    """Comma-separated addresses keep their order; the first is where a sidecar starts."""
    settings = vault_from_env(env)
    assert settings.addrs == addrs
    assert settings.addr == addrs[0]


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("http://a:8200,,http://b:8200", "''"),
        ("http://a:8200,b:8200", "'b:8200'"),
        ("http://a:8200,http://a:8200/", "twice"),
        ("", "no Vault address"),
    ],
)
def test_bad_vault_addresses_are_refused_naming_the_problem(value: str, names: str) -> None:
    """An empty, schemeless or repeated address is an error naming it, never skipped."""
    with pytest.raises(ConfigError) as caught:
        vault_from_env({"VAULT_ADDR": value})
    assert names in caught.value.detail
