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
ISSUER_POLICY = "broker-issuer"

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


def token_role(agent: str) -> str:
    return f"broker-{agent}"


def control_path(*parts: str) -> str:
    """A KV v2 secret path under the control tree (without the mount)."""
    return "/".join(("control", *parts))


# Token status lists (draft-ietf-oauth-status-list), one per agent: which indices are revoked.
STATUS_DIR = "issuer/status"
STATUS_LIST_KEY = "status-list"  # transit key (ecdsa-p256) that signs Status List Tokens


def status_path(agent: str) -> str:
    return f"{STATUS_DIR}/{agent}"
