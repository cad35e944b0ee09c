"""Names of everything the broker keeps in Vault, in one place.

Mount paths, policy names and role names are derived from the agent id here and nowhere
else, so bootstrap, the sidecar and the runbook commands cannot disagree."""

from __future__ import annotations

KV_MOUNT = "broker-kv"  # KV v2: control state, approvals, published manifests, audit heads
PKI_MOUNT = "broker-pki"  # certifies each sidecar's in-memory signing key for minutes
TRANSIT_MOUNT = "broker-transit"  # signs audit checkpoints
APPROLE_MOUNT = "approle"
DATABASE_MOUNT = "database"

SECURITY_OPERATOR_POLICY = "broker-security-operator"
PLATFORM_EDITOR_POLICY = "broker-platform-editor"
VERIFIER_POLICY = "broker-verifier"
APPROVER_POLICY = "broker-approver"
APPROVER_TOKEN_ROLE = "broker-approver"  # noqa: S105 - a role name; only admins create from it
APPROVER_TOKEN_TTL = "8h"  # noqa: S105 - a duration, not a secret
DECISIONS_DIR = "decisions"  # KV: decisions/<approver>/<agent>/<approval id>, one writer each
ISSUER_POLICY = "broker-issuer"
# ``broker node-agent``: reads control/version for the sidecars of a node, nothing else. The
# role name has an underscore, which no agent id may have: no agent's role can be named so.
NODE_AGENT_POLICY = "broker-node-agent"
NODE_AGENT_ROLE = "broker_node_agent"

CA_COMMON_NAME = "agent-credential-broker CA"
SIGNING_CERT_TTL = "15m"


def sidecar_policy(agent: str) -> str:
    return f"broker-sidecar-{agent}"


def approle_role(agent: str) -> str:
    return f"broker-{agent}"


def pki_role(agent: str, alg: str = "EdDSA") -> str:
    """Each agent has its own PKI roles (one per key type: ed25519 for EdDSA, P-256 for
    ES256), allowed only its own id as common name, so a sidecar cannot obtain a
    certificate that speaks for another agent."""
    return f"agent-{agent}" if alg == "EdDSA" else f"agent-{agent}-{alg.lower()}"


# Where each sidecar publishes its public keys for ``broker issuer`` (KV v2, one per agent).
ISSUER_KEYS_DIR = "issuer/keys"


def issuer_keys_path(agent: str) -> str:
    return f"{ISSUER_KEYS_DIR}/{agent}"


def action_token_role(agent: str, action: str) -> str:
    """One token role per agent and ``vault_token`` action, carrying exactly that action's
    policies, TTL and use count, so Vault caps what the sidecar's login can mint. Agent ids
    have no dot and action names always do, so the name cannot collide."""
    return f"broker-{agent}.{action}"


def decision_path(approver: str, agent: str, approval_id: str) -> str:
    """Where an approver's decision on one approval lives (KV path without the mount); the
    approver policy lets only that approver's Vault identity create it."""
    return f"{DECISIONS_DIR}/{approver}/{agent}/{approval_id}"


def audit_key(agent: str) -> str:
    """Each agent's audit checkpoints are signed with its own transit key, so one sidecar's
    login cannot sign a checkpoint (or a published head) for another agent's trail."""
    return f"audit-checkpoint-{agent}"


def control_path(*parts: str) -> str:
    """A KV v2 secret path under the control tree (without the mount)."""
    return "/".join(("control", *parts))


# Token status lists (draft-ietf-oauth-status-list), one per agent: which indices are revoked.
STATUS_DIR = "issuer/status"
STATUS_LIST_KEY = "status-list"  # transit key (ecdsa-p256) that signs Status List Tokens


def status_path(agent: str) -> str:
    return f"{STATUS_DIR}/{agent}"
