"""The layout is the architecture: each layer imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "broker"

# Bottom to top. A module may import its own layer and any layer before it, never one after it.
LAYERS = (
    "core",
    "scopes",
    "settings",
    "audit",
    "vault",
    "sidecar",
    "issuer",
    "ops",
    "dev",
    "mcpgw",
    "cli",
)
# The modules at the top of the package and what of the package each may import.
TOP_LEVEL: dict[str, tuple[str, ...]] = {
    "client": ("dpop",),  # ships alone: the agents' client imports only its DPoP key
    "dpop": (),  # the agent's DPoP key and proofs (RFC 9449), for the client
    "clientenv": ("client",),  # the client from BROKER_URL / BROKER_SOCKET
    "adapters": ("client", "clientenv"),  # framework adapters wrap the client only
    "verify": ("core",),  # gateways verify with the core's claims and nothing of the sidecar
    "status_client": ("core",),  # a gateway reads token status lists over HTTP
    # Published manifests for the verifier: read from Vault as the sidecar's watcher does.
    "verifyscope": ("core", "scopes", "vault", "sidecar", "verify"),
    "testing": ("core", "audit"),
}
THIRD_PARTY_ONLY_IN = {"hvac": ("vault",)}
NEVER_IN_CORE = ("aiohttp", "hvac", "requests", "socket", "prometheus_client", "psycopg")


def _imports(path: Path) -> set[str]:
    """Every module name that ``path`` imports, absolute, as written."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "broker":
                found.update(f"broker.{alias.name}" for alias in node.names)
    return found


def _layer_of(path: Path) -> str:
    """The layer (subpackage) a module lives in, or its own name at the top of the package."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def _modules() -> list[Path]:
    return sorted(
        p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE
    )


def violations(path: Path, imported: set[str]) -> list[str]:
    """What ``path`` imports that its layer may not: empty when the module keeps the rules."""
    layer = _layer_of(path)
    if layer in TOP_LEVEL:
        allowed = {layer, *TOP_LEVEL[layer]}
    elif layer in LAYERS:
        allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    else:
        return [f"{path.name} is in no known layer: add it to LAYERS or TOP_LEVEL"]
    if layer in ("dev", "mcpgw", "cli"):  # these use the public modules (client, verify) too
        allowed |= set(TOP_LEVEL)
    bad = []
    for name in sorted(imported):
        root, _, rest = name.partition(".")
        if root == "broker":
            target = rest.split(".")[0]
            if target and target not in allowed:
                bad.append(f"{layer} may not import broker.{target}")
        for lib, homes in THIRD_PARTY_ONLY_IN.items():
            if root == lib and layer not in homes:
                bad.append(f"only {', '.join(homes)} may import {lib}")
        if layer == "core" and root in NEVER_IN_CORE:
            bad.append(f"the pure core may not import {root}")
    return bad


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_layers_below_it(path: Path) -> None:
    """The module imports nothing from a layer above its own (nor hvac outside broker.vault)."""
    assert violations(path, _imports(path)) == []


@pytest.mark.parametrize(
    ("where", "imported", "expected"),
    [
        ("core/decision.py", "broker.sidecar.service", "core may not import broker.sidecar"),
        ("core/decision.py", "aiohttp", "the pure core may not import aiohttp"),
        ("sidecar/service.py", "hvac", "only vault may import hvac"),
        ("sidecar/service.py", "broker.cli.control", "sidecar may not import broker.cli"),
        ("client/sync.py", "broker.core.errors", "client may not import broker.core"),
        ("audit/log.py", "broker.vault.session", "audit may not import broker.vault"),
    ],
)
def test_a_forbidden_import_is_caught(where: str, imported: str, expected: str) -> None:
    """The rule itself bites: each forbidden import above is reported."""
    assert expected in violations(PACKAGE / where, {imported})
