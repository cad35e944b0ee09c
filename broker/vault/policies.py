"""The Vault policies the broker ships, as HCL built from the layout.

Vault's own policy engine decides who may mint, revoke, kill, rotate, approve and publish:
a sidecar may mint for its own agent only, through roles that carry its manifest's limits,
and may ask for a certificate in its own agent's exact name only; a security operator may
revoke, kill and rotate, and reads (never writes) approvals, decisions, audit heads and
manifests; an approver may record a decision under its own Vault identity only; a platform
editor may publish manifests and nothing else; a verifier reads the control state.
``tests/vault/test_vault_policies.py`` checks each against a live OpenBao, operation by operation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from broker.vault.layout import (
    APPROLE_MOUNT,
    DECISIONS_DIR,
    ISSUER_KEYS_DIR,
    KV_MOUNT,
    PKI_MOUNT,
    STATUS_DIR,
    STATUS_LIST_KEY,
    TRANSIT_MOUNT,
    audit_key,
    issuer_keys_path,
    pki_role,
    status_path,
)


def _rule(path: str, *capabilities: str) -> str:
    caps = ", ".join(f'"{c}"' for c in capabilities)
    return f'path "{path}" {{\n  capabilities = [{caps}]\n}}\n'


def _pki_sign_rule(agent: str, alg: str = "EdDSA") -> str:
    """Signing for the agent's own name, spelled exactly: the PKI role compares names without
    regard to case, so the policy pins ``common_name`` (which the role uses instead of the
    CSR's) and refuses every other parameter, alt names included."""
    return (
        f'path "{PKI_MOUNT}/sign/{pki_role(agent, alg)}" {{\n'
        '  capabilities = ["update"]\n'
        '  required_parameters = ["common_name", "csr"]\n'
        "  allowed_parameters = {\n"
        f'    "common_name" = ["{agent}"]\n'
        '    "csr" = []\n'
        '    "ttl" = []\n'
        '    "format" = ["pem"]\n'
        "  }\n"
        "}\n"
    )


def sidecar_policy_hcl(
    agent: str, dynamic_paths: Iterable[str], token_roles: Iterable[str] = ()
) -> str:
    """What one agent's sidecar identity may do: mint for itself through its action roles,
    read control state and the approvers' decisions on its own approvals."""
    rules = [
        _pki_sign_rule(agent),
        _pki_sign_rule(agent, "ES256"),
        *(_rule(f"auth/token/create/{role}", "update") for role in sorted(set(token_roles))),
        _rule(f"{KV_MOUNT}/data/{DECISIONS_DIR}/+/{agent}/*", "read"),
        _rule(f"{KV_MOUNT}/data/{issuer_keys_path(agent)}", "create", "update", "read"),
        _rule(f"{KV_MOUNT}/data/{status_path(agent)}", "create", "update", "read"),
        _rule(f"{KV_MOUNT}/data/control/*", "read"),
        _rule(f"{KV_MOUNT}/metadata/control/*", "read", "list"),
        _rule(f"{KV_MOUNT}/data/heartbeat/{agent}", "create", "update", "read"),
        _rule(f"{KV_MOUNT}/data/outstanding/{agent}", "create", "update", "read"),
        # The fleet usage ledger (broker.sidecar.fleetledger): this agent's document only.
        _rule(f"{KV_MOUNT}/data/ledger/{agent}", "create", "update", "read"),
        # Its delegated grants' revocations (broker.sidecar.delegation): its own document only.
        _rule(f"{KV_MOUNT}/data/delegations/{agent}", "create", "update", "read"),
        # The login registry (broker.vault.registry): add an entry, never rewrite or delete one.
        _rule(f"{KV_MOUNT}/data/sidecars/{agent}/*", "create"),
        _rule(f"{KV_MOUNT}/data/id-prefixes/+/{agent}", "create"),
        _rule(f"{KV_MOUNT}/data/audit/{agent}/*", "create", "update", "read"),
        _rule(f"{KV_MOUNT}/data/approvals/{agent}/*", "create", "update", "read"),
        _rule(f"{KV_MOUNT}/metadata/approvals/{agent}/*", "read", "list"),
        _rule(f"{KV_MOUNT}/data/manifests/{agent}", "read"),
        _rule(f"{TRANSIT_MOUNT}/sign/{audit_key(agent)}", "update"),
        _rule(f"{TRANSIT_MOUNT}/keys/{audit_key(agent)}", "read"),
    ]
    # Revoking what it minted itself when no record of it could be written (or it arrived
    # after the deadline): a child token by its own secret (knowing it is the authority
    # already), a lease only under the agent's own dynamic roles.
    rules.append(_rule("auth/token/revoke", "update"))
    rules += [_rule(path, "read") for path in sorted(set(dynamic_paths))]
    rules += [_rule(f"sys/leases/revoke/{path}/*", "update") for path in sorted(set(dynamic_paths))]
    return "\n".join(rules)


def security_operator_hcl(jwt_mounts: Sequence[str] = ()) -> str:
    """Revoke, kill, rotate: the runbook commands of the security team. KV writes reach the
    control documents only: approvals, approvers' decisions, published audit heads and
    manifests are read-only, so an operator can neither forge an approval nor cut a trail.
    The rotation runbook needs new secret ids; the role id is handed out once, at onboarding,
    by the admin who bootstraps, so an operator alone never holds a complete AppRole login."""
    rules = [
        _rule(f"{KV_MOUNT}/data/control/*", "create", "read", "update", "patch"),
        _rule(f"{KV_MOUNT}/metadata/control/*", "read", "list"),
        *(
            rule
            for tree in (
                "heartbeat",
                "outstanding",
                "audit",
                "approvals",
                DECISIONS_DIR,
                "id-prefixes",  # which agent a credential id's process served
                "ledger",  # the fleet usage ledgers, for broker status
                "delegations",  # delegated grants revoked by their agents
            )
            for rule in _readable(tree)
        ),
        *_readable("manifests"),
        # A login entry goes once its token is revoked (found gone), so the registry holds
        # only what a kill still has to reach; deleting a live one would only hide it from
        # the operator's own later kill.
        # (sidecars/: every login each agent's sidecars ever had, what a kill revokes.)
        _rule(f"{KV_MOUNT}/data/sidecars/*", "read"),
        _rule(f"{KV_MOUNT}/metadata/sidecars/*", "read", "list", "delete"),
        _rule("sys/leases/revoke", "update"),
        _rule("sys/leases/revoke/*", "update"),
        _rule("sys/leases/revoke-prefix/*", "update", "sudo"),
        _rule("sys/leases/lookup/*", "list", "sudo"),
        _rule("sys/leases/lookup", "update"),  # a revocation is verified by looking the lease up
        _rule("auth/token/revoke-accessor", "update"),
        _rule("auth/token/lookup-accessor", "update"),
        _rule(f"auth/{APPROLE_MOUNT}/role/+/secret-id", "update", "list"),
        _rule(f"auth/{APPROLE_MOUNT}/role/+/secret-id-accessor/*", "update"),
        # Whether an agent has a login at all (its role's settings; never its role id, which
        # with a secret id would be a login: the role id is handed out at onboarding only).
        _rule(f"auth/{APPROLE_MOUNT}/role/+", "read"),
        _rule("+/rotate-root/*", "update"),  # any database secrets engine mount
        _rule(f"{PKI_MOUNT}/revoke", "update"),
        _rule(f"{PKI_MOUNT}/ca/pem", "read"),
        _rule(f"{TRANSIT_MOUNT}/keys/*", "read"),
        _rule(f"{TRANSIT_MOUNT}/keys/+/rotate", "update"),
        # The kill switch stops workload (jwt) logins too: it finds the jwt mounts and adds an
        # impossible bound claim to the agent's role; revive removes it.
        _rule("sys/auth", "read"),
        *(_jwt_kill_rule(mount) for mount in sorted(set(jwt_mounts))),
    ]
    return "\n".join(rules)


def _jwt_kill_rule(mount: str) -> str:
    """The agent roles of one jwt mount: read, and update of the bound claims only, so an
    operator can stop or resume a login but never rebind it to another workload (a jwt role
    has no sub-paths, so the glob reaches nothing else)."""
    return (
        f'path "auth/{mount}/role/broker-*" {{\n  capabilities = ["read", "update"]\n'
        '  allowed_parameters = {\n    "role_type" = ["jwt"]\n    "bound_claims" = []\n  }\n}\n'
    )


def _readable(tree: str) -> list[str]:
    return [
        _rule(f"{KV_MOUNT}/data/{tree}/*", "read"),
        _rule(f"{KV_MOUNT}/metadata/{tree}/*", "read", "list"),
    ]


def approver_hcl(token_mount_accessor: str) -> str:
    """An approver reads approvals and records its own decision: the decision path is
    templated on the name of the token's entity alias (set only by an admin, through the
    approver token role), and ``create`` without ``update`` makes each decision final."""
    me = f"{{{{identity.entity.aliases.{token_mount_accessor}.name}}}}"
    rules = [
        _rule(f"{KV_MOUNT}/data/approvals/*", "read", "update"),
        _rule(f"{KV_MOUNT}/metadata/approvals/*", "read", "list"),
        _rule(f"{KV_MOUNT}/data/{DECISIONS_DIR}/{me}/*", "create", "read"),
    ]
    return "\n".join(rules)


def node_agent_hcl() -> str:
    """For ``broker node-agent``: the control version, read only. Its token, stolen, tells
    the thief a counter; every document it counts stays behind the sidecars' own policies."""
    return (
        _rule(f"{KV_MOUNT}/data/control/version", "read")
        + _rule("auth/token/renew-self", "update")
        + _rule("auth/token/revoke-self", "update")  # a stopping agent leaves no live token
    )


def verifier_hcl() -> str:
    """For tools, gateways and ``broker issuer``: read the revocation state, the published
    manifests (a token may say only what its agent's manifest allows) and the published public
    keys, no more."""
    rules = [
        _rule(f"{KV_MOUNT}/data/control/*", "read"),
        _rule(f"{KV_MOUNT}/data/manifests/*", "read"),
        _rule(f"{KV_MOUNT}/data/delegations/*", "read"),  # revoked delegated grants
        _rule(f"{KV_MOUNT}/data/{ISSUER_KEYS_DIR}/*", "read"),
        _rule(f"{KV_MOUNT}/metadata/{ISSUER_KEYS_DIR}", "list"),
        _rule(f"{KV_MOUNT}/metadata/{ISSUER_KEYS_DIR}/*", "list"),
        _rule(f"{KV_MOUNT}/data/{STATUS_DIR}/*", "read"),
        _rule(f"{KV_MOUNT}/metadata/{STATUS_DIR}", "list"),
        _rule(f"{KV_MOUNT}/metadata/{STATUS_DIR}/*", "list"),
    ]
    return "\n".join(rules)


def issuer_hcl() -> str:
    """For ``broker issuer``: what verifiers read, the kill flags, and signing status lists
    with the one transit key kept for that."""
    rules = [
        verifier_hcl(),
        _rule(f"{TRANSIT_MOUNT}/keys/{STATUS_LIST_KEY}", "read"),
        _rule(f"{TRANSIT_MOUNT}/sign/{STATUS_LIST_KEY}", "update"),
    ]
    return "\n".join(rules)


def platform_editor_hcl() -> str:
    """Publish manifests; read (never change) control state and sidecar heartbeats (which
    report the manifest hash each sidecar enforces: ``broker scopes verify``). Bump
    ``control/version`` after a publish, so sidecars look at their manifests at once: a
    counter whose content nothing reads (the most specific rule wins, so it reads too)."""
    rules = [
        _rule(f"{KV_MOUNT}/data/manifests/*", "create", "update", "read"),
        _rule(f"{KV_MOUNT}/metadata/manifests/*", "read", "list"),
        _rule(f"{KV_MOUNT}/data/control/*", "read"),
        _rule(f"{KV_MOUNT}/data/control/version", "create", "update", "read"),
        _rule(f"{KV_MOUNT}/data/heartbeat/*", "read"),
    ]
    return "\n".join(rules)


def demo_policy_hcl(policy: str) -> str:
    """A development stand-in for an app policy named in a manifest: one readable secret."""
    return _rule(f"secret/data/demo/{policy}", "read")
