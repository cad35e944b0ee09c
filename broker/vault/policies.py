"""The Vault policies the broker ships, as HCL built from the layout.

Vault's own policy engine decides who may mint, revoke, kill, rotate and publish:
a sidecar may mint for its own agent only; a security operator may revoke, kill and
rotate; a platform editor may publish manifests and nothing else."""

from __future__ import annotations

from collections.abc import Iterable

from broker.vault.layout import (
    APPROLE_MOUNT,
    KV_MOUNT,
    PKI_MOUNT,
    TRANSIT_MOUNT,
    pki_role,
    token_role,
)


def _rule(path: str, *capabilities: str) -> str:
    caps = ", ".join(f'"{c}"' for c in capabilities)
    return f'path "{path}" {{\n  capabilities = [{caps}]\n}}\n'


def sidecar_policy_hcl(agent: str, dynamic_paths: Iterable[str]) -> str:
    """What one agent's sidecar identity may do: mint for itself, read control state."""
    rules = [
        _rule(f"{PKI_MOUNT}/sign/{pki_role(agent)}", "update"),
        _rule(f"auth/token/create/{token_role(agent)}", "update"),
        _rule(f"{KV_MOUNT}/data/control/*", "read"),
        _rule(f"{KV_MOUNT}/metadata/control/*", "read", "list"),
        _rule(f"{KV_MOUNT}/data/heartbeat/{agent}", "create", "update", "read"),
        _rule(f"{KV_MOUNT}/data/outstanding/{agent}", "create", "update", "read"),
        # The login registry (broker.vault.registry): add an entry, never rewrite or delete one.
        _rule(f"{KV_MOUNT}/data/sidecars/{agent}/*", "create"),
        _rule(f"{KV_MOUNT}/data/id-prefixes/+/{agent}", "create"),
        _rule(f"{KV_MOUNT}/data/audit/{agent}/*", "create", "update", "read"),
        _rule(f"{KV_MOUNT}/data/approvals/{agent}/*", "create", "update", "read"),
        _rule(f"{KV_MOUNT}/metadata/approvals/{agent}/*", "read", "list"),
        _rule(f"{KV_MOUNT}/data/manifests/{agent}", "read"),
        _rule(f"{TRANSIT_MOUNT}/sign/audit-checkpoint", "update"),
        _rule(f"{TRANSIT_MOUNT}/keys/audit-checkpoint", "read"),
    ]
    rules += [_rule(path, "read") for path in sorted(set(dynamic_paths))]
    return "\n".join(rules)


def security_operator_hcl() -> str:
    """Revoke, kill, rotate: the runbook commands of the security team."""
    rules = [
        _rule(f"{KV_MOUNT}/data/*", "create", "read", "update", "delete", "patch"),
        _rule(f"{KV_MOUNT}/metadata/*", "read", "list", "delete"),
        # Vault applies the most specific rule: only platform editors publish manifests.
        _rule(f"{KV_MOUNT}/data/manifests/*", "read"),
        _rule(f"{KV_MOUNT}/metadata/manifests/*", "read", "list"),
        _rule("sys/leases/revoke", "update"),
        _rule("sys/leases/revoke/*", "update"),
        _rule("sys/leases/revoke-prefix/*", "update", "sudo"),
        _rule("sys/leases/lookup/*", "list", "sudo"),
        _rule("sys/leases/lookup", "update"),  # a revocation is verified by looking the lease up
        _rule("auth/token/revoke-accessor", "update"),
        _rule("auth/token/lookup-accessor", "update"),
        _rule(f"auth/{APPROLE_MOUNT}/role/+/secret-id", "update", "list"),
        _rule(f"auth/{APPROLE_MOUNT}/role/+/secret-id-accessor/*", "update"),
        _rule(f"auth/{APPROLE_MOUNT}/role/+/role-id", "read"),
        # A fresh secret id must log in at once, even after failed logins locked the role.
        _rule("sys/auth", "read"),
        _rule("sys/locked-users/+/unlock/+", "update", "sudo"),
        _rule("+/rotate-root/*", "update"),  # any database secrets engine mount
        _rule(f"{PKI_MOUNT}/revoke", "update"),
        _rule(f"{PKI_MOUNT}/ca/pem", "read"),
        _rule(f"{TRANSIT_MOUNT}/keys/*", "read"),
        _rule(f"{TRANSIT_MOUNT}/keys/+/rotate", "update"),
        _rule(f"{TRANSIT_MOUNT}/sign/audit-checkpoint", "update"),
    ]
    return "\n".join(rules)


def verifier_hcl() -> str:
    """For tools and gateways that verify action tokens: read the revocation state, no more."""
    return _rule(f"{KV_MOUNT}/data/control/*", "read")


def platform_editor_hcl() -> str:
    """Publish manifests; read (never change) control state and sidecar heartbeats (which
    report the manifest hash each sidecar enforces: ``broker scopes verify``)."""
    rules = [
        _rule(f"{KV_MOUNT}/data/manifests/*", "create", "update", "read"),
        _rule(f"{KV_MOUNT}/metadata/manifests/*", "read", "list"),
        _rule(f"{KV_MOUNT}/data/control/*", "read"),
        _rule(f"{KV_MOUNT}/data/heartbeat/*", "read"),
        _rule(f"{KV_MOUNT}/data/audit/platform/*", "create", "update", "read"),
    ]
    return "\n".join(rules)


def demo_policy_hcl(policy: str) -> str:
    """A development stand-in for an app policy named in a manifest: one readable secret."""
    return _rule(f"secret/data/demo/{policy}", "read")
